"""Churn labels without leakage: the features of a cutoff date and what happened after it.

At a cutoff C a customer is eligible when they bought in the `lookback_days` ending on C
(recency below the look-back). Their features are `customer_features` as of C, which only
reads transactions stamped on or before C; the label `churned` is 1.0 when they made no
purchase in (C, C + horizon_days], else 0.0. Models are trained on earlier cutoffs and
evaluated on a later one whose label window follows theirs (out of time), never on a random
split of one snapshot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.config import ChurnConfig
from segmentation.errors import ConfigError
from segmentation.features.customer import AS_OF, customer_features_by_date, lines_by_date

LABEL = "churned"
CUTOFF = "cutoff_date"


@dataclass(frozen=True)
class Cutoffs:
    training: tuple[dt.date, ...]
    evaluation: dt.date
    horizon_days: int

    def window_end(self, cutoff: dt.date) -> dt.date:
        return cutoff + dt.timedelta(days=self.horizon_days)

    def as_dict(self) -> dict[str, object]:
        return {
            "training": [c.isoformat() for c in self.training],
            "evaluation": self.evaluation.isoformat(),
            "horizon_days": self.horizon_days,
        }


def churn_cutoffs(as_of: dt.date, settings: ChurnConfig) -> Cutoffs:
    """The evaluation cutoff (default: as_of - horizon) and the training cutoffs before it;
    a ConfigError names the key when a label window is not observed or not out of time."""
    horizon = dt.timedelta(days=settings.horizon_days)
    evaluation = settings.evaluation_cutoff or as_of - horizon
    if evaluation + horizon > as_of:
        raise ConfigError(
            f"churn.evaluation_cutoff: the label window of {evaluation} ends on {evaluation + horizon}, "
            f"after the data (as of {as_of}); use a cutoff on or before {as_of - horizon}"
        )
    if isinstance(settings.training_cutoffs, int):
        training = tuple(sorted(evaluation - (i + 1) * horizon for i in range(settings.training_cutoffs)))
    else:
        training = tuple(sorted(set(settings.training_cutoffs)))
    late = [c for c in training if c >= evaluation]
    if late:
        raise ConfigError(f"churn.training_cutoffs: {', '.join(map(str, late))} not before the evaluation cutoff {evaluation}")
    overlapping = [c for c in training if c + horizon > evaluation]
    if overlapping and settings.require_out_of_time:
        raise ConfigError(
            f"churn.training_cutoffs: the label windows of {', '.join(map(str, overlapping))} end after the evaluation "
            f"cutoff {evaluation} (not out of time); use cutoffs on or before {evaluation - horizon}, "
            "or set churn.require_out_of_time=false and report the evaluation as partly in time"
        )
    return Cutoffs(training, evaluation, settings.horizon_days)


def cutoffs_with_history(cutoffs: Cutoffs, first_day: dt.date, lookback_days: int) -> tuple[Cutoffs, list[dt.date]]:
    """The cutoffs without the training cutoffs whose look-back window starts before the first
    transaction (their customers' histories are cut short), and those dropped. None may be
    left: `sufficiency.churn_history_shortfall` then says how much history is needed."""
    lookback = dt.timedelta(days=lookback_days)
    dropped = [c for c in cutoffs.training if c - lookback < first_day]
    kept = tuple(c for c in cutoffs.training if c not in dropped)
    return Cutoffs(kept, cutoffs.evaluation, cutoffs.horizon_days), dropped


def purchasers_after(transactions: DataFrame, cutoffs: Sequence[dt.date], horizon_days: int) -> DataFrame:
    """(customer_id, as_of_date) of the customers with a purchase (not a return) on a day in
    (C, C + horizon_days], for each cutoff C of `cutoffs` (as_of_date = C)."""
    lines = lines_by_date(transactions, cutoffs, following_days=horizon_days).where(~F.col("is_return"))
    return lines.select("customer_id", AS_OF).distinct()


def eligible_customers(features: DataFrame, lookback_days: int) -> DataFrame:
    """Customers of a feature snapshot who bought in the `lookback_days` ending on its date."""
    return features.where(F.col("recency_days") < lookback_days)


def churn_examples(
    transactions: DataFrame, cutoffs: dt.date | Sequence[dt.date], horizon_days: int, lookback_days: int, channels: list[str]
) -> DataFrame:
    """Eligible customers at each cutoff (one date, or several stacked): their features as of
    it, `cutoff_date` and the label. All cutoffs come from one pass over the transactions."""
    dates = [cutoffs] if isinstance(cutoffs, dt.date) else list(cutoffs)
    features = eligible_customers(customer_features_by_date(transactions, dates, channels), lookback_days)
    bought = purchasers_after(transactions, dates, horizon_days).withColumn("_bought", F.lit(True))
    labelled = features.join(bought, on=["customer_id", AS_OF], how="left")
    return labelled.select(
        *features.columns,
        F.col(AS_OF).alias(CUTOFF),
        F.when(F.col("_bought"), 0.0).otherwise(1.0).alias(LABEL),
    )


def training_examples(
    transactions: DataFrame, cutoffs: Cutoffs, lookback_days: int, channels: list[str]
) -> DataFrame:
    """The examples of every training cutoff, stacked."""
    return churn_examples(transactions, cutoffs.training, cutoffs.horizon_days, lookback_days, channels)
