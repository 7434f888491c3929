"""Cluster profiles, readable names, and stable cluster identity across retrains."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from segmentation.clustering.model import Space

# Columns the names are read from (profiled whatever the model's features are).
NAMING_COLUMNS = ["recency_days", "frequency_orders", "monetary", "channels_used"]
REVENUE = "revenue_365d"


def cluster_profiles(assigned: DataFrame, features: list[str]) -> DataFrame:
    """Per cluster_id: customers, share of customers and of trailing revenue, mean, median and
    (population) standard deviation of every feature. `assigned` holds the features and
    cluster_id (one row per customer). One pass over the customers: the totals are summed
    from the k clusters' rows."""
    columns = list(dict.fromkeys([*features, *NAMING_COLUMNS, REVENUE]))
    stats = [
        stat
        for c in columns
        for stat in (F.avg(c).alias(f"mean_{c}"), F.percentile_approx(c, 0.5, 10_000).alias(f"median_{c}"),
                     F.stddev_pop(c).alias(f"std_{c}"))
    ]
    per_cluster = assigned.groupBy("cluster_id").agg(F.count(F.lit(1)).alias("customers"), F.sum(REVENUE).alias("revenue"), *stats)
    every_cluster = Window.partitionBy(F.lit(0))  # the k rows together
    return (
        per_cluster.select("*", F.sum("customers").over(every_cluster).alias("all_customers"),
                           F.sum("revenue").over(every_cluster).alias("all_revenue"))
        .select(
            "cluster_id", "customers",
            (F.col("customers") / F.col("all_customers")).alias("customer_share"),
            F.when(F.col("all_revenue") != 0, F.col("revenue") / F.col("all_revenue")).alias("revenue_share"),
            *[F.col(f"{s}_{c}") for c in columns for s in ("mean", "median", "std")],
        )
        .orderBy("cluster_id")
    )


def cluster_name(profile: dict, overall_mean_monetary: float) -> str:
    """A name marketing can read, from the cluster's profile: activity, value, channel mix."""
    recency = profile["median_recency_days"]
    activity = "active" if recency is not None and recency <= 60 else "cooling" if recency is not None and recency <= 180 else "lapsed"
    ratio = (profile["mean_monetary"] or 0.0) / overall_mean_monetary if overall_mean_monetary > 0 else 0.0
    value = "high-value" if ratio >= 2 else "low-spend" if ratio <= 0.5 else "mid-value"
    parts = [activity, value]
    if (profile["mean_channels_used"] or 0) >= 1.8:
        parts.append("omnichannel")
    return " ".join(parts)


# The words for a cluster whose mean of a feature lies above / below that of the clusters it
# shares its name with. Channel shares read "<channel>-first"; other features "high <feature>".
QUALIFIERS = {
    "recency_days": ("long-absent", "recent"),
    "recency_ratio": ("overdue", "on-rhythm"),
    "frequency_orders": ("frequent", "occasional"),
    "frequency_days": ("many purchase days", "few purchase days"),
    "monetary": ("bigger-spending", "smaller-spending"),
    "average_order_value": ("big-basket", "small-basket"),
    "tenure_days": ("long-standing", "newer"),
    "orders_365d": ("busy this year", "quiet this year"),
    "revenue_365d": ("high-spend this year", "low-spend this year"),
    "order_trend": ("growing", "declining"),
    "channels_used": ("multichannel", "single-channel"),
    "distinct_categories": ("broad-range", "narrow-range"),
    "discount_share": ("discount-driven", "full-price"),
    "return_rate": ("high-return", "low-return"),
    "margin_rate": ("high-margin", "low-margin"),
}
SHARE_PREFIXES = ("order_share_", "revenue_share_")


def qualifiers(feature: str) -> tuple[str, str]:
    """The (higher, lower) words of `feature`."""
    if feature in QUALIFIERS:
        return QUALIFIERS[feature]
    for prefix in SHARE_PREFIXES:
        if feature.startswith(prefix):
            channel = feature.removeprefix(prefix).replace("_", " ")
            return f"{channel}-first", f"little {channel}"
    readable = feature.replace("_", " ")
    return f"high {readable}", f"low {readable}"


def profiled_features(profiles: list[dict]) -> list[str]:
    """The features every profile has a mean and a standard deviation of, in profile order."""
    features = [key.removeprefix("mean_") for key in profiles[0] if key.startswith("mean_")] if profiles else []
    return [f for f in features if all(f"mean_{f}" in p and f"std_{f}" in p for p in profiles)]


def population_spread(profiles: list[dict]) -> dict[str, float]:
    """Per feature, the standard deviation over every customer, from the clusters' sizes, means
    and standard deviations (law of total variance); clusters without a value are left out."""
    spread = {}
    for feature in profiled_features(profiles):
        known = [p for p in profiles if p[f"mean_{feature}"] is not None and p[f"std_{feature}"] is not None]
        weights = np.array([p["customers"] for p in known], dtype=float)
        if weights.sum() == 0:
            continue
        means = np.array([p[f"mean_{feature}"] for p in known], dtype=float)
        stds = np.array([p[f"std_{feature}"] for p in known], dtype=float)
        centre = np.average(means, weights=weights)
        spread[feature] = float(np.sqrt(np.average(stds ** 2 + (means - centre) ** 2, weights=weights)))
    return spread


def _largest_gap(values: list[float]) -> tuple[float, float]:
    """The widest gap between consecutive sorted values: its width and its midpoint."""
    ordered = sorted(values)
    width, low = max((b - a, a) for a, b in zip(ordered, ordered[1:]))
    return width, low + width / 2


