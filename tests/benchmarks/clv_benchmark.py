"""Benchmark: the clv stage against lifetimes on the same customers, on this machine.

    .venv/bin/python tests/benchmarks/clv_benchmark.py --root /tmp/bench1m/segmentation-data --customers 1000000

Uses the transactions under --root (generating and ingesting --customers first when there
are none), then runs, one after the other:
- ours: the `clv` job (Spark summary, fits on weighted triples, scoring in Spark, Delta write);
- lifetimes: summary_data_from_transaction_data, BetaGeoFitter, GammaGammaFitter and the same
  predictions, in a child process (so its peak memory is its own), on the same purchases.
It prints a Markdown table (seconds, peak memory, parameters side by side) and writes it as
JSON next to --root. Not a test: nothing is asserted, the numbers are measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PARAMS = ["r", "alpha", "a", "b", "p", "q", "v"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="storage.root with (or for) the transactions")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--as-of", default=None, help="calibration end (default: the latest transaction date)")
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--lifetimes-part", nargs=2, metavar=("PARQUET", "AS_OF"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lifetimes_part:
        print(json.dumps(run_lifetimes(*args.lifetimes_part)))
        return
    run_benchmark(args)


def run_benchmark(args) -> None:
    from pyspark.sql import functions as F

    from segmentation.stages import clv
    from segmentation.stages import generate
    from segmentation.stages import ingest
    from segmentation.stages.context import StageContext
    from segmentation import tables
    from segmentation.config import load_config
    from segmentation.features.customer import latest_transaction_date, transactions_as_of
    from segmentation.logs import configure_logging
    from segmentation.spark import get_spark

    overrides = [
        f"storage.root={args.root}", f"generate.customers={args.customers}",
        f"spark.conf.spark.driver.memory={args.driver_memory}", "spark.conf.spark.sql.shuffle.partitions=16",
    ]
    config = load_config("local", REPO / "segmentation" / "conf", overrides)
    configure_logging("INFO")
    spark = get_spark(config.spark)
    ctx = StageContext(config, spark)
    source = ctx.table("transactions")
    if not tables.exists(spark, source):
        generate.run(ctx)
        ingest.run(ctx)
    transactions = tables.read(spark, source)
    as_of = args.as_of or latest_transaction_date(transactions).isoformat()
    ctx = StageContext(load_config("local", REPO / "segmentation" / "conf", [*overrides, f"as_of={as_of}"]), spark)

    started = time.perf_counter()
    ours = clv.run(ctx)
    ours_seconds = time.perf_counter() - started
    jvm_peak_mb = _jvm_peak_rss_mb(spark)
    python_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # lifetimes reads the same purchases from a plain Parquet copy (written here, not timed).
    export = Path(args.root) / "benchmark_purchases.parquet"
    purchases = transactions_as_of(transactions, dt.date.fromisoformat(as_of)).where(~F.col("is_return"))
    purchases.select("customer_id", "transaction_ts", "net_amount").write.mode("overwrite").parquet(str(export))
    child = subprocess.run(
        [sys.executable, __file__, "--root", args.root, "--lifetimes-part", str(export), as_of],
        capture_output=True, text=True, check=True,
    )
    theirs = json.loads(child.stdout.strip().splitlines()[-1])

    fitted = ours.fitted()
    ours_params = {**fitted["bgnbd"], **(fitted["gamma_gamma"] or {})}
    rows = [
        ("customers", f"{ours.totals.customers:,}", f"{theirs['customers']:,}"),
        ("distinct (x, t_x, T) triples fitted", f"{ours.bgnbd.triples:,}", f"{theirs['customers']:,} rows"),
        ("seconds: summary + fit + score (+ Delta write, MLflow for ours)", f"{ours_seconds:.1f}", f"{theirs['seconds']['total']:.1f}"),
        ("  of which summary", "(in the stage)", f"{theirs['seconds']['summary']:.1f}"),
        ("  of which BG/NBD + Gamma-Gamma fit", "(in the stage)", f"{theirs['seconds']['fit']:.1f}"),
        ("  of which scoring", "(in the stage)", f"{theirs['seconds']['score']:.1f}"),
        ("peak memory, MB", f"JVM {jvm_peak_mb:,.0f} + Python {python_peak_mb:,.0f}", f"{theirs['peak_mb']:,.0f}"),
        *[(p, f"{ours_params[p]:.6f}", f"{theirs['params'][p]:.6f}") for p in PARAMS],
        ("BG/NBD log-likelihood", f"{ours.bgnbd.log_likelihood:,.2f}", f"{theirs['bgnbd_log_likelihood']:,.2f}"),
        ("sum of expected purchases (90 days)", f"{ours.totals.expected_purchases:,.1f}", f"{theirs['expected_purchases']:,.1f}"),
        ("total CLV (12 months, 1%/month)", f"{ours.totals.total_clv:,.0f}", f"{theirs['total_clv']:,.0f}"),
    ]
    table = ["| | segmentation (Spark, local[2]) | lifetimes 0.11.3 (pandas) |", "|---|---|---|"]
    table += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    print(f"\nCLV benchmark, as of {as_of}, command: {' '.join(sys.argv)}\n")
    print("\n".join(table))
    (Path(args.root) / "clv_benchmark.json").write_text(
        json.dumps({"as_of": as_of, "ours": ours, "ours_seconds": ours_seconds, "jvm_peak_mb": jvm_peak_mb,
                    "python_peak_mb": python_peak_mb, "lifetimes": theirs}, indent=2, default=str)
    )


def run_lifetimes(parquet: str, as_of: str) -> dict:
    """lifetimes' own path on the exported purchases (in the child process), as `segmentation
    bench` runs it: 90-day expected purchases, 12-month CLV at 1% a month."""
    from segmentation.bench import lifetimes_clv
    from segmentation.clv.bgnbd import BgNbdParams, bgnbd_log_likelihood

    result = lifetimes_clv(parquet, as_of, horizon_days=90, months=12, discount_rate=0.01, keep_summary=True)
    summary = result.pop("summary")
    history = (summary["frequency"], summary["recency"], summary["T"])
    bgnbd = BgNbdParams(**{k: result["params"][k] for k in ("r", "alpha", "a", "b")})
    # evaluated in the data's time unit, as the clv stage reports it (lifetimes fits on rescaled time)
    result["bgnbd_log_likelihood"] = float(bgnbd_log_likelihood(bgnbd, *history).sum())
    result["peak_mb"] = result["peak_memory_mb"]
    return result


def _jvm_peak_rss_mb(spark) -> float:
    """The driver JVM's peak resident memory (VmHWM), which holds the local executors too."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
