"""bench: the whole pipeline on N generated customers, timed stage by stage, with the peak
memory (proportional set size) of the whole process tree (this Python process, Spark's JVM, its Python
workers), and in the same run, on the same data, two single-machine baselines:

- DuckDB computing the same per-customer RFM aggregation (recency, frequency, monetary) from
  the Parquet files of the same Delta snapshot of `transactions`; Spark runs the identical
  aggregation too, so the comparison is like for like, next to the full features stage;
- lifetimes fitting BG/NBD and Gamma-Gamma and scoring 12-month CLV on the same purchases
  (in a child process, so its memory is its own), next to the clv stage.

The tables and the MLflow store of a size go to `<storage.root>/bench/<N>/` (cleared first);
the results to `<storage.root>/bench/bench_<N>.json` and `bench_<N>.md`, and
`bench_summary.md` there puts every size measured so far side by side, with the growth of
time between sizes. Set the session up as for a real run (driver memory, shuffle partitions)
with `--set spark.conf...`. `--until STAGE` times the pipeline up to that stage only (as
`segmentation run --until` does); the comparisons need the clv stage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation.arguments import positive_int
from segmentation import profiling, tables
from segmentation.errors import ConfigError, SetupError

log = logging.getLogger(__name__)

HELP = "benchmark the whole pipeline on N generated customers against DuckDB (RFM) and lifetimes (CLV)"

# Stages whose work grows with transaction lines; the others with customers.
LINE_STAGES = ("ingest", "features", "clv")
# The speed issue's targets at 1,000,000 customers (300 s now, 180 s the long-term goal).
TARGETS = {"pipeline_seconds": 300, "pipeline_seconds_goal": 180, "peak_memory_gb": 8, "rfm_vs_duckdb": 6, "clv_speedup_vs_lifetimes": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--customers", type=positive_int, default=100_000, help="customers to generate (default: 100000)")
    parser.add_argument("--seed", type=int, help="random seed of the generated feed")
    parser.add_argument("--no-baselines", action="store_true", help="time the pipeline only (no DuckDB, no lifetimes)")
    parser.add_argument("--until", choices=pipeline.STAGES, default=pipeline.STAGES[-1],
                        help="time the pipeline up to this stage (default: report); the comparisons need clv or later")


def config_overrides(args: argparse.Namespace) -> list[str]:
    _check_arguments(args)  # before the command starts a Spark session
    overrides = [f"generate.customers={args.customers}", "generate.dataset=synthetic"]
    return overrides + ([f"generate.seed={args.seed}"] if args.seed is not None else [])


BENCH_MODULES = ("duckdb", "psutil", "lifetimes")


def missing_modules(names: tuple[str, ...] = BENCH_MODULES) -> list[str]:
    """The benchmark's dependencies (the `bench` extra) that are not installed."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class BenchResult:
    customers: int  # generated
    json_path: Path
    markdown_path: Path
    report: dict[str, object]  # the measurements, as written to json_path


def baselines_shortfall(until: str, baselines: bool) -> str | None:
    """Why the comparisons cannot run when the pipeline stops after `until`, if they cannot:
    DuckDB's RFM query reads the snapshot the features stage made, lifetimes the clv stage's."""
    if baselines and pipeline.STAGES.index(until) < pipeline.STAGES.index("clv"):
        return (f"bench --until {until}: the DuckDB and lifetimes comparisons need the features and clv stages; "
                "add --no-baselines or stop at clv or later")
    return None


