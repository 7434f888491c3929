"""The whole pipeline through a real Spark Connect server with Delta (`python -m
segmentation.connect serve`, what `make connect-server` runs), against a classic session.

From the same raw table, the same commands run once on the test's classic session and once
as a Connect client in its own process, whose JAVA_HOME points nowhere: `segmentation run`
for two snapshots (the first trains the churn model), `ingest` of a CSV file, `export`,
`report` and `erase` of one customer (and `erase --vacuum` on a copy). The tier tables are equal value for value, the MLflow
runs, registry aliases and Delta histories are the same, and so are the ingested batch, the
exported audiences and the report's figures. `segmentation bench --until features` runs
through a second Connect client meanwhile (the whole pipeline runs through the first). Then
the analyst and reviewer notebooks run on the Connect side's tables in kernels whose Spark
is the Connect server. A MERGE that loses to another Connect session's overwrite is tried
again and commits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation import cli, tables
from segmentation.churn.model import PROBABILITY
from segmentation.clustering.model import CLUSTER_ID
from segmentation.registry import CHALLENGER, CHAMPION
from segmentation.stages import generate, pipeline
from segmentation.stages.context import StageContext
from tests.conftest import CONF_DIR, FRESH_JVM_SETTINGS, REPO, TEST_SPARK_SETTINGS, make_config
from tests.integration.conftest import FIRST, SECOND, SETTINGS
from tests.integration.test_bad_input import pseudonym, row, write_feed

pytestmark = pytest.mark.slow

MODELS = ("customer_segments", "churn_classifier")
# What differs between two pipelines by construction: the ids of their runs.
RUN_IDS = ("pipeline_run_id", "clv_run_id", "cluster_run_id", "churn_run_id")
SERVER_START_SECONDS = 240
# The server makes the test sessions' small-data plans (interpreted expressions, no adaptive
# execution; tests/conftest.py): the module took 0.83x the time and the server 0.73x the CPU
# (276 s and 173 CPU-s against 331 s and 236, the module alone, one run each). Production's
# plans (expressions compiled to Java, adaptive execution) run on the standalone cluster
# (tests/integration/test_cluster.py), whose tier table must equal local mode's.
# Half the other integration modules' feed: every comparison holds at any size, and each
# side runs every stage twice.
FEED = [*SETTINGS, "generate.customers=150"]
AUDIENCES = "audiences"  # the export's folder under each storage root
BENCH_CUSTOMERS = 100
BENCH_UNTIL = "features"  # the bench's own code is the same for every stage; the first client runs them all
ERASE_MARKER, ERASE = "segmentation-erase-", "erase"  # an erase's Delta commits: their marker, and as compared
# The CSV batch both sides ingest after the pipelines: two lines of a new customer and one
# with an amount that is not a number (quarantined).
CSV_LINES = [
    row("CSV-1", customer_id="CSV-C1", transaction_ts="2025-11-01 10:00:00"),
    row("CSV-2", customer_id="CSV-C1", transaction_ts="2025-11-02 10:00:00", net_amount="25.50"),
    row("CSV-3", customer_id="CSV-C2", net_amount="ten"),
]

# A Connect client: each command (`segmentation ...` arguments), then whether a JVM was started here.
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
    settings; a function that waits until it listens and gives its address (it starts
    while the test's own session and input are made)."""
    folder = tmp_path_factory.mktemp("connect-server")
    port = _free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "segmentation.connect", "serve", "--port", str(port),
               *[arg for setting in FRESH_JVM_SETTINGS for arg in ("--set", setting)]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def address() -> str:
        _wait_for_port(port, server, log)
        return f"sc://localhost:{port}"

    try:
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


# Where the client is told Java is: nowhere (pyspark's launcher and `segmentation setup`
# take JAVA_HOME over PATH), so any JVM it tried to start would fail.
NO_JAVA_HOME = "/nonexistent/java-home"


