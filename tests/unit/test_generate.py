import datetime as dt

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from segmentation.generate import generate_customers, generate_transactions
from segmentation.quality.validation import conform_source, validate_transactions
from segmentation.schema import RAW_SCHEMA
from tests.conftest import CONF_DIR, base_section, columns
from segmentation.config import load_config

RULES = load_config("local", CONF_DIR).ingest
AFTER_END = dt.datetime(2026, 1, 2)


def feed(spark, **settings):
    config = base_section("generate", **{"customers": 1500, "seed": 7, **settings})
    return generate_transactions(generate_customers(spark, config), config)


@pytest.fixture(scope="module")
def raw(spark):
    return feed(spark).cache()


@pytest.fixture(scope="module")
def clean_feed(spark):
    return feed(spark, defect_share=0.0).cache()


def test_raw_feed_is_text_in_the_landing_schema(raw):
    assert columns(raw.schema) == columns(RAW_SCHEMA)


def test_same_seed_same_rows_whatever_the_partitioning(spark, raw):
    again = feed(spark, partitions=5)
    assert again.count() == raw.count()
    assert again.exceptAll(raw).count() == 0
    assert feed(spark, seed=8).exceptAll(raw).count() > 0


def test_clean_feed_passes_every_rule(clean_feed):
    validated = validate_transactions(conform_source(clean_feed, "gen")[0], RULES, AFTER_END, None)
    assert validated.where(F.size("reasons") > 0).count() == 0


def test_defect_share_is_respected(raw):
    validated = validate_transactions(conform_source(raw, "gen")[0], RULES, AFTER_END, None)
    rejected = validated.where(F.size("reasons") > 0).count() / raw.count()
    assert 0.006 < rejected < 0.015  # configured 1%
    rules = {r.rule for r in validated.select(F.explode("reasons").alias("rule")).distinct().collect()}
    assert {"duplicate_in_batch", "missing:customer_id", "bad_type:net_amount", "bad_type:transaction_ts",
            "amount_out_of_range", "timestamp_in_future", "unknown_channel", "return_sign_mismatch"} <= rules


def test_volume_returns_and_window(clean_feed):
    typed = clean_feed.select(
        "customer_id", F.col("net_amount").cast("double").alias("amount"), F.col("quantity").cast("int").alias("qty"),
        (F.col("is_return") == "true").alias("ret"), F.col("transaction_ts").cast("timestamp").alias("ts"),
    )
    rows, customers = typed.count(), typed.select("customer_id").distinct().count()
    assert customers == 1500  # every customer buys at least once
    assert 12 <= rows / customers <= 20
    returns = typed.where("ret")
    assert 0.02 < returns.count() / rows < 0.1
    assert returns.where((F.col("amount") > 0) | (F.col("qty") > 0)).count() == 0
    bounds = typed.agg(F.min("ts"), F.max("ts")).first()
    assert bounds[0] >= dt.datetime(2023, 1, 1) and bounds[1] < dt.datetime(2026, 1, 1)


def test_value_is_concentrated_in_a_small_top_tier(clean_feed):
    revenue = clean_feed.groupBy("customer_id").agg(F.sum(F.col("net_amount").cast("double")).alias("revenue"))
    ranked = revenue.select("revenue", F.percent_rank().over(Window.orderBy(F.desc("revenue"))).alias("rank"))
    total = revenue.agg(F.sum("revenue")).first()[0]
    top_15 = ranked.where(F.col("rank") < 0.15).agg(F.sum("revenue")).first()[0] / total
    assert 0.55 < top_15 < 0.9


def test_customers_prefer_a_channel_yet_some_are_omnichannel(clean_feed):
    per_channel = clean_feed.where("is_return = 'false'").groupBy("customer_id", "channel").agg(F.countDistinct("order_id").alias("orders"))
    per_customer = per_channel.groupBy("customer_id").agg(
        (F.max("orders") / F.sum("orders")).alias("top_share"), F.count("*").alias("channels"), F.sum("orders").alias("orders")
    ).where(F.col("orders") >= 5)
    stats = per_customer.agg(F.avg("top_share"), F.avg((F.col("channels") > 1).cast("double"))).first()
    assert stats[0] > 0.6
    assert 0.2 < stats[1] < 0.95


def test_seasonal_peak_in_december(clean_feed):
    months = {r.m: r["count"] for r in clean_feed.groupBy(F.month(F.col("transaction_ts").cast("timestamp")).alias("m")).count().collect()}
    assert months[12] > 1.4 * months[2]


def test_dropout_log_odds_shift_dropout_for_deal_seekers_and_returners(spark):
    """generate.dropout_log_odds is the planted effect: within an archetype, the gap in the
    log-odds of dropout between discount seekers and the others, and its slope on the return
    rate, move by exactly the configured amounts over the same Beta draws."""

    def effects(discount_seeker, return_rate):
        config = base_section(
            "generate", customers=1500, seed=7, dropout_log_odds={"discount_seeker": discount_seeker, "return_rate": return_rate}
        )
        p = F.col("dropout_probability")
        logit = F.log(p / (1.0 - p))
        row = generate_customers(spark, config).where("archetype = 'occasional'").agg(
            (F.avg(F.when(F.col("discount_seeker"), logit)) - F.avg(F.when(~F.col("discount_seeker"), logit))).alias("gap"),
            (F.covar_samp("return_rate", logit) / F.var_samp("return_rate")).alias("slope"),
        ).first()
        return row.gap, row.slope

    # One effect at a time: each moves its own statistic (the other's is confounded by chance).
    none, seekers, returners = effects(0.0, 0.0), effects(3.0, 0.0), effects(0.0, 40.0)
    assert abs(none[0]) < 0.3  # without the effect, the Beta draw ignores the customer's habits
    assert seekers[0] - none[0] == pytest.approx(3.0, abs=1e-6)
    assert returners[1] - none[1] == pytest.approx(40.0, abs=1e-4)
