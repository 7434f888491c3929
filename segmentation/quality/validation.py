"""Validation of raw transactions: every row gets the list of rules it fails.

`validate_transactions` keeps each raw value (as text) beside its typed parse and an array
`reasons`; `clean_transactions` and `quarantined_transactions` are the two halves of that
one frame, so every input row lands in exactly one of them.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation.config import IngestConfig
from segmentation.errors import DataQualityError
from segmentation.privacy import pseudonymised, trimmed
from segmentation.schema import (
    LINEAGE_FIELDS,
    QUARANTINE_SCHEMA,
    RAW_COLUMNS,
    REQUIRED_COLUMNS,
    TRANSACTION_FIELDS,
    TRANSACTIONS_SCHEMA,
)

log = logging.getLogger(__name__)

CORRUPT_RECORD = "_corrupt_record"
REPLACEMENT_CHARACTER = "\ufffd"
# Reasons that refuse a batch (never stored), and the one that sets a row aside.
UNDECODABLE, UNBALANCED_QUOTE = "undecodable_text", "unbalanced_quote"
ALREADY_LOADED = "already_loaded"
SOURCE_FILE = "_source_file"
_RAW = "raw_"
_TYPED = "_typed_"
_TEXT_COLUMNS = [c for c, (dtype, _, _) in TRANSACTION_FIELDS.items() if isinstance(dtype, T.StringType)]
_PARSED_COLUMNS = [c for c in RAW_COLUMNS if c not in _TEXT_COLUMNS]


@dataclass(frozen=True)
class SourceColumns:
    """What a source brought compared with the transaction schema."""

    missing_optional: list[str]
    extra: list[str]


def conform_source(df: DataFrame, source_name: str) -> tuple[DataFrame, SourceColumns]:
    """Check a source's columns against the schema: a missing required column fails with its
    name; missing optional columns become null; extra columns are reported and dropped."""
    bookkeeping = {CORRUPT_RECORD, SOURCE_FILE}
    found = [c for c in df.columns if c not in bookkeeping]
    # Names match as values do: trimmed, and in any case.
    present = {c.strip().lower(): c for c in found}
    missing_required = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing_required:
        raise DataQualityError(
            f"{source_name}: missing required column(s) {', '.join(missing_required)} "
            f"(found: {', '.join(repr(c) for c in found) or 'no columns'})"
        )
    missing_optional = [c for c in RAW_COLUMNS if c not in present]
    extra = [c for c in found if c.strip().lower() not in RAW_COLUMNS]
    columns = [F.col(present[c]).alias(c) if c in present else F.lit(None).alias(c) for c in RAW_COLUMNS]
    columns.append(F.col(CORRUPT_RECORD) if CORRUPT_RECORD in df.columns else F.lit(None).cast("string").alias(CORRUPT_RECORD))
    columns.append(F.col(SOURCE_FILE) if SOURCE_FILE in df.columns else F.lit(None).cast("string").alias(SOURCE_FILE))
    return df.select(*columns), SourceColumns(missing_optional, extra)


# Ids are trimmed of every kind of padding (tabs, no-break spaces, ...) so that a padded id
# is the same customer, order or transaction; other values of spaces only (numbers and
# timestamps are parsed without surrounding whitespace anyway), which costs far less.
_ID_COLUMNS = {"transaction_id", "order_id", "customer_id"}


def _text(column: str, missing_values: list[str]) -> Column:
    """The raw value as trimmed text; empty text and the `missing_values` (in any case) count
    as missing."""
    value = trimmed(F.col(column)) if column in _ID_COLUMNS else F.trim(F.col(column).cast("string"))
    missing = [m.upper() for m in missing_values]
    return F.when((value != "") & ~F.upper(value).isin(missing), value) if missing else F.when(value != "", value)


# Spark's cast completes what a timestamp leaves out: "2025" becomes 2025-01-01 and
# "10:00:00" today at ten. A transaction's time must name its day, so only text that starts
# with a whole date (year-month-day) is parsed; the rest is a bad type.
_WHOLE_DATE = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([T ]|$)"


def _parsed(text: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, T.TimestampType):
        text = F.when(text.rlike(_WHOLE_DATE), text)
    return text.try_cast(dtype)


def validate_transactions(
    raw: DataFrame,
    rules: IngestConfig,
    reference_time: dt.datetime,
    key: bytes | None,
    loaded_ids: DataFrame | None = None,
) -> DataFrame:
    """Typed columns, raw text columns (`raw_*`) and `reasons` for every row of a conformed
    source: `checked_transactions`, then repeats within the batch marked."""
    checked = checked_transactions(raw, rules, reference_time, key, loaded_ids)
    return with_repeats_marked(checked, repeated_ids(checked))


def checked_transactions(
    raw: DataFrame,
    rules: IngestConfig,
    reference_time: dt.datetime,
    key: bytes | None,
    loaded_ids: DataFrame | None = None,
) -> DataFrame:
    """Every row with its typed and raw values and the rules it fails, except repeats within
    the batch (`with_repeats_marked`).

    `loaded_ids` holds the `transaction_id`s already in the clean table (from other batches);
    a row repeating one of them is marked `already_loaded`: it is set aside, neither loaded
    again nor quarantined (`row_counts` counts it apart).
    """
    # Each step is its own projection, so that a value used several times below is computed once.
    bookkeeping = [F.col(CORRUPT_RECORD), F.col(SOURCE_FILE)]
    raw = raw.select(*[_text(c, rules.missing_values).alias(_RAW + c) for c in RAW_COLUMNS], *bookkeeping)
    raw_text = {c: F.col(_RAW + c) for c in RAW_COLUMNS}
    raw = raw.select(*raw_text.values(), *bookkeeping, *[
        _parsed(raw_text[c], TRANSACTION_FIELDS[c][0]).alias(_TYPED + c) for c in _PARSED_COLUMNS
    ])
    typed = {c: F.col(_TYPED + c) for c in _PARSED_COLUMNS}
    text = {c: raw_text[c] for c in _TEXT_COLUMNS}
    text["channel"] = F.lower(text["channel"])
    latest_allowed = reference_time + dt.timedelta(days=rules.future_tolerance_days)
    earliest_allowed = dt.datetime.combine(rules.min_timestamp, dt.time())

    ts, amount, quantity = typed["transaction_ts"], typed["net_amount"], typed["quantity"]
    discount, margin, is_return = typed["discount_amount"], typed["gross_margin"], typed["is_return"]
    corrupt = F.col(CORRUPT_RECORD)
    quote = next((str(v) for k, v in rules.source.options.items() if k.lower() == "quote"), '"') or None
    checks: list[tuple[str, Column]] = [
        ("malformed_record", corrupt.isNotNull()),
        # Bytes the reader could not decode became U+FFFD: the batch is refused (wrong
        # ingest.source.options.encoding), never loaded with damaged text or ids.
        (UNDECODABLE, F.concat_ws("", *raw_text.values(), corrupt).contains(REPLACEMENT_CHARACTER)),
    ]
    if quote:
        # A record cut at a line break inside a quoted field (a line-based read) leaves an
        # odd number of quotes in each piece.
        quotes = F.length(corrupt) - F.length(F.replace(corrupt, F.lit(quote), F.lit("")))
        checks.append((UNBALANCED_QUOTE, corrupt.isNotNull() & (quotes % 2 == 1)))
    checks += [(f"missing:{c}", raw_text[c].isNull()) for c in REQUIRED_COLUMNS]
    checks += [(f"bad_type:{c}", raw_text[c].isNotNull() & typed[c].isNull()) for c in _PARSED_COLUMNS]
    checks += [
        ("unknown_channel", text["channel"].isNotNull() & ~text["channel"].isin(rules.channels)),
        # Written as "not within range" so that NaN and infinities fail too.
        ("amount_out_of_range", amount.isNotNull() & ~(F.abs(amount) <= rules.max_abs_amount)),
        ("quantity_out_of_range", quantity.isNotNull() & ((quantity == 0) | (F.abs(quantity) > rules.max_abs_quantity))),
        ("discount_out_of_range", discount.isNotNull() & ~((discount >= 0) & (discount <= rules.max_abs_amount))),
        ("margin_out_of_range", margin.isNotNull() & ~(F.abs(margin) <= rules.max_abs_amount)),
        ("timestamp_too_old", ts < F.lit(earliest_allowed)),
        ("timestamp_in_future", ts > F.lit(latest_allowed)),
        ("return_sign_mismatch", is_return.isNotNull() & (amount != 0) & (is_return != (amount < 0))),
    ]
    if rules.quantity_sign_mismatch:
        # A sale with a negative quantity, or a return (negative amount) with a positive one.
        checks.append(("quantity_sign_mismatch", (amount != 0) & (quantity != 0) & ((quantity < 0) != (amount < 0))))
    # Most rows fail nothing: one test of every rule gives them an empty list, and only the
    # rows that fail one build the list (a higher-order function, evaluated row by row).
    failed_any = reduce(operator.or_, [F.coalesce(failed, F.lit(False)) for _, failed in checks])
    failures = F.filter(F.array(*[F.when(failed, F.lit(name)) for name, failed in checks]), lambda r: r.isNotNull())
    reasons = F.when(failed_any, failures).otherwise(F.array().cast("array<string>"))

    # A line that does not fit the header may hold a raw customer id (or any personal field
    # of the source) in any column, and whole in raw_record. With pseudonymisation on, none
    # of its values is kept: its quarantine row has the reasons and the source file only.
    def kept(column: Column) -> Column:
        return column if key is None else F.when(F.col(CORRUPT_RECORD).isNull(), column)

    validated = raw.select(
        *[kept(text[c]).alias(c) for c in _TEXT_COLUMNS if c != "customer_id"],
        # An id holding a replacement character is never hashed: its batch is refused.
        kept(F.when(~text["customer_id"].contains(REPLACEMENT_CHARACTER), pseudonymised(text["customer_id"], key, raw.sparkSession)))
        .alias("customer_id"),
        *[kept(typed[c]).alias(c) for c in _PARSED_COLUMNS],
        *[kept(raw_text[c]).alias(_RAW + c) for c in _PARSED_COLUMNS],
        kept(F.col(CORRUPT_RECORD)).alias("raw_record"),
        F.col(SOURCE_FILE).alias("source_file"),
        reasons.alias("reasons"),
    )
    if loaded_ids is None:
        return validated
    # Repeats of a transaction id already in the clean table (other batches).
    loaded = loaded_ids.select("transaction_id", F.lit(True).alias("_loaded")).distinct()
    marked = validated.join(loaded, on="transaction_id", how="left")
    reasons = F.when(F.col("_loaded"), F.concat("reasons", F.array(F.lit(ALREADY_LOADED)))).otherwise(F.col("reasons"))
    return marked.select(*[reasons.alias(c) if c == "reasons" else F.col(c) for c in validated.columns])


def repeated_ids(checked: DataFrame) -> DataFrame:
    """The transaction ids that more than one row of the batch carries (one row each)."""
    counts = checked.where(F.col("transaction_id").isNotNull()).groupBy("transaction_id").count()
    return counts.where(F.col("count") > 1).select("transaction_id")


def with_repeats_marked(checked: DataFrame, repeated: DataFrame, broadcast: bool = False) -> DataFrame:
    """Reject repeats of a transaction id within the batch: of the rows sharing an id (in
    `repeated`, from `repeated_ids`), the one kept is the first valid one in a deterministic
    order (all raw values), so re-running the same batch keeps the same row.

    Only the rows of repeated ids are sorted; the rest pass through. With `broadcast` the ids
    are sent to every task, so those rows are never shuffled either (for a bounded number of ids).
    """
    marker = repeated.select("transaction_id", F.lit(True).alias("_repeated"))
    marked = checked.join(F.broadcast(marker) if broadcast else marker, on="transaction_id", how="left")
    single = marked.where(F.col("_repeated").isNull())
    copies = marked.where(F.col("_repeated"))
    order = [F.size("reasons").asc()] + [F.col(c).asc_nulls_last() for c in _TEXT_COLUMNS] + [
        F.col(_RAW + c).asc_nulls_last() for c in _PARSED_COLUMNS
    ]
    copy_number = F.row_number().over(Window.partitionBy("transaction_id").orderBy(*order))
    duplicate = F.when(copy_number > 1, F.array(F.lit("duplicate_in_batch"))).otherwise(F.array().cast("array<string>"))
    copies = copies.withColumn("reasons", F.concat("reasons", duplicate))
    return single.select(*checked.columns).unionByName(copies.select(*checked.columns))


def clean_transactions(validated: DataFrame, batch_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Rows that passed every rule, typed as the `transactions` table."""
    columns = []
    for field in TRANSACTIONS_SCHEMA.fields:
        if field.name == "is_return":
            column = F.coalesce(F.col("is_return"), F.col("net_amount") < 0)
        elif field.name in LINEAGE_FIELDS:
            column = F.lit(batch_id if field.name == "ingest_batch_id" else ingested_at)
        else:
            column = F.col(field.name)
        columns.append(column.cast(field.dataType).alias(field.name))
    return validated.where(F.size("reasons") == 0).select(*columns)


