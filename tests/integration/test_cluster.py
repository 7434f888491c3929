"""The pipeline on a real Spark standalone cluster (a master and two workers on the loopback
interface, started with the pyspark distribution's own launcher) through spark-submit, with
one worker killed in the middle of a stage: the job completes and its tier table equals the
one local mode produces from the same raw data (with two partitions per shuffle where local
mode has one, and production's query plans where local mode makes small-data plans)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pyspark
import pytest
from pyspark.sql import functions as F

from segmentation import tables
from segmentation.jvm import archive_options
from segmentation.spark import configured_jars_dir, local_delta_jars
from segmentation.tiers.snapshot import TIER_COLUMNS
from tests.conftest import CONF_DIR, FRESH_JVM_OPTIONS, FRESH_JVM_SETTINGS, REPO, SHUFFLE_PARTITIONS, SMALL_DATA_PLANS, make_config
from tests.integration.conftest import FIRST, SETTINGS

pytestmark = pytest.mark.slow

SPARK_HOME = Path(pyspark.__file__).parent
# Two partitions per shuffle, one per executor, where the local run has one (tests/conftest.py);
# and production's plans (expressions compiled to Java, adaptive execution) where the local run
# makes small-data plans, so equal tier tables also prove the two kinds of plan agree.
SPARK_SETTINGS = [s for s in FRESH_JVM_SETTINGS
                  if not s.startswith("spark.master=") and s not in SHUFFLE_PARTITIONS and s not in SMALL_DATA_PLANS] + [
    "spark.conf.spark.sql.shuffle.partitions=2", "spark.conf.spark.default.parallelism=2",
    "spark.conf.spark.sql.adaptive.coalescePartitions.initialPartitionNum=2",
]
KILL_DURING = "stage cluster: started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """A master and workers as child processes of `spark-class`, each in its own process
    group, so that killing a worker also kills the executor it launched."""

    def __init__(self, work: Path, workers: int = 2):
        self.work = work
        self.port, self.web_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_DAEMON_MEMORY": "256m", "PYSPARK_PYTHON": sys.executable}
        self.master = self._daemon("master", "org.apache.spark.deploy.master.Master",
                                   "--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.web_port))
        self.workers = [
            self._daemon(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                         "--cores", "1", "--memory", "1536m", "--webui-port", str(free_port()),
                         "--work-dir", str(work / f"worker-{i}"))
            for i in range(workers)
        ]
        self.wait_for_workers(workers)

    def _daemon(self, name: str, main_class: str, *args: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        return subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), main_class, *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        return sum(w["state"] == "ALIVE" for w in self.state()["workers"])

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.alive_workers() == count:
                    return
            except (OSError, ValueError):
                pass  # the master's web UI is not up yet, or answered before its first state (empty, not JSON)
            time.sleep(1)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.work.glob("*.log")))
        raise RuntimeError(f"the standalone cluster did not get {count} workers in {timeout} s:\n{logs}")

    def kill_worker(self, index: int) -> list[str]:
        """SIGKILL a worker and the executor it runs; the command lines killed."""
        group = self.workers[index].pid
        # process_iter fills `info` itself, with None for a process it may not read or that just ended.
        killed = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]) if _group(p) == group]
        os.killpg(group, signal.SIGKILL)
        self.workers[index].wait(timeout=30)
        return killed

    def stop(self) -> None:
        for process in [*self.workers, self.master]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    standalone = StandaloneCluster(tmp_path_factory.mktemp("standalone"))
    yield standalone
    standalone.stop()


def spark_submit(cluster: StandaloneCluster, root: Path, log_path: Path, on_line) -> tuple[int, str]:
    """jobs/run.py under spark-submit on the cluster with the cluster overlay; `on_line` sees
    each line of output as it comes. The exit code and the whole output."""
    spark_config = make_config(root).spark
    jars = ",".join(str(j) for j in local_delta_jars(configured_jars_dir(spark_config)))
    # The driver as the other test JVMs that run one pipeline: C1 only, classes from the archive setup made.
    driver_options = archive_options(spark_config, FRESH_JVM_OPTIONS)
    command = [
        str(Path(sys.executable).parent / "spark-submit"), "--master", cluster.url, "--jars", jars,
        "--driver-memory", "1g", "--driver-java-options", driver_options, "--executor-memory", "1g", "--conf", "spark.executor.cores=1",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
        str(REPO / "jobs" / "run.py"), "--env", "cluster", "--conf-dir", str(CONF_DIR),
        "--as-of", FIRST.isoformat(),
        # The settings of the local run, and its (demo) pseudonymisation key, so the same ids come out.
        *[a for s in [f"storage.root={root}", *SETTINGS, *SPARK_SETTINGS, "privacy.allow_demo_key=true"] for a in ("--set", s)],
    ]
    process = subprocess.Popen(command, cwd=root, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(900, process.kill)
    watchdog.start()
    lines = []
    try:
        with open(log_path, "w") as log:
            for line in process.stdout:
                lines.append(line)
                log.write(line)
                on_line(line)
        return process.wait(), "".join(lines)
    finally:
        watchdog.cancel()
        if process.poll() is None:  # the test failed while reading: leave no driver behind
            process.kill()
            process.wait()


def tier_rows(spark, root: Path) -> list[dict]:
    """The snapshot as of FIRST, lineage (run ids) aside."""
    columns = [c for c in TIER_COLUMNS if c != "lineage"]
    rows = tables.read(spark, _ref(root, "customer_tiers")).where(F.col("as_of_date") == F.lit(FIRST))
    return [r.asDict(recursive=True) for r in rows.select(*columns).orderBy("customer_id").collect()]


def _ref(root: Path, key: str):
    return tables.table_ref(make_config(root), key)


def assert_same_rows(actual: list[dict], expected: list[dict]) -> None:
    assert len(actual) == len(expected) > 0
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for column, value in want.items():
            if isinstance(value, float):
                assert got[column] == pytest.approx(value, rel=1e-6, abs=1e-9), (want["customer_id"], column)
            else:
                assert got[column] == value, (want["customer_id"], column)


def test_pipeline_on_a_standalone_cluster_survives_a_lost_worker_and_matches_local_mode(
    spark, cluster, three_dates, tmp_path
):
    local_root, cluster_root = three_dates, tmp_path / "cluster"
    raw = Path(_ref(local_root, "raw_transactions").location)
    shutil.copytree(raw, cluster_root / raw.relative_to(local_root))

    killed: list[str] = []

    def kill_a_worker_once(line: str) -> None:
        if KILL_DURING in line and not killed:
            killed.extend(cluster.kill_worker(1))

    code, output = spark_submit(cluster, cluster_root, tmp_path / "spark-submit.log", kill_a_worker_once)
    assert code == 0, output[-4000:]
    assert any("deploy.worker.Worker" in k for k in killed) and any("CoarseGrainedExecutorBackend" in k for k in killed), killed
    assert re.search(r"Lost executor \d+ on 127.0.0.1: worker lost", output)
    assert cluster.alive_workers() == 1
    for name in ("ingest", "features", "clv", "cluster", "churn.train", "churn.score", "tiers", "report"):
        assert f"stage {name}: finished" in output
    assert f"{cluster_root / 'customer_tiers'}  (Delta version" in output
    assert (cluster_root / "mlflow.db").is_file()

    expected, actual = tier_rows(spark, local_root), tier_rows(spark, cluster_root)
    assert_same_rows(actual, expected)
    assert len({r["customer_id"] for r in actual}) == len(actual)
    assert tables.read(spark, _ref(cluster_root, "customer_tiers")).select("as_of_date").distinct().collect() == [(FIRST,)]
