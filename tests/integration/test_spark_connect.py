"""The whole pipeline through a real Spark Connect server with Delta (`python -m
segmentation.connect serve`, what `make connect-server` runs), against a classic session.

From the same raw table, `segmentation run` for two snapshots (the first trains the churn
model) runs once on the test's classic session and once as a Connect client in its own
process, whose JAVA_HOME points nowhere: the tier tables are equal value for value, and the
MLflow runs, registry aliases and Delta histories are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation import tables
from segmentation.churn.model import PROBABILITY
from segmentation.clustering.model import CLUSTER_ID
from segmentation.stages import generate, pipeline
from segmentation.stages.context import StageContext
from tests.conftest import REPO, TEST_SPARK_SETTINGS, make_config
from tests.integration.conftest import FIRST, SECOND, SETTINGS

pytestmark = pytest.mark.slow

ARGS = argparse.Namespace(generate=False, train_churn=False, until="report")
MODELS = ("customer_segments", "churn_classifier")
# What differs between two pipelines by construction: the ids of their runs.
RUN_IDS = ("pipeline_run_id", "clv_run_id", "cluster_run_id", "churn_run_id")
SERVER_START_SECONDS = 240

# The Connect client: `segmentation run` for each date, then whether a JVM was started here.
CLIENT = """
import json, sys
import psutil
from pyspark import SparkContext
from segmentation.cli import main

codes = [main(args) for args in json.loads(sys.argv[1])]
java = [p.name() for p in psutil.Process().children(recursive=True) if "java" in p.name()]
print("CLIENT " + json.dumps({"codes": codes, "gateway": SparkContext._gateway is not None, "java": java}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the Spark Connect server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    pytest.fail(f"the Spark Connect server did not listen on {port} within {SERVER_START_SECONDS} s")


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """A Spark Connect server with Delta in its own process, with the test session's Spark
    settings; its address."""
    folder = tmp_path_factory.mktemp("connect-server")
    port = _free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "segmentation.connect", "serve", "--port", str(port),
               *[arg for setting in TEST_SPARK_SETTINGS for arg in ("--set", setting)]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, server, log)
        yield f"sc://localhost:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


# Where the client is told Java is: nowhere (pyspark's launcher and `segmentation setup`
# take JAVA_HOME over PATH), so any JVM it tried to start would fail.
NO_JAVA_HOME = "/nonexistent/java-home"


@pytest.fixture(scope="module")
def two_pipelines(spark, connect_server, tmp_path_factory):
    """Storage roots of `segmentation run` for FIRST then SECOND from the same raw table: on
    the classic session and as a Connect client (a process with no Java, run meanwhile); the
    client's report."""
    source, classic, connect = (tmp_path_factory.mktemp(name) for name in ("source", "classic", "connect"))
    generate.run(StageContext(make_config(source, *SETTINGS, f"as_of={FIRST}"), spark))
    raw = Path(tables.table_ref(make_config(source), "raw_transactions").location)
    for root in (classic, connect):
        shutil.copytree(raw, root / raw.relative_to(source))

    overrides = [arg for setting in [f"storage.root={connect}", *TEST_SPARK_SETTINGS, *SETTINGS] for arg in ("--set", setting)]
    runs = [["run", *overrides, "--as-of", as_of.isoformat()] for as_of in (FIRST, SECOND)]
    env = {key: value for key, value in os.environ.items() if key != "SEGMENTATION_PSEUDONYMISATION_KEY"}
    env.update(JAVA_HOME=NO_JAVA_HOME, SPARK_REMOTE=connect_server, PYTHONPATH=str(REPO))
    log = source / "client.log"
    with log.open("w") as out:
        client = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(runs)], cwd=connect, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        for as_of in (FIRST, SECOND):
            pipeline.run(StageContext(make_config(classic, *SETTINGS, f"as_of={as_of}"), spark), ARGS)
        client.wait(timeout=1800)
    finally:
        if client.poll() is None:
            client.kill()
    output = log.read_text()
    report = next((json.loads(line[len("CLIENT "):]) for line in output.splitlines() if line.startswith("CLIENT ")), None)
    assert report is not None and report["codes"] == [0, 0], output[-5000:]
    return classic, connect, report


def test_the_connect_client_starts_no_jvm(two_pipelines):
    _, _, report = two_pipelines
    assert not report["gateway"] and report["java"] == []
    assert not Path(NO_JAVA_HOME).exists()  # and it could not have


