"""The benchmark's own parts: the RFM baseline query in DuckDB and Spark on a hand-made
Delta snapshot, the process-tree memory sampler, and the tables it writes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import pytest

from segmentation import bench
from segmentation.stages.context import StageContext
from segmentation import tables
from tests.conftest import make_config

AS_OF = dt.date(2025, 3, 31)


def test_rfm_baseline_is_the_same_query_in_duckdb_and_spark(spark, tmp_path):
    ctx = StageContext(make_config(tmp_path), spark)
    ref = ctx.table("transactions")
    rows = [  # customer, order, timestamp, amount, is_return
        ("a", "o1", "2025-01-10 10:00:00", 100.0, False),
        ("a", "o1", "2025-01-10 10:00:00", 50.0, False),   # same order: one order
        ("a", "o2", "2025-03-31 23:59:00", 20.0, False),   # on the as-of day: counts
        ("a", "r1", "2025-03-31 12:00:00", -30.0, True),   # a return: revenue, not an order
        ("b", "o3", "2025-02-01 09:00:00", 80.0, False),
        ("b", "o4", "2025-04-01 00:00:00", 999.0, False),  # after the as-of date: ignored
        ("c", "r2", "2025-03-01 09:00:00", -10.0, True),   # returns only
    ]
    df = spark.createDataFrame(rows, "customer_id string, order_id string, ts string, net_amount double, is_return boolean")
    df = df.selectExpr("customer_id", "order_id", "CAST(ts AS TIMESTAMP) AS transaction_ts", "net_amount", "is_return")
    tables.write(df.repartition(2), ref, mode="overwrite", run_id="test")

    result = bench.rfm_comparison(ctx, ref, tables.current_version(spark, ref), AS_OF, features_seconds=1.0)

    expected = {"customers": 3, "orders": 3, "monetary": 210.0}  # a: 2 orders, 140; b: 1, 80; c: 0, -10
    assert result["duckdb_totals"] == result["spark_totals"] == expected
    assert result["totals_agree"] and result["parquet_files"] >= 1
    assert result["duckdb_seconds"] > 0 and result["spark_rfm_seconds"] > 0


def _sample_for(memory, seconds: float, samples: int = 4, timeout: float = 60.0) -> None:
    """Sleep `seconds`, then on until the sampler has taken `samples` more samples since the call."""
    target, deadline = len(memory.samples) + samples, time.perf_counter() + timeout
    time.sleep(seconds)
    while len(memory.samples) < target and time.perf_counter() < deadline:
        time.sleep(0.05)


# Holds 300 MB (written, so resident) while its last line was "hold", frees it on any other;
# answers each line once the memory is held or freed.
_BALLAST_CHILD = """
import sys
ballast = None
for line in sys.stdin:
    ballast = b"x" * (300 * 2**20) if line.strip() == "hold" else None
    print("done", flush=True)
