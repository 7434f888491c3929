"""ingest: validate, deduplicate and pseudonymise a raw feed into `transactions`.

Every input row lands in exactly one of `transactions` and `transactions_quarantine`;
`ingest_log` records each batch. Writes are idempotent per batch (Delta txnAppId), so a
batch ingested twice, or a run retried after a crash, adds nothing the second time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

import mlflow
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.common import JobContext
from segmentation import tables, tracking
from segmentation.errors import DataQualityError
from segmentation.logs import stage
from segmentation.privacy import key_fingerprint, load_key
from segmentation.quality.validation import (
    CLEAN,
    QUARANTINED,
    SourceColumns,
    checked_transactions,
    clean_transactions,
    conform_source,
    quarantined_transactions,
    repeated_ids,
    row_counts,
    with_repeats_marked,
)
from segmentation.schema import QUARANTINE_SCHEMA, TRANSACTIONS_SCHEMA
from segmentation.sources import SourceBatch, read_source

log = logging.getLogger(__name__)

HELP = "validate, deduplicate and pseudonymise a raw feed into the transactions table"

INGEST_LOG_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("source_version", T.LongType(), True),
        T.StructField("status", T.StringType(), False),
        T.StructField("rows_in", T.LongType(), False),
        T.StructField("rows_clean", T.LongType(), False),
        T.StructField("rows_quarantined", T.LongType(), False),
        T.StructField("rejected_share", T.DoubleType(), False),
        T.StructField("rejections", T.MapType(T.StringType(), T.LongType(), False), False),
        T.StructField("transactions_version", T.LongType(), True),
        T.StructField("quarantine_version", T.LongType(), True),
        T.StructField("key_fingerprint", T.StringType(), True),
        T.StructField("pipeline_run_id", T.StringType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
    ]
)
COMMITTED, REJECTED = "committed", "rejected"
# Up to this many repeated transaction ids are broadcast (about 64 bytes each on every executor).
MAX_BROADCAST_IDS = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="PATH", help="read this path instead of the configured source table")
    parser.add_argument("--format", choices=["delta", "parquet", "csv"], help="format of --source (default: delta)")
    parser.add_argument("--max-rejected-share", type=float, help="fail when more than this share of rows is rejected")


def config_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if getattr(args, "source", None):
        overrides += ["ingest.source.table=null", f"ingest.source.path={args.source}"]
    if getattr(args, "format", None):
        overrides.append(f"ingest.source.format={args.format}")
    if getattr(args, "max_rejected_share", None) is not None:
        overrides.append(f"ingest.max_rejected_share={args.max_rejected_share}")
    return overrides


def run(ctx: JobContext, args: argparse.Namespace | None = None) -> dict[str, object]:
    config, spark = ctx.config, ctx.spark
    with tracking.stage_run(config, "ingest", ctx.pipeline_run_id), stage("ingest") as summary:
        batch = read_source(spark, config)
        summary.update(source=batch.name, batch_id=batch.batch_id)
        mlflow.log_params({"source": batch.name, "batch_id": batch.batch_id, **_rule_params(config)})
        if batch.delta_ref is not None:
            tracking.log_delta_input(batch.delta_ref, batch.delta_version, context="source")
        # A source without the required columns fails here, before any table is created.
        conformed, columns = conform_source(batch.df, batch.name)
        clean_ref, quarantine_ref, log_ref = ctx.table("transactions"), ctx.table("transactions_quarantine"), ctx.table("ingest_log")
        tables.ensure_table(spark, clean_ref, TRANSACTIONS_SCHEMA)
        tables.ensure_table(spark, quarantine_ref, QUARANTINE_SCHEMA)
        tables.ensure_table(spark, log_ref, INGEST_LOG_SCHEMA)

        previous = _committed_entry(ctx, batch.batch_id)
        if previous is not None:
            log.info(
                "batch %s from %s was already ingested (transactions version %s): nothing to add",
                batch.batch_id, batch.name, previous["transactions_version"],
            )
            summary.update(status="already_ingested", rows_in=previous["rows_in"], rows_clean=0, rows_quarantined=0)
            mlflow.set_tag("status", "already_ingested")
            return summary
        summary.update(_ingest_batch(ctx, batch, conformed, columns))
        tracking.log_delta_output(clean_ref, summary.get("transactions_version"))
        tracking.log_delta_output(quarantine_ref, summary.get("quarantine_version"))
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if k.startswith(("rows_", "rejected_"))})
        mlflow.set_tag("status", summary["status"])
    return summary


def _ingest_batch(ctx: JobContext, batch: SourceBatch, conformed: DataFrame, columns: SourceColumns) -> dict[str, object]:
    config, spark = ctx.config, ctx.spark
    if columns.missing_optional:
        log.warning("%s: optional column(s) absent, loaded as null: %s", batch.name, ", ".join(columns.missing_optional))
    if columns.extra:
        log.warning("%s: column(s) not in the transaction schema, ignored: %s", batch.name, ", ".join(columns.extra))

    key = load_key(config.privacy) if config.privacy.pseudonymise else None
    reference_time = config.ingest.reference_time or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    clean_ref, quarantine_ref = ctx.table("transactions"), ctx.table("transactions_quarantine")
    loaded_ids = tables.read(spark, clean_ref).where(F.col("ingest_batch_id") != batch.batch_id).select("transaction_id")

    checked = checked_transactions(conformed, config.ingest, reference_time, key, loaded_ids).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    repeated = repeated_ids(checked).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        repeats = repeated.count()
        if repeats:
            log.info("%d transaction ids occur more than once in the batch: one row of each is kept", repeats)
        # Few repeated ids go to every task: the other rows are then never shuffled.
        validated = with_repeats_marked(checked, repeated, broadcast=repeats <= MAX_BROADCAST_IDS)
        counts = {row["rule"]: int(row["count"]) for row in row_counts(validated).collect()}
        rows_clean, rows_quarantined = counts.pop(CLEAN, 0), counts.pop(QUARANTINED, 0)
        rows_in = rows_clean + rows_quarantined
        if rows_in == 0:
            raise DataQualityError(f"{batch.name}: the source has no rows")
        rejections = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
        rejected_share = rows_quarantined / rows_in if rows_in else 0.0
        for rule, count in rejections.items():
            log.info("  rejected by %-28s %10d", rule, count)

        idempotency = f"segmentation-ingest-{batch.batch_id}"
        quarantine = tables.write(
            quarantined_transactions(validated, batch.batch_id, ingested_at), quarantine_ref,
            run_id=ctx.pipeline_run_id, idempotency_key=(idempotency, 1),
        )
        result = {
            "rows_in": rows_in, "rows_clean": rows_clean, "rows_quarantined": rows_quarantined,
            "rejected_share": round(rejected_share, 6), "quarantine_version": quarantine.version,
        }
        if rejected_share > config.ingest.max_rejected_share:
            _record(ctx, batch, REJECTED, result, rejections, key, ingested_at)
            top = ", ".join(f"{rule}={count}" for rule, count in list(rejections.items())[:5])
            raise DataQualityError(
                f"{batch.name}: {rows_quarantined} of {rows_in} rows rejected ({rejected_share:.1%}), above "
                f"ingest.max_rejected_share={config.ingest.max_rejected_share:.1%}; nothing was added to "
                f"transactions. Top rules: {top}. The rejected rows are in {quarantine_ref.location}"
            )
        clean = tables.write(
            clean_transactions(validated, batch.batch_id, ingested_at), clean_ref,
            run_id=ctx.pipeline_run_id, idempotency_key=(idempotency, 1),
        )
        _check_conservation(batch.name, rows_in, clean, quarantine, rows_clean, rows_quarantined)
        result.update(status=COMMITTED, transactions_version=clean.version)
        _record(ctx, batch, COMMITTED, result, rejections, key, ingested_at)
        return result
    finally:
        repeated.unpersist()
        checked.unpersist()


def _check_conservation(name, rows_in, clean, quarantine, rows_clean, rows_quarantined) -> None:
    """Counts in = counts out, from what Delta says it wrote (skipped writes: from the batch)."""
    written_clean = rows_clean if clean.skipped else clean.rows
    written_quarantine = rows_quarantined if quarantine.skipped else quarantine.rows
    if written_clean is None or written_quarantine is None:
        return
    if written_clean + written_quarantine != rows_in:
        raise DataQualityError(
            f"{name}: {rows_in} rows in but {written_clean} clean + {written_quarantine} quarantined written"
        )


def _committed_entry(ctx: JobContext, batch_id: str):
    entries = (
        tables.read(ctx.spark, ctx.table("ingest_log"))
        .where((F.col("batch_id") == batch_id) & (F.col("status") == COMMITTED))
        .select("rows_in", "transactions_version")
        .limit(1)
        .collect()
    )
    return entries[0].asDict() if entries else None


def _record(ctx, batch, status, result, rejections, key, ingested_at) -> None:
    row = {
        "batch_id": batch.batch_id,
        "source": batch.name,
        "source_version": batch.delta_version,
        "status": status,
        "rows_in": result["rows_in"],
        "rows_clean": result["rows_clean"] if status == COMMITTED else 0,
        "rows_quarantined": result["rows_quarantined"],
        "rejected_share": float(result["rejected_share"]),
        "rejections": rejections,
        "transactions_version": result.get("transactions_version"),
        "quarantine_version": result.get("quarantine_version"),
        "key_fingerprint": key_fingerprint(key) if key else None,
        "pipeline_run_id": ctx.pipeline_run_id,
        "ingested_at": ingested_at,
    }
    entry = ctx.spark.createDataFrame([row], INGEST_LOG_SCHEMA)
    tables.write(entry, ctx.table("ingest_log"), run_id=ctx.pipeline_run_id,
                 idempotency_key=(f"segmentation-ingest-log-{batch.batch_id}-{status}", 1))


def _rule_params(config) -> dict[str, object]:
    rules = config.ingest
    return {
        "channels": ",".join(rules.channels),
        "max_abs_amount": rules.max_abs_amount,
        "max_abs_quantity": rules.max_abs_quantity,
        "max_rejected_share": rules.max_rejected_share,
        "pseudonymise": config.privacy.pseudonymise,
    }


if __name__ == "__main__":
    from segmentation.cli import main

    sys.exit(main(["ingest", *sys.argv[1:]]))
