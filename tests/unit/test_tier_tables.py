"""The tier table's rows, its SCD2 history, migrations and events on hand-made snapshots."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from segmentation.churn.drivers import DRIVERS, DRIVERS_TYPE
from segmentation.config import TierEvent, load_config
from segmentation.errors import ConfigError
from segmentation.features.tiers import TierCuts
from segmentation.tiers.history import tier_history
from segmentation.tiers.migrations import check_events, migration_matrix, tier_events
from segmentation.tiers.snapshot import TIER_COLUMNS, Lineage, customer_tiers
from tests.conftest import CONF_DIR

D1, D2, D3, D4 = (dt.date(2025, m, 1) for m in (1, 4, 7, 10))
TRACKED = ["value_tier", "churn_risk_tier"]
ORDERS = {"value_tier": ["diamond", "gold", "silver", "bronze"], "churn_risk_tier": ["low", "medium", "high", "critical"],
          "f_score": ["5", "4", "3", "2", "1"]}


def snapshots(spark, rows):
    return spark.createDataFrame(rows, "customer_id string, as_of_date date, value_tier string, churn_risk_tier string, "
                                       "f_score int, lifecycle_stage string, revenue_365d double")


def test_history_opens_a_row_at_each_change_and_treats_nulls_as_equal(spark):
    rows = [
        ("A", D1, "gold", None, 3, "new", 10.0), ("A", D2, "gold", None, 3, "new", 10.0),
        ("A", D3, "diamond", None, 3, "new", 10.0), ("A", D4, "gold", None, 3, "new", 10.0),
        ("B", D2, "silver", "low", 3, "new", 10.0), ("B", D4, "silver", "low", 3, "new", 10.0),
    ]
    got = sorted(tuple(r) for r in tier_history(snapshots(spark, rows), TRACKED).collect())
    assert got == [
        ("A", D1, D3, False, "gold", None), ("A", D3, D4, False, "diamond", None), ("A", D4, None, True, "gold", None),
        ("B", D2, None, True, "silver", "low"),
    ]
    shuffled = snapshots(spark, list(reversed(rows))).repartition(3)
    assert sorted(tuple(r) for r in tier_history(shuffled, TRACKED).collect()) == got


def test_migration_matrix_counts_new_gone_and_missing_tiers(spark):
    previous = snapshots(spark, [("A", D1, "gold", "low", 3, "new", 100.0), ("B", D1, "silver", None, 3, "new", 50.0),
                                 ("C", D1, "bronze", "high", 1, "new", 5.0)])
    current = snapshots(spark, [("A", D2, "diamond", "low", 3, "new", 300.0), ("B", D2, "silver", None, 3, "new", 40.0),
                                ("D", D2, "gold", "medium", 2, "new", 80.0)])
    matrix = migration_matrix(previous, current, TRACKED, D1, D2)
    got = {(r.dimension, r.from_tier, r.to_tier): (r.customers, r.revenue_before, r.revenue_after) for r in matrix.collect()}
    assert got == {
        ("value_tier", "gold", "diamond"): (1, 100.0, 300.0),
        ("value_tier", "silver", "silver"): (1, 50.0, 40.0),
        ("value_tier", "bronze", "(gone)"): (1, 5.0, 0.0),
        ("value_tier", "(new)", "gold"): (1, 0.0, 80.0),
        ("churn_risk_tier", "low", "low"): (1, 100.0, 300.0),
        ("churn_risk_tier", "(none)", "(none)"): (1, 50.0, 40.0),
        ("churn_risk_tier", "high", "(gone)"): (1, 5.0, 0.0),
        ("churn_risk_tier", "(new)", "medium"): (1, 0.0, 80.0),
    }
    assert {(r.from_date, r.to_date) for r in matrix.collect()} == {(D1, D2)}


def test_events_fire_on_the_configured_moves_only(spark):
    events = load_config("local", CONF_DIR, []).tiers.events
    previous = snapshots(spark, [
        ("up", D1, "gold", "low", 3, "developing", 1.0),      # value up, frequency 3 -> 5
        ("down", D1, "diamond", "low", 5, "established", 1.0),  # value down: no invitation; risk low -> critical
        ("lapse", D1, "silver", "medium", 2, "declining", 1.0),  # enters lapsed
        ("same", D1, "silver", "medium", 2, "lapsed", 1.0),     # already lapsed: nothing
    ])
    current = snapshots(spark, [
        ("up", D2, "diamond", "low", 5, "developing", 1.0),
        ("down", D2, "gold", "critical", 5, "established", 1.0),
        ("lapse", D2, "silver", "medium", 2, "lapsed", 1.0),
        ("same", D2, "silver", "medium", 2, "lapsed", 1.0),
    ])
    fired = tier_events(previous, current, [e for e in events if e.dimension != "business_tier"], ORDERS, D1, D2)
    got = sorted((r.customer_id, r.event, r.from_tier, r.to_tier, r.direction) for r in fired.collect())
    assert got == [
        ("down", "risk_alert", "low", "critical", "downgrade"),
        ("lapse", "win_back", "declining", "lapsed", "change"),
        ("up", "frequency_upgrade", "3", "5", "upgrade"),
        ("up", "upgrade_invitation", "gold", "diamond", "upgrade"),
    ]
    assert {(r.as_of_date, r.previous_as_of_date) for r in fired.collect()} == {(D2, D1)}
    assert tier_events(previous, current, [], ORDERS, D1, D2).count() == 0


def test_event_rules_are_checked_against_the_tier_columns():
    with pytest.raises(ConfigError, match="tiers.events rule 'x': 'vibe' is not a column of customer_tiers"):
        check_events([TierEvent(name="x", dimension="vibe", action="a")], TIER_COLUMNS, ORDERS)
    with pytest.raises(ConfigError, match="tiers.events rule 'y': direction 'upgrade' needs an ordered dimension"):
        check_events([TierEvent(name="y", dimension="stickiness", direction="upgrade", action="a")], TIER_COLUMNS, ORDERS)


def test_tier_rows_rank_by_clv_and_attach_the_playbook(spark):
    config = load_config("local", CONF_DIR, [])
    joined = spark.createDataFrame(
        [
            # customer, r, f, m, segment, lifecycle, business, recency, freq, monetary, revenue, preferred channel,
            # clv, p_alive, expected, cluster id, cluster name, churn p, risk tier, orders_365d
            ("vip", 5, 5, 5, "Champions", "established", "high_value", 3, 40, 5000.0, 2000.0, "app", 900.0, 0.99, 6.0, 1, "a", 0.1, "low", 12),
            ("risky_vip", 2, 4, 5, "Can't Lose Them", "declining", "Other", 80, 30, 4000.0, 1500.0, "store", 800.0, 0.5, 2.0, 1, "a", 0.8, "critical", 3),
            ("gold", 4, 3, 3, "Loyal", "established", "Other", 10, 8, 600.0, 300.0, "web", 200.0, 0.9, 2.0, 2, "b", 0.2, "low", 5),
            ("lost", 1, 1, 1, "Lost", "churned", "dormant", 500, 1, 20.0, 0.0, None, None, 0.1, 0.1, 3, "c", None, None, 0),
        ] + [(f"c{i}", 3, 2, 2, "Need Attention", "developing", "Other", 40, 2, 50.0, 50.0, "web", 10.0 + i, 0.7, 1.0, 2, "b", 0.4, "medium", 2)
             for i in range(16)],
        "customer_id string, r_score int, f_score int, m_score int, rfm_segment string, lifecycle_stage string, "
        "business_tier string, recency_days int, frequency_orders long, monetary double, revenue_365d double, "
        "preferred_channel string, clv double, probability_alive double, expected_purchases double, cluster_id int, "
        "cluster_name string, churn_probability double, churn_risk_tier string, orders_365d long",
    )
    # customer_churn names what scored each customer (churn_score_source), like the model version 5 of the lineage.
    joined = joined.withColumn("churn_score_source", F.when(F.col("churn_probability").isNotNull(), F.lit("model:5")))
    driver = F.array(F.struct(F.lit("recency_days").alias("feature"), F.lit(80.0).alias("value"), F.lit(0.7).alias("contribution")))
    joined = joined.withColumn(DRIVERS, F.when(F.col("customer_id") == "risky_vip", driver).cast(DRIVERS_TYPE))
    joined = joined.withColumn("next_purchase_date", F.when(F.col("customer_id") == "vip", F.lit(dt.date(2025, 10, 9))).cast("date"))
    # 20 customers: the top 5% by CLV is one customer (900), the next 15% three (800, 200, 25).
    cuts = TierCuts(value=[24.5, 100.0, 850.0])
    lineage = Lineage("run", 1, 2, 3, 4, None, 5, None, "clv")
    rows = {r.customer_id: r for r in customer_tiers(joined, cuts, config.tiers, config.features, D4, lineage).collect()}
    assert list(next(iter(rows.values())).asDict()) == TIER_COLUMNS
    assert (rows["vip"].value_tier, rows["vip"].value_rank) == ("diamond", 1)
    assert rows["risky_vip"].value_tier == "gold" and rows["lost"].value_tier == "bronze"  # no CLV: the bottom tier
    assert (rows["vip"].stickiness, rows["vip"].treatment, rows["vip"].treatment_channel) == ("strong", "vip_care", "app")
    assert (rows["risky_vip"].stickiness, rows["risky_vip"].treatment) == ("at_risk", "win_back")
    assert rows["gold"].treatment == "loyalty" and rows["gold"].treatment_priority == 2
    assert (rows["lost"].treatment, rows["lost"].treatment_channel, rows["lost"].treatment_priority) == ("reactivation", "web", 4)
    assert rows["c0"].stickiness == "weak"
    assert [d.asDict() for d in rows["risky_vip"][DRIVERS]] == [{"feature": "recency_days", "value": 80.0, "contribution": 0.7}]
    assert rows["lost"][DRIVERS] is None
    assert rows["vip"].next_purchase_date == dt.date(2025, 10, 9) and rows["lost"].next_purchase_date is None
    assert rows["vip"].lineage.asDict() == lineage.as_dict()
    frame = customer_tiers(joined, cuts, config.tiers, config.features, D4, lineage)
    assert dict(frame.select("lineage.*").dtypes)["clv_run_id"] == "string"
    assert frame.where(F.col("as_of_date") != F.lit(D4)).count() == 0
