"""The calibrated baseline that scores customers when no churn model beats it, and the
training cutoffs dropped for want of history."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from segmentation.churn.baseline import (
    BaselineScorer, Step, calibrated_brier, calibrated_probability, calibration_steps, step_probability,
)
from segmentation.churn.evaluation import Bucket
from segmentation.churn.labels import Cutoffs, cutoffs_with_history
from segmentation.report import churn_sources_sentence

# Riskiest first, as evaluate_scores buckets them; the 20-40 bucket churns less than the 0-20 one.
BUCKETS = [
    Bucket(300.0, 360.0, rows=10, churners=9),
    Bucket(100.0, 290.0, rows=20, churners=10),
    Bucket(41.0, 99.0, rows=10, churners=1),
    Bucket(20.0, 40.0, rows=10, churners=1),
    Bucket(0.0, 19.0, rows=10, churners=3),
]


def test_rates_out_of_order_are_pooled_into_a_monotone_step_function():
    steps = calibration_steps(BUCKETS)
    # 0-19 (3/10) is above 20-40 (1/10) and 41-99 (1/10): the three pool into 5/30.
    assert steps == [Step(0.0, 5 / 30, 30, 5), Step(100.0, 0.5, 20, 10), Step(300.0, 0.9, 10, 9)]
    assert [s.probability for s in steps] == sorted(s.probability for s in steps)
    assert sum(s.rows for s in steps) == 60 and sum(s.churners for s in steps) == 24


def test_step_probability_and_brier_by_hand():
    steps = calibration_steps(BUCKETS)
    assert step_probability(steps, -5.0) == pytest.approx(5 / 30)  # below every step: the lowest
    assert step_probability(steps, 99.5) == pytest.approx(5 / 30)
    assert step_probability(steps, 100.0) == 0.5
    assert step_probability(steps, 1000.0) == 0.9
    # Each step's rows at its rate p contribute rows * p * (1 - p).
    expected = (30 * (5 / 30) * (25 / 30) + 20 * 0.25 + 10 * 0.09) / 60
    assert calibrated_brier(steps) == pytest.approx(expected)
    # ... which is the Brier score of the rows themselves.
    rows = [(p, 1.0) for s in steps for p in [s.probability] * s.churners] + [
        (p, 0.0) for s in steps for p in [s.probability] * (s.rows - s.churners)]
    assert calibrated_brier(steps) == pytest.approx(sum((p - y) ** 2 for p, y in rows) / len(rows))


def test_one_step_and_the_column_agree_with_the_function(spark):
    steps = calibration_steps(BUCKETS)
    scores = [None, -5.0, 0.0, 99.5, 100.0, 150.0, 300.0, 1000.0]
    df = spark.createDataFrame([(s,) for s in scores], "score double")
    got = [r.p for r in df.select(calibrated_probability(F.col("score"), steps).alias("p")).collect()]
    assert got[0] is None
    assert got[1:] == pytest.approx([step_probability(steps, s) for s in scores[1:]])
    single = calibration_steps([Bucket(1.0, 2.0, 4, 1)])
    assert [r.p for r in df.select(calibrated_probability(F.col("score"), single).alias("p")).collect()] == [None] + [0.25] * 7


def test_the_scorer_round_trips_through_its_json():
    scorer = BaselineScorer("recency rule", "recency_score", calibration_steps(BUCKETS), "2025-10-02", 90, "pr_auc",
                            {"recency rule": 0.4, "1 - P(alive)": 0.3})
    assert BaselineScorer.from_dict(scorer.as_dict()) == scorer
    assert scorer.source == "baseline:recency rule"


def test_cutoffs_whose_lookback_starts_before_the_data_are_dropped():
    cutoffs = Cutoffs((dt.date(2024, 1, 1), dt.date(2024, 4, 1), dt.date(2024, 7, 1)), dt.date(2024, 10, 1), 90)
    kept, dropped = cutoffs_with_history(cutoffs, dt.date(2023, 3, 1), lookback_days=365)
    assert dropped == [dt.date(2024, 1, 1)]  # its look-back starts on 2023-01-01
    assert kept == Cutoffs((dt.date(2024, 4, 1), dt.date(2024, 7, 1)), dt.date(2024, 10, 1), 90)
    # A look-back starting exactly on the first day keeps the cutoff.
    assert cutoffs_with_history(cutoffs, dt.date(2023, 1, 1), 365) == (cutoffs, [])
    # None may be left: the sufficiency check then says how much history is needed.
    assert cutoffs_with_history(cutoffs, dt.date(2024, 1, 1), 365) == (Cutoffs((), dt.date(2024, 10, 1), 90), list(cutoffs.training))


def test_the_report_says_what_scored_the_customers():
    assert churn_sources_sentence(["model:3"]) == "Churn scores come from model version 3."
    assert churn_sources_sentence(["baseline:recency rule"]) == (
        "No churn model beat every baseline: churn scores come from the recency rule baseline, "
        "turned into a probability on the evaluation rows."
    )
    assert churn_sources_sentence([]) == "No customer of this snapshot has a churn score."
