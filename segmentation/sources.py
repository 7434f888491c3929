"""Reading an ingest source (a Delta table, Parquet or CSV files) and fingerprinting the batch.

The fingerprint identifies a batch so that ingesting it again adds nothing: a Delta source
is identified by its location and version, files by their paths, sizes and modification
times (listed by the driver: bounded by the number of files, not of rows).

A Delta source is read incrementally: only the rows of the data files added since the last
version ingested. CSV files are read with their own header each: files whose columns come
in another order are read apart and matched by name, so no value lands in another column.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation import tables
from segmentation.config import Config, SourceConfig
from segmentation.errors import DataQualityError
from segmentation.quality.validation import CORRUPT_RECORD, SOURCE_FILE, SourceColumns, conform_source

log = logging.getLogger(__name__)

# A table `segmentation generate` wrote carries this table property (the data set's name),
# so that generated rows are never mixed with a real feed's.
GENERATED_PROPERTY = "segmentation.generated"
FEED = "feed"
# Spark reads a CSV file with a line break inside a quoted field only with multiLine on:
# the default here, since real exports (addresses, product names) have them.
CSV_DEFAULTS = {"header": "true", "encoding": "UTF-8", "escape": '"', "multiLine": "true"}
# Files whose header is read in one Spark job.
_HEADERS_PER_JOB = 64


@dataclass(frozen=True)
class SourceBatch:
    df: DataFrame  # conformed: the transaction columns by name, plus the bookkeeping columns
    columns: SourceColumns
    name: str  # what error messages and the ingest log call the source
    batch_id: str
    kind: str = FEED  # FEED, or "generated:<data set>" for a table `segmentation generate` wrote
    format: str = "delta"
    options: Mapping[str, str] = field(default_factory=dict)
    delta_ref: tables.TableRef | None = None
    delta_version: int | None = None
    # A Delta source read incrementally: the first version whose added files were read
    # (None: the whole snapshot).
    from_version: int | None = None

    @property
    def generated(self) -> bool:
        return self.kind != FEED

    @property
    def multiline(self) -> bool:
        return self.format == "csv" and (option(self.options, "multiLine") or "false").lower() == "true"

    @property
    def encoding(self) -> str:
        return option(self.options, "encoding") or option(self.options, "charset") or "UTF-8"


def option(options: Mapping[str, str], name: str) -> str | None:
    """A reader option by name in any case, as Spark reads them (multiLine = multiline)."""
    return next((value for key, value in options.items() if key.lower() == name.lower()), None)


def with_defaults(options: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """`options` over `defaults`, names compared in any case (Spark's options are)."""
    given = {key.lower() for key in options}
    return {**{key: value for key, value in defaults.items() if key.lower() not in given}, **options}


def read_source(spark: SparkSession, config: Config, ingested_versions: Mapping[str, int] | None = None) -> SourceBatch:
    """The configured source as a batch, its columns conformed to the transaction schema.

    `ingested_versions` maps a Delta source's name to the last version of it ingested; only
    the rows added since are read.
    """
    source = config.ingest.source
    ingested_versions = ingested_versions or {}
    if source.table is not None:
        ref = tables.table_ref(config, source.table)
        version = tables.current_version(spark, ref)  # None: no such table
        if version is None:
            raise DataQualityError(
                f"source table {ref} does not exist: run 'segmentation generate' first, or ingest from a path (--source PATH)"
            )
        return _delta_batch(spark, ref, str(ref), version, ingested_versions.get(str(ref)))
    path = source.path
    assert path is not None  # guaranteed by SourceConfig
    if source.format == "delta":
        ref = tables.TableRef("source", path, is_path=True)
        version = tables.current_version(spark, ref)  # None: not a Delta table
        if version is None:
            raise DataQualityError(f"{path}: not a Delta table")
        return _delta_batch(spark, ref, path, version, ingested_versions.get(path))
    options = {k: _option_text(v) for k, v in source.options.items()}
    if source.format == "parquet":
        df = _read_files(spark, path, lambda: spark.read.options(**options).parquet(path))
        conformed, columns = conform_source(df, path)
        listing = _file_listing(spark, df, path, options)
    else:
        options = with_defaults(options, CSV_DEFAULTS)
        conformed, columns, listing = _read_csv(spark, path, options)
    return SourceBatch(conformed, columns, path, _digest(listing), format=source.format, options=options)


@dataclass(frozen=True)
class RunSource:
    """What `segmentation run` does before ingest: generate a demo feed or not, and the source
    to ingest from when the configured one is not there."""

    generate: bool
    source: SourceConfig | None = None
    reason: str = ""


def run_source(
    *, asked_to_generate: bool, raw_table: str, raw_exists: bool, real: list[Mapping[str, object]], batches: int
) -> RunSource:
    """Decide where `run` takes its rows from, on the default source (the `raw_table` that
    `segmentation generate` writes). `real` are the committed ingest_log entries of real
    feeds, oldest first; `batches` counts every committed batch.

    Generated rows never go where real batches are: --generate then fails. Without it, a demo
    feed is generated only into an empty storage root; after a real feed was ingested, run
    ingests that feed again (the same files add nothing; a grown source adds its new rows).
    """
    last = real[-1] if real else None
    if asked_to_generate:
        if last is not None:
            raise DataQualityError(
                f"--generate: transactions already holds batches ingested from {last['source']}; generated rows "
                "are never mixed with a real feed's (use another storage.root for a demo)"
            )
        return RunSource(True, reason="asked with --generate")
    if raw_exists:
        return RunSource(False, reason=f"the source table {raw_table} exists")
    if last is None:
        if batches:
            raise DataQualityError(
                f"the source table {raw_table} is gone and no real feed was ingested: pass --generate for a new demo "
                "feed, or --source PATH --format FORMAT"
            )
        return RunSource(True, reason="an empty storage root: a demo feed is generated")
    if last["source"] == raw_table or not last.get("source_format"):
        raise DataQualityError(
            f"the source {last['source']} of the last batch is not there, and run knows no other: pass "
            "--source PATH --format FORMAT (and its options as --set ingest.source.options.NAME=VALUE)"
        )
    options = dict(last.get("source_options") or {})
    source = SourceConfig(table=None, path=str(last["source"]), format=last["source_format"], options=options)
    given = {name: value for name, value in sorted(options.items()) if option(CSV_DEFAULTS, name) != value}
    shown = "".join(f" --set ingest.source.options.{name}={_as_yaml(value)}" for name, value in given.items())
    return RunSource(False, source, f"the feed ingested last: --source {source.path} --format {source.format}{shown}")


def _as_yaml(text: str) -> str:
    """A value as `--set` reads it back: quoted where YAML would read something else (",")."""
    try:
        same = yaml.safe_load(text) == text
    except yaml.YAMLError:
        same = False
    return text if same else json.dumps(text)


def _option_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _delta_batch(spark: SparkSession, ref: tables.TableRef, name: str, version: int, last_ingested: int | None) -> SourceBatch:
    """The rows of `version` of the source (its newest), or those added after `last_ingested`."""
    snapshot = tables.read(spark, ref, version)
    df, from_version = snapshot, None
    if last_ingested is not None and last_ingested < version:
        added = _files_added_since(spark, ref, last_ingested, snapshot)
        if added is not None:
            df, from_version = snapshot.where(F.col("_metadata.file_path").isin(added)), last_ingested + 1
            log.info("%s: reading the %d data file(s) added after version %d (up to version %d)", name, len(added), last_ingested, version)
    df = df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))
    conformed, columns = conform_source(df, name)
    return SourceBatch(
        conformed, columns, name, _digest(f"delta|{ref.location}|{version}"), kind=_table_kind(spark, ref),
        format="delta", delta_ref=ref, delta_version=version, from_version=from_version,
    )