def _tiers(spark, root: Path) -> pd.DataFrame:
    df = tables.read(spark, tables.table_ref(make_config(root), "customer_tiers"))
    lineage = [f.name for f in df.schema["lineage"].dataType.fields if f.name not in RUN_IDS]
    columns = [c for c in df.columns if c != "lineage"] + [F.col(f"lineage.{name}").alias(f"lineage.{name}") for name in lineage]
    return df.select(*columns).toPandas().sort_values(["as_of_date", "customer_id"], ignore_index=True)


def test_the_tier_table_equals_the_classic_sessions(spark, two_pipelines):
    classic, connect, _ = two_pipelines
    expected, actual = _tiers(spark, classic), _tiers(spark, connect)
    assert sorted(expected["as_of_date"].unique()) == [FIRST, SECOND]
    assert len(expected) > 0
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-6, atol=1e-6)


def _mlflow(root: Path) -> tuple[list[tuple], dict[str, dict[str, str]], dict[str, int]]:
    """The runs (stage, as_of, name, status, input and output versions, decision), the
    registry aliases and each pipeline run's position, by pipeline run id."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000, order_by=["attributes.start_time ASC"])
    position = {}
    for run in runs:
        position.setdefault(run.data.tags["pipeline_run_id"], len(position))
    records = sorted(
        (run.data.tags["stage"], run.data.tags.get("as_of", ""), run.info.run_name, run.info.status,
         tuple(sorted((k, v) for k, v in run.data.tags.items() if k.startswith(("input.", "output.", "champion_decision")))),
         position[run.data.tags["pipeline_run_id"]])
        for run in runs
    )
    aliases = {name: dict(sorted((alias, str(version)) for alias, version in client.get_registered_model(name).aliases.items()))
               for name in MODELS}
    return records, aliases, position


def test_mlflow_runs_and_registry_aliases_are_the_classic_sessions(two_pipelines):
    classic, connect, _ = two_pipelines
    expected, actual = _mlflow(classic), _mlflow(connect)
    assert {stage for stage, *_ in expected[0]} >= {"pipeline", "ingest", "features", "clv", "cluster", "churn.train", "churn.score", "tiers"}
    assert expected[1]["churn_classifier"].get("champion") and expected[1]["customer_segments"].get("champion")
    assert actual[:2] == expected[:2]


def _delta_lineage(spark, root: Path, position: dict[str, int]) -> dict[str, list[tuple]]:
    """Every Delta table's commits: version, operation and the pipeline run (by position)
    that made it."""
    found = {}
    for log in sorted(root.rglob("_delta_log")):
        ref = tables.TableRef(str(log.parent.relative_to(root)), str(log.parent), is_path=True)
        commits = tables.history(spark, ref).select("version", "operation", "userMetadata").collect()
        found[ref.key] = sorted((r.version, r.operation, position.get(r.userMetadata, r.userMetadata)) for r in commits)
    return found


def test_delta_lineage_is_the_classic_sessions(spark, two_pipelines):
    classic, connect, _ = two_pipelines
    expected = _delta_lineage(spark, classic, _mlflow(classic)[2])
    actual = _delta_lineage(spark, connect, _mlflow(connect)[2])
    assert {"transactions", "customer_tiers", "customer_tier_history"} <= set(expected)
    assert actual == expected


def _champion_outputs(spark, root: Path) -> dict[str, list]:
    """Each champion, loaded as a reviewer loads it (mlflow.spark on a classic session, and
    mlflow.pyfunc), on the SECOND snapshot's customer features."""
    config = make_config(root, *SETTINGS)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    rows = tables.read(spark, tables.table_ref(config, "customer_features")).where(F.col("as_of_date") == F.lit(SECOND))
    outputs = {}
    for name, settings, output in (("customer_segments", config.cluster, CLUSTER_ID), ("churn_classifier", config.churn, PROBABILITY)):
        sample = rows.orderBy("customer_id").select(*[F.col(c).cast("double") for c in settings.features]).limit(20)
        outputs[name] = [r[0] for r in mlflow.spark.load_model(f"models:/{name}@champion").transform(sample).select(output).collect()]
        predicted = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(sample.toPandas())
        outputs[f"{name} (pyfunc)"] = list(pd.DataFrame(predicted).iloc[:, 0])
    return outputs


def test_reviewers_load_and_score_the_models_the_connect_client_registered(spark, two_pipelines):
    classic, connect, _ = two_pipelines
    expected, actual = _champion_outputs(spark, classic), _champion_outputs(spark, connect)
    assert len(expected["churn_classifier"]) == 20 and all(0 <= p <= 1 for p in expected["churn_classifier"])
    assert set(actual) == set(expected)
    for name, outputs in expected.items():
        assert actual[name] == pytest.approx(outputs, abs=1e-6), name
