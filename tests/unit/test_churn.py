"""Churn labels, cutoffs, evaluation metrics, risk tiers and the model's probability
correction, on small hand-made data whose expected values are worked out by hand."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.churn.evaluation import (
    Bucket,
    areas_under_curves,
    calibration_table,
    confusion_matrix,
    evaluate_score,
    evaluate_scores,
    expected_calibration_error,
    operating_threshold,
    ranking_curve,
    top_share,
)
from segmentation.churn.labels import LABEL, Cutoffs, churn_cutoffs, churn_examples, training_examples
from segmentation.churn.model import PROBABILITY, ChurnProbability, class_weights, fit_churn_model, score_churn
from segmentation.churn.risk import risk_tier
from segmentation.config import load_config
from segmentation.errors import ConfigError
from segmentation.features.customer import customer_features
from segmentation.schema import TRANSACTIONS_SCHEMA
from tests.conftest import CONF_DIR
from tests.unit.test_features import line

CHANNELS = ["store", "web", "app"]
CUTOFF = dt.date(2025, 3, 10)


def churn_settings(*overrides: str):
    return load_config("local", CONF_DIR, list(overrides)).churn


# ------------------------------------------------------------------------------ labels


def test_labels_and_eligibility_by_hand(spark):
    lines = [
        line("A", "2025-03-01", 20), line("A", "2025-03-25", 30),  # bought again in the window: stays
        line("B", "2025-02-01", 50), line("B", "2025-03-20", -50),  # only a return after C: churned
        line("C", "2024-12-01", 10), line("C", "2025-03-20", 10),  # last purchase 99 days before C: not eligible
        line("D", "2025-03-10", 15), line("D", "2025-04-09", 15),  # bought on C + 30, the window's last day
        line("E", "2025-03-05", 15), line("E", "2025-04-10", 15),  # C + 31 is after the window: churned
        line("F", "2025-03-11", 40),  # first purchase after C: not a customer at C
        line("G", "2025-01-09", 40),  # 60 days before C: just outside a 60-day look-back
        line("H", "2025-01-10", 40),  # 59 days: inside
    ]
    examples = churn_examples(spark.createDataFrame(lines, TRANSACTIONS_SCHEMA), CUTOFF, 30, 60, CHANNELS)
    labels = {r.customer_id: r[LABEL] for r in examples.collect()}
    assert labels == {"A": 0.0, "B": 1.0, "D": 0.0, "E": 1.0, "H": 1.0}
    assert {r.cutoff_date for r in examples.select("cutoff_date").collect()} == {CUTOFF}


def test_cutoffs_stacked_in_one_pass_each_read_their_own_windows(spark):
    """Several cutoffs from one call: each row's eligibility, features and label come from
    its own cutoff's windows (hours at the windows' edges), as one cutoff alone gives them."""
    early = dt.date(2025, 2, 20)  # window (02-20, 03-22]; CUTOFF's is (03-10, 04-09]; look-back 60 days
    lines = [
        line("B", "2025-02-01", 50), line("B", "2025-03-20", -50),  # eligible at both, only a return after: churned at both
        line("G", "2025-01-09", 40),  # 42 days before early: eligible, churned; 60 before CUTOFF: not eligible
        line("I", "2025-02-20", 25, hour=23), line("I", "2025-03-22", 25, hour=23),  # bought on early + 30: stays at both
        line("K", "2025-02-21", 10, hour=0),  # first purchase the day after early: only a customer at CUTOFF, churned
        line("L", "2025-02-20", 10), line("L", "2025-03-23", 10, hour=0),  # early + 31: churned at early, stays at CUTOFF
    ]
    transactions = spark.createDataFrame(lines, TRANSACTIONS_SCHEMA)
    examples = churn_examples(transactions, [CUTOFF, early], 30, 60, CHANNELS)
    rows = {(r.cutoff_date, r.customer_id): (r[LABEL], r.recency_days) for r in examples.collect()}
    assert rows == {
        (early, "B"): (1.0, 19), (early, "G"): (1.0, 42), (early, "I"): (0.0, 0), (early, "L"): (1.0, 0),
        (CUTOFF, "B"): (1.0, 37), (CUTOFF, "I"): (0.0, 18), (CUTOFF, "K"): (1.0, 17), (CUTOFF, "L"): (0.0, 18),
    }
    for cutoff in (early, CUTOFF):
        alone = churn_examples(transactions, cutoff, 30, 60, CHANNELS)
        assert_df_equality(examples.where(F.col("cutoff_date") == F.lit(cutoff)), alone, ignore_row_order=True, ignore_nullable=True)


def _history(seed: int = 7):
    """40 customers buying (and sometimes returning) at random through 2024 and 2025."""
    rng = random.Random(seed)
    lines = []
    for c in range(40):
        start = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(300))
        for _ in range(rng.randrange(1, 15)):
            day = start + dt.timedelta(days=rng.randrange(700))
            amount = round(rng.uniform(5, 200), 2) * (-1 if rng.random() < 0.1 else 1)
            lines.append(line(f"c{c}", day.isoformat(), amount, channel=rng.choice(CHANNELS), category=rng.choice("xyz")))
    return lines


def test_no_feature_of_a_training_row_uses_data_after_its_cutoff(spark):
    """Each cutoff's training rows equal the features computed from the transactions cut at
    that cutoff, although plenty happens after it (which the labels do see)."""
    transactions = spark.createDataFrame(_history(), TRANSACTIONS_SCHEMA)
    cutoffs = Cutoffs((dt.date(2024, 9, 30), dt.date(2024, 12, 29), dt.date(2025, 3, 29)), dt.date(2025, 6, 27), 90)
    examples = training_examples(transactions, cutoffs, 365, CHANNELS)
    for cutoff in cutoffs.training:
        rows = examples.where(F.col("cutoff_date") == F.lit(cutoff))
        future = transactions.where(F.to_date("transaction_ts") > F.lit(cutoff))
        assert future.count() > 50
        cut = transactions.where(F.to_date("transaction_ts") <= F.lit(cutoff))
        expected = customer_features(cut, cutoff, CHANNELS).where(F.col("recency_days") < 365)
        assert_df_equality(rows.drop("cutoff_date", LABEL), expected, ignore_row_order=True, ignore_nullable=True)
        assert 0 < rows.where(F.col(LABEL) == 0.0).count() < rows.count()  # the labels do read the future


# ------------------------------------------------------------------------------ cutoffs


def test_default_cutoffs_are_spaced_by_the_horizon_before_the_evaluation_cutoff():
    cutoffs = churn_cutoffs(dt.date(2025, 12, 31), churn_settings("churn.training_cutoffs=3"))
    assert cutoffs.evaluation == dt.date(2025, 10, 2)
    assert cutoffs.training == (dt.date(2025, 1, 5), dt.date(2025, 4, 5), dt.date(2025, 7, 4))
    assert all(cutoffs.window_end(c) <= cutoffs.evaluation for c in cutoffs.training)


def test_cutoffs_that_are_not_out_of_time_or_not_observed_fail_with_the_key():
    as_of = dt.date(2025, 12, 31)
    with pytest.raises(ConfigError, match=r"churn.evaluation_cutoff: the label window of 2025-11-01 ends on 2026-01-30"):
        churn_cutoffs(as_of, churn_settings("churn.evaluation_cutoff=2025-11-01"))
    with pytest.raises(ConfigError, match=r"churn.training_cutoffs: the label windows of 2025-08-01 end after"):
        churn_cutoffs(as_of, churn_settings("churn.training_cutoffs=[2025-05-01, 2025-08-01]"))
    with pytest.raises(ConfigError, match=r"churn.training_cutoffs: 2025-10-02 not before the evaluation cutoff"):
        churn_cutoffs(as_of, churn_settings("churn.training_cutoffs=[2025-10-02]"))
    allowed = churn_cutoffs(as_of, churn_settings("churn.training_cutoffs=[2025-08-01]", "churn.require_out_of_time=false"))
    assert allowed.training == (dt.date(2025, 8, 1),)


def test_risk_tiers_must_fall_and_end_with_a_catch_all():
    with pytest.raises(ConfigError, match="min_probability must fall"):
        churn_settings("churn.risk_tiers=[{name: a, min_probability: 0.2}, {name: b, min_probability: 0.5}, {name: c}]")
    with pytest.raises(ConfigError, match="the last takes the rest"):
        churn_settings("churn.risk_tiers=[{name: a, min_probability: 0.5}, {name: b, min_probability: 0.2}]")


# --------------------------------------------------------------------------- evaluation


def scored_rows(spark, pairs):
    return spark.createDataFrame([(f"c{i}", float(y), float(s)) for i, (s, y) in enumerate(pairs)], f"customer_id string, {LABEL} double, score double")


def test_lift_and_capture_with_ties_by_hand():
    # 10 rows, 4 churners. Riskiest bucket: 2 rows, 2 churners; then 4 tied rows with 1 churner.
    buckets = [Bucket(0.9, 0.95, 2, 2), Bucket(0.5, 0.5, 4, 1), Bucket(0.1, 0.2, 4, 1)]
    lift, capture = top_share(buckets, 0.2)
    assert (lift, capture) == (pytest.approx(2.5), pytest.approx(0.5))  # precision 1.0 / base rate 0.4
    lift, capture = top_share(buckets, 0.3)  # 2 rows + 1 of the 4 tied rows (a quarter of a churner)
    assert capture == pytest.approx(2.25 / 4) and lift == pytest.approx((2.25 / 3) / 0.4)
    curve = ranking_curve(buckets)
    assert [p["share"] for p in curve] == [0.2, 0.6, 1.0]
    assert [p["recall"] for p in curve] == [0.5, 0.75, 1.0]
    assert curve[1]["false_positive_rate"] == pytest.approx(3 / 6) and curve[1]["threshold"] == 0.5
    assert operating_threshold(curve, "budget", 0.2) is curve[0]
    assert operating_threshold(curve, "budget", 0.25) is curve[1]
    # F1: 2*2/(2+4) = 0.667, 2*3/(6+4) = 0.6, 2*4/(10+4) = 0.571
    assert operating_threshold(curve, "best_f1", 0.2) is curve[0]


def test_metrics_of_a_perfect_a_reversed_and_a_random_score(spark):
    rng = random.Random(3)
    labels = [1 if rng.random() < 0.3 else 0 for _ in range(400)]
    perfect = evaluate_score(scored_rows(spark, [(y + rng.random() * 0.5, y) for y in labels]), "score", False).metrics
    assert perfect["roc_auc"] == pytest.approx(1.0) and perfect["pr_auc"] == pytest.approx(1.0)
    rate = sum(labels) / len(labels)
    assert perfect["churn_rate"] == pytest.approx(rate)
    assert perfect["lift_10"] == pytest.approx(1 / rate) and perfect["capture_10"] == pytest.approx(40 / sum(labels))
    reversed_ = evaluate_score(scored_rows(spark, [(-y - rng.random() * 0.5, y) for y in labels]), "score", False).metrics
    assert reversed_["roc_auc"] == pytest.approx(0.0) and reversed_["lift_10"] == pytest.approx(0.0)
    assert perfect["brier"] is None and perfect["calibration_error"] is None


def test_roc_auc_matches_scikit_learn_and_ties_are_counted_half(spark):
    from sklearn.metrics import roc_auc_score

    rng = random.Random(5)
    pairs = [(round(rng.random(), 1), 1 if rng.random() < 0.4 else 0) for _ in range(300)]  # many ties
    pairs = [(s, 1 if rng.random() < 0.2 + 0.6 * s else 0) for s, _ in pairs]
    metrics = evaluate_score(scored_rows(spark, pairs), "score", True).metrics
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score([y for _, y in pairs], [s for s, _ in pairs]), abs=1e-9)


def test_areas_under_curves_are_sparks_unbinned_ones_for_every_score(spark):
    """Against Spark's own BinaryClassificationEvaluator without binning (numBins=0), score by
    score: ties, a score with nulls, a score that is constant, and rows of one class only."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    rng = random.Random(11)
    rows = []
    for i in range(500):
        y = 1.0 if rng.random() < 0.3 else 0.0
        rows.append((f"c{i}", y, round(rng.random() * 0.6 + 0.4 * y, 2), None if i % 7 == 0 else rng.random() - 0.5 * y, 0.5))
    df = spark.createDataFrame(rows, f"customer_id string, {LABEL} double, tied double, sparse double, constant double")
    scores = ["tied", "sparse", "constant"]
    areas = areas_under_curves(df, scores)
    assert set(areas) == set(scores)
    for score in scores:
        frame = df.where(F.col(score).isNotNull())
        for metric, key in (("areaUnderROC", "roc_auc"), ("areaUnderPR", "pr_auc")):
            spark_value = BinaryClassificationEvaluator(rawPredictionCol=score, labelCol=LABEL, metricName=metric, numBins=0).evaluate(frame)
            assert areas[score][key] == pytest.approx(spark_value, abs=1e-12), (score, metric)
    assert areas["constant"]["roc_auc"] == pytest.approx(0.5)
    assert 0.0 < areas["sparse"]["roc_auc"] < 0.5 < areas["tied"]["roc_auc"] < 1.0  # reversed in part; ranked in part

    for label, expected in ((0.0, {"roc_auc": 0.0, "pr_auc": 0.0}), (1.0, {"roc_auc": 1.0, "pr_auc": 1.0})):  # one class only
        frame = df.where(F.col(LABEL) == label)
        assert areas_under_curves(frame, ["tied"])["tied"] == expected
        for metric, key in (("areaUnderROC", "roc_auc"), ("areaUnderPR", "pr_auc")):
            evaluator = BinaryClassificationEvaluator(rawPredictionCol="tied", labelCol=LABEL, metricName=metric, numBins=0)
            assert evaluator.evaluate(frame) == pytest.approx(expected[key]), (label, metric)


