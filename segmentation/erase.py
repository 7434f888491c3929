"""erase: remove customers from every table (the right to erasure), optionally vacuuming.

Customer ids come in as the business knows them (raw), from --customer and --customers-file.
They are hashed with the configured key exactly as ingest hashes them, and their rows are
deleted from every configured table that has a customer id column: by the pseudonym, and
in the raw landing tables by the raw id. Tables without a customer column (ingest_log,
tier_migrations: aggregates) hold nothing to erase.

The ids travel as a small DataFrame joined in a Delta MERGE ... WHEN MATCHED THEN DELETE,
never as literals: a DELETE predicate would be written into the Delta commit info (and
Spark prints plans in errors), which would keep the ids in the table's history. Logs, the
output and the MLflow run hold counts only, never ids.

A DELETE is a new table version: older versions keep the rows (time travel) until VACUUM
deletes the files they were in, which it does only for files removed longer ago than the
table's retention (delta.deletedFileRetentionDuration, 7 days by default).
"""

from __future__ import annotations

import argparse
import logging
import uuid
from dataclasses import dataclass

import mlflow
from pyspark import StorageLevel
from pyspark.errors import IllegalArgumentException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.stages.ingest import COMMITTED
from segmentation import tables, tracking
from segmentation.errors import ConfigError, DataQualityError
from segmentation.logs import stage
from segmentation.privacy import erasure_condition, erasure_ids, key_fingerprint, load_key, raw_table_keys
from segmentation.tables import TableRef

log = logging.getLogger(__name__)

HELP = "delete given customers from every table (raw ids in, pseudonymised with the configured key); --vacuum"

