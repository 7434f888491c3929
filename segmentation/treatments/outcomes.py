"""What the customers of a tiers snapshot did afterwards, per treatment and group.

For a snapshot S, the outcome window is the days (S, S + window_days]. In it, a customer's
orders are the distinct orders with a purchase line (as `frequency_orders` counts them) and
their net revenue is purchases minus returns (a return counts on the day it happened, as in
the features). A customer with no line in the window has 0 orders and 0 revenue; a
repurchaser has at least one order. Each treatment and group reduces to one row of counts,
means and sample variances, so what reaches the driver is bounded by the number of
treatments, not of customers; `uplifts_by_treatment` takes it from there.
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.features.customer import transactions_between
from segmentation.treatments.uplift import GroupOutcome

OUTCOME_GROUP_COLUMNS = [
    "treatment", "treatment_group", "customers", "repurchasers",
    "orders_mean", "orders_variance", "net_revenue_mean", "net_revenue_variance",
]


def outcome_groups(snapshot: DataFrame, transactions: DataFrame, as_of: dt.date, window_days: int) -> DataFrame:
    """One row per treatment and group of the customers of `snapshot` (customer_id, treatment,
    treatment_group; the tiers of `as_of`) over (as_of, as_of + window_days]. Customers
    without a group (no treatment) are left out. Columns: `OUTCOME_GROUP_COLUMNS`."""
    window = transactions_between(transactions, as_of, as_of + dt.timedelta(days=window_days))
    per_customer = window.groupBy("customer_id").agg(
        F.count_distinct(F.when(~F.col("is_return"), F.col("order_id"))).alias("window_orders"),
        F.sum("net_amount").alias("window_revenue"),
    )
    grouped = snapshot.where(F.col("treatment_group").isNotNull()).select("customer_id", "treatment", "treatment_group")
    joined = grouped.join(per_customer, on="customer_id", how="left")
    orders = F.coalesce(F.col("window_orders"), F.lit(0)).cast("double")
    revenue = F.coalesce(F.col("window_revenue"), F.lit(0.0))
    # Spark's avg and var_samp are numerically stable (no sum of squares minus a square).
    return (
        joined.groupBy("treatment", "treatment_group")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.sum((orders > 0).cast("long")).alias("repurchasers"),
            F.avg(orders).alias("orders_mean"),
            F.var_samp(orders).alias("orders_variance"),
            F.avg(revenue).alias("net_revenue_mean"),
            F.var_samp(revenue).alias("net_revenue_variance"),
        )
        .select(*OUTCOME_GROUP_COLUMNS)
    )


def collect_outcome_groups(groups: DataFrame) -> dict[tuple[str, str], GroupOutcome]:
    """The rows of `outcome_groups` on the driver (two per treatment), keyed by (treatment,
    group). A variance Spark leaves null (a group of one customer) becomes NaN."""
    collected = {}
    for row in groups.collect():
        values = {name: math.nan if row[name] is None else row[name] for name in OUTCOME_GROUP_COLUMNS[2:]}
        collected[(row["treatment"], row["treatment_group"])] = GroupOutcome(**values)
    return collected
