"""The features job on real Delta tables and a real MLflow store, on generated data."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from pyspark.sql import functions as F

from segmentation.stages import features
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.errors import ConfigError, DataQualityError
from segmentation.features.customer import feature_columns
from segmentation.features.tiers import TIER_COLUMNS
from segmentation.generate import generate_customers
from segmentation.privacy import load_key, pseudonymised
from segmentation.cli import main
from tests.conftest import CONF_DIR, make_config

CUSTOMERS = 3000
MID_YEAR = dt.date(2025, 6, 30)


def context(spark, root, *overrides):
    return StageContext(make_config(root, f"generate.customers={CUSTOMERS}", *overrides), spark)


def at(day):
    return f"as_of={day.isoformat()}"


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    """A generated feed, ingested once; each test writes its own customer_features table."""
    root = tmp_path_factory.mktemp("features")
    ctx = context(spark, root)
    generate.run(ctx)
    ingest.run(ctx)
    return root


@pytest.fixture(scope="module")
def latest(spark, ingested):
    """The default snapshot (as of the latest transaction date) and what the job returned."""
    ctx = context(spark, ingested)
    summary = features.run(ctx)
    snapshot = tables.read(spark, ctx.table("customer_features")).where(F.col("as_of_date") == summary.as_of)
    return ctx, summary, snapshot


def own_table(spark, ingested, tmp_path, *overrides):
    return context(spark, ingested, f"storage.tables.customer_features={tmp_path / 'customer_features'}", *overrides)


def test_one_row_per_customer_with_every_feature_and_tier(latest):
    ctx, summary, snapshot = latest
    transactions = tables.read(ctx.spark, ctx.table("transactions"))
    assert summary.as_of == transactions.agg(F.max(F.to_date("transaction_ts"))).first()[0]
    assert snapshot.columns == feature_columns(ctx.config.ingest.channels) + TIER_COLUMNS
    assert snapshot.count() == summary.customers == transactions.select("customer_id").distinct().count()
    assert snapshot.select("customer_id").distinct().count() == summary.customers
    for column in ("r_score", "f_score", "m_score", "rfm_segment", "value_tier", "lifecycle_stage", "business_tier"):
        assert snapshot.where(F.col(column).isNull()).count() == 0, column
    assert snapshot.where(F.col("rfm_segment") == "Other").count() == 0  # the default map covers every cell


def test_tiers_are_plausible_on_generated_data(latest):
    ctx, summary, snapshot = latest
    n = summary.customers
    share = {
        (scheme, row["tier"]): row["count"] / n
        for scheme in ("value_tier", "rfm_segment", "lifecycle_stage")
        for row in snapshot.groupBy(F.col(scheme).alias("tier")).count().collect()
    }
    assert 0.04 <= share[("value_tier", "diamond")] <= 0.06
    assert 0.13 <= share[("value_tier", "gold")] <= 0.17
    revenue = {r["value_tier"]: r["revenue"] for r in snapshot.groupBy("value_tier").agg(F.sum("revenue_365d").alias("revenue")).collect()}
    diamond_share = revenue["diamond"] / sum(revenue.values())
    assert 0.30 <= diamond_share <= 0.75, diamond_share  # the generator's VIPs: a few customers, much revenue
    assert (revenue["diamond"] + revenue["gold"]) / sum(revenue.values()) >= 0.6  # top 20% bring most revenue
    assert 0.05 <= share[("rfm_segment", "Champions")] <= 0.25
    assert 0.05 <= share[("rfm_segment", "Lost")] + share[("rfm_segment", "Hibernating")] <= 0.40
    assert {stage for scheme, stage in share if scheme == "lifecycle_stage"} == {
        "new", "developing", "established", "declining", "lapsed", "churned",
    }
    assert 0.15 <= share[("lifecycle_stage", "churned")] <= 0.60


def test_generated_archetypes_land_in_the_expected_tiers(spark, latest):
    """The generator knows who is a VIP: re-create its customers, pseudonymise their ids with
    the same key, and check the tiers recover the structure."""
    ctx, _, snapshot = latest
    key = load_key(ctx.config.privacy)
    truth = generate_customers(spark, ctx.config.generate).select(
        pseudonymised(F.col("customer_id"), key, spark).alias("customer_id"), "archetype"
    )
    joined = snapshot.join(truth, on="customer_id", how="inner")
    assert joined.count() == snapshot.count()
    diamonds = joined.where(F.col("value_tier") == "diamond")
    by_type = {r["archetype"]: r["count"] for r in diamonds.groupBy("archetype").count().collect()}
    assert (by_type.get("vip", 0) + by_type.get("regular", 0)) / diamonds.count() >= 0.6, by_type
    assert by_type.get("one_off", 0) / diamonds.count() <= 0.05, by_type
    one_offs = joined.where(F.col("archetype") == "one_off")
    assert one_offs.where(F.col("lifecycle_stage").isin("churned", "lapsed")).count() / one_offs.count() >= 0.5


def test_snapshots_coexist_and_a_rerun_replaces_only_its_own(spark, ingested, tmp_path):
    first = features.run(own_table(spark, ingested, tmp_path, at(MID_YEAR)))
    second = features.run(own_table(spark, ingested, tmp_path, at(dt.date(2025, 12, 1))))
    ref = own_table(spark, ingested, tmp_path).table("customer_features")
    after_two = tables.read(spark, ref)
    counts = {r["as_of_date"]: r["count"] for r in after_two.groupBy("as_of_date").count().collect()}
    assert counts == {MID_YEAR: first.customers, dt.date(2025, 12, 1): second.customers}

    # Re-run mid-year with other value-tier cut-offs: that snapshot changes, the other does not.
    rerun = features.run(
        own_table(spark, ingested, tmp_path, at(MID_YEAR), "features.value_pyramid.tiers=[{name: top, share: 0.5}, {name: rest}]")
    )
    assert rerun.version == second.version + 1
    now = tables.read(spark, ref)
    assert now.where(F.col("as_of_date") == MID_YEAR).count() == first.customers
    assert {r[0] for r in now.where(F.col("as_of_date") == MID_YEAR).select("value_tier").distinct().collect()} == {"top", "rest"}
    december = F.col("as_of_date") == dt.date(2025, 12, 1)
    before = tables.read(spark, ref, version=second.version).where(december)
    assert now.where(december).exceptAll(before).count() == 0 and before.exceptAll(now.where(december)).count() == 0
    # and the replaced snapshot is still there by time travel
    assert tables.read(spark, ref, version=second.version).where(F.col("value_tier") == "diamond").count() > 0


def test_transactions_after_as_of_change_nothing(spark, ingested, tmp_path):
    """The same snapshot from the full table and from a copy cut at the as-of date."""
    full = own_table(spark, ingested, tmp_path / "full", at(MID_YEAR))
    cut = context(spark, tmp_path / "cut", at(MID_YEAR))
    everything = tables.read(spark, full.table("transactions"))
    assert everything.where(F.to_date("transaction_ts") > MID_YEAR).count() > 1000
    tables.write(
        everything.where(F.to_date("transaction_ts") <= MID_YEAR), cut.table("transactions"),
        mode="overwrite", run_id=cut.pipeline_run_id,
    )
    features.run(full)
    features.run(cut)
    from_full = tables.read(spark, full.table("customer_features"))
    from_cut = tables.read(spark, cut.table("customer_features"))
    assert from_full.count() == from_cut.count() > 0
    assert from_full.exceptAll(from_cut).count() == 0 and from_cut.exceptAll(from_full).count() == 0


def test_mlflow_run_records_inputs_metrics_and_the_pareto_table(latest):
    ctx, summary, _ = latest
    tracking.configure_mlflow(ctx.config)
    runs = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'features'", output_format="list")
    run = runs[-1]
    assert run.data.params["as_of"] == summary.as_of.isoformat()
    assert run.data.tags["input.transactions.version"] == str(summary.transactions_version)
    assert run.data.metrics["customers"] == summary.customers
    assert run.data.metrics["value_tier.diamond"] > 0 and 0 < run.data.metrics["pareto.diamond.revenue_share"] < 1
    assert run.data.metrics["rfm_segment.Can_t Lose Them"] >= 0  # names made safe for MLflow
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="features")}
    assert artifacts == {"features/pareto.json", "features/quantile_cuts.json", "features/tier_counts.json"}
    pareto = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/features/pareto.json")
    assert "diamond" in pareto and "customer_id" not in pareto


def test_a_bad_rule_fails_at_start_and_writes_nothing(spark, ingested, tmp_path):
    ctx = own_table(spark, ingested, tmp_path, "features.business_rules=[{name: vip, when: 'aov > 500'}]")
    with pytest.raises(ConfigError, match=r"features.business_rules rule 'vip' \(aov > 500\): .*`aov` cannot be resolved"):
        features.run(ctx)
    assert not tables.exists(spark, ctx.table("customer_features"))


def test_no_transactions_table_says_to_ingest_first(spark, tmp_path):
    with pytest.raises(DataQualityError, match="no transactions table yet; run 'segmentation ingest' first"):
        features.run(context(spark, tmp_path))


def test_features_command_prints_the_pareto_table_and_segment_counts(spark, ingested, tmp_path, capsys):
    code = main([
        "features", "--as-of", MID_YEAR.isoformat(), "--conf-dir", str(CONF_DIR), "--set", f"storage.root={ingested}",
        "--set", f"storage.tables.customer_features={tmp_path / 'customer_features'}",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert f"Customer features as of {MID_YEAR}:" in out
    assert "Value pyramid by revenue_365d" in out and "  diamond " in out and "  bronze " in out
    for heading in ("rfm_segment:", "lifecycle_stage:", "business_tier:"):
        assert heading in out
    written = spark.read.format("delta").load(str(tmp_path / "customer_features"))
    assert {r[0] for r in written.select("as_of_date").distinct().collect()} == {MID_YEAR}


def test_features_command_rejects_a_bad_date(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["features", "--as-of", "2025-13-01"])
    assert exit_info.value.code == 2
    assert "argument --as-of: '2025-13-01' is not a date (expected YYYY-MM-DD)" in capsys.readouterr().err


def test_an_as_of_date_before_any_transaction_is_an_error(spark, ingested, tmp_path):
    ctx = own_table(spark, ingested, tmp_path, at(dt.date(2020, 1, 1)))
    with pytest.raises(DataQualityError, match=r"no customer has a transaction on or before 2020-01-01 in transactions .*the first is on 2023-01-\d\d\)"):
        features.run(ctx)
    assert not tables.exists(spark, ctx.table("customer_features"))
