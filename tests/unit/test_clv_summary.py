"""The (x, t_x, T, m) summary and the Spark scoring on hand-made transactions."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from segmentation.clv.bgnbd import BgNbdParams
from segmentation.clv.gamma_gamma import GammaGammaParams
from segmentation.clv.scoring import SCORE_FIELDS, ScoringSettings, with_clv_scores
from segmentation.clv.summary import bgnbd_triples, clv_summary, holdout_purchases, spend_groups
from segmentation.schema import TRANSACTIONS_SCHEMA
from tests.unit.test_features import line

END = dt.date(2025, 3, 31)


def summary_of(spark, lines, unit="day"):
    df = spark.createDataFrame(lines, TRANSACTIONS_SCHEMA)
    return {r["customer_id"]: r.asDict() for r in clv_summary(df, END, unit).collect()}


def test_purchases_are_counted_per_day_and_the_first_is_left_out_of_m(spark):
    lines = [
        line("A", "2025-03-01", 10, hour=9),
        line("A", "2025-03-01", 30, hour=18),  # same day: one purchase worth 40
        line("A", "2025-03-08", 20),
        line("A", "2025-03-15", 50, category="toys"),
        line("A", "2025-03-16", -50),  # returns are not purchases and do not change m
    ]
    a = summary_of(spark, lines)["A"]
    assert (a["x"], a["t_x"], a["T"]) == (2, 14.0, 30.0)
    assert a["m"] == pytest.approx((20 + 50) / 2)
    assert a["first_purchase_date"] == dt.date(2025, 3, 1)


def test_one_time_buyer_later_buyer_and_weeks(spark):
    lines = [
        line("ONCE", "2025-01-01", 15),
        line("LATER", "2025-04-01", 99),  # after the calibration end: not a customer yet
        line("W", "2025-01-01", 10),
        line("W", "2025-01-15", 10),
    ]
    weekly = summary_of(spark, lines, "week")
    assert set(weekly) == {"ONCE", "W"}
    assert (weekly["ONCE"]["x"], weekly["ONCE"]["t_x"], weekly["ONCE"]["m"]) == (0, 0.0, None)
    assert weekly["ONCE"]["T"] == pytest.approx(89 / 7)
    assert (weekly["W"]["x"], weekly["W"]["t_x"]) == (1, 2.0)


def test_triples_and_spend_groups_carry_customer_counts(spark):
    lines = [line(c, "2025-01-01", 10) for c in ("A", "B", "C")] + [
        line("A", "2025-01-08", 20), line("B", "2025-01-08", 20), line("C", "2025-01-08", 0),
    ]
    summary = clv_summary(spark.createDataFrame(lines, TRANSACTIONS_SCHEMA), END, "week")
    triples = bgnbd_triples(summary).toPandas()
    assert triples.to_dict("records") == [{"x": 1, "t_x": 1.0, "T": 89 / 7, "weight": 3}]
    groups = spend_groups(summary).toPandas()  # C's repeat purchase is worth 0: no spend to model
    assert groups.to_dict("records") == [{"x": 1, "m": 20.0, "weight": 2}]


def test_holdout_counts_purchase_days_after_the_calibration_end(spark):
    lines = [
        line("A", "2025-03-31", 10, hour=23),  # calibration
        line("A", "2025-04-01", 10, hour=0), line("A", "2025-04-01", 5, hour=12),
        line("A", "2025-04-20", 10), line("A", "2025-05-01", 10),  # after the holdout
    ]
    df = spark.createDataFrame(lines, TRANSACTIONS_SCHEMA)
    assert holdout_purchases(df, END, dt.date(2025, 4, 30)).collect()[0]["holdout_purchases"] == 2


def test_scores_are_finite_for_every_edge_case(spark):
    rows = [
        ("new", 0, 0.0, 0.0, None),  # seen once, today
        ("once", 0, 0.0, 50.0, None),
        ("t_x_is_T", 3, 20.0, 20.0, 30.0),
        ("frequent", 5000, 100.0, 100.0, 12.5),
        ("frequent_but_silent", 5000, 99.0, 100.0, 12.5),  # a week of silence after 50 a week: gone
        ("long_gone", 400, 10.0, 5000.0, 80.0),
    ]
    summary = spark.createDataFrame(rows, "customer_id string, x long, t_x double, T double, m double")
    settings = ScoringSettings.from_days(90, 12, 0.01, 7.0)
    for bgnbd in (BgNbdParams(0.243, 4.414, 0.793, 2.426), BgNbdParams(0.5, 3.0, 0.3, 0.4)):  # the second has a + b < 1
        scored = with_clv_scores(summary, bgnbd, GammaGammaParams(6.25, 3.74, 15.44), settings).collect()
        for row in scored:
            for field in SCORE_FIELDS:
                assert row[field] is not None and math.isfinite(row[field]), (row["customer_id"], field, row[field])
        by_id = {r["customer_id"]: r for r in scored}
        assert by_id["new"]["probability_alive"] == 1.0 and by_id["long_gone"]["probability_alive"] < 1e-6
        assert by_id["frequent_but_silent"]["probability_alive"] < 1e-6
        assert by_id["frequent"]["expected_purchases"] > by_id["t_x_is_T"]["expected_purchases"]


def test_without_a_spend_model_value_and_clv_are_null_not_nan(spark):
    summary = spark.createDataFrame([("A", 1, 2.0, 5.0, 10.0)], "customer_id string, x long, t_x double, T double, m double")
    settings = ScoringSettings.from_days(90, 12, 0.01, 7.0)
    heavy_tailed = GammaGammaParams(6.25, 0.5, 15.0)  # q < 1: no mean spend for a customer with x = 0
    scored = with_clv_scores(summary, BgNbdParams(0.243, 4.414, 0.793, 2.426), None, settings)
    row = scored.first()
    assert row["expected_average_value"] is None and row["clv"] is None and row["expected_purchases"] > 0
    zero = with_clv_scores(summary.select("customer_id", F.lit(0).alias("x"), F.lit(0.0).alias("t_x"), "T", "m"),
                           BgNbdParams(0.243, 4.414, 0.793, 2.426), heavy_tailed, settings).first()
    assert zero["expected_average_value"] is None and zero["clv"] is None  # no mean spend exists: null, not inf