def _client(commands: list[list[str]], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The Connect client process running `commands` (see CLIENT), its output into `log`."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(commands)], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _client_report(client: subprocess.Popen, log: Path, commands: list[list[str]]) -> dict:
    """What the client printed, once it exited with every command's status 0."""
    client.wait(timeout=1800)
    output = log.read_text()
    report = next((json.loads(line[len("CLIENT "):]) for line in output.splitlines() if line.startswith("CLIENT ")), None)
    assert report is not None and report["codes"] == [0] * len(commands), output[-5000:]
    return report


def _client_env(address: str) -> dict[str, str]:
    """A Connect client's environment: the server's address, Java nowhere, the demo key."""
    env = {key: value for key, value in os.environ.items() if key != "SEGMENTATION_PSEUDONYMISATION_KEY"}
    env.update(JAVA_HOME=NO_JAVA_HOME, SPARK_REMOTE=address, PYTHONPATH=str(REPO))
    return env


def _commands(root: Path, feed: Path, erased: str) -> list[list[str]]:
    """The commands both sides run on `root`, in this order: `run` for FIRST (to the tier
    table) and SECOND (to the outcomes), a CSV batch ingested, the audiences exported, the
    report, and one customer erased."""
    options = _options(root)
    return [
        ["run", *options, "--as-of", FIRST.isoformat(), "--until", "tiers"],
        ["run", *options, "--as-of", SECOND.isoformat(), "--until", "outcomes"],
        ["ingest", *options, "--source", str(feed), "--format", "csv", "--max-rejected-share", "0.5"],
        ["export", *options, "--as-of", SECOND.isoformat(), "--output", str(root / AUDIENCES)],
        ["report", *options],
        ["erase", *options, "--customer", erased],
    ]


def _options(root: Path) -> list[str]:
    """The test's configuration, with storage under `root`, as command-line options."""
    settings = [f"storage.root={root}", *TEST_SPARK_SETTINGS, *FEED]
    return ["--conf-dir", str(CONF_DIR), *[arg for setting in settings for arg in ("--set", setting)]]


@dataclass(frozen=True)
class Sides:
    classic: Path  # storage root of the commands on the test's classic session
    connect: Path  # storage root of the same commands through the Connect client
    bench: Path  # storage root of `segmentation bench` through a second Connect client
    erased: str  # the raw id of the customer both erased
    reports: list[dict]  # what each client process reported


@pytest.fixture(scope="module")
def two_pipelines(connect_server, spark, tmp_path_factory) -> Sides:
    """From the same raw table, the same commands (`_commands`) on the classic session and
    as a Connect client (a process with no Java, run meanwhile); and `segmentation bench`
    as a second Connect client, also meanwhile."""
    source, classic, connect, bench = (tmp_path_factory.mktemp(name) for name in ("source", "classic", "connect", "bench"))
    generate.run(StageContext(make_config(source, *FEED, f"as_of={FIRST}"), spark))
    raw_ref = tables.table_ref(make_config(source), "raw_transactions")
    raw = Path(raw_ref.location)
    for root in (classic, connect):
        shutil.copytree(raw, root / raw.relative_to(source))
    # A customer with a purchase before FIRST: in every snapshot, so in every table.
    erased = tables.read(spark, raw_ref).orderBy("transaction_ts", "transaction_id").first().customer_id.strip()
    feed = write_feed(source / "feed.csv", CSV_LINES)

    env = _client_env(connect_server())
    commands = {connect: _commands(connect, feed, erased),
                bench: [["bench", *_options(bench), "--customers", str(BENCH_CUSTOMERS), "--no-baselines", "--until", BENCH_UNTIL]]}
    clients = {root: _client(commands[root], root, env, source / f"client-{root.name}.log") for root in commands}
    try:
        codes = [cli.main(command) for command in _commands(classic, feed, erased)]
        reports = [_client_report(client, source / f"client-{root.name}.log", commands[root]) for root, client in clients.items()]
    finally:
        for client in clients.values():
            if client.poll() is None:
                client.kill()
    assert codes == [0] * len(codes)
    return Sides(classic, connect, bench, erased, reports)


def test_the_connect_clients_start_no_jvm(two_pipelines):
    assert len(two_pipelines.reports) == 2
    for report in two_pipelines.reports:
        assert not report["gateway"] and report["java"] == []
    assert not Path(NO_JAVA_HOME).exists()  # and it could not have


def _tiers(spark, root: Path) -> pd.DataFrame:
    df = tables.read(spark, tables.table_ref(make_config(root), "customer_tiers"))
    lineage = [f.name for f in df.schema["lineage"].dataType.fields if f.name not in RUN_IDS]
    columns = [c for c in df.columns if c != "lineage"] + [F.col(f"lineage.{name}").alias(f"lineage.{name}") for name in lineage]
    return df.select(*columns).toPandas().sort_values(["as_of_date", "customer_id"], ignore_index=True)


def test_the_tier_table_equals_the_classic_sessions(spark, two_pipelines):
    expected, actual = _tiers(spark, two_pipelines.classic), _tiers(spark, two_pipelines.connect)
    assert sorted(expected["as_of_date"].unique()) == [FIRST, SECOND]
    assert len(expected) > 0
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-6, atol=1e-6)


