"""ingest: validate, deduplicate and pseudonymise a raw feed into `transactions`.

Every input row lands in exactly one of `transactions` and `transactions_quarantine`;
`ingest_log` records each batch. Writes are idempotent per batch (Delta txnAppId), so a
batch ingested twice, or a run retried after a crash, adds nothing the second time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

import mlflow
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import share, option_overrides
from segmentation import tables, tracking
from segmentation.errors import DataQualityError
from segmentation.logs import stage
from segmentation.privacy import key_fingerprint, load_key
from segmentation.quality.validation import (
    CLEAN,
    QUARANTINED,
    SET_ASIDE,
    UNBALANCED_QUOTE,
    UNDECODABLE,
    checked_transactions,
    clean_transactions,
    quarantined_transactions,
    repeated_ids,
    row_counts,
    with_repeats_marked,
)
from segmentation.schema import INGEST_LOG_SCHEMA, QUARANTINE_SCHEMA, TRANSACTIONS_SCHEMA
from segmentation.sources import FEED, SourceBatch, file_name, read_source

log = logging.getLogger(__name__)

HELP = "validate, deduplicate and pseudonymise a raw feed into the transactions table"

COMMITTED, REJECTED = "committed", "rejected"
# Up to this many repeated transaction ids are broadcast (about 64 bytes each on every executor).
MAX_BROADCAST_IDS = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="PATH", help="read this path instead of the configured source table")
    parser.add_argument("--format", choices=["delta", "parquet", "csv"], help="format of --source (default: delta)")
    parser.add_argument(
        "--max-rejected-share", type=share, metavar="SHARE", help="fail when more than this share of rows (0 to 1) is rejected"
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    source = ["ingest.source.table=null", f"ingest.source.path={args.source}"] if getattr(args, "source", None) else []
    return source + option_overrides(args, {"format": "ingest.source.format", "max_rejected_share": "ingest.max_rejected_share"})


@dataclass(frozen=True)
class BatchCounts:
    """What validation made of a batch's rows; `rejections` counts the rows failing each rule."""

    rows_clean: int
    rows_quarantined: int
    rows_already_loaded: int
    rejections: dict[str, int]

    @property
    def rows_in(self) -> int:
        return self.rows_clean + self.rows_quarantined + self.rows_already_loaded

    @property
    def rejected_share(self) -> float:
        """Quarantined over checked rows: rows set aside as already loaded are no rejections."""
        checked = self.rows_clean + self.rows_quarantined
        return round(self.rows_quarantined / checked, 6) if checked else 0.0


@dataclass(frozen=True)
class IngestResult:
    source: str
    batch_id: str
    status: str  # committed, or already_ingested
    rows_in: int
    rows_clean: int
    rows_quarantined: int
    rows_already_loaded: int = 0
    rejected_share: float = 0.0
    transactions_version: int | None = None  # None: nothing written (already ingested, or a retry Delta skipped)
    quarantine_version: int | None = None


def batch_counts(labelled: dict[str, int]) -> BatchCounts:
    """The counts of `row_counts`: CLEAN, QUARANTINED and SET_ASIDE, the rest by rule, most first."""
    counts = dict(labelled)
    clean, quarantined, already = counts.pop(CLEAN, 0), counts.pop(QUARANTINED, 0), counts.pop(SET_ASIDE, 0)
    return BatchCounts(clean, quarantined, already, dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))))


