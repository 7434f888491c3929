"""Data sufficiency: what each model stage needs before it fits, as plain decisions.

Each check takes counts the stage has already computed (a handful of aggregates) and the
thresholds of configuration, and returns None when the data suffice, else one sentence that
names the shortfall and what to do. The stage raises `InsufficientDataError` with it:
standalone (`segmentation clv`, `cluster`, `churn train`) the command fails with that line;
`segmentation run` skips the stage and the tier table says which predictive columns are
missing and why (`lineage.missing_predictions`).
"""

from __future__ import annotations

import datetime as dt


def clv_shortfall(repeat_customers: int, calibration_days: int, unit_days: int, time_unit: str,
                  min_repeat_customers: int, min_calibration_units: int) -> str | None:
    """BG/NBD learns the purchase rate and the dropout from customers who bought again, over
    a calibration period of enough time units (first purchase to calibration end)."""
    units = calibration_days / unit_days
    if units < min_calibration_units:
        return (f"the calibration period spans {calibration_days} days ({units:.1f} {time_unit}s), shorter than "
                f"clv.min_calibration_units={min_calibration_units} {time_unit}s; collect more history"
                + (" or use clv.time_unit=day" if time_unit == "week" else ""))
    if repeat_customers < min_repeat_customers:
        who = "1 customer" if repeat_customers == 1 else f"{repeat_customers:,} customers"
        return (f"{who} bought more than once by the calibration end, fewer than "
                f"clv.min_repeat_customers={min_repeat_customers}; BG/NBD learns from repeat customers: collect more history "
                "or more customers")
    return None


def cluster_shortfall(distinct: int, largest_k: int, min_customers_per_cluster: int) -> str | None:
    """K-means needs customers it can tell apart: at least `min_customers_per_cluster` distinct
    points per cluster of the largest k it may fit."""
    needed = largest_k * min_customers_per_cluster
    if distinct < needed:
        return (f"{distinct:,} customers with distinct cluster.features, fewer than {needed:,} "
                f"(k up to {largest_k} x cluster.min_customers_per_cluster={min_customers_per_cluster}); "
                "lower cluster.k_max (or cluster.k), or collect more customers")
    return None


def varying_features(features: list[str], constant: list[str], customers: int) -> tuple[list[str], str | None]:
    """The features K-means can use: those whose value differs between customers (a feature
    with one value for all cannot separate clusters, e.g. channels_used on a single-channel
    feed), and why there are too few of them (fewer than 2) to cluster, if so."""
    varying = [f for f in features if f not in constant]
    if len(varying) >= 2:
        return varying, None
    which = f"only {', '.join(varying)} varies" if varying else "none varies"
    return varying, (f"of cluster.features, {which} across the {customers:,} customers (the same value for all: "
                     f"{', '.join(constant)}); K-means needs at least 2 features that vary: add some to cluster.features")


def churn_history_needed(lookback_days: int, horizon_days: int, cutoffs: int) -> int:
    """Days of history the churn model needs: a look-back before the earliest training cutoff,
    then a label window per training cutoff and one for the evaluation."""
    return lookback_days + horizon_days * (cutoffs + 1)


def churn_history_shortfall(first_day: dt.date, as_of: dt.date, lookback_days: int, horizon_days: int,
                            cutoffs_kept: int, cutoffs_configured: int) -> str | None:
    """Whether the history from the first transaction to as_of holds the kept training
    cutoffs' windows (at least one cutoff)."""
    history = (as_of - first_day).days
    cutoffs = max(cutoffs_kept, 1)
    needed = churn_history_needed(lookback_days, horizon_days, cutoffs)
    if cutoffs_kept >= 1 and history >= needed:
        return None
    kept = f"{cutoffs_kept} of {cutoffs_configured} training cutoffs have a full look-back" if cutoffs_kept < cutoffs_configured else f"{cutoffs} training cutoffs"
    return (f"{history} days of history ({first_day} to {as_of}), {kept}; the churn model needs "
            f"churn.lookback_days {lookback_days} + churn.horizon_days {horizon_days} x ({cutoffs} cutoffs + 1) = {needed} days: "
            "collect more history, or shorten churn.lookback_days or churn.horizon_days")


def label_shortfall(part: str, rows: int, churners: int, min_positives: int, min_negatives: int) -> str | None:
    """The `part` rows (training or evaluation) need enough churners and stayers to fit or
    to measure a classifier."""
    stayers = rows - churners
    if churners >= max(min_positives, 1) and stayers >= max(min_negatives, 1):
        return None
    return (f"the {part} rows hold {churners:,} churners and {stayers:,} stayers, fewer than churn.min_positives="
            f"{min_positives} churners and churn.min_negatives={min_negatives} stayers; collect more customers or history, "
            "or use a longer churn.horizon_days (more churners) or a shorter one (more stayers)")
