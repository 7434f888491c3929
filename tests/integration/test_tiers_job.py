"""The tiers job on generated customers for two as-of dates that arrive out of order: the
tier table's contract, constraints, idempotent retry, re-run and time travel, the SCD2
history, migrations and events, all on real Delta tables."""

from __future__ import annotations

import datetime as dt

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation.stages import churn
from segmentation.stages import cluster
from segmentation.stages import clv
from segmentation.stages import features
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages import outcomes
from segmentation.stages import tiers
from segmentation.stages.context import StageContext
from segmentation import tables
from segmentation.tiers.history import history_columns, tier_history
from segmentation.tiers.migrations import EVENT_COLUMNS, MIGRATION_COLUMNS
from segmentation.tiers.snapshot import TIER_COLUMNS
from segmentation.treatments.holdout import holdout_draw
from tests.conftest import PLANTED_DROPOUT, make_config

SETTINGS = ["generate.customers=1500", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression", *PLANTED_DROPOUT]
LATE, EARLY = dt.date(2025, 12, 15), dt.date(2025, 9, 15)


def context(spark, root, as_of, *extra):
    return StageContext(make_config(root, *SETTINGS, f"as_of={as_of}", *extra), spark)


@pytest.fixture(scope="module")
def tiered(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiers")
    first = context(spark, root, LATE)
    generate.run(first)
    ingest.run(first)
    churn.train(first)
    results = {}
    for as_of in (LATE, EARLY):  # the earlier snapshot arrives second
        ctx = context(spark, root, as_of)
        features.run(ctx)
        clv.run(ctx)
        cluster.run(ctx)
        churn.score(ctx)
        results[as_of] = (ctx, tiers.run(ctx))
    outcomes.run(context(spark, root, LATE))  # EARLY's 90-day window has ended: treatment_outcomes
    return root, results


def read(spark, root, key):
    return tables.read(spark, context(spark, root, LATE).table(key))


def test_one_row_per_customer_and_snapshot_with_every_dimension(spark, tiered):
    root, results = tiered
    rows = read(spark, root, "customer_tiers")
    assert rows.columns == TIER_COLUMNS
    for as_of, (ctx, result) in results.items():
        snapshot = rows.where(F.col("as_of_date") == F.lit(as_of))
        customers = tables.read(spark, ctx.table("customer_features")).where(F.col("as_of_date") == F.lit(as_of))
        assert snapshot.count() == snapshot.select("customer_id").distinct().count() == customers.count() == result.customers
        scored = tables.read(spark, ctx.table("customer_churn")).where(F.col("as_of_date") == F.lit(as_of))
        assert snapshot.where(F.col("churn_probability").isNotNull()).count() == scored.count()
        both = snapshot.alias("t").join(scored.alias("c"), on="customer_id", how="inner")
        assert both.count() == scored.count() and both.where(~F.col("t.churn_drivers").eqNullSafe(F.col("c.churn_drivers"))).count() == 0
        for column in ("value_tier", "rfm_segment", "lifecycle_stage", "business_tier", "cluster_name", "stickiness",
                       "treatment", "treatment_action", "treatment_channel", "treatment_priority"):
            assert snapshot.where(F.col(column).isNull()).count() == 0, column
        assert snapshot.select(F.to_json("lineage")).distinct().count() == 1  # one lineage per snapshot (a map has no distinct)
        lineage = snapshot.select("lineage.*").first()
        assert lineage.pipeline_run_id == ctx.pipeline_run_id and lineage.missing_predictions == {}
        assert lineage.churn_model_version == 1 and lineage.clv_run_id and lineage.value_rank_by == "clv"
        client = MlflowClient()
        assert lineage.churn_run_id == client.get_model_version("churn_classifier", "1").run_id
        assert lineage.cluster_run_id == client.get_model_version("customer_segments", str(lineage.cluster_model_version)).run_id
    shares = {r.value_tier: r["count"] for r in rows.where(F.col("as_of_date") == F.lit(LATE)).groupBy("value_tier").count().collect()}
    assert shares["diamond"] / sum(shares.values()) == pytest.approx(0.05, abs=0.01)


def test_each_treatment_holds_out_a_stable_control_group(spark, tiered):
    root, _ = tiered
    rows = read(spark, root, "customer_tiers")
    groups = {(r.customer_id, r.treatment, r.as_of_date): r.treatment_group
              for r in rows.select("customer_id", "treatment", "as_of_date", "treatment_group").collect()}
    assert set(groups.values()) == {"treated", "control"}
    # the group is the published draw of (seed, treatment, customer), whatever the snapshot
    seed, share = context(spark, root, LATE).config.tiers.holdout_seed, 0.1
    assert all(group == ("control" if holdout_draw(seed, treatment, customer) < share else "treated")
               for (customer, treatment, _), group in groups.items())
    control = sum(group == "control" for group in groups.values()) / len(groups)
    assert control == pytest.approx(share, abs=4 * (share * (1 - share) / len(groups)) ** 0.5)


def test_constraints_guard_the_table(spark, tiered):
    root, _ = tiered
    ref = context(spark, root, LATE).table("customer_tiers")
    properties = spark.sql(f"DESCRIBE DETAIL delta.`{ref.location}`").first().properties
    assert {"delta.constraints.churn_probability_range", "delta.constraints.value_tier_domain",
            "delta.constraints.customer_id_not_null"} <= set(properties)
    # they came with the table's first commit, not one ALTER TABLE ... ADD CONSTRAINT commit each
    operations = [row.operation for row in spark.sql(f"DESCRIBE HISTORY delta.`{ref.location}`").collect()]
    assert "ADD CONSTRAINT" not in operations and operations[-1].startswith("CREATE"), operations
    bad = read(spark, root, "customer_tiers").limit(1).withColumn("churn_probability", F.lit(1.5))
    with pytest.raises(Exception, match="churn_probability_range"):
        bad.write.format("delta").mode("append").save(ref.location)
    bad = read(spark, root, "customer_tiers").limit(1).withColumn("value_tier", F.lit("platinum"))
    with pytest.raises(Exception, match="value_tier_domain"):
        bad.write.format("delta").mode("append").save(ref.location)


def test_history_is_the_same_as_if_the_snapshots_had_come_in_order(spark, tiered):
    root, results = tiered
    history = read(spark, root, "customer_tier_history")
    tracked = results[LATE][0].config.tiers.tracked
    assert history.columns == history_columns(tracked)
    expected = tier_history(read(spark, root, "customer_tiers"), tracked)
    assert sorted(map(tuple, history.collect())) == sorted(map(tuple, expected.select(*history.columns).collect()))
    current = history.where("is_current").groupBy("customer_id").count()
    assert current.where(F.col("count") != 1).count() == 0
    assert current.count() == history.select("customer_id").distinct().count()
    early = history.where(F.col("valid_from") == F.lit(EARLY))
    assert early.count() > 0 and early.where(F.col("valid_to").isNotNull() & (F.col("valid_to") != F.lit(LATE))).count() == 0


def test_migrations_and_events_cover_the_pair_even_out_of_order(spark, tiered):
    root, results = tiered
    matrix = read(spark, root, "tier_migrations")
    assert matrix.columns == MIGRATION_COLUMNS and read(spark, root, "tier_events").columns == EVENT_COLUMNS
    assert {(r.from_date, r.to_date) for r in matrix.select("from_date", "to_date").distinct().collect()} == {(EARLY, LATE)}
    tiers_rows = read(spark, root, "customer_tiers")
    early, late = (tiers_rows.where(F.col("as_of_date") == F.lit(d)).select("customer_id", "value_tier") for d in (EARLY, LATE))
    both = early.alias("e").join(late.alias("l"), "customer_id", "inner")
    direct = {(r[0], r[1]): r[2] for r in both.groupBy("e.value_tier", "l.value_tier").count().collect()}
    recorded = {(r.from_tier, r.to_tier): r.customers for r in matrix.where("dimension = 'value_tier'").collect()
                if "(" not in r.from_tier + r.to_tier}
    assert recorded == direct
    new = late.join(early, "customer_id", "left_anti").count()
    assert sum(r.customers for r in matrix.where("dimension = 'value_tier' AND from_tier = '(new)'").collect()) == new
    events = read(spark, root, "tier_events")
    upgrades = events.where("event = 'upgrade_invitation'").collect()
    order = ["diamond", "gold", "silver", "bronze"]
    assert upgrades and all(order.index(e.to_tier) < order.index(e.from_tier) for e in upgrades)
    assert {(r.as_of_date, r.previous_as_of_date) for r in events.select("as_of_date", "previous_as_of_date").distinct().collect()} == {(LATE, EARLY)}


def test_retry_rerun_and_time_travel(spark, tiered):
    root, results = tiered
    ctx, _ = results[LATE]
    ref = ctx.table("customer_tiers")
    before = tables.current_version(spark, ref)
    retried = tiers.run(ctx)  # the same pipeline run again: Delta skips the snapshot write
    assert retried.skipped and tables.current_version(spark, ref) >= before
    assert read(spark, root, "customer_tiers").where(F.col("as_of_date") == F.lit(LATE)).count() == retried.customers
    rerun_ctx = context(spark, root, LATE, "tiers.value_rank_by=revenue_365d")  # a new run replaces the snapshot
    rerun = tiers.run(rerun_ctx)
    assert not rerun.skipped
    now = read(spark, root, "customer_tiers")
    late_now = now.where(F.col("as_of_date") == F.lit(LATE))
    assert late_now.count() == rerun.customers and {r[0] for r in late_now.select("lineage.value_rank_by").distinct().collect()} == {"revenue_365d"}
    assert now.where(F.col("as_of_date") == F.lit(EARLY)).count() == results[EARLY][1].customers  # untouched
    commit = spark.sql(f"DESCRIBE HISTORY delta.`{ref.location}` LIMIT 1").first()
    assert commit.userMetadata == rerun_ctx.pipeline_run_id
    old = tables.read(spark, ref, before).where(F.col("as_of_date") == F.lit(LATE))
    assert {r[0] for r in old.select("lineage.value_rank_by").distinct().collect()} == {"clv"}


def test_report_is_self_contained_and_its_numbers_come_from_the_tables(spark, tiered):
    import re

    from segmentation.stages import report

    root, results = tiered
    ctx, _ = results[LATE]
    result = report.run(ctx)
    document = open(result.path, encoding="utf-8").read()
    assert str(result.path).startswith(str(root)) and document.startswith("<!DOCTYPE html>")
    sources = re.findall(r'src="([^"]*)"', document)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)  # pareto, migration, clv, lift
    assert "http://" not in document and "https://" not in document
    data = result.data
    snapshot = read(spark, root, "customer_tiers").where(F.col("as_of_date") == F.lit(LATE))
    kpis = data["kpis"]
    assert kpis["customers"] == snapshot.count()
    assert kpis["active_customers"] == snapshot.where(F.col("recency_days") < 365).count()
    churned = snapshot.where(F.col("lifecycle_stage") == "churned").count()
    assert kpis["churn_rate"] == pytest.approx(churned / snapshot.count())
    assert kpis["revenue_365d"] == pytest.approx(snapshot.agg(F.sum("revenue_365d")).first()[0])
    assert data["previous_kpis"]["customers"] == read(spark, root, "customer_tiers").where(F.col("as_of_date") == F.lit(EARLY)).count()
    tiers_count = {r.value_tier: r["count"] for r in snapshot.groupBy("value_tier").count().collect()}
    assert {t["value_tier"]: t["customers"] for t in data["value_tiers"] if t["customers"]} == tiers_count
    # The top churn drivers of each risk tier: the first of the riskiest tier, from a direct query.
    top = data["churn_drivers"][0]
    assert top["rank"] == 1 and [d["churn_risk_tier"] for d in data["churn_drivers"]] == sorted(
        (d["churn_risk_tier"] for d in data["churn_drivers"]), key=["critical", "high", "medium", "low"].index)
    explained = snapshot.where((F.col("churn_risk_tier") == top["churn_risk_tier"]) & F.col("churn_drivers").isNotNull())
    contributions = explained.select(F.explode("churn_drivers").alias("d")).where(F.col("d.feature") == top["feature"])
    assert top["mean_contribution"] == pytest.approx(contributions.agg(F.sum("d.contribution")).first()[0] / explained.count())
    assert f"<td>{top['feature']}</td>" in document
    migration = read(spark, root, "tier_migrations").where("dimension = 'value_tier'")
    assert sum(c["customers"] for c in data["migration"]) == migration.agg(F.sum("customers")).first()[0]
    champion = MlflowClient().get_model_version_by_alias("churn_classifier", "champion")
    metrics = MlflowClient().get_run(champion.run_id).data.metrics
    assert data["churn"]["scores"]["model"]["pr_auc"] == metrics["pr_auc"]
    assert data["churn"]["scores"]["recency rule"]["lift_10"] == metrics["baseline_recency_lift_10"]
    assert f"<td>{kpis['customers']:,}</td>" in document
    assert f"<td>{kpis['customers'] - data['previous_kpis']['customers']:+,}</td>" in document


def test_readme_tables_section_matches_every_table_written(spark, tiered):
    from tests.unit.test_docs import flat_schema, readme_table_schemas

    root, _ = tiered
    documented = readme_table_schemas()
    assert len(documented) >= 8
    for key, rows in documented.items():
        assert rows == flat_schema(read(spark, root, key).schema), key