def refusing_rule(counts: BatchCounts, multiline: bool) -> str | None:
    """The rule whose rows refuse the whole batch, before anything is written: text that did
    not decode, or (in a line-based CSV read) records cut at a quoted line break. None: none."""
    if counts.rejections.get(UNDECODABLE):
        return UNDECODABLE
    if not multiline and counts.rejections.get(UNBALANCED_QUOTE):
        return UNBALANCED_QUOTE
    return None


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> IngestResult:
    """Ingest the configured source. Everything that can refuse a batch (its columns, its
    encoding, no rows, generated rows where real batches are) is checked before any table or
    MLflow run is created, so a refused batch leaves nothing behind."""
    config, spark = ctx.config, ctx.spark
    with stage("ingest") as summary:
        history = committed_batches(ctx)
        batch = read_source(spark, config, last_versions(history))
        previous = next((entry for entry in history if entry["batch_id"] == batch.batch_id), None)
        if previous is not None:
            log.info(
                "batch %s from %s was already ingested (transactions version %s): nothing to add",
                batch.batch_id, batch.name, previous["transactions_version"],
            )
            result = IngestResult(batch.name, batch.batch_id, "already_ingested", previous["rows_in"], 0, 0)
            with tracking.stage_run(config, "ingest", ctx.pipeline_run_id):
                _log_source(config, batch)
                mlflow.set_tag("status", result.status)
        else:
            _check_not_mixed(ctx, batch, history)
            result = _ingest_batch(ctx, batch)
        summary.update(dataclasses.asdict(result))
    return result


def _log_source(config, batch: SourceBatch) -> None:
    mlflow.log_params({"source": batch.name, "batch_id": batch.batch_id, **_rule_params(config)})
    if batch.delta_ref is not None:
        tracking.log_delta_input(batch.delta_ref, batch.delta_version, context="source")


def committed_batches(ctx: StageContext) -> list[dict[str, object]]:
    """The committed entries of `ingest_log` (one per batch: bounded by the batch count), oldest
    first; [] before the first batch. Columns added to the log later are None in older rows."""
    ref = ctx.table("ingest_log")
    if not tables.exists(ctx.spark, ref):
        return []
    entries = tables.read(ctx.spark, ref).where(F.col("status") == COMMITTED)
    columns = [F.col(c) if c in entries.columns else F.lit(None).alias(c) for c in INGEST_LOG_SCHEMA.fieldNames()]
    return [row.asDict() for row in entries.select(*columns).orderBy("ingested_at").collect()]


def last_versions(history: list[dict[str, object]]) -> dict[str, int]:
    """The last version ingested of each Delta source, by source name."""
    versions: dict[str, int] = {}
    for entry in history:
        if entry["source_version"] is not None:
            versions[entry["source"]] = max(versions.get(entry["source"], -1), int(entry["source_version"]))
    return versions


def real_batches(history: list[dict[str, object]], generated_source: str) -> list[dict[str, object]]:
    """The batches ingested from real feeds, not from what `segmentation generate` wrote
    (older entries have no kind: there, any source but the generated table)."""
    return [
        entry for entry in history
        if entry["source_kind"] == FEED or (entry["source_kind"] is None and entry["source"] != generated_source)
    ]


def _check_not_mixed(ctx: StageContext, batch: SourceBatch, history: list[dict[str, object]]) -> None:
    clean_ref = ctx.table("transactions")
    if batch.generated:
        real = real_batches(history, batch.name)
        if real:
            raise DataQualityError(
                f"{batch.name} holds generated rows ({batch.kind}) but {clean_ref.location} already holds batches "
                f"ingested from {real[-1]['source']}: generated rows are never mixed with a real feed's; "
                "use another storage.root for generated data"
            )
    elif any((entry["source_kind"] or "").startswith("generated:") for entry in history):
        log.warning(
            "%s already holds generated rows: the rows of %s are added beside them (use another storage.root "
            "to keep a real feed apart from demo data)", clean_ref.location, batch.name,
        )


