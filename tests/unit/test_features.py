"""Customer features on small hand-made transaction sets, with the expected values worked out by hand."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.features.customer import customer_features, customer_features_by_date, feature_columns, latest_transaction_date
from segmentation.schema import TRANSACTIONS_SCHEMA

AS_OF = dt.date(2025, 3, 10)
CHANNELS = ["store", "web", "app"]
_ids = itertools.count(1)


def line(customer, day, amount, *, order=None, channel="store", category="books", discount=0.0, margin=None, hour=10):
    """One clean transaction line; a negative amount is a return."""
    tid = f"T{next(_ids)}"
    ts = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour))
    margin = round(amount * 0.3, 2) if margin is None else margin
    return (
        tid, order or f"O-{tid}", customer, ts, channel, None, None, category, 1 if amount >= 0 else -1,
        float(amount), discount, margin, amount < 0, "batch", dt.datetime(2025, 12, 31),
    )


def features(spark, lines, as_of=AS_OF):
    df = spark.createDataFrame(lines, TRANSACTIONS_SCHEMA)
    return {row["customer_id"]: row.asDict() for row in customer_features(df, as_of, CHANNELS).collect()}


def test_columns_are_the_documented_contract(spark):
    df = spark.createDataFrame([line("A", "2025-03-01", 10)], TRANSACTIONS_SCHEMA)
    assert customer_features(df, AS_OF, CHANNELS).columns == feature_columns(CHANNELS)
    assert "revenue_share_web" in feature_columns(CHANNELS) and "order_share_app" in feature_columns(CHANNELS)


def test_single_purchase(spark):
    row = features(spark, [line("S", "2025-03-01", 40)])["S"]
    assert row["first_purchase_date"] == row["last_purchase_date"] == dt.date(2025, 3, 1)
    assert (row["recency_days"], row["tenure_days"]) == (9, 9)
    assert (row["frequency_days"], row["frequency_orders"]) == (1, 1)
    assert row["monetary"] == row["gross_revenue"] == row["average_order_value"] == 40.0
    assert row["mean_days_between_purchases"] is None and row["std_days_between_purchases"] is None
    assert row["recency_ratio"] is None
    assert (row["orders_30d"], row["revenue_30d"], row["orders_prior_90d"]) == (1, 40.0, 0)
    assert row["order_trend"] == 1.0  # all its orders are recent
    assert row["preferred_channel"] == "store" and row["channels_used"] == 1 and row["is_omnichannel"] is False
    assert row["revenue_share_store"] == 1.0 and row["order_share_web"] == 0.0
    assert row["margin"] == 12.0 and row["margin_rate"] == pytest.approx(0.3)
    assert row["return_rate"] == 0.0 and row["discount_share"] == 0.0


def test_several_purchases_on_the_same_day(spark):
    lines = [
        line("D", "2025-03-05", 10, order="O1", hour=9),
        line("D", "2025-03-05", 20, order="O1", hour=9, category="toys"),
        line("D", "2025-03-05", 30, order="O2", hour=17, channel="web"),
    ]
    row = features(spark, lines)["D"]
    assert (row["frequency_days"], row["frequency_orders"]) == (1, 2)
    assert row["average_order_value"] == 30.0  # 60 over two orders
    assert row["mean_days_between_purchases"] is None  # one purchase day: no rhythm yet
    assert row["revenue_share_store"] == pytest.approx(0.5) and row["revenue_share_web"] == pytest.approx(0.5)
    # equal revenue: more orders? one each; then the configured order decides
    assert row["order_share_store"] == row["order_share_web"] == 0.5
    assert row["preferred_channel"] == "store"
    assert row["is_omnichannel"] is True and row["distinct_categories"] == 2


def test_returns_only(spark):
    row = features(spark, [line("R", "2025-02-01", -15)])["R"]
    assert row["frequency_orders"] == 0 and row["frequency_days"] == 0
    assert row["monetary"] == -15.0 and row["gross_revenue"] == 0.0 and row["returned_revenue"] == 15.0
    assert row["recency_days"] is None and row["tenure_days"] is None and row["first_purchase_date"] is None
    assert row["average_order_value"] is None and row["return_rate"] is None
    assert row["preferred_channel"] is None and row["channels_used"] == 0 and row["top_category"] is None
    assert row["revenue_90d"] == -15.0 and row["orders_90d"] == 0


def test_zero_net_revenue(spark):
    lines = [line("Z", "2025-01-10", 25, order="OZ"), line("Z", "2025-01-20", -25, order="OZ")]
    row = features(spark, lines)["Z"]
    assert row["monetary"] == 0.0 and row["gross_revenue"] == 25.0 and row["returned_revenue"] == 25.0
    assert row["return_rate"] == 1.0
    assert row["margin"] == 0.0 and row["margin_rate"] is None  # no positive revenue to relate it to
    assert row["frequency_orders"] == 1 and row["recency_days"] == 59  # the return is not a purchase


def test_nulls_in_optional_columns(spark):
    lines = [
        line("N", "2025-03-01", 50, category=None, discount=None, margin=None),
        line("N", "2025-03-02", 50, category=None, discount=10.0),
    ]
    lines = [tuple(None if i == 11 else v for i, v in enumerate(row)) for row in lines]  # no gross margin at all
    row = features(spark, lines)["N"]
    assert row["margin"] is None and row["margin_rate"] is None
    assert row["discount_share"] == pytest.approx(10 / 110)
    assert row["distinct_categories"] == 0 and row["top_category"] is None
    assert row["monetary"] == 100.0


def test_rhythm_windows_and_trend(spark):
    lines = [
        line("G", "2024-09-01", 10),  # age 190: outside both trend windows, inside 365
        line("G", "2024-12-01", 10),  # age 99: the prior 90 days
        line("G", "2025-01-01", 10),  # age 68
        line("G", "2025-02-08", 10, channel="web"),  # age 30: just outside the last 30 days
        line("G", "2025-02-09", 10, channel="web"),  # age 29: inside
    ]
    row = features(spark, lines)["G"]
    assert (row["orders_30d"], row["orders_90d"], row["orders_365d"], row["orders_prior_90d"]) == (1, 3, 5, 1)
    assert (row["revenue_30d"], row["revenue_90d"], row["revenue_365d"]) == (10.0, 30.0, 50.0)
    assert row["order_trend"] == pytest.approx((3 - 1) / (3 + 1))
    gaps = [91, 31, 38, 1]
    mean = sum(gaps) / 4
    assert row["mean_days_between_purchases"] == pytest.approx(mean)
    assert row["std_days_between_purchases"] == pytest.approx((sum((g - mean) ** 2 for g in gaps) / 4) ** 0.5)
    assert row["recency_ratio"] == pytest.approx(29 / mean)
    assert row["order_share_web"] == pytest.approx(0.4) and row["preferred_channel"] == "store"


def test_top_category_by_lines_then_alphabetical(spark):
    lines = [
        line("C", "2025-03-01", 5, category="toys"),
        line("C", "2025-03-02", 500, category="art"),
        line("C", "2025-03-03", 5, category="toys"),
        line("C", "2025-03-04", -5, category="toys"),  # returns do not count as buying a category
        line("C", "2025-03-05", -5, category="toys"),
        line("T", "2025-03-01", 5, category="toys"),
        line("T", "2025-03-02", 5, category="art"),
    ]
    result = features(spark, lines)
    assert result["C"]["top_category"] == "toys" and result["C"]["distinct_categories"] == 2
    assert result["T"]["top_category"] == "art"


def test_transactions_after_as_of_change_nothing(spark):
    before = [line("A", "2025-03-01", 10), line("A", "2025-03-10", 20, hour=23), line("B", "2024-06-01", 5)]
    after = [
        line("A", "2025-03-11", 99, hour=0),  # the next day, first second
        line("B", "2025-04-01", -5),
        line("NEW", "2025-05-01", 70),  # a customer who only appears later
    ]
    only_before = spark.createDataFrame(before, TRANSACTIONS_SCHEMA)
    everything = spark.createDataFrame(before + after, TRANSACTIONS_SCHEMA)
    expected = customer_features(only_before, AS_OF, CHANNELS)
    actual = customer_features(everything, AS_OF, CHANNELS)
    assert_df_equality(actual, expected, ignore_row_order=True)
    assert actual.count() == 2


def test_one_customer_only(spark):
    result = features(spark, [line("A", "2025-03-10", 10, hour=23, channel="app")])
    assert list(result) == ["A"]
    assert result["A"]["recency_days"] == 0 and result["A"]["preferred_channel"] == "app"


def test_latest_transaction_date(spark):
    df = spark.createDataFrame([line("A", "2025-03-01", 10), line("B", "2025-04-02", 10, hour=23)], TRANSACTIONS_SCHEMA)
    assert latest_transaction_date(df) == dt.date(2025, 4, 2)
    assert latest_transaction_date(df.limit(0)) is None


def _random_lines(seed: int = 11):
    """60 customers buying and returning at random through 2024 and 2025: several lines per
    order, several orders on a day, lines at the first and last hours of a day, null
    categories, discounts and margins, and customers who only return."""
    rng = random.Random(seed)
    lines = []
    for c in range(60):
        start = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(400))
        for o in range(rng.randrange(1, 9)):
            day = (start + dt.timedelta(days=rng.randrange(500))).isoformat()
            hour = rng.choice([0, 10, 23])
            order, channel = f"O{c}-{o}-{rng.randrange(2)}", rng.choice(CHANNELS)
            for _ in range(rng.randrange(1, 4)):
                amount = round(rng.uniform(5, 200), 2) * (-1 if rng.random() < 0.12 else 1)
                lines.append(line(f"c{c}", day, amount, order=order, channel=channel, hour=hour,
                                  category=rng.choice(["art", "books", "toys", None]),
                                  discount=rng.choice([0.0, 2.5, None]), margin=rng.choice([None, 1.5])))
    lines.append(line("returns-only", "2024-11-03", -40))
    return lines


def test_several_dates_in_one_pass_equal_each_date_alone(spark):
    """`customer_features_by_date` makes the snapshots of several dates in one aggregation;
    every date's rows are exactly those `customer_features` gives for it alone, and a customer
    with no line yet on an early date has no row for it."""
    transactions = spark.createDataFrame(_random_lines(), TRANSACTIONS_SCHEMA)
    dates = [dt.date(2024, 3, 1), dt.date(2024, 10, 1), dt.date(2024, 11, 3), dt.date(2025, 1, 1), dt.date(2025, 6, 30)]
    stacked = customer_features_by_date(transactions, dates, CHANNELS)
    assert stacked.columns == feature_columns(CHANNELS)
    rows = 0
    for as_of in dates:
        alone = customer_features(transactions, as_of, CHANNELS)
        count = alone.count()
        assert count > 0
        rows += count
        assert_df_equality(stacked.where(F.col("as_of_date") == F.lit(as_of)), alone, ignore_row_order=True, ignore_nullable=True)
    assert stacked.count() == rows
