"""Measured uplift end to end on generated customers: a response planted into the treated
customers of one treatment after a snapshot is found by `segmentation outcomes` (its
interval covers the planted effect), another treatment with none shows none (its interval
covers 0), and measuring again as of the same date replaces exactly that date's rows."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest
from pyspark.sql import functions as F

from segmentation import tables
from segmentation.stages import generate, ingest, outcomes, pipeline
from segmentation.stages.context import StageContext
from tests.conftest import make_config
from tests.unit.test_docs import flat_schema, readme_table_schemas

# Half of each treatment held out, so both groups are large enough for an informative interval.
SETTINGS = ["generate.customers=2000", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression",
            "tiers.holdout_share=0.5", "outcomes.min_group_customers=20"]
SNAPSHOT = dt.date(2025, 6, 30)
MEASURED = SNAPSHOT + dt.timedelta(days=90)  # the day the 90-day window ends
SHARE = 1.0  # every window order of a treated customer bought twice: a clear effect on 2,000 customers


def context(spark, root, as_of, *extra):
    return StageContext(make_config(root, *SETTINGS, f"as_of={as_of}", *extra), spark)


@pytest.fixture(scope="module")
def measured(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("outcomes")
    ctx = context(spark, root, SNAPSHOT)
    # generate (an empty root), ingest and every stage up to the tiers snapshot, as `segmentation run` does
    pipeline.run(ctx, argparse.Namespace(generate=False, train_churn=False, until="tiers"))
    before = outcomes.run(context(spark, root, SNAPSHOT + dt.timedelta(days=60)))  # no window has ended yet
    assert not tables.exists(spark, ctx.table("treatment_outcomes"))
    treated = tables.read(spark, ctx.table("customer_tiers")).where("treatment_group = 'treated'")
    sizes = {r.treatment: r["count"] for r in treated.groupBy("treatment").count().collect()}
    # The two largest treatments of customers who still buy: one gets a response, the other none.
    planted, unplanted = sorted((t for t in sizes if t not in ("reactivation", "vip_care", "vip_retention")), key=lambda t: -sizes[t])[:2]
    response = f"generate.treatment_response={{{planted}: {SHARE}}}"
    later = context(spark, root, MEASURED, response, f"generate.response_after={SNAPSHOT}")
    planting = generate.run(later)
    again = generate.run(later)  # already planted: nothing appended
    ingest.run(later)
    result = outcomes.run(later)
    return root, later, planted, unplanted, planting, again, before, result


def _uplifts(result, treatment):
    (snapshot,) = result.snapshots
    return {u.metric: u for u in snapshot.uplifts[treatment]}


def test_nothing_is_measured_before_a_window_has_ended(spark, measured):
    root, later, *_, before, _ = measured
    assert before.snapshots == () and before.version is None and before.rows == 0  # and no table (the fixture)


def test_a_planted_response_is_measured_and_none_where_none_was_planted(spark, measured):
    root, later, planted, unplanted, planting, again, _, result = measured
    assert planting.orders[planted] > 0 and again.version is None and again.rows == 0
    assert [s.as_of for s in result.snapshots] == [SNAPSHOT]
    effect = _uplifts(result, planted)
    orders = effect["orders_per_customer"]
    assert orders.treated_customers == planting.treated_customers[planted] and not orders.too_small
    # Every added order is one more order of a treated customer in the window: the planted
    # uplift of orders per customer is the orders added over the treated customers
    # (SHARE times their window orders, which the generator draws like the control's).
    added = planting.orders[planted] / orders.treated_customers
    assert orders.ci_low <= added <= orders.ci_high and orders.significant
    # A copy goes to a customer who bought anyway: who buys does not change.
    repurchase = effect["repurchase_rate"]
    assert repurchase.ci_low <= 0 <= repurchase.ci_high
    for metric, uplift in _uplifts(result, unplanted).items():
        assert uplift.ci_low <= 0 <= uplift.ci_high, metric


def test_the_table_follows_its_contract_and_remeasuring_replaces_only_its_date(spark, measured):
    root, later, *_, result = measured
    ref = later.table("treatment_outcomes")
    rows = tables.read(spark, ref)
    assert readme_table_schemas()["treatment_outcomes"] == flat_schema(rows.schema)
    assert rows.count() == result.rows == 4 * len(result.snapshots[0].uplifts)
    next_day = outcomes.run(context(spark, root, MEASURED + dt.timedelta(days=1)))
    kept = {tuple(r) for r in tables.read(spark, ref).where(F.col("measured_as_of") == F.lit(next_day.measured_as_of)).collect()}
    again = outcomes.run(later)
    assert again.version > next_day.version > result.version
    table = tables.read(spark, ref)
    assert table.count() == result.rows + next_day.rows
    assert {tuple(r) for r in table.where(F.col("measured_as_of") == F.lit(next_day.measured_as_of)).collect()} == kept
    same = table.where(F.col("measured_as_of") == F.lit(MEASURED))
    assert same.count() == again.rows == result.rows
    assert {r.pipeline_run_id for r in same.collect()} == {later.pipeline_run_id}
