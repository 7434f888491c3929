"""Rules in configuration that cannot work: a condition that does not parse, names a column
that does not exist or is not a true/false condition, and a movement event naming a tier
that does not exist. Each fails with the rule's list, its name and its condition, when the
stage starts and before any Spark job. (The business rules' own cases: tests/unit/test_tiers.py.)"""

from __future__ import annotations

import datetime as dt

import pytest

from segmentation.stages import tiers
from segmentation.stages.context import StageContext
from segmentation.config import load_config
from segmentation.errors import ConfigError
from segmentation.features.tiers import TierCuts, with_rule_tiers
from segmentation.tiers.migrations import check_events
from segmentation.tiers.snapshot import TIER_COLUMNS, Lineage, customer_tiers
from tests.conftest import CONF_DIR, make_config
from tests.unit.test_tiers import frame

LINEAGE = Lineage("run", 1, 2, 3, 4, None, 5, None, "clv")


def jobs_so_far(spark):
    return spark.sparkContext.statusTracker().getJobIdsForGroup()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "features.lifecycle=[{name: new, when: 'tenure_days <'}, {name: rest, when: 'true'}]",
            r"^features.lifecycle rule 'new' \(tenure_days <\): does not parse: .*PARSE_SYNTAX_ERROR",
        ),
        (
            "features.lifecycle=[{name: new, when: 'tenur_days < 90'}, {name: rest, when: 'true'}]",
            r"^features.lifecycle rule 'new' \(tenur_days < 90\): .*`tenur_days` cannot be resolved. Did you mean .*`tenure_days`",
        ),
        (  # alone, Spark would read the last word as the name of the comparison
            "features.lifecycle=[{name: churned, when: 'recency_days > 365 churned'}, {name: rest, when: 'true'}]",
            r"^features.lifecycle rule 'churned' \(recency_days > 365 churned\): does not parse",
        ),
        (
            "features.lifecycle=[{name: new, when: 'tenure_days'}, {name: rest, when: 'true'}]",
            r"^features.lifecycle rule 'new' \(tenure_days\): is int, not a true/false condition$",
        ),
    ],
)
def test_a_bad_lifecycle_rule_fails_before_any_job(spark, override, message):
    settings = load_config("local", CONF_DIR, [override]).features
    features = frame(spark, [("A", 1, 1, 1.0, 1.0)])
    before = jobs_so_far(spark)
    with pytest.raises(ConfigError, match=message):
        with_rule_tiers(features, TierCuts(), settings)
    assert jobs_so_far(spark) == before


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "tiers.stickiness=[{name: loyal, when: \"churn_risk = 'low'\"}, {name: rest, when: 'true'}]",
            r"^tiers.stickiness rule 'loyal' \(churn_risk = 'low'\): .*`churn_risk` cannot be resolved",
        ),
        (
            "tiers.playbook=[{name: promo, when: \"value_tier = 'gold' AND\", action: mail}]",  # was read as the alias AND
            r"^tiers.playbook rule 'promo' \(value_tier = 'gold' AND\): does not parse",
        ),
        (
            "tiers.playbook=[{name: promo, when: 'clv * 2', action: mail}]",
            r"^tiers.playbook rule 'promo' \(clv \* 2\): is double, not a true/false condition$",
        ),
    ],
)
def test_a_bad_stickiness_or_playbook_rule_fails_before_any_job(spark, override, message):
    config = load_config("local", CONF_DIR, [override])
    joined = spark.createDataFrame(
        [("c1", 3, 2, 2, "Need Attention", "developing", "Other", 40, 2, 50.0, 50.0, "web", 10.0, 0.7, 1.0, 2, "b", 0.4, "medium", 2)],
        "customer_id string, r_score int, f_score int, m_score int, rfm_segment string, lifecycle_stage string, "
        "business_tier string, recency_days int, frequency_orders long, monetary double, revenue_365d double, "
        "preferred_channel string, clv double, probability_alive double, expected_purchases double, cluster_id int, "
        "cluster_name string, churn_probability double, churn_risk_tier string, orders_365d long",
    )
    before = jobs_so_far(spark)
    with pytest.raises(ConfigError, match=message):
        customer_tiers(joined, TierCuts(value=[]), config.tiers, config.features, dt.date(2025, 6, 30), LINEAGE)
    assert jobs_so_far(spark) == before


@pytest.mark.parametrize(
    "event, message",
    [
        ("{name: wb, dimension: lifecycle_stage, to_tiers: [lapsd], action: call}",
         r"tiers.events rule 'wb': 'lapsd' is not a tier of lifecycle_stage \(churned, new, lapsed, declining, developing, established, Other\)"),
        ("{name: up, dimension: value_tier, from_tiers: [gold, platinum], action: call}",
         r"tiers.events rule 'up': 'platinum' is not a tier of value_tier \(diamond, gold, silver, bronze\)"),
        ("{name: f, dimension: f_score, to_tiers: ['6'], action: call}", r"tiers.events rule 'f': '6' is not a tier of f_score"),
        ("{name: risk, dimension: churn_risk_tier, to_tiers: [Critical], action: call}",
         r"tiers.events rule 'risk': 'Critical' is not a tier of churn_risk_tier \(low, medium, high, critical\)"),
    ],
)
def test_an_event_rule_naming_a_tier_that_does_not_exist_fails(event, message):
    """A misspelt tier would never fire, silently."""
    config = load_config("local", CONF_DIR, [f"tiers.events=[{event}]"])
    with pytest.raises(ConfigError, match=message):
        check_events(config.tiers.events, TIER_COLUMNS, tiers.tier_orders(config), tiers.tier_names(config))


def test_event_rules_may_name_learnt_and_missing_tiers():
    events = (
        "tiers.events=[{name: a, dimension: cluster_name, to_tiers: [Big spenders], action: x},"
        " {name: b, dimension: churn_risk_tier, from_tiers: ['(none)'], to_tiers: [critical], action: x}]"
    )
    for config in (load_config("local", CONF_DIR), load_config("local", CONF_DIR, [events])):
        check_events(config.tiers.events, TIER_COLUMNS, tiers.tier_orders(config), tiers.tier_names(config))


def test_the_tiers_stage_checks_its_event_rules_first(spark, tmp_path):
    """Before it reads a table: here there is none, and the rule is what the user hears about."""
    config = make_config(tmp_path / "data", "tiers.events=[{name: wb, dimension: lifecycle_stage, to_tiers: [lapsd], action: call}]")
    with pytest.raises(ConfigError, match="tiers.events rule 'wb': 'lapsd' is not a tier of lifecycle_stage"):
        tiers.run(StageContext(config, spark))