def _files_added_since(spark: SparkSession, ref: tables.TableRef, version: int, snapshot: DataFrame) -> list[str] | None:
    """The data files of `snapshot` that version `version` did not have, from the Delta log
    alone (no data file is read). None when that version is no longer in the log (log
    retention): the whole snapshot is then read, and rows ingested before are recognised by
    their transaction id."""
    try:
        before = set(tables.read(spark, ref, version).inputFiles())
    except Exception as exc:  # Delta: the version's log entries were cleaned up
        log.warning(
            "%s: version %d, the last one ingested, is no longer in the Delta log (%s): reading the whole "
            "snapshot; rows of earlier batches in it are recognised by transaction id and set aside",
            ref, version, str(exc).splitlines()[0][:200],
        )
        return None
    now = set(snapshot.inputFiles())
    removed = before - now
    if removed:
        log.info(
            "%s: %d data file(s) of version %d were removed since (an overwrite, update, delete or compaction): "
            "rows of earlier batches in the new files are recognised by transaction id and set aside",
            ref, len(removed), version,
        )
    return sorted(now - before)


def _table_kind(spark: SparkSession, ref: tables.TableRef) -> str:
    dataset = tables.properties(spark, ref).get(GENERATED_PROPERTY)
    return f"generated:{dataset}" if dataset else FEED