def _check_arguments(args: argparse.Namespace | None) -> tuple[str, bool]:
    """The stage to stop after and whether to run the comparisons; a ConfigError when they cannot go together."""
    until = getattr(args, "until", None) or pipeline.STAGES[-1]
    baselines = not getattr(args, "no_baselines", False)
    shortfall = baselines_shortfall(until, baselines)
    if shortfall:
        raise ConfigError(shortfall)
    return until, baselines


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> BenchResult:
    missing = missing_modules()
    if missing:
        raise SetupError(f"bench needs {', '.join(missing)}: pip install 'segmentation[bench]'")
    until, baselines = _check_arguments(args)
    customers = ctx.config.generate.customers
    bench_root = Path(ctx.config.storage.root) / "bench"
    if ctx.config.storage.catalog != "path":
        raise ConfigError("bench writes its own Delta directories under storage.root: run it with storage.catalog: path")
    bench_ctx = _bench_context(ctx, bench_root / str(customers))
    pipeline_args = argparse.Namespace(generate=True, train_churn=False, until=until)
    with ProcessTreeMemory() as memory:
        results = pipeline.run(bench_ctx, pipeline_args)
    report = pipeline_report(ctx, bench_ctx.config, results, memory)
    report["profile"] = _profile(ctx.spark, results.timings)
    if baselines:
        report.update(_baselines(bench_ctx, results, report["stages"]))
    result = _write(bench_root, customers, report)
    print("\n" + bench_markdown(report), flush=True)
    log.info("bench: results in %s and %s", result.json_path, result.markdown_path)
    return result


def _bench_context(ctx: StageContext, work: Path) -> StageContext:
    """The context of a bench size: its own tables and MLflow store under `work`, cleared first."""
    if work.exists():
        shutil.rmtree(work)
    config = ctx.config.model_copy(update={
        "storage": ctx.config.storage.model_copy(update={"root": str(work)}),
        "mlflow": ctx.config.mlflow.model_copy(update={"tracking_uri": None, "registry_uri": None, "artifact_location": None}),
    })
    return StageContext(config, ctx.spark, ctx.pipeline_run_id)


def stage_rows(timings: dict, lines: int, customers: int, peak_mb) -> list[dict[str, object]]:
    """One row per stage timed: seconds, the rows it works through (transaction lines for the
    stages that grow with them, customers for the others), their rate, and `peak_mb(started,
    ended)` of its window."""
    stages = []
    for name, window in timings.items():
        rows = lines if name in LINE_STAGES or name == "generate" else customers
        stages.append({
            "stage": name, "seconds": round(window.seconds, 2), "rows": rows,
            "rows_per_second": round(rows / window.seconds) if window.seconds > 0 else None,
            "peak_memory_mb": round(peak_mb(window.started, window.ended)),
        })
    return stages


def pipeline_report(ctx: StageContext, config, results, memory: "ProcessTreeMemory") -> dict[str, object]:
    """The pipeline's measurements: time and peak memory per stage and in all, on this machine."""
    timings = results.timings
    last = list(timings)[-1]  # the stage the pipeline stopped after (--until)
    lines = results.ingest.rows_clean
    scored = results.features.customers if results.features is not None else None  # None: stopped after ingest
    stages = stage_rows(timings, lines, scored, memory.peak_between)
    pipeline_seconds = sum(s["seconds"] for s in stages if s["stage"] != "generate")
    return {
        "customers_generated": config.generate.customers,
        "customers": scored,
        "transactions": lines,
        "as_of": results.as_of.isoformat() if results.as_of else None,
        "until": last,
        "machine": _machine(),
        "spark": {"master": ctx.spark.conf.get("spark.master", None), **{k: v for k, v in config.spark.conf.items() if "memory" in k or "partitions" in k}},
        "command": " ".join(["segmentation", *sys.argv[1:]]) if sys.argv else "segmentation bench",
        "stages": stages,
        "pipeline_seconds": round(pipeline_seconds, 1),
        "peak_memory_mb": round(memory.peak_between(timings["ingest"].started, timings[last].ended)),
        "memory_sampler": {"samples": len(memory.samples), "seconds": round(memory.busy_seconds, 1), "max_share": memory.max_share},
        "targets": TARGETS,
    }


def clv_parameters(clv_result) -> dict[str, float]:
    """The BG/NBD and Gamma-Gamma estimates of the clv stage's result: the one place the bench reads them."""
    fitted = clv_result.fitted()
    return {**fitted["bgnbd"], **(fitted["gamma_gamma"] or {})}


