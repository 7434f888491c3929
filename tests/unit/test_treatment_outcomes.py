"""The per treatment and group aggregation behind the uplift, on hand-made rows."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from segmentation.treatments.outcomes import OUTCOME_GROUP_COLUMNS, collect_outcome_groups, outcome_groups
from segmentation.treatments.uplift import GroupOutcome

SNAPSHOT = dt.date(2025, 6, 30)
WINDOW_DAYS = 10  # the outcome window: 2025-07-01 00:00 up to, not including, 2025-07-11 00:00


def test_customers_repurchasers_orders_and_revenue_per_treatment_and_group(spark):
    tiers = spark.createDataFrame(
        [
            ("a", "win_back", "treated"),
            ("b", "win_back", "treated"),
            ("c", "win_back", "treated"),
            ("d", "win_back", "control"),
            ("e", "win_back", "control"),
            ("f", None, None),  # no treatment: not measured, though they buy
            ("g", "newsletter", "treated"),
        ],
        "customer_id string, treatment string, treatment_group string",
    )
    lines = spark.createDataFrame(
        [
            ("a", "o0", "2025-06-30 23:59:59", 500.0, False),  # on the snapshot day: before the window
            ("a", "o1", "2025-07-01 00:00:00", 30.0, False),
            ("a", "o1", "2025-07-01 00:00:00", 20.0, False),  # a second line of the same order
            ("a", "o2", "2025-07-10 23:59:59", 10.0, False),
            ("b", "r1", "2025-07-05 12:00:00", -15.0, True),  # a return only: no order
            ("c", "o3", "2025-07-11 00:00:00", 99.0, False),  # the day after the window
            ("d", "o4", "2025-07-02 09:00:00", 40.0, False),
            ("d", "r2", "2025-07-03 09:00:00", -10.0, True),
            ("f", "o5", "2025-07-02 09:00:00", 70.0, False),
            ("g", "o6", "2025-07-05 09:00:00", 100.0, False),
            ("x", "o7", "2025-07-05 09:00:00", 5.0, False),  # not in the snapshot
        ],
        "customer_id string, order_id string, ts string, net_amount double, is_return boolean",
    ).withColumn("transaction_ts", F.col("ts").cast("timestamp"))

    groups = outcome_groups(tiers, lines, SNAPSHOT, WINDOW_DAYS)
    assert groups.columns == OUTCOME_GROUP_COLUMNS
    collected = collect_outcome_groups(groups)
    assert set(collected) == {("win_back", "treated"), ("win_back", "control"), ("newsletter", "treated")}

    # win_back treated: a 2 orders / 60.0, b 0 / -15.0, c 0 / 0.0.
    # orders: mean 2/3, sample variance ((4/3)^2 + (2/3)^2 + (2/3)^2) / 2 = (16/9 + 4/9 + 4/9) / 2 = 4/3
    # revenue: mean 45 / 3 = 15, sample variance (45^2 + 30^2 + 15^2) / 2 = (2025 + 900 + 225) / 2 = 1575
    assert collected[("win_back", "treated")] == GroupOutcome(
        3, 1, pytest.approx(2 / 3), pytest.approx(4 / 3), pytest.approx(15.0), pytest.approx(1575.0)
    )
    # win_back control: d 1 order / 30.0, e nothing in the window: 0 / 0.0.
    # orders: mean 0.5, variance (0.25 + 0.25) / 1 = 0.5; revenue: mean 15, variance (225 + 225) / 1 = 450
    assert collected[("win_back", "control")] == GroupOutcome(
        2, 1, pytest.approx(0.5), pytest.approx(0.5), pytest.approx(15.0), pytest.approx(450.0)
    )
    # A group of one customer has no sample variance.
    newsletter = collected[("newsletter", "treated")]
    assert (newsletter.customers, newsletter.repurchasers, newsletter.orders_mean, newsletter.net_revenue_mean) == (1, 1, 1.0, 100.0)
    assert math.isnan(newsletter.orders_variance) and math.isnan(newsletter.net_revenue_variance)


def test_a_snapshot_without_treated_customers_gives_no_rows(spark):
    tiers = spark.createDataFrame([("a", None, None)], "customer_id string, treatment string, treatment_group string")
    lines = spark.createDataFrame(
        [("a", "o1", "2025-07-01 10:00:00", 1.0, False)],
        "customer_id string, order_id string, ts string, net_amount double, is_return boolean",
    ).withColumn("transaction_ts", F.col("ts").cast("timestamp"))
    assert collect_outcome_groups(outcome_groups(tiers, lines, SNAPSHOT, WINDOW_DAYS)) == {}
