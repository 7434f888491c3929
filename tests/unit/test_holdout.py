"""Holdout groups on hand-made tier rows: stable across snapshots, the configured share,
independent of the value tier, and reproducible outside Spark."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from segmentation.config import load_config
from segmentation.errors import ConfigError
from segmentation.treatments.holdout import holdout_draw, holdout_shares, treatment_group, with_treatment_group
from tests.conftest import CONF_DIR

CUSTOMERS = 10_000
# The control share of n customers drawn independently with probability p has standard
# error sqrt(p (1 - p) / n): 0.003 for p = 0.1 and n = 10,000. Four standard errors leave a
# chance of about 6 in 100,000 that a correct assignment fails.
STANDARD_ERRORS = 4


def tolerance(share: float, customers: int) -> float:
    return STANDARD_ERRORS * math.sqrt(share * (1 - share) / customers)


def tiers(*overrides: str):
    return load_config("local", CONF_DIR, list(overrides)).tiers


def snapshot(spark, as_of: str, shift: int = 0):
    """10,000 customers, each with a value tier by their number (5% diamond, 15% gold, 30%
    silver, the rest bronze) and a treatment; `shift` moves every customer to another tier
    and treatment, as a later snapshot would."""
    rows = spark.range(CUSTOMERS).select(
        F.format_string("c%05d", "id").alias("customer_id"),
        F.to_date(F.lit(as_of)).alias("as_of_date"),
        ((F.col("id") + shift) % CUSTOMERS).alias("rank"),
    )
    value_tier = (
        F.when(F.col("rank") < 500, "diamond").when(F.col("rank") < 2000, "gold").when(F.col("rank") < 5000, "silver").otherwise("bronze")
    )
    treatment = F.when(F.col("rank") % 2 == 0, "win_back").otherwise("newsletter")
    return rows.select("customer_id", "as_of_date", value_tier.alias("value_tier"), treatment.alias("treatment"))


def test_spark_and_python_draw_the_same_number(spark):
    ids = ["c00001", "4f2a9c", "", "ü-12"]
    df = spark.createDataFrame([(i,) for i in ids], "customer_id string")
    draws = df.select("customer_id", treatment_group("customer_id", F.lit("win_back"), 0.5, 7).alias("group")).collect()
    for row in draws:
        expected = "control" if holdout_draw(7, "win_back", row["customer_id"]) < 0.5 else "treated"
        assert row["group"] == expected
    assert len({holdout_draw(7, "win_back", i) for i in ids}) == len(ids)
    assert all(0.0 <= holdout_draw(seed, "t", "c") < 1.0 for seed in range(50))


def test_a_customer_keeps_their_group_for_a_treatment_across_snapshots(spark):
    settings = tiers()
    first = snapshot(spark, "2025-03-31").transform(with_treatment_group, settings)
    # Three months later, in other partitions, some customers are in another value tier
    # (shift 2 keeps every customer's treatment).
    later = snapshot(spark, "2025-06-30", shift=2).repartition(3).transform(with_treatment_group, settings)
    pairs = first.alias("a").join(later.alias("b"), on=["customer_id", "treatment"], how="inner")
    assert pairs.count() == CUSTOMERS
    assert pairs.where(F.col("a.value_tier") != F.col("b.value_tier")).count() > 0
    assert pairs.where(F.col("a.treatment_group") != F.col("b.treatment_group")).count() == 0
    assert pairs.where(F.col("a.treatment_group") == "control").count() > 0


def test_the_share_of_control_customers_is_the_configured_one_in_every_value_tier(spark):
    share = 0.1
    groups = snapshot(spark, "2025-06-30").transform(with_treatment_group, tiers(f"tiers.holdout_share={share}"))
    overall = groups.select(F.avg((F.col("treatment_group") == "control").cast("double"))).first()[0]
    assert abs(overall - share) <= tolerance(share, CUSTOMERS)  # 4 x 0.003 = 0.012
    by_tier = groups.groupBy("value_tier").agg(
        F.count(F.lit(1)).alias("n"), F.avg((F.col("treatment_group") == "control").cast("double")).alias("control")
    )
    rows = {row["value_tier"]: row for row in by_tier.collect()}
    assert {name: row["n"] for name, row in rows.items()} == {"diamond": 500, "gold": 1500, "silver": 3000, "bronze": 5000}
    for name, row in rows.items():
        # diamond: 4 x sqrt(0.09 / 500) = 0.054; bronze: 4 x sqrt(0.09 / 5000) = 0.017
        assert abs(row["control"] - share) <= tolerance(share, row["n"]), name


def test_groups_of_two_treatments_are_drawn_independently(spark):
    df = spark.range(CUSTOMERS).select(F.format_string("c%05d", "id").alias("customer_id"))
    both = df.select(
        treatment_group("customer_id", F.lit("win_back"), 0.5, 42).alias("a"),
        treatment_group("customer_id", F.lit("loyalty"), 0.5, 42).alias("b"),
    )
    # Among the 5,000 or so controls of one treatment, half are controls of the other.
    controls_of_a = both.where(F.col("a") == "control")
    n = controls_of_a.count()
    share = controls_of_a.where(F.col("b") == "control").count() / n
    assert abs(share - 0.5) <= tolerance(0.5, n)


def test_playbook_rows_override_the_share_and_zero_treats_everyone(spark):
    settings = tiers(
        "tiers.holdout_share=0",
        "tiers.playbook=[{name: win_back, when: 'true', action: offer, holdout_share: 0.5}, "
        "{name: newsletter, when: 'true', action: letter}]",
    )
    assert holdout_shares(settings) == {"win_back": 0.5, "newsletter": 0.0}
    groups = snapshot(spark, "2025-06-30").transform(with_treatment_group, settings)
    counts = {(r["treatment"], r["treatment_group"]): r["count"] for r in groups.groupBy("treatment", "treatment_group").count().collect()}
    assert counts[("newsletter", "treated")] == 5000 and ("newsletter", "control") not in counts
    assert abs(counts[("win_back", "control")] / 5000 - 0.5) <= tolerance(0.5, 5000)


def test_no_treatment_means_no_group(spark):
    df = spark.createDataFrame([("c1", None), (None, "win_back"), ("c2", "win_back")], "customer_id string, treatment string")
    groups = df.transform(with_treatment_group, tiers("tiers.holdout_share=0")).collect()
    assert [row["treatment_group"] for row in groups] == [None, None, "treated"]


def test_holdout_shares_are_validated():
    with pytest.raises(ConfigError, match="tiers.holdout_share: Input should be less than 1"):
        tiers("tiers.holdout_share=1")
    with pytest.raises(ConfigError, match=r"tiers.playbook.0.holdout_share: Input should be greater than or equal to 0"):
        tiers("tiers.playbook=[{name: a, when: 'true', action: b, holdout_share: -0.1}]")