def distinguishing_feature(group: list[dict], spread: dict[str, float], exclude: set[str] = frozenset()) -> str | None:
    """The feature whose means split `group` (profiles sharing a name) by the widest gap,
    measured in population standard deviations; None when no feature tells them apart
    (identical profiles). Ties go to the feature profiled first."""
    best, best_gap = None, 0.0
    for feature, scale in spread.items():
        values = [p[f"mean_{feature}"] for p in group]
        if feature in exclude or scale <= 0 or any(v is None for v in values):
            continue
        gap = _largest_gap(values)[0] / scale
        if gap > best_gap + 1e-12:
            best, best_gap = feature, gap
    return best


def cluster_names(profiles: list[dict], inherited: Mapping[int, str] | None = None) -> dict[int, str]:
    """Every cluster's name, unique. A cluster matched to the champion's keeps its name
    (`inherited`); the others are named from their profile by `cluster_name`. Clusters that
    would share a name are told apart by the feature that separates them most
    (`distinguishing_feature`): those above the widest gap in its means get its higher word,
    the others its lower one ("lapsed low-spend, high-return" and "lapsed low-spend,
    low-return"); inherited names are never changed. Repeated until every name is unique,
    each feature used once per name; only clusters no feature tells apart get " 2", " 3"."""
    inherited = dict(inherited or {})
    by_id = {p["cluster_id"]: p for p in profiles}
    customers = sum(p["customers"] for p in profiles)
    overall = sum(p["customers"] * (p["mean_monetary"] or 0.0) for p in profiles) / customers if customers else 0.0
    spread = population_spread(profiles)
    names = {i: inherited.get(i) or cluster_name(p, overall) for i, p in sorted(by_id.items())}
    used: dict[int, set[str]] = {i: set() for i in names}
    while clashes := _clashes(names, inherited):
        for group in clashes:
            pending = [i for i in group if i not in inherited]
            feature = distinguishing_feature([by_id[i] for i in group], spread, set().union(*(used[i] for i in group)))
            if feature is None:
                names.update(_numbered(group, names, inherited))
                continue
            middle = _largest_gap([by_id[i][f"mean_{feature}"] for i in group])[1]
            higher, lower = qualifiers(feature)
            for i in pending:
                names[i] = f"{names[i]}, {higher if by_id[i][f'mean_{feature}'] > middle else lower}"
                used[i].add(feature)
    return names


def _clashes(names: dict[int, str], fixed: Mapping[int, str]) -> list[list[int]]:
    """Groups of cluster ids sharing a name, where some may still be renamed."""
    groups: dict[str, list[int]] = {}
    for cluster_id, name in names.items():
        groups.setdefault(name, []).append(cluster_id)
    return [group for group in groups.values() if len(group) > 1 and any(i not in fixed for i in group)]


def _numbered(group: list[int], names: dict[int, str], fixed: Mapping[int, str]) -> dict[int, str]:
    """The last resort for clusters no feature tells apart: " 2", " 3" ... in id order; the
    first (an inherited one if there is one) keeps the name."""
    keeper = next((i for i in group if i in fixed), group[0])
    taken = set(names.values())
    renamed = {}
    for cluster_id in group:
        if cluster_id == keeper:
            continue
        number = 2
        while f"{names[cluster_id]} {number}" in taken:
            number += 1
        renamed[cluster_id] = f"{names[cluster_id]} {number}"
        taken.add(renamed[cluster_id])
    return renamed


@dataclass(frozen=True)
class ReferenceClusters:
    """A champion model's clusters: centroids in input units (after logs), ids and names."""

    inputs: list[str]
    centroids: np.ndarray
    ids: list[int]
    names: list[str]

    def as_dict(self) -> dict:
        return {"inputs": self.inputs, "centroids": self.centroids.tolist(), "ids": self.ids, "names": self.names}

    @classmethod
    def from_dict(cls, data: dict) -> "ReferenceClusters":
        return cls(list(data["inputs"]), np.array(data["centroids"], dtype=float), list(data["ids"]), list(data["names"]))


@dataclass(frozen=True)
class Matching:
    ids: list[int]  # stable id per model cluster index
    inherited_names: dict[int, str]  # stable id -> the champion's name, for matched clusters
    distances: list[float | None]  # distance to the matched champion centroid (standardised)


def match_to_reference(space: Space, reference: ReferenceClusters | None, max_distance: float) -> Matching:
    """Stable ids: an optimal one-to-one assignment (Hungarian) of the new centroids to the
    reference's, both standardised with the new model's scaler. Pairs closer than
    `max_distance` keep the reference's id and name; the other clusters get new ids."""
    k = len(space.centroids_scaled)
    if reference is None or reference.inputs != space.inputs:
        return Matching(list(range(k)), {}, [None] * k)
    new = space.centroids_scaled
    old = space.standardise(reference.centroids)
    distances = np.sqrt(((new[:, None, :] - old[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(distances)
    ids: list[int | None] = [None] * k
    matched_distance: list[float | None] = [None] * k
    inherited = {}
    for row, col in zip(rows, cols):
        if distances[row, col] <= max_distance:
            ids[row] = reference.ids[col]
            matched_distance[row] = float(distances[row, col])
            inherited[reference.ids[col]] = reference.names[col]
    next_id = max(reference.ids) + 1
    for index in range(k):
        if ids[index] is None:
            ids[index] = next_id
            next_id += 1
    return Matching([int(i) for i in ids], inherited, matched_distance)