"""


def test_memory_sampler_sees_a_process_tree_and_windows_pick_their_peak():
    # The tree sampled is a child the test controls, not this process: the test session's
    # Spark JVM grows and shrinks on its own and would blur a 300 MB step. The child's own
    # child proves descendants are counted.
    child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_BALLAST_CHILD!r}])"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> float:
        child.stdin.write(line + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        return time.perf_counter()

    try:
        ask("free")  # the grandchild is up
        with bench.ProcessTreeMemory(interval=0.02, pid=child.pid) as memory:
            _sample_for(memory, 0.5)
            started = time.perf_counter()
            held = ask("hold")
            _sample_for(memory, 0.5)
            ended = time.perf_counter()
            freed = ask("free")
            _sample_for(memory, 0.5)
    finally:
        child.stdin.close()
        child.wait(timeout=60)
        child.stdout.close()
    assert len(memory.samples) > 10
    before = memory.peak_between(0, started)
    during = memory.peak_between(held, ended)
    after = memory.peak_between(freed, time.perf_counter())
    assert during - before > 250 and during - after > 250, (before, during, after)


def test_memory_sampler_keeps_its_own_reads_within_its_share_of_a_core():
    # With an interval of 0 and no bound the sampler would read all the time. With a share of
    # 0.2 it waits at least four times as long as each sample took before the next begins, so
    # its reads take at most a fifth of its time, whatever the machine's load.
    with bench.ProcessTreeMemory(interval=0.0, max_share=0.2) as memory:
        _sample_for(memory, 0.5, samples=5)
    samples = memory.samples
    assert len(samples) >= 5
    for (began, done, _), (next_began, _, _) in zip(samples, samples[1:]):
        assert next_began - done >= 4 * (done - began) - 1e-3
    assert memory.busy_seconds == pytest.approx(sum(done - began for began, done, _ in samples))


def _report(customers, seconds, memory_mb):
    return {"customers_generated": customers, "customers": customers, "transactions": customers * 16,
            "pipeline_seconds": seconds, "peak_memory_mb": memory_mb}


def test_summary_shows_growth_against_the_previous_size():
    text = bench.summary_markdown([_report(100_000, 100.0, 4000), _report(1_000_000, 800.0, 7000)])
    last = text.strip().splitlines()[-1]
    assert last.startswith("| 1,000,000 | 16,000,000 | 800.0 | 0.80 |")  # 8x the time for 10x the customers


def test_without_its_extra_bench_says_what_to_install(monkeypatch):
    import importlib.util

    from segmentation import bench
    from segmentation.errors import SetupError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "duckdb" else real(name, *a))
    assert bench.missing_modules() == ["duckdb"]
    with pytest.raises(SetupError, match=r"^bench needs duckdb: pip install 'segmentation\[bench\]'$"):
        bench.run(None)


def test_growth_compares_sizes_timed_to_the_same_stage_only():
    partial = {**_report(1_000_000, 300.0, 6000), "until": "features"}
    text = bench.summary_markdown([_report(100_000, 100.0, 4000), partial, {**_report(2_000_000, 540.0, 7000), "until": "features"}])
    rows = text.strip().splitlines()[2:]
    assert rows[1].startswith("| 1,000,000 | 16,000,000 | 300.0 (to features) |  |")  # not comparable with a whole pipeline
    assert rows[2].startswith("| 2,000,000 | 32,000,000 | 540.0 (to features) | 0.90 |")


@pytest.mark.parametrize("until, baselines, refused", [
    ("ingest", True, True), ("features", True, True), ("clv", True, False), ("report", True, False), ("ingest", False, False),
])
def test_the_comparisons_need_the_clv_stage(until, baselines, refused):
    shortfall = bench.baselines_shortfall(until, baselines)
    assert (shortfall is not None) == refused
    if refused:
        assert shortfall.startswith(f"bench --until {until}: ") and "--no-baselines" in shortfall


def _stopped_after_ingest() -> dict:
    """A bench report of 300 customers stopped after ingest."""
    return {**_report(300, 12.0, 900), "customers": None, "as_of": None, "until": "ingest", "command": "segmentation bench",
            "machine": {"cpus": 2, "memory_gb": 23.5}, "spark": {}, "profile": None,
            "stages": [{"stage": "ingest", "seconds": 12.0, "rows": 4800, "rows_per_second": 400, "peak_memory_mb": 900}],
            "targets": bench.TARGETS}


def test_a_bench_stopped_after_ingest_reads_as_such():
    text = bench.bench_markdown(_stopped_after_ingest())
    assert text.startswith("### 300 customers, 4,800 transactions\n")
    assert "| **pipeline, ingest only** | **12.0** |" in text


def test_the_report_says_what_the_memory_sampler_took_and_older_reports_still_read():
    report = _stopped_after_ingest()
    sampled = bench.bench_markdown({**report, "memory_sampler": {"samples": 1234, "seconds": 6.5, "max_share": 0.05}})
    assert ("Memory: 1,234 samples of the process tree's proportional set size, which took the sampler 6.5 s of one core "
            "(at most 5% of it).") in sampled
    assert "Memory:" not in bench.bench_markdown(report)


def test_the_command_refuses_comparisons_without_clv_before_any_spark_session(capsys, monkeypatch):
    from segmentation import spark
    from segmentation.cli import main

    def no_session(config):
        raise AssertionError("a Spark session was asked for")

    monkeypatch.setattr(spark, "get_spark", no_session)
    assert main(["bench", "--customers", "10", "--until", "features"]) == 1
    assert capsys.readouterr().err == ("segmentation bench: error: bench --until features: the DuckDB and lifetimes comparisons "
                                       "need the features and clv stages; add --no-baselines or stop at clv or later\n")
