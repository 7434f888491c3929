"""How good a churn score is, computed at scale: Spark aggregates only, so the driver sees a
bounded number of rows (score buckets and calibration bins), never a row per customer.

A score ranks customers from riskiest down. ROC AUC and PR AUC are those of Spark's
BinaryClassificationMetrics without binning (`areas_under_curves`: every score in one query,
where Spark's evaluator runs several jobs per score and metric). The ranking metrics (lift
and capture in the top 10% and 20%, the cumulative gains, ROC and precision-recall curves,
the best-F1 threshold) come from the score cut into `buckets` quantile buckets with their
row and churner counts; within a bucket customers are taken in random order, which is
exactly right for ties. Probabilities also get the Brier score and a calibration table
(equal-width bins of predicted probability, with the expected calibration error: the
row-weighted mean gap between predicted and observed rate).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from segmentation.churn.labels import LABEL
from segmentation.features.quantiles import even_probabilities, quantile_cuts, score_by_cuts

log = logging.getLogger(__name__)

TOP_SHARES = (0.1, 0.2)
BUCKETS = 100
RELATIVE_ERROR = 0.0005  # of the quantile cuts between buckets
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Bucket:
    low: float  # lowest and highest score in the bucket
    high: float
    rows: int
    churners: int


@dataclass(frozen=True)
class ScoreEvaluation:
    metrics: dict[str, float | None]
    curve: list[dict[str, float]]  # riskiest first: one point per bucket boundary
    calibration: list[dict[str, float]] | None  # None for a score that is not a probability
    buckets: list[Bucket] = field(default_factory=list)  # riskiest first: the quantile buckets of the evaluation

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _bucket_cuts(df: DataFrame, scores: list[str], buckets: int, relative_error: float) -> dict[str, list[float]]:
    """Each score's distinct quantile cuts, all scores in one pass (nulls are left out per score)."""
    probabilities = even_probabilities(buckets)
    cuts = quantile_cuts(df, {score: (F.col(score), probabilities) for score in scores}, relative_error)
    return {score: sorted(set(values)) for score, values in cuts.items()}


def _grouped_tables(
    df: DataFrame, scores: dict[str, bool], cuts: dict[str, list[float]], bins: int = CALIBRATION_BINS
) -> dict[str, tuple[list[Bucket], list[dict[str, float]]]]:
    """Every score's quantile buckets and, for probabilities, calibration bins, from one grouped
    aggregate: each row is stacked once per (score, table) it falls in."""
    entries = []
    for i, (score, is_probability) in enumerate(scores.items()):
        value = F.col(score).cast("double")
        entries.append(F.struct(F.lit(i).alias("score"), F.lit(0).alias("table"),
                                score_by_cuts(value, cuts[score]).alias("key"), value.alias("value")))
        if is_probability:
            index = F.when(value.isNotNull(), F.least(F.floor(value * bins), F.lit(bins - 1)).cast("int"))
            entries.append(F.struct(F.lit(i).alias("score"), F.lit(1).alias("table"), index.alias("key"), value.alias("value")))
    stacked = df.select(F.col(LABEL), F.inline(F.array(*entries))).where(F.col("key").isNotNull())
    rows = (
        stacked.groupBy("score", "table", "key")
        .agg(
            F.min("value").alias("low"), F.max("value").alias("high"), F.avg("value").alias("predicted"),
            F.count(F.lit(1)).alias("rows"), F.sum(F.col(LABEL).cast("long")).alias("churners"),
            F.avg(F.col(LABEL)).alias("observed"),
        )
        .collect()
    )
    tables: dict[str, tuple[list[Bucket], list[dict[str, float]]]] = {}
    for i, score in enumerate(scores):
        mine = [r for r in rows if r.score == i]
        buckets = sorted((Bucket(float(r.low), float(r.high), int(r.rows), int(r.churners)) for r in mine if r.table == 0),
                         key=lambda b: -b.high)
        calibration = [
            {"bin": int(r.key), "low": r.key / bins, "high": (r.key + 1) / bins, "rows": int(r.rows),
             "predicted": float(r.predicted), "observed": float(r.observed)}
            for r in sorted((r for r in mine if r.table == 1), key=lambda r: r.key)
        ]
        tables[score] = (buckets, calibration)
    return tables


