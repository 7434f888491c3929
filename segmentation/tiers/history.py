"""Tier history as a slowly changing dimension (type 2), derived from the snapshots.

For each customer the snapshots are ordered by date; consecutive snapshots whose tracked
tier columns are all equal (nulls equal nulls) form one row valid from the first of them
until the date of the next change (`valid_to`, exclusive; null while it is current). The
rows are a pure function of the set of snapshots, so a snapshot that arrives out of order or
is re-run gives the same history as if it had come in order; the table is brought to it by
one Delta MERGE that touches only rows that changed.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

HISTORY_KEY = ["customer_id", "valid_from"]


def history_columns(tracked: list[str]) -> list[str]:
    return ["customer_id", "valid_from", "valid_to", "is_current", *tracked]


def tier_history(snapshots: DataFrame, tracked: list[str]) -> DataFrame:
    """SCD2 rows (`history_columns`) from tier rows of any number of snapshots."""
    by_date = Window.partitionBy("customer_id").orderBy("as_of_date")
    state = F.struct(*tracked)
    previous = F.lag(state).over(by_date)
    marked = snapshots.select(
        "customer_id", "as_of_date", *tracked,
        (previous.isNull() | ~previous.eqNullSafe(state)).alias("opens"),
    )
    valid_to = F.lead("as_of_date").over(by_date)
    rows = marked.where("opens").select(
        "customer_id", F.col("as_of_date").alias("valid_from"), valid_to.alias("valid_to"), *tracked
    )
    return rows.select("customer_id", "valid_from", "valid_to", F.col("valid_to").isNull().alias("is_current"), *tracked)
