"""export: each treatment's audience as of a date, as one file a CRM imports.

For each treatment the file holds the customers of the `customer_tiers` snapshot in its
treated group (control customers never appear) with the action, channel, priority, value
tier, CLV and churn risk. With --changes-since D0 it holds only the customers who entered
or left the treated audience between the snapshots D0 and D (column `change`).

The ids are the pseudonyms the tables hold. --reidentify puts the raw ids back: the
distinct raw ids of the raw landing tables are hashed with the configured key, exactly as
ingest hashes them, and joined on the pseudonym; nothing else is reversible. Logs, output
and the MLflow run hold counts only, never an id.

Every argument is checked before anything is written. Each file is written by Spark as a
single partition (a CRM wants one file) into a staging folder next to --output, which then
replaces --output in one rename: a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation import tables, tracking
from segmentation.arguments import add_as_of_argument, as_of_overrides, iso_date
from segmentation.config import PrivacyConfig
from segmentation.erase import ingest_key_fingerprints
from segmentation.errors import ConfigError, DataQualityError
from segmentation.logs import stage
from segmentation.privacy import CUSTOMER_COLUMN, erasure_ids, key_fingerprint, load_key, raw_table_keys
from segmentation.stages.context import StageContext, resolve_as_of
from segmentation.treatments import CONTROL

log = logging.getLogger(__name__)

HELP = "write each treatment's treated customers (or who entered and left since a date) as CSV or Parquet for a CRM"
FORMATS = ("csv", "parquet")
# The export's columns after customer_id and as_of_date: name -> (customer_tiers column, type).
# Amounts and probabilities are fixed-point decimals, which a CSV never shows in scientific notation.
EXPORT_COLUMNS: dict[str, tuple[str, str | None]] = {
    "treatment": ("treatment", None),
    "action": ("treatment_action", None),
    "channel": ("treatment_channel", None),
    "priority": ("treatment_priority", None),
    "value_tier": ("value_tier", None),
    "clv": ("clv", "decimal(18,2)"),
    "churn_probability": ("churn_probability", "decimal(5,4)"),
    "churn_risk_tier": ("churn_risk_tier", None),
}
CHANGE, ENTERED, LEFT = "change", "entered", "left"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)
    parser.add_argument(
        "--treatment", action="append", default=[], metavar="NAME",
        help="a playbook treatment to export (repeatable; default: every treatment in the snapshot)",
    )
    parser.add_argument(
        "--changes-since", type=iso_date, metavar="YYYY-MM-DD",
        help="only the customers who entered or left each treated audience since this earlier snapshot",
    )
    parser.add_argument("--format", choices=FORMATS, default="csv", help="file format (default: csv, UTF-8 with one header row)")
    parser.add_argument(
        "--output", required=True, metavar="DIR",
        help="folder to write <treatment>.<format> into, on the driver's file system (a local path or a volume)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it exists and is not empty")
    parser.add_argument(
        "--reidentify", action="store_true",
        help="raw customer ids instead of pseudonyms (needs the pseudonymisation key; restricted use, see the README)",
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args)


@dataclass(frozen=True)
class ExportResult:
    as_of: dt.date
    changes_since: dt.date | None
    format: str
    output: str
    tiers_version: int
    reidentified: bool
    files: dict[str, str]  # treatment -> file written
    counts: dict[str, dict[str, int]]  # treatment -> customers, or entered and left
    unmatched: int  # with --reidentify: audience rows whose pseudonym no raw id hashes to (left out)


# Decisions: plain values in, an error naming the option or the value out.

def chosen_treatments(requested: list[str], playbook: list[str], present: set[str]) -> list[str]:
    """The treatments to export: those asked for (once each, in the order given), else the
    playbook's treatments present in the snapshots, in playbook order."""
    unknown = [name for name in dict.fromkeys(requested) if name not in playbook]
    if unknown:
        raise ConfigError(f"export: unknown treatment {', '.join(map(repr, unknown))} (known: {', '.join(playbook)})")
    return list(dict.fromkeys(requested)) if requested else [name for name in playbook if name in present]


