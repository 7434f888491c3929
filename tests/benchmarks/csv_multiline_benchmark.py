"""What `multiLine` costs when Spark parses one large CSV file: the same file parsed with the
option on (one task per file) and off (split into tasks), alternating, each 3 times.

    .venv/bin/python -m tests.benchmarks.csv_multiline_benchmark [ROWS]   (default 6,000,000: about 500 MB)

A script, not a test: it prints the seconds of each run and the medians.
"""

from __future__ import annotations

import csv
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation.schema import RAW_COLUMNS
from segmentation.spark import get_spark
from tests.conftest import make_config


def write_file(path: Path, rows: int) -> None:
    rng = random.Random(1)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(RAW_COLUMNS)
        for i in range(rows):
            writer.writerow([f"T{i}", f"O{i // 2}", f"C{rng.randrange(100_000)}", f"2025-0{1 + i % 9}-1{i % 10} 10:00:00",
                             "store", "S1", "north", "books", 1, f"{rng.random() * 100:.2f}", "0", "1", "false"])


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 6_000_000
    folder = Path(tempfile.mkdtemp(prefix="multiline-"))
    path = folder / "export.csv"
    write_file(path, rows)
    spark = get_spark(make_config(folder / "data", "spark.conf.spark.driver.memory=4g").spark)
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    schema = T.StructType([T.StructField(c, T.StringType()) for c in [*RAW_COLUMNS, "_corrupt_record"]])

    def parse(multiline: str) -> float:
        started = time.perf_counter()
        df = (spark.read.options(header="true", escape='"', multiLine=multiline, mode="PERMISSIVE",
                                 columnNameOfCorruptRecord="_corrupt_record").schema(schema).csv(str(path)))
        assert df.agg(F.count(F.lit(1))).first()[0] == rows
        return time.perf_counter() - started

    parse("true"), parse("false")  # warm-up
    seconds: dict[str, list[float]] = {"true": [], "false": []}
    for _ in range(3):
        for multiline in seconds:
            seconds[multiline].append(parse(multiline))
    print(f"{rows:,} rows, {path.stat().st_size / 1e6:.0f} MB, {spark.sparkContext.defaultParallelism} cores")
    for multiline, runs in seconds.items():
        print(f"multiLine={multiline}: {', '.join(f'{s:.2f}' for s in runs)} s; median {statistics.median(runs):.2f} s")


if __name__ == "__main__":
    main()
