"""Delta table I/O: the one place that knows where tables live and how they are written.

A table is addressed by its configuration key (`transactions`, ...). Its location is a
path (Delta directory) or a metastore name (`catalog.schema.table`), from configuration.
Every write returns the Delta version it produced, and carries the pipeline run id as the
commit's user metadata.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import types as T

from segmentation.config import Config

log = logging.getLogger(__name__)

# The user metadata of the next commit, for operations that take no writer option (MERGE).
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
# The version of the session's newest Delta commit, which Delta sets as it commits. Unset
# before a commit, it says whether the commit happened and at which version, with no query:
# DESCRIBE HISTORY reads the log's commit files in a Spark job (about 100 ms on a warm local
# session, against 170 ms for appending 10 rows). The session's commits are then the
# caller's: a stage writes from one thread at a time, as every stage here does.
LAST_COMMIT = "spark.databricks.delta.lastCommitVersionInSession"
# The newest version each run id (its commits' user metadata) committed to each table location
# in this process, for the newest RUNS_REMEMBERED runs: a pipeline's summary of where its
# results are needs no query for the tables it wrote.
RUNS_REMEMBERED = 32
_RUN_COMMITS: OrderedDict[str, dict[str, int]] = OrderedDict()
# A commit that lost to another writer's (optimistic concurrency): nothing of it was
# committed, so it is tried again on the table as the other writer left it.
CONFLICTS = (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
# The same conflicts as a Spark Connect client sees them: an error of the server whose
# condition is Delta's (delta-spark's exception classes wrap py4j errors only).
CONFLICT_CONDITIONS = frozenset({
    "DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_DELETE", "DELTA_CONCURRENT_DELETE_READ",
    "DELTA_CONCURRENT_TRANSACTION", "DELTA_CONCURRENT_WRITE", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
})
COMMIT_ATTEMPTS = 5
_Answer = TypeVar("_Answer")


@dataclass(frozen=True)
class TableRef:
    key: str
    location: str
    is_path: bool

    def __str__(self) -> str:
        return f"{self.key} ({self.location})"


@dataclass(frozen=True)
class WriteResult:
    table: TableRef
    version: int | None  # None when nothing was committed (a write already applied, a MERGE that changed nothing)
    rows_from: Callable[[], int | None] | None = field(default=None, repr=False, compare=False)  # reads `rows`

    @property
    def skipped(self) -> bool:
        return self.version is None

    @cached_property
    def rows(self) -> int | None:
        """The rows the commit wrote (or deleted), from its metrics in the table's history:
        read on first use, as few callers need them."""
        return self.rows_from() if self.rows_from else None


def table_ref(config: Config, key: str) -> TableRef:
    location = getattr(config.storage.tables, key)
    if config.storage.catalog == "metastore":
        return TableRef(key, location, is_path=False)
    if "://" not in location and not Path(location).is_absolute():
        location = str(Path(config.storage.root) / location)
    return TableRef(key, location, is_path=True)


def sql_name(ref: TableRef) -> str:
    """The table as SQL names it: delta.`path` or the metastore name."""
    return f"delta.`{ref.location}`" if ref.is_path else ref.location


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Spark session settings for the duration of one operation, restored after (for
    operations without a writer option, such as a MERGE's commit metadata or a VACUUM)."""
    previous = {name: spark.conf.get(name, None) for name in settings}
    for name, value in settings.items():
        spark.conf.set(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                spark.conf.unset(name)
            else:
                spark.conf.set(name, value)


# What Delta answers DESCRIBE HISTORY on a path that holds no Delta table.
_NOT_DELTA = ("DELTA_TABLE_ONLY_OPERATION", "DELTA_MISSING_DELTA_TABLE", "PATH_NOT_FOUND")

# Delta's operations go through SQL, never through delta.tables.DeltaTable: no Delta Connect
# plugin exists for this Spark and Delta pair, so DeltaTable fails on a Spark Connect session.


def history(spark: SparkSession, ref: TableRef, limit: int | None = None) -> DataFrame:
    """The table's commits, newest first (DESCRIBE HISTORY)."""
    return spark.sql(f"DESCRIBE HISTORY {sql_name(ref)}" + (f" LIMIT {int(limit)}" if limit else ""))


# A command's rows (DESCRIBE ...) are in hand once spark.sql returns: read them as they are.
# `first()` adds a LIMIT that runs as a Spark job, a projection adds a query to analyse; without
# them the newest version takes 0.76x the time, DESCRIBE DETAIL half (README, "Fixed costs on a
# small feed").


def newest_commits(spark: SparkSession, ref: TableRef, limit: int) -> list[Row]:
    """The table's newest `limit` commits (DESCRIBE HISTORY rows), newest first."""
    return history(spark, ref, limit).collect()


def detail(spark: SparkSession, ref: TableRef) -> Row:
    """The table's DESCRIBE DETAIL row (format, location, properties, ...)."""
    return spark.sql(f"DESCRIBE DETAIL {sql_name(ref)}").collect()[0]


def exists(spark: SparkSession, ref: TableRef) -> bool:
    if not ref.is_path:
        return spark.catalog.tableExists(ref.location)
    # DESCRIBE DETAIL: a fifth of DESCRIBE HISTORY's time (which reads the newest commit's file too)
    return _unless_not_delta(lambda: detail(spark, ref)) is not None


def _unless_not_delta(query: Callable[[], _Answer]) -> _Answer | None:
    """`query`'s answer, or None when the path it reads holds no Delta table."""
    try:
        return query()
    except AnalysisException as exc:
        if exc.getCondition() in _NOT_DELTA:
            return None
        raise


def read(spark: SparkSession, ref: TableRef, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(ref.location) if ref.is_path else reader.table(ref.location)


def current_version(spark: SparkSession, ref: TableRef) -> int | None:
    """The table's newest version; None when there is no table (one DESCRIBE HISTORY)."""
    if not ref.is_path and not exists(spark, ref):
        return None
    newest = _unless_not_delta(lambda: newest_commits(spark, ref, 1))
    return int(newest[0].version) if newest else None


def properties(spark: SparkSession, ref: TableRef) -> dict[str, str]:
    """The table's properties (TBLPROPERTIES)."""
    return {row["key"]: row["value"] for row in spark.sql(f"SHOW TBLPROPERTIES {sql_name(ref)}").collect()}


def set_properties(spark: SparkSession, ref: TableRef, settings: dict[str, str]) -> None:
    assignments = ", ".join(f"'{name}' = '{value}'" for name, value in settings.items())
    spark.sql(f"ALTER TABLE {sql_name(ref)} SET TBLPROPERTIES ({assignments})")


def ensure_table(
    spark: SparkSession, ref: TableRef, schema: T.StructType, partition_by: list[str] | None = None,
    constraints: dict[str, str] | None = None,
) -> None:
    """Create the table empty with its schema (NOT NULL columns enforced by Delta) if absent,
    with `constraints` (name -> SQL condition) as Delta CHECK constraints from its first
    commit: one commit, where adding them to the empty table costs one commit each."""
    checks = {f"delta.constraints.{name.lower()}": expression for name, expression in (constraints or {}).items()}
    partitioned = f" PARTITIONED BY ({', '.join(partition_by)})" if partition_by else ""
    properties = ", ".join(f"'{key}' = '{_sql_text(value)}'" for key, value in checks.items())
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {sql_name(ref)} ({schema.toDDL()}) USING DELTA{partitioned}"
        + (f" TBLPROPERTIES ({properties})" if properties else "")
    )


def _sql_text(value: str) -> str:
    """`value` inside a single-quoted SQL string literal."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def write(
    df: DataFrame,
    ref: TableRef,
    *,
    mode: str = "append",
    run_id: str,
    partition_by: list[str] | None = None,
    replace_where: str | None = None,
    idempotency_key: tuple[str, int] | None = None,
    overwrite_schema: bool = False,
    merge_schema: bool = False,
) -> WriteResult:
    """Write `df` to a Delta table and return the version it committed.

    `idempotency_key` = (application id, version) makes a retried write a no-op (Delta's
    txnAppId / txnVersion): the result then has `version` None.
    """
    writer = df.write.format("delta").mode(mode).option("userMetadata", run_id)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    if idempotency_key:
        writer = writer.option("txnAppId", idempotency_key[0]).option("txnVersion", idempotency_key[1])
    spark = df.sparkSession
    version = _committed(spark, ref, run_id, lambda: writer.save(ref.location) if ref.is_path else writer.saveAsTable(ref.location))
    if version is None:
        log.info("write to %s skipped: already applied", ref)
        return WriteResult(ref, None)
    log.info("wrote %s at version %d", ref, version)
    return WriteResult(ref, version, lambda: _commit_rows(spark, ref, version, "numOutputRows"))


def write_snapshot(
    df: DataFrame, ref: TableRef, date: dt.date, *, run_id: str, column: str = "as_of_date",
    idempotency_key: tuple[str, int] | None = None, merge_schema: bool = False,
) -> WriteResult:
    """Replace exactly one date's snapshot (partition `column` = `date`) in one commit; the
    table's other dates stay as they are. Re-running a stage for a date does this."""
    return write(
        df, ref, mode="overwrite", run_id=run_id, partition_by=[column],
        replace_where=f"{column} = '{date.isoformat()}'", idempotency_key=idempotency_key, merge_schema=merge_schema,
    )


def _committed(spark: SparkSession, ref: TableRef, run_id: str, commit: Callable[[], None]) -> int | None:
    """Run `commit` (again after a conflict), made by `run_id`: the version it committed,
    None when it committed nothing."""
    spark.conf.unset(LAST_COMMIT)
    _retrying_conflicts(ref, commit)
    committed = spark.conf.get(LAST_COMMIT, None)
    if committed is None:
        return None
    version = int(committed)
    _RUN_COMMITS.setdefault(run_id, {})[ref.location] = version
    _RUN_COMMITS.move_to_end(run_id)
    while len(_RUN_COMMITS) > RUNS_REMEMBERED:
        _RUN_COMMITS.popitem(last=False)
    return version


def committed_by(run_id: str, ref: TableRef) -> int | None:
    """The newest version of the table that `run_id` committed in this process (one of the
    newest RUNS_REMEMBERED runs); None when it committed none."""
    return _RUN_COMMITS.get(run_id, {}).get(ref.location)


def _retrying_conflicts(ref: TableRef, commit: Callable[[], None]) -> None:
    """Run a Delta commit, again after a pause when another writer's commit conflicted with
    it (up to COMMIT_ATTEMPTS times)."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            commit()
            return
        except Exception as error:
            conflict = commit_conflict(error)
            if conflict is None or attempt == COMMIT_ATTEMPTS:
                raise
            pause = attempt * random.uniform(1.0, 2.0)
            log.warning("%s: the commit conflicted with another writer's (%s); attempt %d of %d in %.1f s",
                        ref, conflict, attempt + 1, COMMIT_ATTEMPTS, pause)
            time.sleep(pause)


def commit_conflict(error: BaseException) -> str | None:
    """What conflict `error` is, when it is a Delta commit that lost to another writer's: its
    class in a classic session, its error condition through Spark Connect; None otherwise."""
    if isinstance(error, CONFLICTS):
        return type(error).__name__
    condition = error.getCondition() if isinstance(error, PySparkException) else None
    return condition if condition and condition.split(".")[0] in CONFLICT_CONDITIONS else None


def _commit_rows(spark: SparkSession, ref: TableRef, version: int, metric: str, depth: int = 20) -> int | None:
    """The operation metric `metric` (rows) of the table's commit `version`, from its history:
    among the newest `depth` commits, else looked up by version."""
    commits = [row for row in newest_commits(spark, ref, depth) if row.version == version]
    if not commits:  # more than `depth` commits since (other writers)
        commits = history(spark, ref).where(f"version = {int(version)}").collect()
    rows = (commits[0].operationMetrics or {}).get(metric) if commits else None
    return int(rows) if rows is not None else None


def delete_matching(keys: DataFrame, ref: TableRef, condition: str, *, run_id: str) -> WriteResult:
    """Delete the table's rows that match a row of `keys` by `condition` (the table is `t`,
    the keys `s`) in one Delta MERGE ... WHEN MATCHED THEN DELETE, again after a conflict.
    `rows` is the number deleted; `version` is None when nothing matched (nothing is committed)."""
    spark = keys.sparkSession
    version = _committed(spark, ref, run_id, lambda: _merge_sql(keys, ref, condition, ["WHEN MATCHED THEN DELETE"], run_id))
    if version is None:
        return WriteResult(ref, None, lambda: 0)
    return WriteResult(ref, version, lambda: _commit_rows(spark, ref, version, "numTargetRowsDeleted") or 0)


def add_constraints(spark: SparkSession, ref: TableRef, constraints: dict[str, str]) -> None:
    """Give the table these Delta CHECK constraints (name -> SQL condition), adding missing
    ones and replacing changed ones; existing rows must satisfy them."""
    name = sql_name(ref)
    properties = detail(spark, ref)["properties"] or {}
    for constraint, expression in constraints.items():
        current = properties.get(f"delta.constraints.{constraint.lower()}")
        if current is not None and _same_sql(current, expression):
            continue
        if current is not None:  # the configured domain changed: replace the constraint
            spark.sql(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
        spark.sql(f"ALTER TABLE {name} ADD CONSTRAINT {constraint} CHECK ({expression})")
        log.info("%s: constraint %s CHECK (%s) added", ref, constraint, expression)


_SQL_STRING = re.compile(r"('(?:[^']|'')*')")


def _same_sql(stored: str, expression: str) -> bool:
    """Whether Delta's stored text of a constraint is `expression`: Delta keeps it re-spaced
    (`( a >= 0 )`, `IN ( 'x' , 'y' )`), so whitespace outside string literals is ignored."""

    def squeezed(text: str) -> str:
        parts = _SQL_STRING.split(text)
        return "".join(part if i % 2 else re.sub(r"\s+", "", part) for i, part in enumerate(parts))

    return squeezed(stored) == squeezed(expression)


def merge(
    source: DataFrame, ref: TableRef, *, on: list[str], compare: list[str], run_id: str, delete_missing: bool = False
) -> WriteResult:
    """Bring the table to `source` by a Delta MERGE on the key columns `on`: rows whose
    `compare` columns differ (null-safe) are updated, new keys inserted and, with
    `delete_missing`, keys absent from `source` deleted. Creates the table when absent."""
    spark = source.sparkSession
    if not exists(spark, ref):
        return write(source, ref, mode="overwrite", run_id=run_id)
    matched = " AND ".join(f"t.{c} = s.{c}" for c in on)
    changed = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in compare) or "false"

    clauses = [f"WHEN MATCHED AND ({changed}) THEN UPDATE SET *", "WHEN NOT MATCHED THEN INSERT *"]
    if delete_missing:
        clauses.append("WHEN NOT MATCHED BY SOURCE THEN DELETE")
    version = _committed(spark, ref, run_id, lambda: _merge_sql(source, ref, matched, clauses, run_id))
    log.info("merged into %s at version %s", ref, version)
    return WriteResult(ref, version)


def _merge_sql(source: DataFrame, ref: TableRef, condition: str, clauses: list[str], run_id: str) -> None:
    """MERGE INTO the table (`t`) USING `source` (`s`, a temporary view for this statement)
    ON `condition` with `clauses`, committed with `run_id` as its user metadata."""
    spark = source.sparkSession
    view = f"merge_source_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    try:
        with session_conf(spark, {USER_METADATA: run_id}):
            spark.sql(f"MERGE INTO {sql_name(ref)} AS t USING {view} AS s ON {condition} " + " ".join(clauses))
    finally:
        spark.catalog.dropTempView(view)
