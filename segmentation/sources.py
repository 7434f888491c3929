"""Reading an ingest source (a Delta table, Parquet or CSV files) and fingerprinting the batch.

The fingerprint identifies a batch so that ingesting it again adds nothing: a Delta source
is identified by its location and version, files by their paths, sizes and modification
times (listed by the driver: bounded by the number of files, not of rows).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation import tables
from segmentation.config import Config
from segmentation.errors import DataQualityError
from segmentation.quality.validation import CORRUPT_RECORD, SOURCE_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceBatch:
    df: DataFrame
    name: str  # what error messages and the ingest log call the source
    batch_id: str
    delta_ref: tables.TableRef | None = None
    delta_version: int | None = None


def read_source(spark: SparkSession, config: Config) -> SourceBatch:
    source = config.ingest.source
    if source.table is not None:
        ref = tables.table_ref(config, source.table)
        if not tables.exists(spark, ref):
            raise DataQualityError(
                f"source table {ref} does not exist: run 'segmentation generate' first, or ingest from a path (--source PATH)"
            )
        version = tables.current_version(spark, ref)
        df = tables.read(spark, ref, version).select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))
        return SourceBatch(df, str(ref), _digest(f"delta|{ref.location}|{version}"), ref, version)
    path = source.path
    assert path is not None  # guaranteed by SourceConfig
    if source.format == "delta":
        ref = tables.TableRef("source", path, is_path=True)
        if not tables.exists(spark, ref):
            raise DataQualityError(f"{path}: not a Delta table")
        version = tables.current_version(spark, ref)
        df = tables.read(spark, ref, version).select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))
        return SourceBatch(df, path, _digest(f"delta|{path}|{version}"), ref, version)
    df = _read_files(spark, path, source.format, {k: str(v) for k, v in source.options.items()})
    return SourceBatch(df, path, _digest(_file_listing(spark, df, path)))


def _read_files(spark: SparkSession, path: str, fmt: str, options: dict[str, str]) -> DataFrame:
    try:
        if fmt == "parquet":
            df = spark.read.options(**options).parquet(path)
        else:
            df = _read_csv(spark, path, options)
    except Exception as exc:  # Spark's AnalysisException names the path but buries it in a trace
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise DataQualityError(f"{path}: no such file or directory") from None
        raise
    return df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))


def _read_csv(spark: SparkSession, path: str, options: dict[str, str]) -> DataFrame:
    """CSV with every column as text; a line that does not fit the header goes to `_corrupt_record`."""
    # A quote inside a quoted field is doubled, as RFC 4180, Excel and Python write it (Spark's
    # default escape character is a backslash, which would keep the quotes in the value).
    settings = {"header": "true", "encoding": "UTF-8", "escape": '"', **options}
    # With column pruning Spark parses only the columns a query uses and then cannot see that
    # a line has too few or too many fields; such lines must reach quarantine as malformed.
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    header = _csv_header(spark, path, settings)
    schema = T.StructType(
        [T.StructField(name, T.StringType(), True) for name in header] + [T.StructField(CORRUPT_RECORD, T.StringType(), True)]
    )
    return (
        spark.read.options(**settings)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
        .schema(schema)
        .csv(path)
    )


def _csv_header(spark: SparkSession, path: str, settings: dict[str, str]) -> list[str]:
    """The header line's names as written. Spark's own header read renames repeated names
    (net_amount9, net_amount13), which would then be reported as a missing column."""
    first = spark.read.options(**{**settings, "header": "false"}).csv(path).first()
    if first is None:
        raise DataQualityError(f"{path}: empty CSV input (no header line)")
    header = [name if name else f"_c{position}" for position, name in enumerate(first)]  # Spark's names for blank ones
    if len(header) == 1 and re.search(r"[,;|\t]", header[0]):
        raise DataQualityError(
            f"{path}: the header is one column, {header[0]!r}: the file is not separated by "
            f"{settings.get('sep') or settings.get('delimiter') or ','!r}; set ingest.source.options.sep"
        )
    names = [name.strip().lower() for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataQualityError(f"{path}: column(s) named more than once in the header: {', '.join(repeated)}")
    return header


def _file_listing(spark: SparkSession, df: DataFrame, path: str) -> str:
    files = sorted(df.inputFiles())
    if not files:
        raise DataQualityError(f"{path}: no input files")
    hadoop = spark.sparkContext._jvm.org.apache.hadoop.fs  # type: ignore[union-attr]
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    parts = []
    for name in files:
        file_path = hadoop.Path(name)
        status = file_path.getFileSystem(conf).getFileStatus(file_path)
        parts.append(f"{name}|{status.getLen()}|{status.getModificationTime()}")
    log.info("source %s: %d file(s)", path, len(files))
    return "files|" + "\n".join(parts)


def _digest(description: str) -> str:
    return hashlib.sha256(description.encode("utf-8")).hexdigest()[:20]
