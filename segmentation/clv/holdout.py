"""The calibration/holdout check: what the model expected each customer to buy in the holdout
against what they bought, summarised by calibration frequency as in Fader, Hardie & Lee
(2005, figure 4), where a model's bias shows first."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.clv.bgnbd import BgNbdParams
from segmentation.clv.next_purchase import probability_purchase_by
from segmentation.plots import plt


@dataclass(frozen=True)
class NextPurchaseCheck:
    """Customers whose expected next purchase date falls within the holdout: the share who
    bought by it, and the model's own mean probability that they would (P(alive) times the
    chance of a purchase by the date while alive, about P(alive) / 2 by the median's definition)."""

    next_purchase_checked: int
    next_purchase_bought_share: float | None
    next_purchase_expected_share: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def next_purchase_check(
    snapshot: DataFrame, holdout: DataFrame, params: BgNbdParams, unit_days: float, holdout_end: dt.date
) -> NextPurchaseCheck:
    """`snapshot` (customer_clv rows) against `holdout` (customer_id, first_holdout_purchase_date)."""
    due = snapshot.where(F.col("next_purchase_date") <= F.lit(holdout_end))  # a null date is never due
    joined = due.join(holdout.select("customer_id", "first_holdout_purchase_date"), on="customer_id", how="left")
    bought_by_date = F.coalesce(F.col("first_holdout_purchase_date") <= F.col("next_purchase_date"), F.lit(False))
    days = F.datediff("next_purchase_date", "as_of_date")
    expected = probability_purchase_by(params, unit_days, F.col("x"), F.col("T"), F.col("probability_alive"), days)
    row = joined.agg(
        F.count(F.lit(1)).alias("checked"), F.avg(bought_by_date.cast("double")).alias("bought"), F.avg(expected).alias("expected"),
    ).first()
    return NextPurchaseCheck(int(row.checked), row.bought, row.expected)


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
