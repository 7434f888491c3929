"""RFM scores, segment map, value pyramid, lifecycle and business rules on hand-made feature rows."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from pyspark.sql import functions as F

from segmentation.config import load_config
from segmentation.errors import ConfigError
from segmentation.features.quantiles import even_probabilities, quantile_cuts, score_by_cuts
from segmentation.features.rules import UNMATCHED, Rule, compile_rules, first_match, with_first_match
from segmentation.features.tiers import (
    TierCuts,
    segment_rules,
    tier_counts,
    tier_cuts,
    value_pyramid_summary,
    value_tier_probabilities,
    with_rule_tiers,
)
from tests.conftest import CONF_DIR

EXACT = "features.quantile_relative_error=0"
AS_OF = dt.date(2025, 6, 30)


def settings(*overrides):
    return load_config("local", CONF_DIR, [EXACT, *overrides]).features


def frame(spark, rows):
    """Feature rows from (customer, recency, frequency, monetary, trailing revenue); the
    other columns the default rules read are derived or left empty."""
    df = spark.createDataFrame(
        rows, "customer_id string, recency_days int, frequency_orders int, monetary double, revenue_365d double"
    )
    return df.select(
        "*",
        (F.col("recency_days") + 100).alias("tenure_days"),
        F.date_sub(F.lit(AS_OF), F.col("recency_days")).alias("last_purchase_date"),
        F.lit(None).cast("double").alias("recency_ratio"),
        F.lit(None).cast("double").alias("order_trend"),
        F.col("frequency_orders").alias("orders_365d"),
        F.try_divide("monetary", "frequency_orders").alias("average_order_value"),
    )


def scores_of(df, cuts, column):
    return {row["v"]: row["s"] for row in df.select(F.col(column).alias("v"), score_by_cuts(F.col(column), cuts).alias("s")).collect()}


def test_equal_values_get_equal_scores_and_the_lowest_score_of_their_block(spark):
    # 6 of 10 customers bought once: all six score 1; the next value up scores 4 (rank "min").
    df = spark.createDataFrame([(v,) for v in [1, 1, 1, 1, 1, 1, 2, 2, 3, 4]], "f int")
    cuts = quantile_cuts(df, {"f": (F.col("f"), even_probabilities(5))}, 0.0)["f"]
    assert cuts == [1.0, 1.0, 1.0, 2.0]
    assert scores_of(df, cuts, "f") == {1: 1, 2: 4, 3: 5, 4: 5}


def test_recency_is_inverted_and_distinct_values_spread_over_quintiles(spark):
    df = frame(spark, [(f"C{i}", r, 1, 10.0, 1.0) for i, r in enumerate([0, 10, 20, 30, 40, 50, 60, 70, 80, 90])])
    config = settings()
    scored = with_rule_tiers(df, tier_cuts(df, config), config)
    by_recency = {row["recency_days"]: row["r_score"] for row in scored.collect()}
    assert by_recency == {0: 5, 10: 5, 20: 4, 30: 4, 40: 3, 50: 3, 60: 2, 70: 2, 80: 1, 90: 1}


def test_missing_recency_scores_one(spark):
    df = frame(spark, [("A", None, 0, -5.0, -5.0), ("B", 3, 2, 50.0, 50.0), ("C", 9, 1, 20.0, 20.0)])
    config = settings()
    rows = {r["customer_id"]: r for r in with_rule_tiers(df, tier_cuts(df, config), config).collect()}
    assert (rows["A"]["r_score"], rows["A"]["f_score"], rows["A"]["m_score"]) == (1, 1, 1)
    assert rows["A"]["rfm_cell"] == "111" and rows["A"]["rfm_segment"] == "Lost"
    assert rows["A"]["lifecycle_stage"] == "churned"  # never bought (returns only)


def test_approximate_cuts_stay_within_the_configured_error(spark):
    df = spark.range(0, 20_000).select(F.col("id").cast("double").alias("v"))
    cuts = quantile_cuts(df, {"v": (F.col("v"), [0.2, 0.8])}, 0.01)["v"]
    assert cuts[0] == pytest.approx(4_000, abs=0.01 * 20_000)
    assert cuts[1] == pytest.approx(16_000, abs=0.01 * 20_000)


def test_no_values_means_no_cuts(spark):
    df = spark.createDataFrame([(None,), (None,)], "v double")
    assert quantile_cuts(df, {"v": (F.col("v"), [0.5])}, 0.0) == {"v": []}


def test_default_segment_map_covers_every_score_combination(spark):
    combos = spark.createDataFrame(list(itertools.product(range(1, 6), repeat=3)), "r_score int, f_score int, m_score int")
    segmented = with_first_match(combos, segment_rules(settings().rfm), "segment", "features.rfm.segments")
    assert segmented.count() == 125
    assert segmented.where(F.col("segment") == UNMATCHED).count() == 0
    named = {(r["r_score"], r["f_score"], r["m_score"]): r["segment"] for r in segmented.collect()}
    assert named[(5, 5, 5)] == "Champions" and named[(5, 5, 1)] == "Loyal"  # first match wins
    assert named[(5, 1, 3)] == "New" and named[(2, 5, 5)] == "Can't Lose Them" and named[(1, 1, 1)] == "Lost"
    assert named[(2, 1, 3)] == "Hibernating" and named[(1, 4, 2)] == "At Risk"


def test_a_custom_map_that_misses_combinations_counts_them_as_other(spark):
    custom = settings("features.rfm.segments=[{name: Best, r: 5, f: 5, m: any}]").rfm
    combos = spark.createDataFrame([(5, 5, 1), (4, 5, 5)], "r_score int, f_score int, m_score int")
    segmented = {r["r_score"]: r["segment"] for r in with_first_match(combos, segment_rules(custom), "segment", "map").collect()}
    assert segmented == {5: "Best", 4: UNMATCHED}


def test_value_pyramid_tiers_and_pareto_summary(spark):
    df = frame(spark, [(f"C{v}", 1, 1, float(v), float(v)) for v in range(1, 101)])
    config = settings()
    assert value_tier_probabilities(config.value_pyramid) == [0.5, 0.8, 0.95]
    tiered = with_rule_tiers(df, tier_cuts(df, config), config)
    tier_of = {row["revenue_365d"]: row["value_tier"] for row in tiered.collect()}
    assert [tier_of[v] for v in (100, 96, 95, 81, 80, 51, 50, 1)] == [
        "diamond", "diamond", "gold", "gold", "silver", "silver", "bronze", "bronze",
    ]
    pareto = [row.asDict() for row in value_pyramid_summary(tiered, config.value_pyramid).collect()]
    assert [r["value_tier"] for r in pareto] == ["diamond", "gold", "silver", "bronze"]
    assert [r["customers"] for r in pareto] == [5, 15, 30, 50]
    total = sum(range(1, 101))
    assert pareto[0]["revenue"] == sum(range(96, 101))
    assert pareto[0]["revenue_share"] == pytest.approx(sum(range(96, 101)) / total)
    assert pareto[1]["cumulative_customer_share"] == pytest.approx(0.20)
    assert pareto[1]["cumulative_revenue_share"] == pytest.approx(sum(range(81, 101)) / total)
    assert pareto[-1]["cumulative_revenue_share"] == pytest.approx(1.0)


def test_ties_and_missing_values_in_the_value_rank(spark):
    # Half the customers spent nothing in the last year: all of them are bottom tier, and a
    # tier nobody reaches is still listed, with zeros.
    rows = [(f"Z{i}", 400, 1, 5.0, 0.0) for i in range(10)] + [(f"P{i}", 5, 3, 50.0, 50.0) for i in range(10)]
    df = frame(spark, rows + [("N", 5, 1, 5.0, None)])
    config = settings()
    tiered = with_rule_tiers(df, tier_cuts(df, config), config)
    tiers = {row["customer_id"]: row["value_tier"] for row in tiered.collect()}
    assert {tiers[f"Z{i}"] for i in range(10)} == {"bronze"} and tiers["N"] == "bronze"
    assert {tiers[f"P{i}"] for i in range(10)} == {"silver"}  # 50 is above the median cut (0) only
    pareto = {r["value_tier"]: r for r in value_pyramid_summary(tiered, config.value_pyramid).collect()}
    assert pareto["diamond"]["customers"] == 0 and pareto["diamond"]["revenue_share"] == 0.0
    assert pareto["silver"]["revenue_share"] == 1.0


def test_configured_tier_names_and_cut_offs(spark):
    config = settings("features.value_pyramid.tiers=[{name: vip, share: 0.1}, {name: rest}]")
    df = frame(spark, [(f"C{v}", 1, 1, 1.0, float(v)) for v in range(1, 21)])
    tiered = with_rule_tiers(df, tier_cuts(df, config), config)
    counts = {r["value_tier"]: r["customers"] for r in value_pyramid_summary(tiered, config.value_pyramid).collect()}
    assert counts == {"vip": 2, "rest": 18}


def test_lifecycle_defaults(spark):
    schema = (
        "customer_id string, recency_days int, tenure_days int, frequency_orders int, monetary double, "
        "revenue_365d double, recency_ratio double, order_trend double, last_purchase_date date"
    )
    day = dt.date(2025, 1, 1)
    rows = [
        ("churned", 400, 900, 9, 90.0, 0.0, 8.0, -1.0, day),
        ("new", 10, 30, 1, 10.0, 10.0, None, 1.0, day),
        ("lapsed", 200, 700, 6, 60.0, 10.0, 2.0, -1.0, day),
        ("overdue", 90, 700, 12, 60.0, 10.0, 4.5, 0.0, day),  # three months is 4.5 of its own gaps
        ("declining", 40, 700, 12, 60.0, 10.0, 1.0, -0.6, day),
        ("developing", 20, 200, 3, 60.0, 10.0, 1.0, 0.0, day),
        ("established", 20, 800, 20, 60.0, 10.0, 1.0, 0.2, day),
    ]
    df = spark.createDataFrame(rows, schema).select(
        "*", F.col("frequency_orders").alias("orders_365d"), F.lit(50.0).alias("average_order_value")
    )
    config = settings()
    stage = {r["customer_id"]: r["lifecycle_stage"] for r in with_rule_tiers(df, TierCuts(), config).collect()}
    assert stage == {
        "churned": "churned", "new": "new", "lapsed": "lapsed", "overdue": "lapsed",
        "declining": "declining", "developing": "developing", "established": "established",
    }


def test_business_rules_from_configuration(spark):
    df = spark.createDataFrame(
        [("hv", 5, 400, 12, 600.0), ("pot", 60, 400, 4, 80.0), ("dormant", 200, 900, 1, 50.0),
         ("new", 2, 2, 1, 80.0), ("none", 60, 400, 8, 80.0)],
        "customer_id string, recency_days int, tenure_days int, orders_365d int, average_order_value double",
    )
    df = df.select("*", F.col("orders_365d").alias("frequency_orders"))
    rules = [Rule(r.name, r.when) for r in settings().business_rules]
    tiers = {r["customer_id"]: r["tier"] for r in with_first_match(df, rules, "tier", "features.business_rules").collect()}
    assert tiers == {"hv": "high_value", "pot": "potential", "dormant": "dormant", "new": "new", "none": UNMATCHED}


def test_first_match_order_and_null_conditions(spark):
    df = spark.createDataFrame([(1, None), (5, 2)], "a int, b int")
    rules = [Rule("big_b", "b > 1"), Rule("big_a", "a > 3"), Rule("any", "a > 0")]
    matched = [r["t"] for r in df.select(first_match(compile_rules(df, rules, "t")).alias("t")).orderBy("a").collect()]
    assert matched == ["any", "big_b"]  # a null condition is false, not a match or an error


@pytest.mark.parametrize(
    "condition, message",
    [
        ("recency_days < > 30", r"features.business_rules rule 'broken' \(recency_days < > 30\): does not parse: .*PARSE_SYNTAX_ERROR"),
        ("recncy_days < 30", r"features.business_rules rule 'broken' \(recncy_days < 30\): .*`recncy_days` cannot be resolved. Did you mean .*`recency_days`"),
        ("monetary * 2", r"features.business_rules rule 'broken' \(monetary \* 2\): is double, not a true/false condition"),
    ],
)
def test_a_bad_rule_fails_before_any_job_with_its_name_and_reason(spark, condition, message):
    config = settings(f"features.business_rules=[{{name: ok, when: 'monetary > 0'}}, {{name: broken, when: '{condition}'}}]")
    df = frame(spark, [("A", 1, 1, 1.0, 1.0)])
    jobs_before = spark.sparkContext.statusTracker().getJobIdsForGroup()
    with pytest.raises(ConfigError, match=message):
        with_rule_tiers(df, TierCuts(), config)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup() == jobs_before


def test_lifecycle_rules_may_use_the_scores_and_business_rules_the_stage(spark):
    config = settings(
        "features.lifecycle=[{name: top, when: \"value_tier = 'diamond' AND r_score >= 4\"}, {name: rest, when: 'true'}]",
        "features.business_rules=[{name: keep, when: \"lifecycle_stage = 'top'\"}]",
    )
    df = frame(spark, [(f"C{v}", 100 - v, 1, float(v), float(v)) for v in range(1, 101)])
    tiered = with_rule_tiers(df, tier_cuts(df, config), config)
    counts = {(r["scheme"], r["tier"]): r["customers"] for r in tier_counts(tiered).collect()}
    assert counts[("lifecycle_stage", "top")] == 5 and counts[("business_tier", "keep")] == 5
    assert counts[("value_tier", "diamond")] == 5


def test_score_columns_must_be_numeric_feature_columns(spark):
    df = frame(spark, [("A", 1, 1, 1.0, 1.0)])
    with pytest.raises(ConfigError, match=r"features.value_pyramid.rank_by: predicted_clv not numeric columns of customer_features"):
        with_rule_tiers(df, TierCuts(), settings("features.value_pyramid.rank_by=predicted_clv"))