def test_calibration_brier_and_confusion_by_hand(spark):
    rows = scored_rows(spark, [(0.05, 0), (0.05, 1), (0.95, 1), (0.95, 1)])
    table = calibration_table(rows, "score")
    assert [(b["bin"], b["rows"], b["predicted"], b["observed"]) for b in table] == [
        (0, 2, pytest.approx(0.05), 0.5), (9, 2, pytest.approx(0.95), 1.0)
    ]
    assert expected_calibration_error(table) == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)
    metrics = evaluate_score(rows, "score", True).metrics
    assert metrics["brier"] == pytest.approx((0.05**2 + 0.95**2 + 0.05**2 + 0.05**2) / 4)
    assert confusion_matrix(rows, "score", 0.5) == {
        "true_positives": 2, "false_positives": 0, "false_negatives": 1, "true_negatives": 1
    }


def test_scores_evaluated_together_equal_each_evaluated_alone(spark):
    # Three scores over the same rows, with ties, a score missing on other rows than another,
    # an integer score and scores outside [0, 1]: sharing the Spark jobs changes no number.
    rng = random.Random(7)
    rows = []
    for i in range(300):
        y = 1.0 if rng.random() < 0.3 else 0.0
        probability = None if i % 17 == 0 else min(1.0, max(0.0, 0.2 + 0.5 * y + rng.gauss(0, 0.2)))
        days = None if i % 23 == 0 else int(rng.random() * 40 + 30 * y)
        rows.append((f"c{i}", y, probability, days, round(rng.gauss(y, 1.0), 1)))
    df = spark.createDataFrame(rows, f"customer_id string, {LABEL} double, p double, days int, noisy double")
    scores = {"p": True, "days": False, "noisy": True}
    together = evaluate_scores(df, scores)
    assert list(together) == list(scores)
    for score, is_probability in scores.items():
        alone = evaluate_score(df, score, is_probability)
        assert together[score].metrics.keys() == alone.metrics.keys()
        for key, value in alone.metrics.items():
            assert together[score].metrics[key] == (value if value is None else pytest.approx(value, rel=1e-12)), key
        assert together[score].curve == alone.curve
        assert together[score].calibration == ([pytest.approx(b, rel=1e-12) for b in alone.calibration] if is_probability else None)
    assert together["p"].metrics["rows"] == 300 - 18 and together["days"].metrics["rows"] == 300 - 14
    assert [b["bin"] for b in together["noisy"].calibration][0] < 0  # scores below 0 keep their own bins