def _client_of(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _runs(root: Path, where: str = "") -> list:
    """The MLflow runs of the storage root's store matching the filter `where`, oldest first."""
    client = _client_of(root)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, where, max_results=1000, order_by=["attributes.start_time ASC"])


def _mlflow(root: Path) -> tuple[list[tuple], dict[str, dict[str, str]], dict[str, int]]:
    """The runs (stage, as_of, name, status, input and output versions, decision), the
    registry aliases and each pipeline run's position, by pipeline run id."""
    client = _client_of(root)
    runs = _runs(root)
    position = {}
    for run in runs:
        position.setdefault(run.data.tags["pipeline_run_id"], len(position))
    records = sorted(
        (run.data.tags["stage"], run.data.tags.get("as_of", ""), run.info.run_name, run.info.status,
         tuple(sorted((k, v) for k, v in run.data.tags.items() if k.startswith(("input.", "output.", "champion_decision", "score_source")))),
         position[run.data.tags["pipeline_run_id"]])
        for run in runs
    )
    aliases = {name: dict(sorted((alias, str(version)) for alias, version in client.get_registered_model(name).aliases.items()))
               for name in MODELS}
    return records, aliases, position


def test_mlflow_runs_and_registry_aliases_are_the_classic_sessions(two_pipelines):
    expected, actual = _mlflow(two_pipelines.classic), _mlflow(two_pipelines.connect)
    assert {stage for stage, *_ in expected[0]} >= {"pipeline", "ingest", "features", "clv", "cluster", "churn.train", "churn.score",
                                                    "tiers", "outcomes", "export", "report", "erase"}
    # Every churn training sets the challenger; the champion only if the model beat every baseline.
    assert expected[1]["churn_classifier"].get("challenger") and expected[1]["customer_segments"].get("champion")
    assert actual[:2] == expected[:2]


def _run_of(user_metadata: str | None, position: dict[str, int]) -> int | str | None:
    """The pipeline run (by position) that made a commit; ERASE for an erase's commits,
    which carry an id of their own."""
    if (user_metadata or "").startswith(ERASE_MARKER):
        return ERASE
    return position.get(user_metadata, user_metadata)


def _delta_lineage(spark, root: Path, position: dict[str, int]) -> dict[str, list[tuple]]:
    """Every Delta table's commits: version, operation and the pipeline run (by position)
    that made it."""
    found = {}
    for log in sorted(root.rglob("_delta_log")):
        ref = tables.TableRef(str(log.parent.relative_to(root)), str(log.parent), is_path=True)
        commits = tables.history(spark, ref).select("version", "operation", "userMetadata").collect()
        found[ref.key] = sorted((r.version, r.operation, _run_of(r.userMetadata, position)) for r in commits)
    return found


def test_delta_lineage_is_the_classic_sessions(spark, two_pipelines):
    classic, connect = two_pipelines.classic, two_pipelines.connect
    expected = _delta_lineage(spark, classic, _mlflow(classic)[2])
    actual = _delta_lineage(spark, connect, _mlflow(connect)[2])
    assert {"transactions", "customer_tiers", "customer_tier_history"} <= set(expected)
    assert any(run == ERASE for commits in expected.values() for _, _, run in commits)
    assert actual == expected


