"""The transaction data model: raw landing rows, clean transactions, quarantined rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from segmentation.errors import ConfigError

# Column -> (type of the clean table, required, description). Order is the table's order.
TRANSACTION_FIELDS: dict[str, tuple[T.DataType, bool, str]] = {
    "transaction_id": (T.StringType(), True, "unique id of the transaction line in the source system"),
    "order_id": (T.StringType(), True, "basket / receipt id; several lines share one order"),
    "customer_id": (T.StringType(), True, "customer id (pseudonymised with HMAC-SHA256 on ingest)"),
    "transaction_ts": (T.TimestampType(), True, "when the transaction happened (UTC)"),
    "channel": (T.StringType(), True, "store, web, app, marketplace or call_centre (configurable)"),
    "store_id": (T.StringType(), False, "store or site id"),
    "region": (T.StringType(), False, "sales region"),
    "product_category": (T.StringType(), False, "product category of the line"),
    "quantity": (T.IntegerType(), True, "units; negative on returns"),
    "net_amount": (T.DoubleType(), True, "revenue after discount, in the reporting currency; negative on returns"),
    "discount_amount": (T.DoubleType(), False, "discount granted on the line (>= 0)"),
    "gross_margin": (T.DoubleType(), False, "net amount minus cost of goods"),
    "is_return": (T.BooleanType(), True, "true for a return; derived from the sign of net_amount when absent"),
}
RAW_COLUMNS = list(TRANSACTION_FIELDS)
# Required in the clean table but derived when the source leaves them empty.
DERIVED_COLUMNS = ["is_return"]
# Columns a source must carry and every row must fill; the others may be absent or empty.
REQUIRED_COLUMNS = [
    name for name, (_, required, _) in TRANSACTION_FIELDS.items() if required and name not in DERIVED_COLUMNS
]

LINEAGE_FIELDS: dict[str, tuple[T.DataType, str]] = {
    "ingest_batch_id": (T.StringType(), "fingerprint of the source batch the row came from"),
    "ingested_at": (T.TimestampType(), "when the ingest run started"),
}

RAW_SCHEMA = T.StructType([T.StructField(name, T.StringType(), True) for name in RAW_COLUMNS])

TRANSACTIONS_SCHEMA = T.StructType(
    [T.StructField(name, dtype, not required) for name, (dtype, required, _) in TRANSACTION_FIELDS.items()]
    + [T.StructField(name, dtype, False) for name, (dtype, _) in LINEAGE_FIELDS.items()]
)

QUARANTINE_SCHEMA = T.StructType(
    [T.StructField(name, T.StringType(), True) for name in RAW_COLUMNS]
    + [
        T.StructField("raw_record", T.StringType(), True),
        T.StructField("source_file", T.StringType(), True),
        T.StructField("reasons", T.ArrayType(T.StringType(), True), False),
    ]
    + [T.StructField(name, dtype, False) for name, (dtype, _) in LINEAGE_FIELDS.items()]
)


def schema_markdown() -> str:
    """The clean table's schema as a Markdown table (kept in the README)."""
    rows = ["| column | type | required | meaning |", "|---|---|---|---|"]
    for name, (dtype, required, text) in TRANSACTION_FIELDS.items():
        rows.append(f"| `{name}` | {dtype.simpleString()} | {'yes' if required else 'no'} | {text} |")
    for name, (dtype, text) in LINEAGE_FIELDS.items():
        rows.append(f"| `{name}` | {dtype.simpleString()} | yes | {text} |")
    return "\n".join(rows)


def require_numeric_columns(df: DataFrame, wanted: Mapping[str, Sequence[str]], table: str, booleans: bool = False) -> None:
    """Fail with the configuration key when a configured column is not a numeric column of
    `table` (`wanted` maps a key such as "cluster.features" to the columns it names)."""
    kinds = (T.NumericType, T.BooleanType) if booleans else (T.NumericType,)
    numeric = {f.name for f in df.schema if isinstance(f.dataType, kinds)}
    for key, names in wanted.items():
        unknown = [name for name in names if name not in numeric]
        if unknown:
            raise ConfigError(
                f"{key}: {', '.join(unknown)} not numeric columns of {table} (numeric columns: {', '.join(sorted(numeric))})"
            )