def quarantined_transactions(validated: DataFrame, batch_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Rows that failed at least one rule: raw values as text (customer id pseudonymised) and
    reasons; a malformed line's values only when pseudonymisation is off."""
    columns = []
    for field in QUARANTINE_SCHEMA.fields:
        if field.name in _PARSED_COLUMNS:
            column = F.col(_RAW + field.name)
        elif field.name in LINEAGE_FIELDS:
            column = F.lit(batch_id if field.name == "ingest_batch_id" else ingested_at)
        else:
            column = F.col(field.name)
        if not isinstance(field.dataType, T.ArrayType):
            column = column.cast(field.dataType)
        columns.append(column.alias(field.name))
    return validated.where(is_quarantined(F.col("reasons"))).select(*columns)


def is_quarantined(reasons: Column) -> Column:
    """A row failed a rule; rows already loaded by an earlier batch are set aside instead."""
    return (F.size(reasons) > 0) & ~F.array_contains(reasons, ALREADY_LOADED)


CLEAN, QUARANTINED, SET_ASIDE = "(clean)", "(quarantined)", "(already loaded)"


def row_counts(validated: DataFrame) -> DataFrame:
    """`rule`, `count` in one pass over the rows: the rows failing each rule (a row failing
    two rules counts under both), and the clean, quarantined and set-aside (already loaded)
    rows under CLEAN, QUARANTINED and SET_ASIDE."""
    reasons = F.col("reasons")
    labels = (
        F.when(F.size(reasons) == 0, F.array(F.lit(CLEAN)))
        .when(F.array_contains(reasons, ALREADY_LOADED), F.array(F.lit(SET_ASIDE)))
        .otherwise(F.concat(F.array(F.lit(QUARANTINED)), reasons))
    )
    return validated.select(F.explode(labels).alias("rule")).groupBy("rule").count()