def test_risk_tiers_by_cut_off(spark):
    tiers = churn_settings().risk_tiers  # critical >= 0.75, high >= 0.5, medium >= 0.25, low
    df = spark.createDataFrame([(0.8,), (0.75,), (0.5,), (0.3,), (0.1,), (None,)], "p double")
    got = [r.tier for r in df.select(risk_tier(F.col("p"), tiers).alias("tier")).collect()]
    assert got == ["critical", "critical", "high", "medium", "low", None]


def test_score_totals_by_hand(spark):
    from segmentation.stages.churn import _score_totals

    tiers = churn_settings().risk_tiers
    written = spark.createDataFrame(
        [(0.8, "critical"), (0.9, "critical"), (0.3, "medium"), (None, None)], "churn_probability double, churn_risk_tier string")
    counts, scored, mean = _score_totals(written, tiers)
    assert counts == {"critical": 2, "high": 0, "medium": 1, "low": 0} and list(counts) == [t.name for t in tiers]
    assert scored == 4 and mean == pytest.approx((0.8 + 0.9 + 0.3) / 3)  # the mean of the probabilities there are
    assert _score_totals(written.limit(0), tiers) == ({"critical": 0, "high": 0, "medium": 0, "low": 0}, 0, 0.0)


# -------------------------------------------------------------------------------- model