def _registered_outputs(spark, root: Path) -> dict[str, list]:
    """The cluster champion and the latest churn model (its challenger alias: on a small feed
    it may not beat the baselines and so be no champion), loaded as a reviewer loads them
    (mlflow.spark on a classic session, and mlflow.pyfunc), on the SECOND snapshot's features."""
    config = make_config(root, *FEED)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    rows = tables.read(spark, tables.table_ref(config, "customer_features")).where(F.col("as_of_date") == F.lit(SECOND))
    outputs = {}
    for name, alias, settings, output in (("customer_segments", CHAMPION, config.cluster, CLUSTER_ID),
                                          ("churn_classifier", CHALLENGER, config.churn, PROBABILITY)):
        sample = rows.orderBy("customer_id").select(*[F.col(c).cast("double") for c in settings.features]).limit(20)
        outputs[name] = [r[0] for r in mlflow.spark.load_model(f"models:/{name}@{alias}").transform(sample).select(output).collect()]
        predicted = mlflow.pyfunc.load_model(f"models:/{name}@{alias}").predict(sample.toPandas())
        outputs[f"{name} (pyfunc)"] = list(pd.DataFrame(predicted).iloc[:, 0])
    return outputs


def test_reviewers_load_and_score_the_models_the_connect_client_registered(spark, two_pipelines):
    expected, actual = _registered_outputs(spark, two_pipelines.classic), _registered_outputs(spark, two_pipelines.connect)
    assert len(expected["churn_classifier"]) == 20 and all(0 <= p <= 1 for p in expected["churn_classifier"])
    assert set(actual) == set(expected)
    for name, outputs in expected.items():
        assert actual[name] == pytest.approx(outputs, abs=1e-6), name


def _erase_commit(spark, ref: tables.TableRef) -> int:
    [version] = [r.version for r in tables.history(spark, ref).collect() if (r.userMetadata or "").startswith(ERASE_MARKER)]
    return version


def test_erase_through_connect_removes_the_customer_and_nothing_else(spark, two_pipelines):
    """As the classic erase (test_privacy_pipeline): gone from the current version of the raw
    table (raw id) and of the tier tables (pseudonym), every other row kept, and still in
    the version before the erase (time travel) until a vacuum."""
    config = make_config(two_pipelines.connect, *FEED)
    raw_id = two_pipelines.erased
    deleted = {}
    for key in ("raw_transactions", "transactions", "customer_tiers", "customer_tier_history"):
        ref = tables.table_ref(config, key)
        is_erased = F.trim("customer_id") == raw_id if key == "raw_transactions" else F.col("customer_id") == pseudonym(raw_id)
        before, after = (tables.read(spark, ref, version).agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(is_erased, 1)).alias("erased")).first()
                         for version in (_erase_commit(spark, ref) - 1, None))
        assert before.erased > 0 and after.erased == 0, key
        assert after.rows == before.rows - before.erased, key
        deleted[f"rows_deleted.{key}"] = before.erased
    [run] = _runs(two_pipelines.connect, "tags.stage = 'erase'")
    assert run.data.params["customers"] == "1"
    assert {key: run.data.metrics[key] for key in deleted} == deleted


# Two Connect sessions on one table: the first MERGEs a source that takes seconds to compute
# (a Python UDF on the server's workers), the second overwrites the table meanwhile. The
# MERGE's commit then conflicts (it read files the overwrite removed) and is tried again.
CONFLICT_CLIENT = """
import json, logging, os, sys, threading, time
from pyspark.sql import SparkSession, functions as F
from segmentation import tables
from segmentation.tables import TableRef

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
first, second = (SparkSession.builder.remote(os.environ["SPARK_REMOTE"]).create() for _ in range(2))
ref = TableRef("conflict", sys.argv[1], True)
tables.write(first.range(3).select("id", F.lit(0).alias("v")), ref, mode="overwrite", run_id="created")

@F.udf("long")
def slowly(value):
    import time
    if value == 0:
        time.sleep(6)
    return 2

source = first.range(3).select("id", slowly("id").alias("v"))
merging = threading.Thread(target=tables.merge, args=(source, ref), kwargs={"on": ["id"], "compare": ["v"], "run_id": "merged"})
merging.start()
time.sleep(3)
tables.write(second.range(10, 12).select("id", F.lit(5).alias("v")), ref, mode="overwrite", run_id="overwritten")
merging.join()
rows = sorted(tuple(r) for r in first.read.format("delta").load(ref.location).collect())
history = [(r.operation, r.userMetadata) for r in first.sql(f"DESCRIBE HISTORY delta.`{ref.location}`").orderBy("version").collect()]
print("CONFLICT " + json.dumps({"rows": rows, "history": history}), flush=True)
for session in (first, second):
    session.stop()
"""