DEFAULT_RETENTION_HOURS = 168.0  # Delta's default delta.deletedFileRetentionDuration (7 days)
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
# VACUUM lists and deletes files in this many tasks (Spark's default: 10,000, which costs
# minutes per table on a small local session); capped unless configured.
_LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--customer", action="append", default=[], metavar="ID",
        help="a customer id as it arrives in the raw feed (repeatable)",
    )
    parser.add_argument(
        "--customers-file", metavar="PATH",
        help="a text file (any path Spark reads) with one raw customer id per line; blank lines are skipped",
    )
    parser.add_argument(
        "--vacuum", action="store_true",
        help="then VACUUM every table holding customer rows: delete files removed longer ago than the retention",
    )
    parser.add_argument(
        "--retention-hours", type=float, metavar="H",
        help="vacuum with this retention instead of each table's own (default 168 hours = 7 days)",
    )
    parser.add_argument(
        "--allow-short-retention", action="store_true",
        help=(
            "allow --retention-hours below 168: turns off Delta's retention check for this vacuum; "
            "time travel to older versions, and jobs still reading or writing them, can then fail"
        ),
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    return []


@dataclass(frozen=True)
class Deletion:
    rows: int
    version: int | None  # None when nothing matched: Delta commits nothing then


@dataclass(frozen=True)
class EraseResult:
    erase_id: str
    key_fingerprint: str | None
    retention_hours: float | None  # the vacuum's retention; None: each table's own
    customers: int | None  # distinct ids asked for; None: none named (a vacuum alone)
    deleted: dict[str, Deletion]  # table key -> what was deleted
    vacuumed: list[str]  # table keys
    without_customer_column: list[str]  # table keys holding aggregates only
    other_key_fingerprints: list[str]  # keys other batches were hashed with

    @property
    def rows_deleted(self) -> int | None:
        return None if self.customers is None else sum(d.rows for d in self.deleted.values())

    def summary(self) -> dict[str, object]:
        """What the stage logs: counts only, never an id."""
        counts = {} if self.customers is None else {"customers": self.customers, "rows_deleted": self.rows_deleted}
        return {"erase_id": self.erase_id, "key_fingerprint": self.key_fingerprint, **counts}


def run(ctx: StageContext, args: argparse.Namespace) -> EraseResult:
    config = ctx.config
    retention = _vacuum_retention(args)
    raw_ids = _requested_ids(ctx, args)
    if raw_ids is None and not args.vacuum:
        raise ConfigError("erase: name the customers with --customer ID or --customers-file PATH (or run --vacuum alone)")
    key = load_key(config.privacy) if config.privacy.pseudonymise else None
    erase_id = uuid.uuid4().hex
    with tracking.stage_run(config, "erase", ctx.pipeline_run_id), stage("erase") as summary:
        customer_tables, without_customers = _customer_tables(ctx)
        other_keys = _other_ingest_keys(ctx, key)
        customers, deleted = None, {}
        if raw_ids is not None:
            customers, deleted = _delete_customers(ctx, raw_ids, key, customer_tables, f"segmentation-erase-{erase_id}")
        vacuumed = [_vacuum(ctx, ref, retention, args.allow_short_retention) for ref, _ in customer_tables] if args.vacuum else []
        result = EraseResult(erase_id, key_fingerprint(key) if key else None, retention, customers, deleted, vacuumed,
                             without_customers, other_keys)
        _record(config, result, args.vacuum)
        summary.update(result.summary())
    print(outcome(result, config.ingest.source.path), flush=True)
    return result


def _delete_customers(
    ctx: StageContext, raw_ids: DataFrame, key: bytes | None, customer_tables: list[tuple[TableRef, str]], marker: str
) -> tuple[int, dict[str, Deletion]]:
    """Delete the customers from every table holding customer rows: the distinct ids asked for and what went per table."""
    deleted: dict[str, Deletion] = {}
    ids = erasure_ids(raw_ids, key).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        customers = ids.count()
        if customers == 0:
            raise DataQualityError("erase: the given customer ids are all empty")
        for ref, condition in customer_tables:
            deleted[ref.key] = _delete_matching(ctx.spark, ref, ids, condition, marker)
            log.info("%s: %d rows deleted", ref, deleted[ref.key].rows)
    finally:
        ids.unpersist()
    return customers, deleted


def _vacuum_retention(args: argparse.Namespace) -> float | None:
    """The retention the vacuum uses (None: each table's own); a retention below Delta's
    default only with --allow-short-retention, before anything is deleted."""
    hours = args.retention_hours
    if hours is None:
        return None
    if hours < 0:
        raise ConfigError(f"erase: --retention-hours {hours:g} is negative")
    if not args.vacuum:
        raise ConfigError("erase: --retention-hours applies to --vacuum; add --vacuum")
    if hours < DEFAULT_RETENTION_HOURS and not args.allow_short_retention:
        raise ConfigError(
            f"erase: --retention-hours {hours:g} is below Delta's retention of {DEFAULT_RETENTION_HOURS:g} hours. "
            "Files removed less than the retention ago may still be read by running jobs and by time travel; "
            "vacuuming them can break those. If nothing reads the older versions, add --allow-short-retention"
        )
    return hours


def _requested_ids(ctx: StageContext, args: argparse.Namespace) -> DataFrame | None:
    """The raw ids asked for, one column; None when none were named."""
    parts = []
    if args.customer:
        parts.append(ctx.spark.createDataFrame([(value,) for value in args.customer], "id string"))
    if args.customers_file:
        try:
            parts.append(ctx.spark.read.text(args.customers_file).select(F.col("value").alias("id")))
        except Exception as exc:  # Spark's AnalysisException buries the path in a trace
            if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
                raise DataQualityError(f"erase: {args.customers_file}: no such file") from None
            raise
    if not parts:
        return None
    ids = parts[0]
    for part in parts[1:]:
        ids = ids.unionByName(part)
    return ids


def _customer_tables(ctx: StageContext) -> tuple[list[tuple[TableRef, str]], list[str]]:
    """Every configured table that exists and has a customer column, with its match
    condition, and the existing tables without one. The list follows the configuration and
    the tables' schemas, not a list kept here."""
    raw_keys = raw_table_keys(ctx.config)
    found, without = [], []
    for key in ctx.config.storage.tables.model_dump():
        ref = ctx.table(key)
        if not tables.exists(ctx.spark, ref):
            log.info("%s: table does not exist, nothing to erase", ref)
            continue
        condition = erasure_condition(tables.read(ctx.spark, ref).columns, holds_raw_ids=key in raw_keys)
        if condition is None:
            log.info("%s: no customer column (aggregates only), nothing to erase", ref)
            without.append(key)
        else:
            found.append((ref, condition))
    return found, without


def ingest_key_fingerprints(ctx: StageContext) -> set[str]:
    """Fingerprints of the keys committed ingest batches were hashed with (none without an ingest_log)."""
    ref = ctx.table("ingest_log")
    if not tables.exists(ctx.spark, ref):
        return set()
    used = tables.read(ctx.spark, ref).where(F.col("status") == COMMITTED).select("key_fingerprint").distinct().collect()
    return {row.key_fingerprint for row in used if row.key_fingerprint}


def _other_ingest_keys(ctx: StageContext, key: bytes | None) -> list[str]:
    """Fingerprints of other keys than `key` that committed ingest batches were hashed with:
    their rows hold pseudonyms this key cannot match (a rotated key, a demo-key batch)."""
    if key is None:
        return []
    others = sorted(ingest_key_fingerprints(ctx) - {key_fingerprint(key)})
    if others:
        log.warning("ingest_log: batches hashed with other keys (fingerprints %s): this key cannot match their rows", ", ".join(others))
    return others


def _delete_matching(spark, ref: TableRef, ids: DataFrame, condition: str, marker: str) -> Deletion:
    """Delete the table's rows matching `ids`: rows deleted and the version committed."""
    result = tables.delete_matching(ids, ref, condition, run_id=marker)
    rows = result.rows or 0
    if rows and _has_deletion_vectors(tables.detail(spark, ref)):
        # With deletion vectors a DELETE only marks rows as deleted; the files keep them, and
        # VACUUM would never remove them. PURGE rewrites those files without the rows.
        spark.sql(f"REORG TABLE {tables.sql_name(ref)} APPLY (PURGE)")
        log.info("%s: files with deleted rows rewritten (deletion vectors purged)", ref)
    return Deletion(rows, result.version)


def _has_deletion_vectors(detail) -> bool:
    properties = detail["properties"] or {}
    return str(properties.get("delta.enableDeletionVectors", "false")).lower() == "true"


def _vacuum(ctx: StageContext, ref: TableRef, retention: float | None, allow_short: bool) -> str:
    """VACUUM with the table's retention (or `retention` hours). Delta's retention check is
    turned off only for a short retention the user allowed, and only for this vacuum."""
    spark = ctx.spark
    settings = {}
    if retention is not None and retention < DEFAULT_RETENTION_HOURS and allow_short:
        log.warning("%s: vacuum with a retention of %g hours (Delta's retention check off for it)", ref, retention)
        settings[_RETENTION_CHECK] = "false"
    if _LISTING_PARALLELISM not in ctx.config.spark.conf:
        settings[_LISTING_PARALLELISM] = str(max(8, 4 * _parallelism(spark)))
    retain = "" if retention is None else f" RETAIN {retention:g} HOURS"
    try:
        with tables.session_conf(spark, settings):
            spark.sql(f"VACUUM {tables.sql_name(ref)}{retain}")
    except IllegalArgumentException as exc:  # the table's own retention is longer than asked
        raise ConfigError(f"erase: {ref}: Delta refused the vacuum: {str(exc).splitlines()[0]}") from None
    log.info("%s: vacuumed", ref)
    return ref.key


def _parallelism(spark) -> int:
    """Spark's default parallelism, read through spark.conf (a Connect session has no
    SparkContext): spark.default.parallelism, else the shuffle partitions."""
    return int(spark.conf.get("spark.default.parallelism", None) or spark.conf.get("spark.sql.shuffle.partitions"))


def _record(config, result: EraseResult, vacuum: bool) -> None:
    """The erase in MLflow: how many customers and rows, per table; never an id."""
    mlflow.log_params({
        "customers": result.customers or 0,
        "vacuum": bool(vacuum),
        "retention_hours": result.retention_hours if result.retention_hours is not None else "table default",
        "pseudonymise": config.privacy.pseudonymise,
    })
    if result.key_fingerprint:
        mlflow.set_tag("key_fingerprint", result.key_fingerprint)
    mlflow.log_metrics({tracking.metric_name(f"rows_deleted.{key}"): float(d.rows) for key, d in result.deleted.items()})


def outcome(result: EraseResult, source_path: str | None) -> str:
    """The printed outcome: counts per table, and what is still to do (old versions hold the
    rows until a vacuum; a source outside the tables is erased there)."""
    lines = [""]
    if result.customers is not None:
        lines.append(f"Erase of {result.customers} customer id(s), rows deleted:")
        for key, deletion in result.deleted.items():
            version = f"  (Delta version {deletion.version})" if deletion.version is not None else ""
            lines.append(f"  {key:<24} {deletion.rows:>9}" + version)
    if result.without_customer_column:
        lines.append(f"  no customer column, nothing to erase (aggregates): {', '.join(result.without_customer_column)}")
    if result.other_key_fingerprints:
        lines.append(
            f"  some batches were hashed with other keys (fingerprints {', '.join(result.other_key_fingerprints)}, see ingest_log): "
            "erase again with each of those keys"
        )
    if source_path:
        lines.append(f"  the ingest source {source_path} is not one of these tables: erase the customers there too")
    retention = result.retention_hours
    period = f"{retention:g} hours" if retention is not None else "each table's retention (7 days by default)"
    if result.vacuumed:
        lines += [
            f"Vacuumed {', '.join(result.vacuumed)}: files removed longer ago than {period} are deleted.",
            "Rows deleted more recently stay readable in older versions until a vacuum after that period.",
        ]
    else:
        lines += [
            "The current versions no longer hold these customers, but older versions (Delta time travel)",
            "still do until VACUUM deletes their files, which it does only for files removed longer ago",
            "than the retention (7 days by default): run 'segmentation erase --vacuum' after that period.",
        ]
    lines += [
        "Delta's transaction log keeps the min/max statistics of removed files until the log is cleaned",
        "up (delta.logRetentionDuration, 30 days by default).",
        "",
    ]
    return "\n".join(lines)
