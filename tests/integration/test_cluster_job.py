"""The cluster job on generated customers: table, MLflow runs, registry and champion alias,
read back through the MLflow client; stable ids and names across a retrain."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation.stages import cluster
from segmentation.stages import features
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.errors import ConfigError
from tests.conftest import make_config

SETTINGS = ["generate.customers=1500", "cluster.k_min=3", "cluster.k_max=4"]


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    ctx = StageContext(make_config(root, *SETTINGS), spark)
    generate.run(ctx)
    ingest.run(ctx)
    features.run(ctx)
    return ctx, cluster.run(ctx)


def test_every_customer_of_the_snapshot_gets_a_named_cluster(first):
    ctx, result = first
    snapshot = tables.read(ctx.spark, ctx.table("customer_features")).where(F.col("as_of_date") == result.as_of)
    clusters = tables.read(ctx.spark, ctx.table("customer_clusters"))
    assert clusters.columns == cluster.CLUSTER_COLUMNS
    assert clusters.count() == snapshot.count() == result.customers
    assert clusters.join(snapshot, "customer_id", "left_anti").count() == 0
    assert clusters.where(F.col("cluster_name").isNull() | F.col("distance_to_centroid").isNull()).count() == 0
    assert {r[0] for r in clusters.select("model_version").distinct().collect()} == {1}
    assert clusters.select("cluster_id").distinct().count() == result.k in (3, 4)


def test_runs_registry_and_champion_read_back_through_the_client(first):
    ctx, result = first
    tracking.configure_mlflow(ctx.config)
    client = MlflowClient()
    parent = client.get_run(result.mlflow_run_id)
    assert parent.data.tags["stage"] == "cluster" and parent.data.tags["as_of"] == result.as_of.isoformat()
    assert parent.data.tags["input.customer_features.version"] == str(result.features_version)
    assert parent.data.tags["champion_decision"] == "promoted"
    assert parent.data.tags["kmeans_start"] == "sample"  # the fit started from the driver's centres
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(int(c.data.params["k"]) for c in children) == [3, 4]
    assert all("silhouette" in c.data.metrics and "cost" in c.data.metrics for c in children)
    assert [float(c.data.params["fit_sample_fraction"]) for c in children] == [1.0, 1.0]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "cluster")}
    assert {"cluster/centroids.json", "cluster/profiles.json", "cluster/k_choice.png", "cluster/heatmap.png",
            "cluster/sizes.png", "cluster/champion_decision.json"} <= artifacts
    champion = client.get_model_version_by_alias("customer_segments", "champion")
    assert str(champion.version) == "1" and champion.run_id == parent.info.run_id
    model = mlflow.pyfunc.load_model("models:/customer_segments@champion")
    assert model.metadata.get_input_schema().input_names() == ctx.config.cluster.features


def test_the_champion_scores_feature_rows_through_pyfunc_and_spark(first):
    """As a reviewer tries it: 200 rows of customer_features as pandas, through MLflow's generic
    interface, give each customer's cluster id in customer_clusters; the Spark flavour too."""
    ctx, result = first
    tracking.configure_mlflow(ctx.config)
    champion = MlflowClient().get_model_version_by_alias("customer_segments", "champion")
    snapshot = tables.read(ctx.spark, ctx.table("customer_features")).where(F.col("as_of_date") == F.lit(result.as_of))
    rows = snapshot.orderBy("customer_id").limit(200)
    clusters = tables.read(ctx.spark, ctx.table("customer_clusters")).where(F.col("as_of_date") == F.lit(result.as_of))
    assert {r[0] for r in clusters.select("model_version").distinct().collect()} == {int(champion.version)}
    expected = dict(clusters.join(rows, "customer_id", "inner").select("customer_id", "cluster_id").collect())
    frame = rows.toPandas()

    predicted = mlflow.pyfunc.load_model("models:/customer_segments@champion").predict(frame)
    assert len(predicted) == 200 and dict(zip(frame["customer_id"], predicted)) == expected

    reviewed = mlflow.spark.load_model("models:/customer_segments@champion").transform(rows)
    assert dict(reviewed.select("customer_id", "cluster_id").collect()) == expected


def test_a_retrain_keeps_ids_and_names_and_moves_the_champion_by_the_rule(spark, first):
    """Retrain on the snapshot of the day before (the data barely changes): the clusters keep
    their ids and names, and the alias follows the silhouette rule."""
    ctx, result = first
    day_before = result.as_of - dt.timedelta(days=1)
    again = StageContext(make_config(ctx.config.root, *SETTINGS, f"cluster.k={result.k}", f"as_of={day_before}"), spark)
    features.run(again)
    second = cluster.run(again)
    assert second.names == result.names
    rule = second.silhouette >= result.silhouette - again.config.cluster.promote_tolerance
    assert second.decision.promoted == rule
    assert second.decision.champion_version == ("2" if rule else "1")
    clusters = tables.read(spark, ctx.table("customer_clusters"))
    old = clusters.where(F.col("as_of_date") == result.as_of).select("customer_id", F.col("cluster_id").alias("old"))
    new = clusters.where(F.col("as_of_date") == day_before).join(old, "customer_id")
    assert new.where(F.col("cluster_id") != F.col("old")).count() / new.count() < 0.05

    tracking.configure_mlflow(again.config)
    assert MlflowClient().get_run(second.mlflow_run_id).data.tags["kmeans_start"] == "champion"
    champion = str(MlflowClient().get_model_version_by_alias("customer_segments", "champion").version)
    with mlflow.start_run():
        current = cluster.Champion(champion, silhouette=0.9, reference=None)
        kept = cluster._decide(MlflowClient(), again.config.cluster, "2", silhouette=0.1, champion=current)
    assert not kept.promoted and kept.champion_version == champion
    assert str(MlflowClient().get_model_version_by_alias("customer_segments", "champion").version) == champion


def test_unknown_feature_names_the_key(spark, first):
    ctx, _ = first
    overrides = ["cluster.features=[monetary, lifetime_value]", "cluster.log_features=[monetary]"]
    bad = StageContext(make_config(ctx.config.root, *SETTINGS, *overrides), spark)
    with pytest.raises(ConfigError, match="cluster.features: lifetime_value not numeric columns of customer_features"):
        cluster.run(bad)


def test_kmeans_fits_on_a_sample_and_assigns_every_customer(spark, first):
    ctx, result = first
    sampled = StageContext(make_config(ctx.config.root, *SETTINGS, "cluster.fit_sample=1000", f"cluster.k={result.k}"), spark)
    again = cluster.run(sampled)
    tracking.configure_mlflow(sampled.config)
    client = MlflowClient()
    parent = client.get_run(again.mlflow_run_id)
    [child] = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert float(child.data.params["fit_sample_fraction"]) == pytest.approx(1000 / result.customers)
    assert child.data.params["solver"] == "numpy"  # a bounded fit sample is fitted on the driver
    sizes = client.download_artifacts(child.info.run_id, "cluster_sizes.json")
    assert 900 <= sum(json.loads(Path(sizes).read_text())["cluster_sizes"]) <= 1100  # the sample, not everyone
    clusters = tables.read(spark, ctx.table("customer_clusters")).where(F.col("as_of_date") == result.as_of)
    assert clusters.count() == result.customers
    assert {r[0] for r in clusters.select("model_version").distinct().collect()} == {int(again.model_version)}