def test_a_commit_that_loses_to_another_writer_is_tried_again_through_connect(connect_server, tmp_path):
    """Through Connect, a lost commit arrives as the server's error with Delta's condition,
    not as delta-spark's exception class: the retry recognises it, waits, and the MERGE
    commits on the table as the other writer left it."""
    log = tmp_path / "client.log"
    with log.open("w") as out:
        client = subprocess.run([sys.executable, "-c", CONFLICT_CLIENT, str(tmp_path / "table")], cwd=tmp_path,
                                env=_client_env(connect_server()), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    output = log.read_text()
    report = next((json.loads(line[len("CONFLICT "):]) for line in output.splitlines() if line.startswith("CONFLICT ")), None)
    assert client.returncode == 0 and report is not None, output[-5000:]
    assert re.search(r"the commit conflicted with another writer's \(DELTA_CONCURRENT_[A-Z_]+", output), output[-5000:]
    assert report["history"] == [["WRITE", "created"], ["WRITE", "overwritten"], ["MERGE", "merged"]]
    assert report["rows"] == [[0, 2], [1, 2], [2, 2], [10, 5], [11, 5]]


def test_erase_vacuum_through_connect_removes_the_old_files(spark, connect_server, two_pipelines, tmp_path):
    """`erase --vacuum` with a short retention through a Connect client, on a copy of the
    Connect side's tables (the other tests read their history): afterwards the erased
    customer's rows in the version before the erase cannot be read, the current version
    can, and the tables holding customers were vacuumed."""
    root = tmp_path / "vacuumed"
    shutil.copytree(two_pipelines.connect, root, ignore=shutil.ignore_patterns(AUDIENCES))
    ref = tables.table_ref(make_config(root, *FEED), "transactions")

    def erased_rows(version: int | None) -> int:  # a filter, so the files are read (a bare count reads Delta's stats)
        return tables.read(spark, ref, version).where(F.col("customer_id") == pseudonym(two_pipelines.erased)).count()

    def current_rows() -> int:  # the files of the current version read, as above
        return tables.read(spark, ref).where(F.col("customer_id").isNotNull()).count()

    before_erase, current = _erase_commit(spark, ref) - 1, current_rows()

    assert erased_rows(before_erase) > 0 and erased_rows(None) == 0  # time travel still holds them before the vacuum
    commands = [["erase", *_options(root), "--vacuum", "--retention-hours", "0", "--allow-short-retention"]]
    log = tmp_path / "client.log"
    report = _client_report(_client(commands, root, _client_env(connect_server()), log), log, commands)
    assert not report["gateway"] and report["java"] == []
    vacuumed = re.search(r"Vacuumed ([\w, ]+):", log.read_text())
    assert vacuumed and {"raw_transactions", "transactions", "customer_tiers"} <= set(vacuumed.group(1).split(", "))
    assert current_rows() == current
    with pytest.raises(Exception, match="(?i)file|path"):
        erased_rows(before_erase)
    [run] = _runs(root, "tags.stage = 'erase' AND params.vacuum = 'True'")
    assert run.data.params["retention_hours"] == "0.0"


def _batch(spark, root: Path, key: str, columns: list[str]) -> pd.DataFrame:
    rows = tables.read(spark, tables.table_ref(make_config(root), key)).where(F.col("transaction_id").startswith("CSV-"))
    return rows.select(*columns).toPandas().sort_values("transaction_id", ignore_index=True)


def test_a_csv_batch_ingested_through_connect_is_the_classic_sessions(spark, two_pipelines):
    classic, connect = two_pipelines.classic, two_pipelines.connect
    for key, columns, expected in (("transactions", ["transaction_id", "customer_id", "transaction_ts", "net_amount"], 2),
                                   ("transactions_quarantine", ["transaction_id", "customer_id", "net_amount", "reasons"], 1)):
        rows = _batch(spark, connect, key, columns)
        assert len(rows) == expected, key
        pd.testing.assert_frame_equal(rows, _batch(spark, classic, key, columns))
    assert set(_batch(spark, connect, "transactions", ["transaction_id", "customer_id"])["customer_id"]) == {pseudonym("CSV-C1")}
    assert list(_batch(spark, connect, "transactions_quarantine", ["transaction_id", "reasons"])["reasons"][0]) == ["bad_type:net_amount"]


def test_the_audiences_exported_through_connect_are_the_classic_sessions(two_pipelines):
    expected, actual = two_pipelines.classic / AUDIENCES, two_pipelines.connect / AUDIENCES
    files = sorted(path.name for path in expected.iterdir())
    assert len(files) > 1 and sorted(path.name for path in actual.iterdir()) == files
    assert sum(len((expected / name).read_text().splitlines()) - 1 for name in files) > 0  # customers, beyond the headers
    for name in files:
        assert (actual / name).read_text() == (expected / name).read_text(), name


def _report_kpis(root: Path) -> dict[str, float]:
    [run] = _runs(root, "tags.stage = 'report'")
    return {key: value for key, value in run.data.metrics.items() if key.startswith("kpi.")}


def test_the_report_through_connect_is_the_classic_sessions(two_pipelines):
    assert (two_pipelines.connect / "reports" / f"customer_tiers_{SECOND.isoformat()}.html").stat().st_size > 10_000
    expected = _report_kpis(two_pipelines.classic)
    assert expected and _report_kpis(two_pipelines.connect) == pytest.approx(expected, rel=1e-6)


def test_bench_through_connect_reports_the_stage_times(two_pipelines):
    """Under Connect the client cannot ask the server's UI for jobs: stage times, no profile."""
    report = json.loads((two_pipelines.bench / "bench" / f"bench_{BENCH_CUSTOMERS}.json").read_text())
    assert report["customers_generated"] == BENCH_CUSTOMERS and report["customers"] > 0
    assert report["until"] == BENCH_UNTIL
    assert [stage["stage"] for stage in report["stages"]] == ["generate", *pipeline.STAGES[:pipeline.STAGES.index(BENCH_UNTIL) + 1]]
    assert all(stage["seconds"] > 0 for stage in report["stages"])
    assert report["pipeline_seconds"] > 0 and report["profile"] is None
    assert "rfm" not in report and "clv" not in report  # --no-baselines


def test_the_analyst_and_reviewer_notebooks_run_through_connect(connect_server, two_pipelines, monkeypatch):
    """The analyst and reviewer notebooks on the Connect side's tables, in kernels whose Spark
    is the Connect server (no Java either). The quick start is `segmentation run` in a kernel:
    the commands above cover its Spark work."""
    from tests.integration.test_notebooks import ORDER, assert_reviewer_scoring, execute, notebook_env, outputs

    settings = [f"storage.root={two_pipelines.connect}", *TEST_SPARK_SETTINGS, *FEED]
    notebook_env(monkeypatch, settings, SPARK_REMOTE=connect_server(), JAVA_HOME=NO_JAVA_HOME, PYTHONPATH=str(REPO))
    analyst, analyst_images = outputs(execute(ORDER[1]))
    reviewer, _ = outputs(execute(ORDER[2]))
    for text in (analyst, reviewer):
        assert "Spark Connect session on sc://localhost:" in text
    assert f"exploring {SECOND}, compared with {FIRST}" in analyst and f"{FIRST} -> {SECOND}, from tier_migrations" in analyst
    assert analyst_images >= 5
    aliases = _client_of(two_pipelines.connect).get_registered_model("churn_classifier").aliases
    champion = aliases.get(CHAMPION)
    assert f"champion: {'version ' + champion if champion else 'none'}; challenger: version {aliases[CHALLENGER]}" in reviewer
    assert_reviewer_scoring(reviewer, champion)