def test_class_weights_balance_the_classes():
    weights = class_weights(100, 20, "balanced")
    assert (weights.churners, weights.stayers) == (2.5, 0.625)  # 20 * 2.5 = 80 * 0.625 = 50
    assert weights.odds_factor == 0.25 and weights.churn_rate == 0.2
    assert class_weights(100, 20, "none").odds_factor == 1.0
    with pytest.raises(ValueError, match="both classes"):
        class_weights(10, 0, "balanced")


def test_the_probability_stage_corrects_the_odds(spark):
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame([(Vectors.dense([0.5, 0.5]),), (Vectors.dense([0.2, 0.8]),)], ["probability"])
    out = [r[PROBABILITY] for r in ChurnProbability(oddsFactor=0.25).transform(df).collect()]
    assert out == [pytest.approx(0.2), pytest.approx(0.8 * 0.25 / (0.8 * 0.25 + 0.2))]


def _logistic_rows(spark, n=4000, seed=11):
    """Churn with a known probability 1 / (1 + exp(-(x - 2))): about 20% churners."""
    import math

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        x = rng.gauss(0, 1.5)
        p = 1 / (1 + math.exp(-(x - 2)))
        rows.append((f"c{i}", x, rng.random(), 1.0 if rng.random() < p else 0.0))
    return spark.createDataFrame(rows, f"customer_id string, x double, noise double, {LABEL} double")


