"""What ingest's first pass costs on a raw feed: the checks alone (every rule, the typed and raw
values, the keyed hash), and the checks cached and counted as the stage does it, with the
in-memory cache compressed (the default) and not. Each measure runs in turn, 3 times, after
one warm-up round; it prints the seconds of each run and the medians.

    .venv/bin/python -m tests.benchmarks.ingest_checks_benchmark RAW_TABLE [REPEATS]

RAW_TABLE is a raw Delta table, e.g. `<storage.root>/bench/100000/raw/transactions` after
`segmentation bench --customers 100000`. The session is the product's (`local.yaml`), the
key the demo key. A script, not a test.
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import time

from pyspark import StorageLevel

from segmentation.config import load_config
from segmentation.privacy import DEMO_KEY
from segmentation.quality.validation import checked_transactions, conform_source
from segmentation.spark import get_spark

COMPRESSED = "spark.sql.inMemoryColumnarStorage.compressed"


def main() -> None:
    path = sys.argv[1]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    config = load_config("local")
    spark = get_spark(config.spark)
    raw, _ = conform_source(spark.read.format("delta").load(path), path)
    checked = checked_transactions(raw, config.ingest, dt.datetime(2026, 1, 1), DEMO_KEY)

    def checks() -> float:
        started = time.perf_counter()
        checked.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started

    def cached(compressed: bool) -> float:
        spark.conf.set(COMPRESSED, str(compressed).lower())
        rows = checked.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            started = time.perf_counter()
            rows.count()
            return time.perf_counter() - started
        finally:
            rows.unpersist(blocking=True)
            spark.conf.unset(COMPRESSED)

    measures = {
        "checks only (noop write)": checks,
        "checks cached and counted, compressed cache": lambda: cached(True),
        "checks cached and counted, uncompressed cache": lambda: cached(False),
    }
    print(f"{path}: {raw.count():,} rows")
    for measure in measures.values():
        measure()
    seconds: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            seconds[name].append(measure())
    for name, runs in seconds.items():
        print(f"{name:<48} median {statistics.median(runs):7.2f} s  runs {', '.join(f'{s:.2f}' for s in runs)}")


if __name__ == "__main__":
    main()
