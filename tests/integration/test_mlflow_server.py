"""MLflow for reviewers: a real `mlflow server` (SQLite backend, proxied artifact root) on
loopback, two pipeline runs with different settings pointed at it by `mlflow.tracking_uri`,
and then what a reviewer does through the client only: search runs by tag and metric,
compare the two runs, load the champions by alias, and find the Delta versions each run
read in the Delta history."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.churn.model import PROBABILITY
from segmentation.clustering.model import PREDICTION
from segmentation.registry import CHALLENGER, CHAMPION
from tests.conftest import PLANTED_DROPOUT, SMALL_FEED, make_config

pytestmark = pytest.mark.slow

# Small and quick: 400 customers, one K-means fit, two training cutoffs, a shallow GBT.
SETTINGS = ["generate.customers=400", "cluster.restarts=1", "churn.training_cutoffs=2", *SMALL_FEED, *PLANTED_DROPOUT,
            "churn.gbt={maxIter: 5, maxDepth: 3, stepSize: 0.3, subsamplingRate: 0.8}"]
FIRST, FIRST_UNTIL = [*SETTINGS, "cluster.k=3", "churn.model=gbt"], "report"
SECOND, SECOND_UNTIL = [*SETTINGS, "cluster.k=4", "churn.model=logistic_regression"], "churn"  # a retrain, scored
STAGES = {"pipeline", "ingest", "features", "clv", "cluster", "cluster.candidate", "churn.train", "churn.score", "tiers", "outcomes", "report"}
START_SECONDS = 240  # the server imports MLflow's whole app; slow on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and its uvicorn worker), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            try:  # a worker that outlived the CLI
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` as a reviewer's team would run it, on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # No GenAI job runner: it would start a pool of worker processes this test never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    previous_uri = mlflow.get_tracking_uri()
    with open(root / "server.log", "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            _wait_until_healthy(uri, process, root / "server.log")
            yield uri, root
        finally:
            _stop(process)
            mlflow.set_tracking_uri(previous_uri)  # the other tests' stores are their own


def _wait_until_healthy(uri: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {START_SECONDS} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def two_runs(spark, server, tmp_path_factory):
    """The pipeline twice on the same data, pointed at the server: the whole pipeline, then
    up to churn scoring with another k and a logistic-regression churn challenger."""
    uri, _ = server
    root = tmp_path_factory.mktemp("reviewed")
    contexts = []
    for settings, train_churn, until in ((FIRST, False, FIRST_UNTIL), (SECOND, True, SECOND_UNTIL)):
        ctx = StageContext(make_config(root, *settings, f"mlflow.tracking_uri={uri}"), spark)
        pipeline.run(ctx, argparse.Namespace(generate=False, train_churn=train_churn, until=until))
        contexts.append(ctx)
    return contexts


def _experiment_runs(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list:
    return client.search_runs([experiment_id], filter_string, order_by=["attributes.start_time ASC"], max_results=1000)


def test_the_server_owns_the_store_and_every_run_carries_the_reviewer_tags(server, two_runs):
    uri, root = server
    first, second = two_runs
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(first.config.mlflow.experiment)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    assert (root / "mlflow.db").is_file() and any((root / "artifacts").rglob("MLmodel"))
    assert not (first.config.root / "mlflow.db").exists() and not (first.config.root / "mlartifacts").exists()

    runs = _experiment_runs(client, experiment.experiment_id)
    pipelines = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert [r.data.tags["pipeline_run_id"] for r in pipelines] == [first.pipeline_run_id, second.pipeline_run_id]
    assert {r.data.tags["stage"] for r in runs} == STAGES
    by_id = {r.info.run_id: r for r in runs}
    for run in runs:
        tags = run.data.tags
        assert set(tracking.RUN_TAGS) <= set(tags), (tags["stage"], set(tracking.RUN_TAGS) - set(tags))
        assert tags["environment"] == "local" and tags["git_commit"] == tracking.git_commit()
        assert run.info.run_name == (f"k={run.data.params['k']}" if tags["stage"] == "cluster.candidate" else tags["stage"])
        assert run.info.status == "FINISHED"
        if tags["stage"] != "pipeline":
            parent = by_id[tags["mlflow.parentRunId"]]
            assert parent.data.tags["pipeline_run_id"] == tags["pipeline_run_id"]
            assert parent.data.tags["stage"] == ("cluster" if tags["stage"] == "cluster.candidate" else "pipeline")
        if tags["stage"] != "ingest":  # ingest loads whatever the source holds, not a snapshot
            assert tags[tracking.AS_OF] == pipelines[0].data.tags[tracking.AS_OF]
        if tags["stage"] != "pipeline":
            assert any(k.startswith("input.") and k.endswith(".version") for k in tags), tags["stage"]
    hashes = {r.data.tags["pipeline_run_id"]: r.data.tags["config_hash"] for r in pipelines}
    assert hashes == {first.pipeline_run_id: first.config.fingerprint(), second.pipeline_run_id: second.config.fingerprint()}
    assert len(set(hashes.values())) == 2


def test_search_by_tag_and_metric_and_compare_the_two_churn_models(server, two_runs):
    uri, _ = server
    first, second = two_runs
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(first.config.mlflow.experiment).experiment_id
    as_of = first.config.as_of or client.search_runs([experiment_id], "tags.stage = 'pipeline'")[0].data.tags["as_of"]

    trained = _experiment_runs(client, experiment_id, f"tags.stage = 'churn.train' AND tags.as_of = '{as_of}' AND metrics.roc_auc > 0.5")
    assert [r.data.tags["pipeline_run_id"] for r in trained] == [first.pipeline_run_id, second.pipeline_run_id]
    [logistic] = client.search_runs([experiment_id], "tags.stage = 'churn.train' AND tags.model_type = 'logistic_regression'")
    assert logistic.info.run_id == trained[1].info.run_id

    gbt, lr = trained
    changed = {k for k in gbt.data.params.keys() | lr.data.params.keys() if gbt.data.params.get(k) != lr.data.params.get(k)}
    assert changed == {"model"} and (gbt.data.params["model"], lr.data.params["model"]) == ("gbt", "logistic_regression")
    for name in ("pr_auc", "roc_auc", "lift_10", "brier", "baseline_recency_pr_auc", "evaluation_rows"):
        assert name in gbt.data.metrics and name in lr.data.metrics, name
    assert gbt.data.metrics["evaluation_rows"] == lr.data.metrics["evaluation_rows"]  # the same out-of-time rows
    assert gbt.data.metrics["pr_auc"] != lr.data.metrics["pr_auc"]
    if gbt.data.tags["champion_decision"] == "promoted":  # the champion, re-scored on the same rows
        assert lr.data.metrics["champion_pr_auc"] == pytest.approx(gbt.data.metrics["pr_auc"])
    else:  # the GBT lost to a baseline (README "Churn risk"): no champion to compare with, a baseline scores
        assert "champion_pr_auc" not in lr.data.metrics and "baseline" in gbt.data.tags["champion_reason"]
        assert gbt.data.tags["score_source"].startswith("baseline:")
    for name in ("evaluation_cutoff", "training_cutoffs", "horizon_days", "input.transactions.version"):
        assert gbt.data.tags[name] == lr.data.tags[name], name

    clusters = _experiment_runs(client, experiment_id, "tags.stage = 'cluster'")
    assert [(r.data.params["k"], r.data.metrics["k"]) for r in clusters] == [("3", 3.0), ("4", 4.0)]
    candidates = _experiment_runs(client, experiment_id, f"tags.stage = 'cluster.candidate' AND tags.pipeline_run_id = '{second.pipeline_run_id}'")
    assert [r.info.run_name for r in candidates] == ["k=4"]


def test_champions_load_by_alias_and_predict(spark, server, two_runs):
    uri, _ = server
    first, second = two_runs
    client = MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve against the current tracking URI
    rows = tables.read(spark, second.table("customer_features"))
    as_of = rows.agg(F.max("as_of_date")).first()[0]
    rows = rows.where(F.col("as_of_date") == F.lit(as_of))

    for name, stage, settings, output in (("churn_classifier", "churn.train", second.config.churn, PROBABILITY),
                                          ("customer_segments", "cluster", second.config.cluster, PREDICTION)):
        # A churn model that beat no baseline is no champion (README "Churn risk"): then the
        # latest training's version, its challenger, is the one a reviewer loads.
        aliases = client.get_registered_model(name).aliases
        alias = CHAMPION if CHAMPION in aliases or name != "churn_classifier" else CHALLENGER
        version = client.get_model_version_by_alias(name, alias)
        run = client.get_run(version.run_id)
        assert run.data.tags["stage"] == stage
        decided = _experiment_runs(client, run.info.experiment_id, f"tags.stage = '{stage}' AND tags.champion_decision = 'promoted'")
        if alias == CHAMPION:
            assert version.run_id == decided[-1].info.run_id  # the last promotion holds the alias
        else:
            assert decided == [] and run.data.tags["score_source"].startswith("baseline:")
        model = mlflow.spark.load_model(f"models:/{name}@{alias}")
        sample = rows.select(*[F.col(c).cast("double") for c in settings.features]).limit(5)
        predicted = [r[0] for r in model.transform(sample).select(output).collect()]
        assert len(predicted) == 5
        if name == "churn_classifier":
            assert all(0.0 <= p <= 1.0 for p in predicted)
        else:
            assert all(0 <= p < int(run.data.params["k"]) for p in predicted)


def test_the_delta_versions_each_run_read_are_in_the_delta_history(spark, server, two_runs):
    """Every version a run read (tag and dataset input agree) is a commit of that table, made
    by the pipeline run whose stage tagged it as output; the second pipeline's stages read
    the first's unchanged transactions and their own new feature snapshot."""
    uri, _ = server
    first, second = two_runs
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(first.config.mlflow.experiment).experiment_id
    runs = _experiment_runs(client, experiment_id)
    writers = {(key[len("output."):-len(".version")], int(v)): r.data.tags["pipeline_run_id"]
               for r in runs for key, v in r.data.tags.items() if key.startswith("output.")}
    assert {key for key, _ in writers} >= {"transactions", "customer_features", "customer_clv", "customer_clusters",
                                           "customer_churn", "customer_tiers", "customer_tier_history"}
    read: dict[str, dict[str, int]] = {}
    for run in runs:
        tags = run.data.tags
        versions = {key[len("input."):-len(".version")]: int(v) for key, v in tags.items() if key.startswith("input.")}
        datasets = {}
        for item in run.inputs.dataset_inputs:
            source = json.loads(item.dataset.source)
            datasets[item.dataset.name] = (source.get("delta_table_version", 0), item.dataset.digest, source["path"])
        assert {k: v for k, (v, _, _) in datasets.items()} == versions, tags["stage"]
        for key, (version, digest, path) in datasets.items():
            assert digest == f"v{version}" and path == first.table(key).location
            history = {r.version: r.userMetadata for r in DeltaTable.forPath(spark, path).history().select("version", "userMetadata").collect()}
            assert version in history, (tags["stage"], key, version)
            if (key, version) in writers:
                assert history[version] == writers[(key, version)], (tags["stage"], key, version)
        read[f"{tags['pipeline_run_id']}:{tags['stage']}"] = versions

    def of(ctx, stage):
        return read[f"{ctx.pipeline_run_id}:{stage}"]

    assert of(first, "features")["transactions"] == of(second, "features")["transactions"] == of(second, "churn.train")["transactions"]
    assert writers[("transactions", of(second, "clv")["transactions"])] == first.pipeline_run_id
    assert of(second, "cluster")["customer_features"] > of(first, "cluster")["customer_features"]
    for ctx in (first, second):
        features = of(ctx, "cluster")["customer_features"]
        assert writers[("customer_features", features)] == ctx.pipeline_run_id
        assert of(ctx, "churn.score")["customer_features"] == features
    assert of(first, "tiers")["customer_features"] == of(first, "cluster")["customer_features"]
    for key in ("customer_clv", "customer_clusters", "customer_churn"):
        assert writers[(key, of(first, "tiers")[key])] == first.pipeline_run_id, key
    assert writers[("customer_tiers", of(first, "report")["customer_tiers"])] == first.pipeline_run_id
    assert of(first, "report")["customer_tiers"] == tables.current_version(spark, first.table("customer_tiers"))