# The scored tables, one row per customer and as_of_date, in their column order: the stage
# that writes a table selects exactly these columns, and the tiers stage takes its columns
# from them by name (`columns_of`).
CLV_SCORE_COLUMNS = ["probability_alive", "expected_purchases", "expected_average_value", "clv"]
CLV_COLUMNS = [
    "customer_id", "as_of_date", "first_purchase_date", "x", "t_x", "T", "m", "probability_alive", "next_purchase_date",
    "expected_purchases", "expected_average_value", "clv", "holdout_expected_purchases", "holdout_purchases",
]
CLUSTER_COLUMNS = ["customer_id", "as_of_date", "cluster_id", "cluster_name", "distance_to_centroid", "model_version"]
CHURN_COLUMNS = [
    "customer_id", "as_of_date", "churn_probability", "churn_risk_tier", "model_version", "churn_score_source", "churn_drivers",
]


def columns_of(table: Sequence[str], *names: str) -> list[str]:
    """`names`, in this order, each a column of the contract `table`: a reader that takes part
    of a table fails on import, not in a Spark job, when the contract loses a column."""
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not in the table contract {list(table)}")
    return list(names)


# ingest_log: one row per ingested (or rejected) batch.
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
        # Added later: null in the rows of older batches.
        T.StructField("rows_already_loaded", T.LongType(), True),
        T.StructField("source_from_version", T.LongType(), True),
        T.StructField("source_kind", T.StringType(), True),
        T.StructField("source_format", T.StringType(), True),
        T.StructField("source_options", T.MapType(T.StringType(), T.StringType(), True), True),
    ]
)


# treatment_outcomes: one row per measured snapshot, treatment and metric (partitioned by
# measured_as_of). Column -> (type, nullable, description), in the table's order.
TREATMENT_OUTCOME_FIELDS: dict[str, tuple[T.DataType, bool, str]] = {
    "as_of_date": (T.DateType(), False, "the tiers snapshot S whose treated and control customers are compared"),
    "measured_as_of": (T.DateType(), False, "the date D of the measurement (partition); S + window_days <= D"),
    "window_days": (T.IntegerType(), False, "the outcome window (S, S + window_days]"),
    "treatment": (T.StringType(), False, "the playbook treatment"),
    "metric": (T.StringType(), False, "repurchase_rate, churn_rate, orders_per_customer or net_revenue_per_customer"),
    "treated_customers": (T.LongType(), False, "customers of S in the treated group"),
    "control_customers": (T.LongType(), False, "customers of S in the control group"),
    "treated_value": (T.DoubleType(), True, "the metric over the treated customers in the window"),
    "control_value": (T.DoubleType(), True, "the metric over the control customers in the window"),
    "uplift": (T.DoubleType(), True, "treated_value - control_value"),
    "ci_low": (T.DoubleType(), True, "lower end of the uplift's confidence interval (null: groups too small)"),
    "ci_high": (T.DoubleType(), True, "upper end of the interval"),
    "confidence": (T.DoubleType(), False, "the interval's confidence (`outcomes.confidence`)"),
    "significant": (T.BooleanType(), False, "the interval excludes 0"),
    "too_small": (T.BooleanType(), False, "a group is below `outcomes.min_group_customers`, or a share has fewer than 5 customers with or without the outcome"),
    "pipeline_run_id": (T.StringType(), False, "the pipeline run that measured it"),
}
TREATMENT_OUTCOMES_SCHEMA = T.StructType(
    [T.StructField(name, dtype, nullable) for name, (dtype, nullable, _) in TREATMENT_OUTCOME_FIELDS.items()]
)


def treatment_outcomes_markdown() -> str:
    """The treatment_outcomes table as README rows (kept in the README's Tables section)."""
    rows = ["| column | type | meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {dtype.simpleString()} | {text} |" for name, (dtype, _, text) in TREATMENT_OUTCOME_FIELDS.items()]
    return "\n".join(rows)