def nearest_snapshots(date: dt.date, available: list[dt.date]) -> list[dt.date]:
    """The snapshots just before and just after `date` (those that exist)."""
    ordered = sorted(set(available))
    at = bisect.bisect_left(ordered, date)
    return ordered[max(at - 1, 0):at + 1]


def check_snapshot(date: dt.date, available: list[dt.date], option: str) -> None:
    if date not in available:
        nearest = ", ".join(d.isoformat() for d in nearest_snapshots(date, available)) or "none, run 'segmentation tiers' first"
        raise ConfigError(f"export: customer_tiers has no snapshot as of {date} ({option}); nearest: {nearest}")


def check_changes_since(since: dt.date | None, as_of: dt.date) -> None:
    if since is not None and since >= as_of:
        raise ConfigError(f"export: --changes-since {since} is not before the export's date {as_of}")


def check_output(output: str, entries: list[str] | None, overwrite: bool) -> None:
    """`entries`: the folder's contents, None when it does not exist."""
    if entries and not overwrite:
        raise ConfigError(f"export: --output {output} exists and is not empty; add --overwrite to replace it")


def output_folder(text: str) -> Path:
    """--output as a folder of the driver's file system (file: URIs accepted)."""
    path = text.removeprefix("file://") if text.startswith("file:///") else text.removeprefix("file:")
    if re.match(r"^[A-Za-z][\w+.-]+:", path):
        raise ConfigError(f"export: --output {text} is not a folder of the driver's file system (a local path or a volume)")
    return Path(path).absolute()


def reidentification_key(privacy: PrivacyConfig, reidentify: bool) -> bytes | None:
    """The key --reidentify hashes the raw ids with; None without --reidentify."""
    if not reidentify:
        return None
    if not privacy.pseudonymise:
        raise ConfigError("export: --reidentify: pseudonymisation is off (privacy.pseudonymise), the ids are the raw ids already")
    try:
        return load_key(privacy)
    except ConfigError as exc:
        raise ConfigError(f"export: --reidentify needs the pseudonymisation key: {exc}") from None


def check_key_was_used(fingerprint: str, used: set[str]) -> None:
    """The key must be one ingest hashed with, or no pseudonym would match."""
    if used and fingerprint not in used:
        raise ConfigError(
            f"export: --reidentify: the key (fingerprint {fingerprint}) is not one ingest hashed with "
            f"(fingerprints {', '.join(sorted(used))})"
        )


def file_name(treatment: str, format: str) -> str:
    """The file of a treatment: its name with anything but letters, digits, - and _ as _."""
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', treatment)}.{format}"


# Transformations.

def is_treated(treatment_group: Column) -> Column:
    # Snapshots written before holdout groups existed have no group: everyone was treated.
    return ~treatment_group.eqNullSafe(F.lit(CONTROL))


def treated_audiences(snapshot: DataFrame, treatments: list[str], as_of: dt.date) -> DataFrame:
    """The treated customers of `treatments` in a snapshot, as export rows stamped `as_of`."""
    treated = snapshot.where(F.col("treatment").isin(treatments) & is_treated(F.col("treatment_group")))
    columns = [(F.col(source).cast(kind) if kind else F.col(source)).alias(name) for name, (source, kind) in EXPORT_COLUMNS.items()]
    return treated.select("customer_id", F.lit(as_of).alias("as_of_date"), *columns)


def audience_changes(before: DataFrame, after: DataFrame) -> DataFrame:
    """Export rows of who entered (values of `after`) or left (values of `before`) each treated audience."""
    keys = ["customer_id", "treatment"]
    entered = after.join(before.select(*keys), on=keys, how="left_anti").withColumn(CHANGE, F.lit(ENTERED))
    left = before.join(after.select(*keys), on=keys, how="left_anti").withColumn(CHANGE, F.lit(LEFT))
    return entered.unionByName(left).select(*after.columns, CHANGE)  # a join puts its keys first


