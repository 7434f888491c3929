"""Faults around the tier tables, with real driver processes: the driver killed while it
writes `customer_tiers` leaves the table at its previous version; the re-run of that date,
started together with the tier stage of another date on the same tables, commits without
duplicate rows, as does the other, and the history holds both."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation import tables
from segmentation.tiers.history import tier_history
from tests.conftest import CONF_DIR, FRESH_JVM_SETTINGS, REPO
from tests.integration.conftest import FIRST, SECOND, SETTINGS, THIRD, context

pytestmark = pytest.mark.slow

KILLED, OTHER = SECOND, THIRD


def job_command(script: str, root: Path, as_of: dt.date, *extra: str) -> list[str]:
    """A job script as its own driver process, with the settings of `context`."""
    settings = [f"storage.root={root}", *FRESH_JVM_SETTINGS, *SETTINGS]
    return [sys.executable, str(REPO / "jobs" / script), "--conf-dir", str(CONF_DIR), "--as-of", as_of.isoformat(),
            *[a for s in settings for a in ("--set", s)], *extra]


def start(command: list[str], log: Path) -> subprocess.Popen:
    # Its own process group: killing it kills the Python driver and the JVM it started.
    return subprocess.Popen(command, cwd=log.parent, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable}, start_new_session=True)


def kill_during_write(command: list[str], log: Path, table: Path, partition: str, attempts: int = 3) -> set[str]:
    """Run `command` and kill its process group as soon as data files of `partition` appear
    in `table` while the commit that would add them has not: the files it left behind.

    The process is first stopped (SIGSTOP) so the check of the Delta log and the kill see
    the same state; when the commit had already landed the attempt is repeated."""
    for _ in range(attempts):
        versions_before = set((table / "_delta_log").glob("*.json"))
        files_before = set((table / partition).glob("*.parquet"))
        process = start(command, log)
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if set((table / partition).glob("*.parquet")) - files_before:
                os.killpg(process.pid, signal.SIGSTOP)
                committed = set((table / "_delta_log").glob("*.json")) - versions_before
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if not committed:
                    return set((table / partition).glob("*.parquet")) - files_before
                break
            time.sleep(0.005)
        else:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # The driver ended (or ran out of time) before any data file of the partition was seen.
            raise AssertionError(f"no data file of {partition} appeared while the driver ran "
                                 f"(exit {process.returncode}):\n{log.read_text()[-3000:]}")
    raise AssertionError(f"the commit landed before the kill in {attempts} attempts")


def test_killed_tier_write_keeps_the_previous_version_and_concurrent_reruns_commit(spark, three_dates, tmp_path):
    root = three_dates
    ref = context(spark, root, KILLED).table("customer_tiers")
    before_version = tables.current_version(spark, ref)
    before = tables.read(spark, ref).collect()

    left_behind = kill_during_write(job_command("tiers.py", root, KILLED), tmp_path / "killed.log",
                                    Path(ref.location), f"as_of_date={KILLED.isoformat()}")
    assert left_behind, "the driver was killed before it wrote any data file"
    assert tables.current_version(spark, ref) == before_version
    after = tables.read(spark, ref)
    assert sorted(map(tuple, after.collect())) == sorted(map(tuple, before))
    assert after.where(F.col("as_of_date") == F.lit(KILLED)).isEmpty()

    # The re-run of the killed date and the tier stage of another date, started together:
    # both write the four tier tables, and both MERGE the one history.
    runs = {as_of: start(job_command("tiers.py", root, as_of), tmp_path / f"tiers-{as_of}.log") for as_of in (KILLED, OTHER)}
    for as_of, process in runs.items():
        output = tmp_path / f"tiers-{as_of}.log"
        assert process.wait(timeout=900) == 0, output.read_text()[-4000:]
        assert "stage tiers: finished" in output.read_text()

    snapshots = tables.read(spark, ref)
    for as_of in (FIRST, KILLED, OTHER):
        snapshot = snapshots.where(F.col("as_of_date") == F.lit(as_of))
        customers = tables.read(spark, context(spark, root, as_of).table("customer_features")).where(F.col("as_of_date") == F.lit(as_of))
        assert snapshot.count() == snapshot.select("customer_id").distinct().count() == customers.count() > 0, as_of

    operations = {r.operation for r in tables.history(spark, ref).where(F.col("version") > before_version).collect()}
    assert operations == {"WRITE"}, operations  # no constraint dropped and re-added on the way

    tracked = context(spark, root, OTHER).config.tiers.tracked
    history = tables.read(spark, context(spark, root, OTHER).table("customer_tier_history"))
    expected = tier_history(snapshots, tracked).select(*history.columns)
    assert sorted(map(tuple, history.collect())) == sorted(map(tuple, expected.collect()))
    migrations = tables.read(spark, context(spark, root, OTHER).table("tier_migrations"))
    pairs = {(r.from_date, r.to_date) for r in migrations.select("from_date", "to_date").distinct().collect()}
    assert pairs == {(FIRST, KILLED), (KILLED, OTHER)}