def _profile(spark, timings: dict) -> list[dict] | None:
    """Each stage's Spark jobs, their seconds and the time outside Spark (`profiling`)."""
    jobs = profiling.spark_jobs(spark)
    if jobs is None:
        return None
    retained = int(spark.conf.get("spark.ui.retainedJobs", "1000"))
    if len(jobs) >= retained:
        log.warning("bench: the Spark UI kept only the last %d jobs; the first stages' profiles are short of jobs "
                    "(raise spark.ui.retainedJobs)", retained)
    return [asdict(p) for p in profiling.stage_profiles(jobs, {name: t.seconds for name, t in timings.items()})]


def _baselines(bench_ctx: StageContext, results, stages: list[dict]) -> dict[str, object]:
    """DuckDB's RFM and lifetimes' CLV on the same snapshot of `transactions` as the pipeline's."""
    as_of = results.as_of
    transactions_ref = bench_ctx.table("transactions")
    version = tables.current_version(bench_ctx.spark, transactions_ref)
    return {
        "rfm": rfm_comparison(bench_ctx, transactions_ref, version, as_of, features_seconds=_seconds(stages, "features")),
        "clv": clv_comparison(bench_ctx, transactions_ref, version, as_of, clv_seconds=_seconds(stages, "clv"),
                              ours=clv_parameters(results.clv)),
    }


def _write(bench_root: Path, customers: int, report: dict[str, object]) -> BenchResult:
    json_path, md_path = bench_root / f"bench_{customers}.json", bench_root / f"bench_{customers}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(bench_markdown(report))
    (bench_root / "bench_summary.md").write_text(summary_markdown(_reports(bench_root)))
    return BenchResult(customers, json_path, md_path, report)


def _seconds(stages: list[dict], name: str) -> float:
    return next(s["seconds"] for s in stages if s["stage"] == name)


MEMORY_SAMPLER_SHARE = 0.05  # of one core, at most, for the memory sampler's own reads


class ProcessTreeMemory:
    """Samples the memory of this process and all its descendants (the JVM of a local Spark
    session is a child of the Python driver) every `interval` seconds.

    Each process counts its proportional set size (PSS): a page shared by n processes counts
    1/n in each. Summing resident sets instead counts shared pages once per process: the
    Python workers Spark forks from one daemon, and above all a child the JVM is starting,
    which shares the JVM's whole address space until it runs its program, so a sample taken
    then counted the JVM twice (13 GB peaks with a 6g heap). Where PSS is not available
    (macOS), the resident set is used.

    Reading a process's PSS makes the kernel walk its page tables: 15 ms of CPU for a JVM of
    600 MB, about 90 ms at 4 GB, more at 1,000,000 customers. Every half second that took 42 s
    of a core in a 270-s bench on 2 cores, taken from the pipeline it measures. So after a
    sample that took s seconds the sampler waits at least s (1 - max_share) / max_share: its
    own share of one core stays within `max_share`. The JVM's heap, once committed, stays, so
    the peak is not missed by sampling it less often.
    """

    def __init__(self, interval: float = 0.5, pid: int | None = None, max_share: float = MEMORY_SAMPLER_SHARE) -> None:
        self.interval = interval
        self.pid = pid  # the tree's root; this process by default
        self.max_share = max_share
        self.busy_seconds = 0.0  # the sampler's own time reading the samples
        self.samples: list[tuple[float, float, int]] = []  # (reading began, reading ended, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="memory-sampler", daemon=True)

    def __enter__(self) -> "ProcessTreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            began, total = time.perf_counter(), 0
            for process in [root, *root.children(recursive=True)]:
                try:
                    total += _proportional_bytes(process)
                except psutil.Error:  # a worker that ended between listing and reading
                    pass
            done = time.perf_counter()
            self.samples.append((began, done, total))
            self.busy_seconds += done - began
            self._stop.wait(max(self.interval, (done - began) * (1 - self.max_share) / self.max_share))

    def peak_between(self, started: float, ended: float) -> float:
        """Peak megabytes of the samples read wholly within [started, ended] (the nearest
        sample if none). Reading a JVM's pages takes tens of milliseconds, a second on a
        loaded machine: a sample that began before `started` may hold memory freed since."""
        inside = [size for began, done, size in self.samples if started <= began and done <= ended]
        if not inside and self.samples:
            nearest = min(self.samples, key=lambda sample: abs((sample[0] + sample[1]) / 2 - ended))
            inside = [nearest[2]]
        return max(inside, default=0) / 2**20


