"""Cluster profiles, readable names, and stable cluster identity across retrains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from segmentation.clustering.model import Space

# Columns the names are read from (profiled whatever the model's features are).
NAMING_COLUMNS = ["recency_days", "frequency_orders", "monetary", "channels_used"]
REVENUE = "revenue_365d"


def cluster_profiles(assigned: DataFrame, features: list[str]) -> DataFrame:
    """Per cluster_id: customers, share of customers and of trailing revenue, mean and median
    of every feature. `assigned` is the features joined with cluster_id (one row per customer)."""
    columns = list(dict.fromkeys([*features, *NAMING_COLUMNS, REVENUE]))
    totals = assigned.agg(F.count(F.lit(1)).alias("all_customers"), F.sum(REVENUE).alias("all_revenue"))
    stats = [
        stat
        for c in columns
        for stat in (F.avg(c).alias(f"mean_{c}"), F.percentile_approx(c, 0.5, 10_000).alias(f"median_{c}"))
    ]
    per_cluster = assigned.groupBy("cluster_id").agg(F.count(F.lit(1)).alias("customers"), F.sum(REVENUE).alias("revenue"), *stats)
    return (
        per_cluster.join(totals, how="cross")
        .select(
            "cluster_id", "customers",
            (F.col("customers") / F.col("all_customers")).alias("customer_share"),
            F.when(F.col("all_revenue") != 0, F.col("revenue") / F.col("all_revenue")).alias("revenue_share"),
            *[F.col(f"{s}_{c}") for c in columns for s in ("mean", "median")],
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


def unique_names(names_by_id: dict[int, str]) -> dict[int, str]:
    """Equal names get " 2", " 3" ... in cluster id order, so every cluster's name is its own."""
    seen: dict[str, int] = {}
    result = {}
    for cluster_id in sorted(names_by_id):
        name = names_by_id[cluster_id]
        seen[name] = seen.get(name, 0) + 1
        result[cluster_id] = name if seen[name] == 1 else f"{name} {seen[name]}"
    return result


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