def ranking_curve(buckets: list[Bucket]) -> list[dict[str, float]]:
    """Cumulative points from the riskiest bucket down: contacted share, recall (the gains
    curve), precision, false positive rate, F1, and the threshold (score >= it) reaching it."""
    rows = sum(b.rows for b in buckets)
    churners = sum(b.churners for b in buckets)
    stayers = rows - churners
    curve, taken, caught = [], 0, 0
    for bucket in buckets:
        taken += bucket.rows
        caught += bucket.churners
        curve.append({
            "threshold": bucket.low,
            "share": taken / rows,
            "recall": caught / churners if churners else 0.0,
            "precision": caught / taken,
            "false_positive_rate": (taken - caught) / stayers if stayers else 0.0,
            "f1": 2.0 * caught / (taken + churners) if churners else 0.0,
        })
    return curve


def top_share(buckets: list[Bucket], share: float) -> tuple[float, float]:
    """(lift, capture) when contacting the riskiest `share` of rows; the bucket that straddles
    the boundary contributes its churners pro rata."""
    rows = sum(b.rows for b in buckets)
    churners = sum(b.churners for b in buckets)
    if rows == 0 or churners == 0:
        return 0.0, 0.0
    room, caught = share * rows, 0.0
    for bucket in buckets:
        taken = min(room, bucket.rows)
        caught += bucket.churners * taken / bucket.rows
        room -= taken
        if room <= 0:
            break
    precision = caught / (share * rows)
    return precision / (churners / rows), caught / churners