def _proportional_bytes(process) -> int:
    try:
        return int(process.memory_full_info().pss)
    except AttributeError:  # no PSS on this platform
        return int(process.memory_info().rss)


RFM_SQL = """
SELECT customer_id,
       max(CAST(transaction_ts AS DATE)) FILTER (WHERE NOT is_return) AS last_purchase_date,
       count(DISTINCT order_id) FILTER (WHERE NOT is_return) AS frequency_orders,
       sum(net_amount) AS monetary
FROM {source}
WHERE transaction_ts < TIMESTAMP '{end}'
GROUP BY customer_id
"""
RFM_TOTALS = "SELECT count(*) AS customers, sum(frequency_orders) AS orders, round(sum(monetary), 2) AS monetary FROM rfm"


def rfm_comparison(ctx: StageContext, ref, version: int, as_of: dt.date, features_seconds: float) -> dict[str, object]:
    """The same RFM aggregation in DuckDB (over the snapshot's Parquet files) and in Spark
    (over the Delta snapshot), each timed to a materialised result, with totals to prove
    they agree."""
    import duckdb

    snapshot = tables.read(ctx.spark, ref, version)
    files = snapshot.inputFiles()
    end = (as_of + dt.timedelta(days=1)).isoformat()

    started = time.perf_counter()
    snapshot.createOrReplaceTempView("bench_transactions")
    spark_rfm = ctx.spark.sql(RFM_SQL.format(source="bench_transactions", end=end))
    spark_rfm.createOrReplaceTempView("rfm")
    spark_totals = ctx.spark.sql(RFM_TOTALS).first().asDict()
    spark_seconds = time.perf_counter() - started

    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    file_list = ", ".join(f"'{f.removeprefix('file:')}'" for f in files)
    started = time.perf_counter()
    connection.execute(f"CREATE TEMP TABLE rfm AS {RFM_SQL.format(source=f'read_parquet([{file_list}])', end=end)}")
    duck = connection.execute(RFM_TOTALS).fetchone()
    duckdb_seconds = time.perf_counter() - started
    connection.close()
    duck_totals = {"customers": duck[0], "orders": duck[1], "monetary": float(duck[2])}
    spark_totals = {k: (float(v) if k == "monetary" else v) for k, v in spark_totals.items()}
    return {
        "parquet_files": len(files), "transactions_version": version,
        "duckdb_seconds": round(duckdb_seconds, 3), "duckdb_threads": _duckdb_threads(),
        "spark_rfm_seconds": round(spark_seconds, 3), "features_stage_seconds": features_seconds,
        "features_vs_duckdb": round(features_seconds / duckdb_seconds, 1),
        "spark_rfm_vs_duckdb": round(spark_seconds / duckdb_seconds, 1),
        "totals_agree": duck_totals == spark_totals, "duckdb_totals": duck_totals, "spark_totals": spark_totals,
    }


def _duckdb_threads() -> int:
    import duckdb

    return int(duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0])