@pytest.mark.parametrize("model", ["logistic_regression", "gbt"])
def test_balanced_weights_keep_probabilities_calibrated(spark, tmp_path, model):
    """Trained with balanced weights, the corrected probability still averages the churn rate;
    the saved pipeline reloads and scores the same."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array

    rows = _logistic_rows(spark).persist()
    settings = churn_settings(f"churn.model={model}", "churn.features=[x, noise]", "churn.gbt={maxIter: 15, maxDepth: 3}")
    churners = int(rows.agg(F.sum(LABEL)).first()[0])
    weights = class_weights(rows.count(), churners, "balanced")
    fitted = fit_churn_model(rows, settings, weights)
    scored = score_churn(fitted.model, rows)
    mean = scored.agg(F.avg(PROBABILITY)).first()[0]
    assert mean == pytest.approx(weights.churn_rate, abs=0.03)
    # Without the correction the weighted model's mean would sit near 0.5, far from the rate.
    raw = fitted.model.transform(rows).select(F.avg(vector_to_array("probability")[1])).first()[0]
    assert raw > weights.churn_rate + 0.15
    assert expected_calibration_error(calibration_table(scored, PROBABILITY)) < 0.05
    fitted.model.write().overwrite().save(str(tmp_path / "m"))
    again = score_churn(PipelineModel.load(str(tmp_path / "m")), rows)
    assert_df_equality(again, scored, ignore_row_order=True)
    rows.unpersist()


def test_an_unknown_spark_parameter_names_the_key(spark):
    settings = churn_settings("churn.gbt={maxDepht: 3}")
    with pytest.raises(ConfigError, match=r"churn.gbt: maxDepht not parameters of Spark's GBTClassifier"):
        fit_churn_model(_logistic_rows(spark, 50), settings, class_weights(10, 5, "balanced"))