def with_raw_ids(rows: DataFrame, ids: DataFrame) -> DataFrame:
    """`rows` with the raw id of each pseudonym (`erasure_ids`: raw_id, pseudonym); null where none hashes to it."""
    matched = rows.join(ids.withColumnRenamed("pseudonym", "customer_id"), on="customer_id", how="left")
    return matched.select(F.col("raw_id").alias("customer_id"), *[c for c in rows.columns if c != "customer_id"])


# The stage.

def run(ctx: StageContext, args: argparse.Namespace) -> ExportResult:
    config = ctx.config
    playbook = [rule.name for rule in config.tiers.playbook]
    chosen_treatments(args.treatment, playbook, set())  # an unknown name fails before any Spark job
    if config.as_of:
        check_changes_since(args.changes_since, config.as_of)
    output = output_folder(args.output)
    check_output(args.output, _entries(output), args.overwrite)
    key = reidentification_key(config.privacy, args.reidentify)

    ref, version, tiers = ctx.read_input("customer_tiers", "does not exist yet; run 'segmentation tiers' first")
    available = [row.as_of_date for row in tiers.select("as_of_date").distinct().collect()]
    as_of = resolve_as_of(config.as_of, lambda: max(available, default=None), f"{ref} has no snapshots: run 'segmentation tiers' first")
    check_snapshot(as_of, available, "--as-of")
    check_changes_since(args.changes_since, as_of)
    if args.changes_since:
        check_snapshot(args.changes_since, available, "--changes-since")
    dates = [as_of, *([args.changes_since] if args.changes_since else [])]
    present = {row.treatment for row in tiers.where(F.col("as_of_date").isin(dates)).select("treatment").distinct().collect()}
    treatments = chosen_treatments(args.treatment, playbook, present)
    raw_ids = _raw_ids(ctx, key) if key is not None else None

    with tracking.stage_run(config, "export", ctx.pipeline_run_id), stage("export") as summary:
        mlflow.set_tag("as_of", as_of.isoformat())
        tracking.log_delta_input(ref, version, context="customer_tiers")
        rows = _export_rows(tiers, treatments, as_of, args.changes_since)
        if raw_ids is not None:
            rows = with_raw_ids(rows, raw_ids)
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts, unmatched = _counts(rows, treatments, args.changes_since is not None)
            files = _write_files(rows.where(F.col("customer_id").isNotNull()), treatments, args.format, output)
        finally:
            rows.unpersist()
        result = ExportResult(as_of, args.changes_since, args.format, str(output), version, key is not None,
                              files, counts, unmatched)
        _record(result, key)
        summary.update(as_of=as_of.isoformat(), treatments=len(treatments), unmatched=unmatched, output=str(output),
                       **{f"{t}.{k}": n for t, c in counts.items() for k, n in c.items()})
    if unmatched:
        log.warning("%d audience rows have a pseudonym no raw id hashes to (erased from the landing table?): left out", unmatched)
    print(report(result), flush=True)
    return result


def _entries(output: Path) -> list[str] | None:
    """What --output holds: its entries, itself when it is a file, None when it does not exist."""
    if output.is_dir():
        return sorted(os.listdir(output))
    return [output.name] if output.exists() else None


def _export_rows(tiers: DataFrame, treatments: list[str], as_of: dt.date, since: dt.date | None) -> DataFrame:
    after = treated_audiences(tiers.where(F.col("as_of_date") == F.lit(as_of)), treatments, as_of)
    if since is None:
        return after
    before = treated_audiences(tiers.where(F.col("as_of_date") == F.lit(since)), treatments, as_of)
    return audience_changes(before, after)