def clv_comparison(
    ctx: StageContext, ref, version: int, as_of: dt.date, clv_seconds: float, ours: dict[str, float]
) -> dict[str, object]:
    """lifetimes on the same purchases (exported to Parquet, not timed) in a child process."""
    from pyspark.sql import functions as F

    from segmentation.features.customer import transactions_as_of

    export = Path(ctx.config.storage.root) / "lifetimes_purchases.parquet"
    purchases = transactions_as_of(tables.read(ctx.spark, ref, version), as_of).where(~F.col("is_return"))
    purchases.select("customer_id", "transaction_ts", "net_amount").write.mode("overwrite").parquet(str(export))
    child = subprocess.run(
        [sys.executable, "-m", "segmentation.bench", "--lifetimes", str(export), as_of.isoformat(), str(ctx.config.clv.horizon_days),
         str(ctx.config.clv.months), str(ctx.config.clv.monthly_discount_rate)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parent.parent,
    )
    if child.returncode != 0:
        raise RuntimeError(f"lifetimes baseline failed:\n{child.stderr[-2000:]}")
    theirs = json.loads(child.stdout.strip().splitlines()[-1])
    # Same data, same model: the estimates must agree (both maximise the same likelihood).
    differences = {name: abs(ours[name] - value) / abs(value) for name, value in theirs["params"].items() if name in ours}
    return {"clv_stage_seconds": clv_seconds, "lifetimes": theirs,
            "speedup_vs_lifetimes": round(theirs["seconds"]["total"] / clv_seconds, 2),
            "ours_params": {name: ours[name] for name in differences},
            "largest_relative_parameter_difference": max(differences.values(), default=None)}


def lifetimes_clv(parquet: str, as_of: str, horizon_days: int, months: int, discount_rate: float, keep_summary: bool = False) -> dict:
    """lifetimes' own path, timed step by step: summary, BG/NBD and Gamma-Gamma fits, then
    P(alive), expected purchases and discounted CLV, in weeks as the clv stage works."""
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    purchases = pd.read_parquet(parquet)
    seconds = {}
    started = time.perf_counter()
    summary = summary_data_from_transaction_data(
        purchases, "customer_id", "transaction_ts", monetary_value_col="net_amount",
        observation_period_end=pd.Timestamp(as_of), freq="D",
    )
    summary["recency"] /= 7.0
    summary["T"] /= 7.0
    seconds["summary"] = time.perf_counter() - started
    step = time.perf_counter()
    bgf = BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    repeat = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    ggf = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
    seconds["fit"] = time.perf_counter() - step
    step = time.perf_counter()
    history = (summary["frequency"], summary["recency"], summary["T"])
    bgf.conditional_probability_alive(*history)
    expected = bgf.conditional_expected_number_of_purchases_up_to_time(horizon_days / 7, *history)
    clv = ggf.customer_lifetime_value(bgf, *history, summary["monetary_value"], time=months, discount_rate=discount_rate, freq="W")
    seconds["score"] = time.perf_counter() - step
    seconds["total"] = time.perf_counter() - started
    return {
        "customers": int(len(summary)),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "params": {**{k: float(v) for k, v in bgf.params_.items()}, **{k: float(v) for k, v in ggf.params_.items()}},
        "expected_purchases": float(expected.sum()),
        "total_clv": float(clv.sum()),
        **({"summary": summary} if keep_summary else {}),
    }


def _machine() -> dict[str, object]:
    import os

    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def _reports(bench_root: Path) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in bench_root.glob("bench_*.json")]
    return sorted(reports, key=lambda r: r["customers_generated"])


def _until(report: dict) -> str:
    """The stage a report's pipeline stopped after (reports written before --until: report)."""
    return report.get("until") or pipeline.STAGES[-1]


def _span(report: dict) -> str:
    until = _until(report)
    return "ingest only" if until == "ingest" else f"ingest to {until}"


def _heading(report: dict) -> str:
    as_of = f" (as of {report['as_of']})" if report["as_of"] else ""
    return f"### {_customers(report):,} customers, {report['transactions']:,} transactions{as_of}"


