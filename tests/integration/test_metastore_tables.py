"""Where the platform owns the session and the catalog (Databricks, a cluster with a
metastore): every stage runs as the bundle runs it, one `segmentation <stage>` command each
with a blank --as-of, on tables named catalog.schema.table in the session's catalog, through
the session the caller already has. Then the generic cluster: jobs/run.py under spark-submit
with the cluster overlay, Delta's jars from --jars and the tables in the metastore."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import segmentation.spark
from segmentation import cli, tables
from segmentation.config import TableLocations, load_config
from tests.conftest import COMPILED_EXPRESSIONS, CONF_DIR, FRESH_JVM_OPTIONS, REPO, SMALL_FEED, TEST_SPARK_SETTINGS

SCHEMA = "segmentation_metastore_test"
SETTINGS = ["generate.customers=400", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression", *SMALL_FEED]
# The bundle's tasks, in an order its dependencies allow (conf/bundle/resources).
COMMANDS = [
    ["generate"], ["ingest"], ["features", "--as-of", ""], ["clv", "--as-of", ""], ["cluster", "--as-of", ""],
    ["churn", "train", "--as-of", ""], ["churn", "score", "--as-of", ""], ["tiers", "--as-of", ""], ["report", "--as-of", ""],
]
# Movement needs two snapshots; one as-of date writes none.
SECOND_SNAPSHOT_ONLY = {"tier_migrations", "tier_events"}
# treatment_outcomes is written once a snapshot's outcome window (outcomes.window_days) has ended
NOT_YET_WRITTEN = SECOND_SNAPSHOT_ONLY | {"treatment_outcomes"}
BIN = Path(sys.executable).parent


def metastore_settings(schema: str) -> list[str]:
    return ["storage.catalog=metastore", *[f"storage.tables.{key}={schema}.{key}" for key in TableLocations.model_fields]]


def name(key: str) -> str:
    return f"spark_catalog.{SCHEMA}.{key}"


@pytest.fixture(scope="module")
def staged(spark, tmp_path_factory):
    """Every stage as a separate command, as the bundle's tasks run them; the sessions they used."""
    root = tmp_path_factory.mktemp("metastore")
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS spark_catalog.{SCHEMA}")  # on Unity Catalog it exists already
    settings = [f"storage.root={root}", *TEST_SPARK_SETTINGS, *SETTINGS, *metastore_settings(f"spark_catalog.{SCHEMA}")]
    options = ["--env", "local", "--conf-dir", str(CONF_DIR), *[arg for s in settings for arg in ("--set", s)]]
    sessions = []
    factory = segmentation.spark.get_spark

    def recording(config):
        sessions.append(factory(config))
        return sessions[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segmentation.spark, "get_spark", recording)
        codes = [cli.main([*command, *options]) for command in COMMANDS]
    yield codes, sessions, load_config("local", CONF_DIR, settings)
    spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{SCHEMA} CASCADE")


def test_every_stage_used_the_callers_session(spark, staged):
    codes, sessions, _ = staged
    assert codes == [0] * len(COMMANDS)
    assert len(sessions) == len(COMMANDS) and all(session is spark for session in sessions)


def test_tables_are_registered_in_the_catalog_by_name(spark, staged):
    _, _, config = staged
    for key in TableLocations.model_fields:
        ref = tables.table_ref(config, key)
        assert not ref.is_path and ref.location == name(key)
        assert spark.catalog.tableExists(name(key)) == (key not in NOT_YET_WRITTEN), key
    # Spark's catalog listing decodes its rows with generated code only: with expressions
    # interpreted (the test session's setting, tests/conftest.py) it fails with
    # EXPRESSION_DECODING_FAILED. Listed as production lists them, compiled.
    with tables.session_conf(spark, COMPILED_EXPRESSIONS):
        listed = {t.name for t in spark.catalog.listTables(f"spark_catalog.{SCHEMA}")}
        assert listed == set(TableLocations.model_fields) - NOT_YET_WRITTEN
        assert all(spark.catalog.getTable(name(key)).tableType == "MANAGED" for key in listed)


def test_a_blank_as_of_resolves_to_the_same_date_in_every_stage(spark, staged):
    latest = spark.table(name("transactions")).agg(F.max(F.to_date("transaction_ts"))).first()[0]
    tiers = spark.table(name("customer_tiers"))
    assert tiers.count() > 0
    for key in ("customer_features", "customer_clv", "customer_clusters", "customer_churn", "customer_tiers"):
        dates = [row.as_of_date for row in spark.table(name(key)).select("as_of_date").distinct().collect()]
        assert dates == [latest], key
    customers = spark.table(name("customer_features")).count()
    assert tiers.select("customer_id").distinct().count() == customers


def test_time_travel_by_name(spark, staged):
    history = spark.sql(f"DESCRIBE HISTORY {name('customer_tiers')}").orderBy("version").collect()
    current = spark.table(name("customer_tiers")).count()
    assert spark.sql(f"SELECT count(*) FROM {name('customer_tiers')} VERSION AS OF {history[-1].version}").first()[0] == current
    # the table was created empty with its schema and constraints before the first snapshot
    assert spark.sql(f"SELECT count(*) FROM {name('customer_tiers')} VERSION AS OF {history[0].version}").first()[0] == 0
    assert "ADD CONSTRAINT" not in {row.operation for row in history}  # they came with the CREATE TABLE
    # the DataFrame reader the stages use travels the same way
    _, _, config = staged
    ref = tables.table_ref(config, "transactions")
    version = tables.current_version(spark, ref)
    assert tables.read(spark, ref, version).count() == spark.table(name("transactions")).count() > 0


def test_on_databricks_a_task_without_an_active_session_gets_the_clusters(spark, monkeypatch):
    """A Databricks job's Python process may not have an active session yet: the factory asks
    the builder for the cluster's session instead of building one or failing."""
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    assert segmentation.spark.get_spark(load_config("databricks", CONF_DIR).spark) is spark


@pytest.mark.slow
def test_spark_submit_with_the_cluster_overlay_and_metastore_tables(tmp_path):
    """The README's generic-cluster command: the master and Delta's jars from spark-submit, the
    Delta SQL extension and catalog from the session factory (metastore names need them)."""
    jars = subprocess.run([str(BIN / "segmentation"), "setup", "--print-jars"], capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run([str(BIN / "segmentation"), "setup", "--print-java-options"], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert "-XX:SharedArchiveFile=" in archive  # `make test` ran setup, which made the class-data archive
    overrides = [
        f"storage.root={tmp_path / 'shared'}", f"spark.conf.spark.sql.warehouse.dir={tmp_path / 'warehouse'}",
        "spark.conf.spark.ui.enabled=false", "spark.conf.spark.sql.shuffle.partitions=4",
        "spark.conf.spark.databricks.delta.snapshotPartitions=2", *metastore_settings("spark_catalog.default"),
    ]
    result = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", "--jars", jars, "--driver-java-options", f"{FRESH_JVM_OPTIONS} {archive}", str(REPO / "jobs" / "run.py"),
         "--env", "cluster", "--conf-dir", str(CONF_DIR), "--dataset", "cdnow_sample", "--until", "features",
         *[arg for item in overrides for arg in ("--set", item)]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SEGMENTATION_PSEUDONYMISATION_KEY": "cluster-test-key-0123456789"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "environment cluster" in output and "stage features: finished" in output and "customers=2357" in output
    assert "transactions             spark_catalog.default.transactions  (Delta version" in result.stdout
    assert (tmp_path / "warehouse" / "customer_features" / "_delta_log").is_dir()
    assert (tmp_path / "shared" / "mlflow.db").is_file()