def _raw_ids(ctx: StageContext, key: bytes) -> DataFrame:
    """raw_id and pseudonym of every distinct raw id of the raw landing tables; the key
    checked against the ones ingest used first."""
    check_key_was_used(key_fingerprint(key), ingest_key_fingerprints(ctx))
    refs = [ctx.table(k) for k in sorted(raw_table_keys(ctx.config)) if k in ctx.config.storage.tables.model_dump()]
    refs = [ref for ref in refs if tables.exists(ctx.spark, ref)]
    if not refs:
        raise DataQualityError("export: --reidentify: no raw landing table (raw_transactions) holds the raw ids")
    ids = [tables.read(ctx.spark, ref).select(F.col(CUSTOMER_COLUMN).cast("string").alias("id")) for ref in refs]
    union = ids[0]
    for more in ids[1:]:
        union = union.unionByName(more)
    return erasure_ids(union, key)


def _counts(rows: DataFrame, treatments: list[str], changes: bool) -> tuple[dict[str, dict[str, int]], int]:
    """Rows per treatment (per change), and rows without a raw id (counts only: one row per group)."""
    kinds = [ENTERED, LEFT] if changes else ["customers"]
    counts = {t: dict.fromkeys(kinds, 0) for t in treatments}
    kind = F.col(CHANGE) if changes else F.lit("customers")
    grouped = rows.groupBy("treatment", kind.alias("kind"), F.col("customer_id").isNull().alias("unmatched")).count()
    unmatched = 0
    for row in grouped.collect():
        if row.unmatched:
            unmatched += row["count"]
        else:
            counts[row.treatment][row.kind] = row["count"]
    return counts, unmatched


def _write_files(rows: DataFrame, treatments: list[str], format: str, output: Path) -> dict[str, str]:
    """One file per treatment in a staging folder next to `output`, which then replaces it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.export-{uuid.uuid4().hex}"
    order = [CHANGE, "customer_id"] if CHANGE in rows.columns else ["customer_id"]
    files = {}
    try:
        for treatment in treatments:
            parts = staging / "_parts" / uuid.uuid4().hex
            audience = rows.where(F.col("treatment") == F.lit(treatment)).repartition(1).sortWithinPartitions(*order)
            writer = audience.write.format(format)
            if format == "csv":
                writer = writer.option("header", True).option("encoding", "UTF-8")
            writer.save(str(parts))
            (part,) = parts.glob("part-*")  # one partition, one file (Spark writes one even when empty)
            files[treatment] = str(output / file_name(treatment, format))
            part.rename(staging / file_name(treatment, format))
        shutil.rmtree(staging / "_parts", ignore_errors=True)
        staging.mkdir(exist_ok=True)  # no treatment: an empty export
        if output.is_dir():
            shutil.rmtree(output)  # not empty only with --overwrite, checked before
        elif output.exists():
            output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def _record(result: ExportResult, key: bytes | None) -> None:
    """Parameters and counts per treatment; never an id."""
    mlflow.log_params({
        "as_of": result.as_of.isoformat(), "changes_since": result.changes_since.isoformat() if result.changes_since else None,
        "format": result.format, "treatments": ",".join(result.counts), "reidentify": result.reidentified,
        "output": result.output,
    })
    if key is not None:
        mlflow.set_tag("key_fingerprint", key_fingerprint(key))
    metrics = {tracking.metric_name(f"{kind}.{t}"): float(n) for t, counts in result.counts.items() for kind, n in counts.items()}
    mlflow.log_metrics({**metrics, "unmatched": float(result.unmatched)})


def report(result: ExportResult) -> str:
    since = f", changes since {result.changes_since}" if result.changes_since else ""
    ids = "raw ids (re-identified)" if result.reidentified else "pseudonyms"
    lines = ["", f"Audiences as of {result.as_of}{since}, {ids}, into {result.output}:"]
    for treatment, counts in result.counts.items():
        described = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
        lines.append(f"  {Path(result.files[treatment]).name:<28} {described}")
    if result.unmatched:
        lines.append(f"  {result.unmatched:,} rows left out: no raw id hashes to their pseudonym")
    return "\n".join(lines) + "\n"