def calibration_table(df: DataFrame, probability: str, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Per equal-width bin of predicted probability: rows, mean predicted, observed churn rate."""
    return _grouped_tables(df, {probability: True}, {probability: []}, bins)[probability][1]


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    rows = sum(b["rows"] for b in table)
    return sum(b["rows"] * abs(b["predicted"] - b["observed"]) for b in table) / rows if rows else 0.0


def areas_under_curves(df: DataFrame, scores: list[str]) -> dict[str, dict[str, float]]:
    """ROC AUC and PR AUC of each score against the label, all scores in one query, as Spark's
    BinaryClassificationMetrics computes them without binning (its evaluator's default bins
    the curve to about 1,000 points once a score has over 2,000 distinct values):

    - the rows (null scores left out) grouped by distinct score value, a point of each curve
      per value from the riskiest down, with the churners and stayers at or above it;
    - ROC: from (0, 0) through (false positive rate, recall) of each point, so tied rows
      count half;
    - PR: from (0, the first point's precision) through (recall, precision) of each point;
    - each area the sum of the trapezoids between consecutive points.

    A score whose rows hold one class only gets Spark's values for it: ROC 1.0 without
    stayers and 0.0 without churners, PR 1.0 and 0.0 likewise."""
    positive = (F.col(LABEL) > 0.5).cast("double")
    stacked = df.select(positive.alias("positive"), F.inline(F.array(*[
        F.struct(F.lit(i).alias("score"), F.col(score).cast("double").alias("value")) for i, score in enumerate(scores)
    ])))
    points = (stacked.where(F.col("value").isNotNull()).groupBy("score", "value")
              .agg(F.sum("positive").alias("churners"), F.sum(F.lit(1.0) - F.col("positive")).alias("stayers")))
    riskiest_first = Window.partitionBy("score").orderBy(F.col("value").desc()).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    cumulative = points.select("score", "churners", "stayers", F.sum("churners").over(riskiest_first).alias("caught"),
                               F.sum("stayers").over(riskiest_first).alias("false_alarms"))
    caught_before, false_alarms_before = F.col("caught") - F.col("churners"), F.col("false_alarms") - F.col("stayers")
    precision = F.col("caught") / (F.col("caught") + F.col("false_alarms"))
    precision_before = F.when(caught_before + false_alarms_before > 0,
                              caught_before / (caught_before + false_alarms_before)).otherwise(precision)
    sums = cumulative.groupBy("score").agg(
        F.sum("churners").alias("churners"), F.sum("stayers").alias("stayers"),
        F.sum(F.col("stayers") * (F.col("caught") + caught_before)).alias("roc"),  # 2 x churners x stayers x area
        F.sum(F.col("churners") * (precision + precision_before)).alias("pr"),  # 2 x churners x area
    ).collect()
    areas = {}
    for row in sums:
        churners, stayers = row.churners, row.stayers
        areas[scores[row.score]] = {
            "roc_auc": 0.0 if churners == 0 else 1.0 if stayers == 0 else row.roc / (2.0 * churners * stayers),
            "pr_auc": 0.0 if churners == 0 else row.pr / (2.0 * churners),
        }
    return areas


def evaluate_score(df: DataFrame, score: str, is_probability: bool) -> ScoreEvaluation:
    """Every metric of one score over the rows of `df` (which the caller should persist)."""
    return evaluate_scores(df, {score: is_probability})[score]


def evaluate_scores(df: DataFrame, scores: dict[str, bool]) -> dict[str, ScoreEvaluation]:
    """Every metric of each score (name -> whether it is a probability) over the same rows of
    `df` (which the caller should persist). The scores share their Spark jobs: one aggregate
    for the totals, one pass for the quantile cuts, one grouped aggregate for the buckets and
    calibration bins, and one query for the areas under the curves."""
    names = list(scores)
    totals = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.avg(F.col(LABEL)).alias("churn_rate"),
        *[F.count(F.col(score)).alias(f"scored_{i}") for i, score in enumerate(names)],
        *[F.avg(F.pow(F.col(score) - F.col(LABEL), 2)).alias(f"brier_{i}") for i, score in enumerate(names)],
    ).first()
    tables = _grouped_tables(df, scores, _bucket_cuts(df, names, BUCKETS, RELATIVE_ERROR))
    areas = areas_under_curves(df, names)
    evaluations = {}
    for i, (score, is_probability) in enumerate(scores.items()):
        scored = totals[f"scored_{i}"]
        if scored < totals.rows:
            log.warning("%s: %d of %d rows have no score and are left out", score, totals.rows - scored, totals.rows)
        buckets, calibration = tables[score]
        metrics: dict[str, float | None] = {
            "rows": float(scored),
            "churn_rate": float(totals.churn_rate),
            **areas.get(score, {"roc_auc": None, "pr_auc": None}),
        }
        for share in TOP_SHARES:
            lift, capture = top_share(buckets, share)
            metrics[f"lift_{round(share * 100)}"] = lift
            metrics[f"capture_{round(share * 100)}"] = capture
        metrics["brier"] = float(totals[f"brier_{i}"]) if is_probability else None
        metrics["calibration_error"] = expected_calibration_error(calibration) if is_probability else None
        evaluations[score] = ScoreEvaluation(metrics, ranking_curve(buckets), calibration if is_probability else None, buckets)
    return evaluations


def operating_threshold(curve: list[dict[str, float]], method: str, budget: float) -> dict[str, float]:
    """The curve point to act at: the first whose contacted share reaches the budget, or the
    point of best F1."""
    if method == "best_f1":
        return max(curve, key=lambda point: point["f1"])
    return next((point for point in curve if point["share"] >= budget - 1e-12), curve[-1])


def confusion_matrix(df: DataFrame, probability: str, threshold: float) -> dict[str, int]:
    """Counts at `probability >= threshold` (predicted churner) against the label."""
    predicted = F.col(probability) >= F.lit(threshold)
    actual = F.col(LABEL) == 1.0
    row = df.agg(
        F.count(F.when(predicted & actual, 1)).alias("true_positives"),
        F.count(F.when(predicted & ~actual, 1)).alias("false_positives"),
        F.count(F.when(~predicted & actual, 1)).alias("false_negatives"),
        F.count(F.when(~predicted & ~actual, 1)).alias("true_negatives"),
    ).first()
    return {key: int(value) for key, value in row.asDict().items()}
