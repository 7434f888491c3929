"""Scores from quantile cut points, computed at scale with Spark's approximate quantiles.

A score is 1 + the number of cut points strictly below the value. Equal values therefore
always get equal scores, and a value shared by many customers gets the lowest score its
block spans (as `rank(method="min")` would): when 60% of customers bought once, all of them
score 1 on frequency and the next value up scores 4. The driver only sees the cut points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def quantile_cuts(
    df: DataFrame,
    columns: Mapping[str, tuple[Column, Sequence[float]]],
    relative_error: float,
) -> dict[str, list[float]]:
    """Cut points per name: `columns` maps a name to (value column, probabilities).

    All columns are summarised in one pass over `df`; nulls are ignored, and a column with
    no values gets no cuts (every row then scores 1).
    """
    if not columns:
        return {}
    probabilities = sorted({p for _, probs in columns.values() for p in probs})
    names = list(columns)
    values = df.select(*[column.cast("double").alias(name) for name, (column, _) in columns.items()])
    summaries = values.approxQuantile(names, probabilities, relative_error)
    cuts = {}
    for name, summary in zip(names, summaries):
        by_probability = dict(zip(probabilities, summary))
        cuts[name] = [by_probability[p] for p in columns[name][1]] if summary else []
    return cuts


def score_by_cuts(value: Column, cuts: Sequence[float]) -> Column:
    """1 + the number of cut points strictly below `value` (null stays null)."""
    # One flat expression whatever the number of cuts: a sum of one term per cut nests as
    # deep as there are cuts, beyond what a Spark Connect plan may (protobuf's depth limit).
    if not cuts:
        return F.when(value.isNotNull(), F.lit(1))
    below = F.filter(F.array(*[F.lit(float(cut)) for cut in cuts]), lambda cut: value > cut)
    return F.when(value.isNotNull(), F.lit(1) + F.size(below))


def even_probabilities(buckets: int) -> list[float]:
    """Cut probabilities splitting into `buckets` equal shares: 5 -> [0.2, 0.4, 0.6, 0.8]."""
    return [round(i / buckets, 10) for i in range(1, buckets)]
