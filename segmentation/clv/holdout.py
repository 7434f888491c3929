"""The calibration/holdout check: what the model expected each customer to buy in the holdout
against what they bought, summarised by calibration frequency as in Fader, Hardie & Lee
(2005, figure 4), where a model's bias shows first."""

from __future__ import annotations

from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.plots import plt


def holdout_by_frequency(snapshot: DataFrame, cap: int = 7) -> DataFrame:
    """Per calibration x (x >= `cap` pooled): customers, mean expected and mean actual holdout purchases."""
    bucket = F.least(F.col("x"), F.lit(cap)).alias("x")
    return (
        snapshot.where(F.col("holdout_purchases").isNotNull())
        .groupBy(bucket)
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg("holdout_expected_purchases").alias("expected"),
            F.avg("holdout_purchases").alias("actual"),
        )
        .orderBy("x")
    )


def plot_holdout(rows: list[dict], cap: int, time_unit: str, holdout_days: int) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    labels = [f"{r['x']}+" if r["x"] == cap else str(r["x"]) for r in rows]
    axis.plot(labels, [r["actual"] for r in rows], marker="o", label="actual")
    axis.plot(labels, [r["expected"] for r in rows], marker="s", linestyle="--", label="BG/NBD expected")
    axis.set_xlabel("repeat purchases in the calibration period (x)")
    axis.set_ylabel(f"mean purchases in the {holdout_days}-day holdout")
    axis.set_title(f"Conditional expectations, holdout of {holdout_days} days (time unit: {time_unit})")
    axis.legend()
    figure.tight_layout()
    return figure