def bench_markdown(report: dict) -> str:
    lines = [
        _heading(report),
        "",
        f"Command: `{report['command']}`. Machine: {report['machine']['cpus']} cores, {report['machine']['memory_gb']} GB; "
        f"Spark {report['spark']}.",
        "",
        "| stage | seconds | rows | rows/s | peak memory (MB, process tree) |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['seconds']:.1f} | {s['rows']:,} | {s['rows_per_second'] or 0:,} | {s['peak_memory_mb']:,} |")
    targets = report["targets"]
    if report.get("profile"):
        lines += ["", "Where the time goes: the Spark jobs each stage started (from Spark's status API) and the rest of its "
                  "time, outside Spark (planning, the Delta log, MLflow, Python).", "",
                  profiling.profile_markdown(report["profile"]), ""]
    lines += [
        f"| **pipeline, {_span(report)}** | **{report['pipeline_seconds']:.1f}** | | | **{report['peak_memory_mb']:,}** |",
        "",
        f"Target: at most {targets['pipeline_seconds']} s (long-term goal {targets['pipeline_seconds_goal']} s) "
        f"and {targets['peak_memory_gb']} GB at 1,000,000 customers.",
    ]
    if "memory_sampler" in report:  # reports before 2026-12-08 do not say
        sampler = report["memory_sampler"]
        lines += ["", f"Memory: {sampler['samples']:,} samples of the process tree's proportional set size, which took "
                  f"the sampler {sampler['seconds']:.1f} s of one core (at most {sampler['max_share']:.0%} of it)."]
    if "rfm" in report:
        rfm, clv = report["rfm"], report["clv"]
        theirs = clv["lifetimes"]
        lines += [
            "",
            "| comparison | segmentation (Spark) | single machine | ratio | target |",
            "|---|---:|---:|---:|---|",
            f"| RFM aggregation, same query | {rfm['spark_rfm_seconds']:.2f} s | DuckDB {rfm['duckdb_seconds']:.2f} s "
            f"({rfm['duckdb_threads']} threads, {rfm['parquet_files']} Parquet files) | {rfm['spark_rfm_vs_duckdb']}x | |",
            f"| features stage (all features, tiers, write) vs the same DuckDB query | {rfm['features_stage_seconds']:.1f} s | "
            f"DuckDB {rfm['duckdb_seconds']:.2f} s | {rfm['features_vs_duckdb']}x | within {targets['rfm_vs_duckdb']}x |",
            f"| CLV: BG/NBD + Gamma-Gamma fit, 12-month CLV | clv stage {clv['clv_stage_seconds']:.1f} s | lifetimes "
            f"{theirs['seconds']['total']:.1f} s (summary {theirs['seconds']['summary']:.1f}, fit {theirs['seconds']['fit']:.1f}, "
            f"score {theirs['seconds']['score']:.1f}; {theirs['peak_memory_mb']:,} MB) | {clv['speedup_vs_lifetimes']}x faster | "
            f"at least {targets['clv_speedup_vs_lifetimes']}x faster |",
            "",
            f"RFM totals agree between DuckDB and Spark: {'yes' if rfm['totals_agree'] else 'NO'} "
            f"({rfm['duckdb_totals']['customers']:,} customers, {rfm['duckdb_totals']['orders']:,} orders). "
            f"BG/NBD and Gamma-Gamma estimates: largest relative difference from lifetimes "
            f"{clv['largest_relative_parameter_difference']:.1e}.",
        ]
    return "\n".join(lines) + "\n"


def summary_markdown(reports: list[dict]) -> str:
    """Every size side by side; growth = time ratio / customer ratio against the previous size
    timed to the same stage (at most 1 means time grew at most linearly)."""
    lines = ["| customers | transactions | pipeline s | growth vs previous size | peak memory MB | features / DuckDB | lifetimes / clv |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    previous = None
    for r in reports:
        until, growth = _until(r), ""
        if previous is not None and _until(previous) == until:
            growth = f"{(r['pipeline_seconds'] / previous['pipeline_seconds']) / (_customers(r) / _customers(previous)):.2f}"
        rfm = f"{r['rfm']['features_vs_duckdb']}x" if "rfm" in r else "-"
        clv = f"{r['clv']['speedup_vs_lifetimes']}x" if "clv" in r else "-"
        to = "" if until == pipeline.STAGES[-1] else f" (to {until})"
        lines.append(f"| {_customers(r):,} | {r['transactions']:,} | {r['pipeline_seconds']:.1f}{to} | {growth} | "
                     f"{r['peak_memory_mb']:,} | {rfm} | {clv} |")
        previous = r
    return "\n".join(lines) + "\n"


def _customers(report: dict) -> int:
    """Customers with features (generated, when the pipeline stopped after ingest)."""
    return report["customers"] if report["customers"] is not None else report["customers_generated"]


if __name__ == "__main__":  # the lifetimes reference, run in its own process by the bench
    if len(sys.argv) > 1 and sys.argv[1] == "--lifetimes":
        parquet, as_of, horizon, months, rate = sys.argv[2:7]
        print(json.dumps(lifetimes_clv(parquet, as_of, int(horizon), int(months), float(rate))))
        sys.exit(0)
    sys.exit("usage: python -m segmentation.bench --lifetimes PARQUET AS_OF HORIZON MONTHS RATE (use 'segmentation bench')")
