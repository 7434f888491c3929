"""The class-data archive: Spark's classes mapped from one file when a driver JVM starts.

A JVM that starts Spark loads about 17,000 classes by its first Spark job, from the JDK's,
pyspark's and Delta's jars, and parses and verifies each of them again every time. Java's
class-data sharing (AppCDS) keeps them ready in an archive instead. `segmentation setup`
makes one for this Java, this pyspark installation and these Delta jars: a small Spark
workload (Delta writes, a MERGE, history, queries) runs in a JVM that writes the classes it
loaded to the archive as it exits (`-XX:ArchiveClassesAtExit`). The sessions
`segmentation.spark.get_spark` starts then map it (`-XX:SharedArchiveFile`).

A JVM that cannot use the archive (another Java, another classpath, a damaged file) starts
as it would have without it, silently. `spark.class_archive: false` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segmentation.config import CACHE_DIR, SparkConfig

log = logging.getLogger(__name__)

ARCHIVE_DIR = CACHE_DIR / "jvm"
DRIVER_OPTIONS = "spark.driver.extraJavaOptions"
# Map the archive when it fits this JVM, else start without it; say nothing either way.
_QUIET = ("-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off")
_BUILD_SECONDS = 900


def archive_key(java: str, java_version: str, spark_home: str, spark_version: str, jars: list[str]) -> str:
    """What the archive depends on, digested: the Java that made it, the classpath pyspark's
    launcher gives the JVM (its installation) and the Delta jars Spark loads."""
    identity = json.dumps([java, java_version, spark_home, spark_version, sorted(jars)])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def with_archive(options: str | None, archive: Path) -> str:
    """The driver's Java options `options` with the archive mapped."""
    return " ".join([*(options or "").split(), f"-XX:SharedArchiveFile={archive}", *_QUIET])


def with_archive_written(options: str | None, archive: Path) -> str:
    """The driver's Java options `options`, writing the classes loaded to `archive` at exit.
    Only the quick compiler: the workload runs once, and the archive holds classes, not code."""
    return " ".join([*(options or "").split(), f"-XX:ArchiveClassesAtExit={archive}", "-XX:TieredStopAtLevel=1", *_QUIET[1:]])


def archive_path(config: SparkConfig, folder: Path = ARCHIVE_DIR) -> Path:
    """Where the archive of this Java, pyspark installation and Delta jars is (or goes)."""
    import pyspark

    from segmentation.spark import configured_jars_dir, java_binary, java_version_text, local_delta_jars

    jars = [str(jar) for jar in local_delta_jars(configured_jars_dir(config)) or []]
    key = archive_key(str(java_binary()), java_version_text(), str(spark_home()), pyspark.__version__, jars)
    return folder / f"spark-classes-{key}.jsa"


def spark_home() -> Path:
    """The Spark installation pyspark's launcher starts the JVM from."""
    import pyspark

    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent).resolve()


def usable_archive(config: SparkConfig, starts_jvm: bool) -> Path | None:
    """The archive a session this process starts maps: None when it is off, when the JVM is
    not this process's to start (spark-submit started it), or when setup made none."""
    if not config.class_archive or not starts_jvm:
        return None
    archive = archive_path(config)
    return archive if archive.is_file() else None


def archive_options(config: SparkConfig, options: str | None, starts_jvm: bool = True) -> str:
    """The driver's Java options `options` with the archive mapped when a session this
    process starts maps one (usable_archive); otherwise `options` as they are."""
    archive = usable_archive(config, starts_jvm)
    return with_archive(options, archive) if archive is not None else (options or "")