def _read_files(spark: SparkSession, path: str, read) -> DataFrame:
    try:
        df = read()
    except Exception as exc:  # Spark's AnalysisException names the path but buries it in a trace
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise DataQualityError(f"{path}: no such file or directory") from None
        raise
    return df.select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))


def _read_csv(spark: SparkSession, path: str, settings: dict[str, str]) -> tuple[DataFrame, SourceColumns, str]:
    """CSV with every column as text, each file by its own header; a record that does not fit
    its header goes to `_corrupt_record`."""
    # With column pruning Spark parses only the columns a query uses and then cannot see that
    # a line has too few or too many fields; such lines must reach quarantine as malformed.
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    # Spark 4 accepts only a few charsets by default; exports come in windows-1252, GB18030, ...
    spark.conf.set("spark.sql.legacy.javaCharsets", "true")
    listing = _read_files(spark, path, lambda: spark.read.schema("value string").options(**settings).csv(path))
    files = sorted(listing.inputFiles())
    if not files:
        raise DataQualityError(f"{path}: no input files")
    by_header: dict[tuple[str, ...], list[str]] = {}
    for file, header in _csv_headers(spark, files, settings).items():
        by_header.setdefault(tuple(header), []).append(file)
    if len(by_header) > 1:
        log.info("%s: %d column orders among %d files: each read by its own header", path, len(by_header), len(files))
    parts, extra, missing = [], [], []
    for header, group in by_header.items():
        schema = T.StructType(
            [T.StructField(name, T.StringType(), True) for name in header] + [T.StructField(CORRUPT_RECORD, T.StringType(), True)]
        )
        df = (
            spark.read.options(**settings)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
            .schema(schema)
            .csv(group)
            .select("*", F.col("_metadata.file_path").alias(SOURCE_FILE))
        )
        conformed, columns = conform_source(df, path if len(by_header) == 1 else file_name(group[0]))
        parts.append(conformed)
        extra += [c for c in columns.extra if c not in extra]
        missing += [c for c in columns.missing_optional if c not in missing]
    conformed = functools.reduce(DataFrame.unionByName, parts)
    return conformed, SourceColumns(missing, extra), _file_listing(spark, listing, path, settings)