def _ingest_batch(ctx: StageContext, batch: SourceBatch) -> IngestResult:
    """Validate (one cached pass, counted), refuse or record: the batch's rows go to
    `transactions` and `transactions_quarantine`, its entry to `ingest_log`."""
    config, spark = ctx.config, ctx.spark
    columns = batch.columns
    if columns.missing_optional:
        log.warning("%s: optional column(s) absent, loaded as null: %s", batch.name, ", ".join(columns.missing_optional))
    if columns.extra:
        log.warning("%s: column(s) not in the transaction schema, ignored: %s", batch.name, ", ".join(columns.extra))

    key = load_key(config.privacy) if config.privacy.pseudonymise else None
    reference_time = config.ingest.reference_time or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    clean_ref = ctx.table("transactions")
    loaded_ids = (
        tables.read(spark, clean_ref).where(F.col("ingest_batch_id") != batch.batch_id).select("transaction_id")
        if tables.exists(spark, clean_ref) else None
    )

    checked = checked_transactions(batch.df, config.ingest, reference_time, key, loaded_ids).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    repeated = repeated_ids(checked).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        repeats = repeated.count()
        if repeats:
            log.info("%d transaction ids occur more than once in the batch: one row of each is kept", repeats)
        # Few repeated ids go to every task: the other rows are then never shuffled.
        validated = with_repeats_marked(checked, repeated, broadcast=repeats <= MAX_BROADCAST_IDS)
        counts = batch_counts({row["rule"]: int(row["count"]) for row in row_counts(validated).collect()})
        if counts.rows_in == 0:
            since = " added since the last batch" if batch.from_version is not None else ""
            raise DataQualityError(f"{batch.name}: the source has no rows{since}")
        rule = refusing_rule(counts, batch.multiline)
        if rule is not None:
            _refuse(validated, batch, rule, counts.rejections[rule])
        _log_counts(batch, counts)
        # Nothing can refuse the batch any more: from here on, tables and the MLflow run exist.
        with tracking.stage_run(config, "ingest", ctx.pipeline_run_id):
            _log_source(config, batch)
            result = _write_batch(ctx, batch, validated, counts, key, ingested_at)
            tracking.log_delta_output(clean_ref, result.transactions_version)
            tracking.log_delta_output(ctx.table("transactions_quarantine"), result.quarantine_version)
            metrics = {name: float(value) for name, value in dataclasses.asdict(result).items() if name.startswith(("rows_", "rejected_"))}
            mlflow.log_metrics(metrics)
            mlflow.set_tag("status", result.status)
        return result
    finally:
        repeated.unpersist()
        checked.unpersist()


def _log_counts(batch: SourceBatch, counts: BatchCounts) -> None:
    if counts.rows_already_loaded:
        log.warning(
            "%d rows of %s repeat transaction ids loaded by earlier batches: set aside, not loaded again "
            "(counted as rows_already_loaded, not as rejections)", counts.rows_already_loaded, batch.name,
        )
    if batch.multiline and counts.rejections.get(UNBALANCED_QUOTE):
        log.warning(
            "%s: %d records have a quote that never closes: each runs on to the next quote and may hold several "
            "lines of the file; they are quarantined as %s", batch.name, counts.rejections[UNBALANCED_QUOTE], UNBALANCED_QUOTE,
        )
    for rule, count in counts.rejections.items():
        log.info("  rejected by %-28s %10d", rule, count)


def _refuse(validated: DataFrame, batch: SourceBatch, rule: str, rows: int) -> None:
    """Refuse the batch with one line naming its files (one small Spark job finds them)."""
    files = [
        file_name(row.source_file or batch.name)
        for row in validated.where(F.array_contains("reasons", rule)).select("source_file").distinct().limit(3).collect()
    ]
    where = ", ".join(sorted(files)) or batch.name
    if rule == UNBALANCED_QUOTE:
        raise DataQualityError(
            f"{where}: {rows} records are cut at a line break inside a quoted field; "
            "remove ingest.source.options.multiLine=false (multi-line records need it on); nothing was written"
        )
    if batch.format == "csv":
        advice = (f"the file is not valid {batch.encoding}: set ingest.source.options.encoding to its encoding "
                  "(e.g. ISO-8859-1, windows-1252, GB18030)")
    else:
        advice = "the text was damaged before it reached this source (U+FFFD replacement characters)"
    raise DataQualityError(f"{where}: {rows} rows hold text that did not decode; {advice}; nothing was written")


