"""Shared fixtures: one local Spark session with Delta for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segmentation.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
# The package's own configuration (segmentation/conf/, shipped in the wheel); conf/ at the
# top holds the Databricks bundle.
CONF_DIR = REPO / "segmentation" / "conf"

# Plans for a few hundred rows, not production's (Spark tests both paths; the standalone
# cluster's run keeps production's, and its tier table must equal, value for value, the one a
# test session makes):
# - expressions interpreted, not compiled to Java: Janino compiling each new query (and the
#   JIT compiling the classes it generates) cost more than it saved. A 300-customer pipeline
#   took 0.82-0.86x the time (`segmentation bench`, one run after another in one session;
#   README, "Fixed costs on a small feed");
# - no adaptive query execution: it runs each shuffle as a Spark job of its own and plans the
#   rest again after it. The same bench's JVM took 0.92x the CPU (median of three, alternated).
INTERPRETED_EXPRESSIONS = ["spark.conf.spark.sql.codegen.factoryMode=NO_CODEGEN", "spark.conf.spark.sql.codegen.wholeStage=false"]
COMPILED_EXPRESSIONS = {"spark.sql.codegen.factoryMode": "FALLBACK", "spark.sql.codegen.wholeStage": "true"}  # Spark's defaults
SMALL_DATA_PLANS = [*INTERPRETED_EXPRESSIONS, "spark.conf.spark.sql.adaptive.enabled=false"]
# Every test JVM collects garbage with the parallel collector, not G1: a test's Spark moves
# small data through a 2 GB heap, where G1's concurrent marking and write barriers cost more
# than its short pauses are worth. The same bench's JVM took 0.86x the CPU (median of two
# against three, alternated in one session).
TEST_JVM_OPTIONS = "-XX:+UseParallelGC"
# One partition per shuffle: a test's few hundred rows gain nothing from two tasks, and each
# task is a closure serialised, scheduled and run. The same bench's JVM took 0.92x the CPU
# (two runs each, alternated). The standalone cluster's run keeps two (one per executor, so
# the killed worker holds shuffle data), and its tier table must still equal local mode's.
SHUFFLE_PARTITIONS = ["spark.conf.spark.sql.shuffle.partitions=1", "spark.conf.spark.default.parallelism=1",
                      "spark.conf.spark.sql.adaptive.coalescePartitions.initialPartitionNum=1"]
TEST_SPARK_SETTINGS = [
    "spark.master=local[2]",
    *SHUFFLE_PARTITIONS,
    "spark.conf.spark.ui.enabled=false",
    "spark.conf.spark.databricks.delta.snapshotPartitions=1",
    "spark.conf.spark.driver.memory=2g",
    f"spark.conf.spark.driver.extraJavaOptions={TEST_JVM_OPTIONS}",
    "logging.level=INFO",
    *SMALL_DATA_PLANS,
]
# A Spark JVM a test starts in a process of its own (a job, a notebook kernel, a Connect
# server, the standalone cluster's executors) runs one small pipeline and exits: a third of such
# a JVM's CPU went to the C2 JIT compiler, for code that ran once. C1 only, with room for its
# code, cut two concurrent 300-customer pipelines' time to 0.75-0.83x. Not for the test
# workers' own session: it lives for the whole suite, and C2's code pays off there. Measured
# 2026-12-06 on fresh clones: with C1 only the suite had done 93 tests after 21 minutes where
# the default had done 92 after 16.5 (stopped there); C2 compiling only the hottest methods
# (ten times Tier 4's thresholds) took 1,597 s against the default's 1,528 s. Again on
# 2026-12-07, four modules (tiers, churn, bad input, CLV) in one process each, side by side:
# with C1 only the JVM used 456 CPU-s and took 629 s, with the default 429 CPU-s (C2's
# compiler 109 of them) and 488 s. The Connect server, which runs about five pipelines' work
# in its module, stays on C1: 214 CPU-s, against 258 with the default JIT (the module alone).
FRESH_JVM_OPTIONS = f"{TEST_JVM_OPTIONS} -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=512m"
FRESH_JVM_SETTINGS = [
    *TEST_SPARK_SETTINGS,
    f"spark.conf.spark.driver.extraJavaOptions={FRESH_JVM_OPTIONS}",
    f"spark.conf.spark.executor.extraJavaOptions={FRESH_JVM_OPTIONS}",
]


# The churn minimums of a small test feed (a few hundred customers): base.yaml's 100 churners
# and 100 stayers suit a real feed and would skip churn on these (tests/unit/test_sufficiency.py
# and test_bad_input.py check the minimums themselves).
SMALL_FEED = ["churn.min_positives=20", "churn.min_negatives=20"]
# Tests whose subject is the champion: a feed whose dropout depends more strongly on what the
# churn features see and BG/NBD does not (discount seeking, returns), so that the learned
# model beats every baseline by a clear margin. With base.yaml's milder effect it still wins
# on the 20,000-customer demo, but not reliably on a few thousand customers.
PLANTED_DROPOUT = ["generate.dropout_log_odds={discount_seeker: 3.0, return_rate: 40.0}"]


def make_config(root: Path, *overrides: str, env: str = "local") -> Config:
    """The local configuration with storage under `root`, plus test overrides."""
    return load_config(env, CONF_DIR, [f"storage.root={root}", *TEST_SPARK_SETTINGS, *overrides])


def base_section(key: str, **values):
    """A section as base.yaml sets it, with `values` replaced, validated as a loaded one is
    (the models have no defaults of their own)."""
    section = getattr(load_config("base", CONF_DIR), key)
    return type(section).model_validate({**section.model_dump(), **values})


# Files that share a session fixture, so one worker builds it (three_dates, tests/integration/conftest.py).
SHARED_FIXTURE_GROUPS = {"test_cluster": "three_dates", "test_faults": "three_dates", "test_export": "three_dates"}
# The longest groups (minutes each, measured by `pytest --durations`, longest first) start first, so no
# worker is left with one of them at the end while the other idles.
LONGEST_FIRST = ["three_dates", "test_spark_connect", "test_real_feeds", "test_tiers_job", "test_notebooks", "test_clv_job",
                 "test_bad_input", "test_metastore_tables", "test_privacy_pipeline", "test_churn_job", "test_mlflow_server",
                 "test_outcomes", "test_ingest_job", "test_pipeline", "test_cluster_job", "test_features_job"]


def _group(nodeid: str) -> str:
    module = Path(nodeid.split("::")[0]).stem
    return SHARED_FIXTURE_GROUPS.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist's `--dist loadfile` (what `make test` runs), each test file runs
    whole in one worker, so its module fixtures are built once; files sharing a session
    fixture (SHARED_FIXTURE_GROUPS) run in the same worker, so it is built once too. The
    groups are handed out in the workers' order (LONGEST_FIRST): xdist would otherwise
    reorder them by their number of tests, and a module of a few long tests (Spark Connect,
    14 minutes) started half an hour into the run."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # what --no-loadscope-reorder sets

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return FileGroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """In a pytest-xdist worker, the longest groups come first, so they are handed out first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item) -> int:
        group = _group(item.nodeid)
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a group stays as collected


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from segmentation.logs import configure_logging
    from segmentation.spark import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    os.environ.pop("SEGMENTATION_PSEUDONYMISATION_KEY", None)
    config = make_config(warehouse, f"spark.conf.spark.sql.warehouse.dir={warehouse}")
    configure_logging("INFO")
    session = get_spark(config.spark)
    yield session
    session.stop()


@pytest.fixture()
def config(tmp_path) -> Config:
    return make_config(tmp_path / "data")


def columns(schema):
    """Names and types of a schema: the contract, nullability aside."""
    return [(field.name, field.dataType) for field in schema]