def build_archive(config: SparkConfig, folder: Path = ARCHIVE_DIR) -> tuple[Path, bool]:
    """Make the archive unless it exists: (its path, whether it was made now). The workload
    runs in a child process, whose JVM writes the archive as it exits; the archive is moved
    into place whole. Archives of pyspark installations that are gone are removed."""
    target = archive_path(config, folder)
    if target.is_file():
        return target, False
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_archives(folder)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    started = time.perf_counter()
    log.info("making the class-data archive %s (a small Spark workload, then the JVM writes it)", target)
    child = subprocess.run(
        [sys.executable, "-m", "segmentation.jvm", str(partial), config.model_dump_json()],
        capture_output=True, text=True, timeout=_BUILD_SECONDS, check=False,
    )
    if child.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join((child.stdout + child.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"the class-data archive was not made (exit {child.returncode}):\n{tail}")
    # The record first: another setup removing stale archives meanwhile keeps a recorded one.
    target.with_suffix(".json").write_text(json.dumps({"spark_home": str(spark_home()), "made": time.time()}))
    os.replace(partial, target)
    log.info("class-data archive made in %.1f s (%.0f MB)", time.perf_counter() - started, target.stat().st_size / 2**20)
    return target, True


def remove_stale_archives(folder: Path) -> list[Path]:
    """Remove the archives whose pyspark installation is gone (a virtual environment deleted),
    and partial ones left by a setup that was stopped; the archives removed."""
    removed = []
    for archive in folder.glob("spark-classes-*.jsa"):
        record = archive.with_suffix(".json")
        try:
            home = json.loads(record.read_text())["spark_home"]
        except (OSError, ValueError, KeyError):
            home = None
        if home is None or not Path(home).is_dir():
            archive.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            removed.append(archive)
    for partial in folder.glob("spark-classes-*.partial"):
        if time.time() - partial.stat().st_mtime > _BUILD_SECONDS:
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def warm_up(spark, folder: Path) -> None:
    """A small workload that loads the classes every stage uses: Delta writes (partitioned,
    idempotent, replaceWhere), MERGE, history, time travel, a window, aggregates, joins and
    a cached frame. What it leaves out (the ML estimators, CSV, Arrow) loads as without an
    archive: each part of the workload costs seconds of every setup."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = spark.range(100).select(
        "id", (F.col("id") % 4).alias("k"), (F.rand(1) * 100).alias("x"),
        F.concat(F.lit("c"), F.col("id").cast("string")).alias("s"), F.current_timestamp().alias("ts"),
    )
    table = (folder / "table").as_posix()
    rows.write.format("delta").partitionBy("k").option("txnAppId", "warm-up").option("txnVersion", 1).save(table)
    rows.where("k = 1").write.format("delta").mode("overwrite").option("replaceWhere", "k = 1").save(table)
    spark.sql(f"MERGE INTO delta.`{table}` t USING (SELECT * FROM delta.`{table}` WHERE k = 2) s ON t.id = s.id "
              "WHEN MATCHED THEN UPDATE SET x = s.x + 1 WHEN NOT MATCHED THEN INSERT *")
    spark.sql(f"DESCRIBE HISTORY delta.`{table}`").collect()
    back = spark.read.format("delta").option("versionAsOf", 0).load(table)
    ranked = back.withColumn("rank", F.row_number().over(Window.partitionBy("k").orderBy("x")))
    summary = ranked.groupBy("k").agg(F.count("*").alias("n"), F.sum("x").alias("total"), F.approx_count_distinct("s"),
                                      F.percentile_approx("x", 0.5), F.collect_set("s"), F.max("ts"))
    joined = summary.join(F.broadcast(back.select("k").distinct()), "k").join(ranked, "k").persist()
    joined.count()
    joined.unpersist()


def _write_archive(partial: Path, config_json: str) -> int:
    """The child of `build_archive`: start a session whose JVM writes `partial` at exit, run
    the workload, and end the JVM (its input closed), waiting until it has written."""
    from pyspark import SparkContext

    from segmentation.spark import conf_value, get_spark

    config = SparkConfig.model_validate_json(config_json)
    options = with_archive_written(conf_value(config.conf.get(DRIVER_OPTIONS, "")), partial)
    conf = {**config.conf, DRIVER_OPTIONS: options, "spark.ui.enabled": False}
    spark = get_spark(config.model_copy(update={"conf": conf, "class_archive": False, "log_level": "ERROR"}))
    with tempfile.TemporaryDirectory(prefix="segmentation-warm-up-") as folder:
        warm_up(spark, Path(folder))
    spark.stop()
    gateway = SparkContext._gateway
    process = gateway.proc
    gateway.shutdown()
    process.stdin.close()  # pyspark's gateway JVM exits when its input closes
    return 0 if process.wait(timeout=_BUILD_SECONDS) == 0 else 1


if __name__ == "__main__":  # the child process of `build_archive`
    sys.exit(_write_archive(Path(sys.argv[1]), sys.argv[2]))
