"""The per-customer (x, t_x, T, m) summary the buy-till-you-die models need, built in Spark.

Purchases are counted per day, as in Fader, Hardie & Lee (2005): several orders on one day
are one purchase, whose value is the day's total. x is the number of purchase days after the
first, t_x the time from the first to the last purchase day, T the time from the first
purchase day to the calibration end, and m the mean value of the repeat purchase days (the
first purchase is left out, as Gamma-Gamma is fitted on repeat spend). Times are in days
divided by the unit's length, so weeks are fractional (272 days = 38.857 weeks).

The driver only ever receives the distinct (x, t_x, T) triples and (x, m) groups with their
customer counts, never a row per customer.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.features.customer import transactions_as_of

UNIT_DAYS = {"day": 1.0, "week": 7.0}
SUMMARY_COLUMNS = ["customer_id", "first_purchase_date", "x", "t_x", "T", "m"]


def purchase_days(transactions: DataFrame, end: dt.date) -> DataFrame:
    """One row per customer and day with a purchase on or before `end`, with the day's value."""
    purchases = transactions_as_of(transactions, end).where(~F.col("is_return"))
    return purchases.groupBy("customer_id", F.to_date("transaction_ts").alias("day")).agg(
        F.sum("net_amount").alias("value")
    )


def clv_summary(transactions: DataFrame, calibration_end: dt.date, time_unit: str) -> DataFrame:
    """x, t_x, T (in `time_unit`) and m per customer with a purchase on or before `calibration_end`."""
    unit = UNIT_DAYS[time_unit]
    days = purchase_days(transactions, calibration_end)
    per_customer = days.groupBy("customer_id").agg(
        F.min("day").alias("first_purchase_date"),
        F.max("day").alias("last_purchase_date"),
        F.count(F.lit(1)).alias("purchase_days"),
        F.sum("value").alias("total_value"),
        F.min_by("value", "day").alias("first_value"),
    )
    x = F.col("purchase_days") - 1
    return per_customer.select(
        "customer_id",
        "first_purchase_date",
        x.alias("x"),
        (F.datediff("last_purchase_date", "first_purchase_date") / unit).alias("t_x"),
        (F.datediff(F.lit(calibration_end), "first_purchase_date") / unit).alias("T"),
        F.when(x > 0, (F.col("total_value") - F.col("first_value")) / x).alias("m"),
    )


def bgnbd_triples(summary: DataFrame) -> DataFrame:
    """The distinct (x, t_x, T) with how many customers share each: what BG/NBD is fitted on."""
    return summary.groupBy("x", "t_x", "T").agg(F.count(F.lit(1)).alias("weight"))


def spend_groups(summary: DataFrame) -> DataFrame:
    """The distinct (x, m) of customers with repeat purchases of positive mean value, weighted:
    what Gamma-Gamma is fitted on (customers with equal x and m share a likelihood term)."""
    repeat = summary.where((F.col("x") > 0) & (F.col("m") > 0))
    return repeat.groupBy("x", "m").agg(F.count(F.lit(1)).alias("weight"))


def frequency_spend_correlation(summary: DataFrame) -> float | None:
    """Pearson correlation of x and m over repeat customers: Gamma-Gamma assumes none."""
    value = summary.where((F.col("x") > 0) & (F.col("m") > 0)).agg(F.corr("x", "m")).first()[0]
    return None if value is None else float(value)


def holdout_purchases(transactions: DataFrame, calibration_end: dt.date, holdout_end: dt.date) -> DataFrame:
    """Purchase days per customer after `calibration_end`, up to and including `holdout_end`,
    and the first of them."""
    days = purchase_days(transactions, holdout_end).where(F.col("day") > F.lit(calibration_end))
    return days.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("holdout_purchases"), F.min("day").alias("first_holdout_purchase_date")
    )