def _write_batch(ctx: StageContext, batch: SourceBatch, validated: DataFrame, counts: BatchCounts, key, ingested_at) -> IngestResult:
    config, spark = ctx.config, ctx.spark
    clean_ref, quarantine_ref, log_ref = ctx.table("transactions"), ctx.table("transactions_quarantine"), ctx.table("ingest_log")
    tables.ensure_table(spark, clean_ref, TRANSACTIONS_SCHEMA)
    tables.ensure_table(spark, quarantine_ref, QUARANTINE_SCHEMA)
    tables.ensure_table(spark, log_ref, INGEST_LOG_SCHEMA)
    idempotency = f"segmentation-ingest-{batch.batch_id}"
    quarantine = tables.write(
        quarantined_transactions(validated, batch.batch_id, ingested_at), quarantine_ref,
        run_id=ctx.pipeline_run_id, idempotency_key=(idempotency, 1),
    )
    result = IngestResult(
        batch.name, batch.batch_id, REJECTED, counts.rows_in, counts.rows_clean, counts.rows_quarantined,
        counts.rows_already_loaded, counts.rejected_share, quarantine_version=quarantine.version,
    )
    if counts.rejected_share > config.ingest.max_rejected_share:
        _record(ctx, batch, result, counts.rejections, key, ingested_at)
        top = ", ".join(f"{rule}={count}" for rule, count in list(counts.rejections.items())[:5])
        raise DataQualityError(
            f"{batch.name}: {counts.rows_quarantined} of {counts.rows_clean + counts.rows_quarantined} rows rejected "
            f"({counts.rejected_share:.1%}), above ingest.max_rejected_share={config.ingest.max_rejected_share:.1%}; "
            f"nothing was added to transactions. Top rules: {top}. The rejected rows are in {quarantine_ref.location}"
        )
    clean = tables.write(
        clean_transactions(validated, batch.batch_id, ingested_at), clean_ref,
        run_id=ctx.pipeline_run_id, idempotency_key=(idempotency, 1),
    )
    _check_conservation(batch.name, counts, clean, quarantine)
    result = dataclasses.replace(result, status=COMMITTED, transactions_version=clean.version)
    _record(ctx, batch, result, counts.rejections, key, ingested_at)
    return result


def _check_conservation(name: str, counts: BatchCounts, clean, quarantine) -> None:
    """Counts in (less the rows set aside as already loaded) = counts out, from what Delta
    says it wrote (skipped writes: from the batch)."""
    written_clean = counts.rows_clean if clean.skipped else clean.rows
    written_quarantine = counts.rows_quarantined if quarantine.skipped else quarantine.rows
    if written_clean is None or written_quarantine is None:
        return
    if written_clean + written_quarantine != counts.rows_clean + counts.rows_quarantined:
        raise DataQualityError(
            f"{name}: {counts.rows_clean + counts.rows_quarantined} rows checked but {written_clean} clean + "
            f"{written_quarantine} quarantined written"
        )


def _record(ctx: StageContext, batch: SourceBatch, result: IngestResult, rejections, key, ingested_at) -> None:
    row = {
        "batch_id": batch.batch_id,
        "source": batch.name,
        "source_version": batch.delta_version,
        "status": result.status,
        "rows_in": result.rows_in,
        "rows_clean": result.rows_clean if result.status == COMMITTED else 0,
        "rows_quarantined": result.rows_quarantined,
        "rejected_share": float(result.rejected_share),
        "rejections": rejections,
        "transactions_version": result.transactions_version,
        "quarantine_version": result.quarantine_version,
        "key_fingerprint": key_fingerprint(key) if key else None,
        "pipeline_run_id": ctx.pipeline_run_id,
        "ingested_at": ingested_at,
        "rows_already_loaded": result.rows_already_loaded,
        "source_from_version": batch.from_version,
        "source_kind": batch.kind,
        "source_format": batch.format,
        "source_options": dict(batch.options),
    }
    entry = ctx.spark.createDataFrame([row], INGEST_LOG_SCHEMA)
    # A log written by an older version gains the newer columns (null in its rows).
    tables.write(entry, ctx.table("ingest_log"), run_id=ctx.pipeline_run_id, merge_schema=True,
                 idempotency_key=(f"segmentation-ingest-log-{batch.batch_id}-{result.status}", 1))


def _rule_params(config) -> dict[str, object]:
    rules = config.ingest
    return {
        "channels": ",".join(rules.channels),
        "max_abs_amount": rules.max_abs_amount,
        "max_abs_quantity": rules.max_abs_quantity,
        "max_rejected_share": rules.max_rejected_share,
        "pseudonymise": config.privacy.pseudonymise,
    }