def _csv_headers(spark: SparkSession, files: list[str], settings: dict[str, str]) -> dict[str, list[str]]:
    """Each file's header names as written, by file. The header line is read by Spark (so any
    file system and the configured encoding work), each file's task stopping after its first
    line; Python's csv module splits it with the configured separator and quote."""
    raw_line = {
        # One field per line: no separator, no quoting. multiLine reads each file as one
        # stream, so that encodings such as UTF-16 decode whole.
        "encoding": option(settings, "encoding") or option(settings, "charset") or "UTF-8",
        "sep": "\u0001", "quote": "", "multiLine": "true", "header": "false",
    }
    lines: dict[str, str | None] = {}
    for start in range(0, len(files), _HEADERS_PER_JOB):
        chunk = files[start : start + _HEADERS_PER_JOB]
        firsts = [
            spark.read.options(**raw_line).schema("line string").csv(file).where(F.trim("line") != "").limit(1)
            .select(F.lit(file).alias("file"), "line")
            for file in chunk
        ]
        found = {row.file: row.line for row in functools.reduce(DataFrame.unionByName, firsts).collect()}
        lines.update({file: found.get(file) for file in chunk})
    return {file: _header_names(file, line, settings) for file, line in lines.items()}


def _header_names(file: str, line: str | None, settings: dict[str, str]) -> list[str]:
    name = file_name(file)
    if line is None:
        raise DataQualityError(f"{name}: empty CSV input (no header line)")
    sep = option(settings, "sep") or option(settings, "delimiter") or ","
    quote = option(settings, "quote")
    quote = '"' if quote is None else (quote or None)
    escape = option(settings, "escape")
    escape = "\\" if escape is None else escape
    dialect = {"delimiter": sep, "quotechar": quote, "quoting": csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE}
    if quote and escape == quote:
        dialect["doublequote"] = True
    else:
        dialect.update(doublequote=False, escapechar=escape or None)
    try:
        [header] = list(csv.reader([line.lstrip("\ufeff")], **dialect))
    except (csv.Error, ValueError) as exc:
        raise DataQualityError(f"{name}: the header line cannot be read as CSV ({exc})") from None
    header = [value if value else f"_c{position}" for position, value in enumerate(header)]  # Spark's names for blank ones
    if len(header) == 1 and re.search(r"[,;|\t]", header[0]):
        raise DataQualityError(
            f"{name}: the header is one column, {header[0]!r}: the file is not separated by {sep!r}; "
            "set ingest.source.options.sep"
        )
    names = [value.strip().lower() for value in header]
    repeated = sorted({value for value in names if names.count(value) > 1})
    if repeated:
        raise DataQualityError(f"{name}: column(s) named more than once in the header: {', '.join(repeated)}")
    return header


def file_name(file: str) -> str:
    """A file as messages name it: its path without the file: scheme Spark adds."""
    return re.sub(r"^file:(//)?", "", file)


def _file_listing(spark: SparkSession, df: DataFrame, path: str, options: Mapping[str, str]) -> str:
    """Each input file of `df` with its size and modification time (milliseconds), as Spark's
    binaryFile source lists them under `path` with the same reader options (the same files):
    through Spark itself, so on a Connect session too. No file's content is read."""
    files = sorted(df.inputFiles())
    if not files:
        raise DataQualityError(f"{path}: no input files")
    statuses = (
        spark.read.format("binaryFile").options(**options).load(path)
        .select("path", "length", F.unix_millis("modificationTime").alias("modified"))
        .collect()
    )
    # inputFiles() gives URIs (file:///a%20b), binaryFile Hadoop paths (file:/a b).
    status = {file_name(row.path): row for row in statuses}
    parts = []
    for name in files:
        row = status.get(urllib.parse.unquote(file_name(name)))
        if row is None:
            raise DataQualityError(f"{file_name(name)}: the file is gone (listed by the read, not by the file listing)")
        parts.append(f"{name}|{row.length}|{row.modified}")
    log.info("source %s: %d file(s)", path, len(files))
    return "files|" + "\n".join(parts)


def _digest(description: str) -> str:
    return hashlib.sha256(description.encode("utf-8")).hexdigest()[:20]
