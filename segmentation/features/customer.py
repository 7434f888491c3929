"""Customer features as of a date: one row per customer, from one aggregation over the lines.

Only transactions on or before `as_of` count ("as of" is a whole day, in the session's time
zone, UTC by default). A purchase is a line that is not a return; a return line counts
against revenue on the day it happened. "The last N days" are the N days ending on `as_of`
(age 0 to N-1). The whole snapshot is one `groupBy(customer_id)`: orders, purchase days and
categories are gathered as small per-customer sets, and every count and gap is derived
from those sets, so Spark reads and shuffles the transactions once. Snapshots as of several
dates (churn's cutoffs) are one pass too: each line joins the dates it precedes, and the
aggregation is by customer and date (`customer_features_by_date`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

AS_OF = "as_of_date"
WINDOWS_DAYS = (30, 90, 365)
TREND_DAYS = 90

# Column -> meaning, in the table's order. Per channel c there are also revenue_share_<c>
# and order_share_<c> (see channel_columns).
FEATURE_COLUMNS: dict[str, str] = {
    "customer_id": "pseudonymised customer id",
    "as_of_date": "the snapshot date: only transactions on or before it are used",
    "first_purchase_date": "date of the first purchase (null when the customer only has returns)",
    "last_purchase_date": "date of the latest purchase",
    "recency_days": "days from the latest purchase to as_of_date",
    "tenure_days": "days from the first purchase to as_of_date",
    "frequency_days": "distinct days with a purchase",
    "frequency_orders": "distinct orders with a purchase",
    "monetary": "net revenue: purchases minus returns",
    "gross_revenue": "revenue of purchase lines, before returns",
    "returned_revenue": "revenue given back on returns (positive)",
    "average_order_value": "gross_revenue / frequency_orders",
    "orders_30d": "orders in the last 30 days",
    "orders_90d": "orders in the last 90 days",
    "orders_365d": "orders in the last 365 days",
    "revenue_30d": "net revenue in the last 30 days",
    "revenue_90d": "net revenue in the last 90 days",
    "revenue_365d": "net revenue in the last 365 days (the default value-pyramid rank)",
    "mean_days_between_purchases": "mean gap between consecutive purchase days (two or more purchase days)",
    "std_days_between_purchases": "population standard deviation of those gaps",
    "recency_ratio": "recency_days / mean_days_between_purchases: how overdue against the customer's own rhythm",
    "orders_prior_90d": "orders in the 90 days before the last 90",
    "order_trend": "(orders_90d - orders_prior_90d) / their sum, from -1 (stopped) to 1 (new); null when both are 0",
    "margin": "net gross margin (lines without a margin are left out)",
    "margin_rate": "margin / monetary (positive monetary only)",
    "preferred_channel": "channel with the most purchase revenue (ties: more orders, then configured order)",
    "channels_used": "channels with at least one order",
    "is_omnichannel": "bought in two or more channels",
    "distinct_categories": "product categories bought",
    "top_category": "category with the most purchase lines (ties: alphabetical)",
    "discount_share": "discount / (gross_revenue + discount): share of list price given away",
    "return_rate": "returned_revenue / gross_revenue",
}


def channel_columns(channels: list[str]) -> list[str]:
    return [f"{kind}_share_{channel}" for channel in channels for kind in ("revenue", "order")]


def feature_columns(channels: list[str]) -> list[str]:
    names = list(FEATURE_COLUMNS)
    position = names.index("preferred_channel")
    return names[:position] + channel_columns(channels) + names[position:]


def _ratio(numerator: Column, denominator: Column) -> Column:
    """numerator / denominator, null unless the denominator is positive."""
    return F.when(denominator > 0, numerator / denominator)


def _orders_where(orders: Column, predicate: Callable[[Column], Column] | None) -> Column:
    """Distinct order ids in the per-customer order set (that satisfy `predicate`)."""
    kept = orders if predicate is None else F.filter(orders, predicate)
    return F.size(F.array_distinct(F.transform(kept, lambda o: o["order_id"])))


# Spark counts a lambda's parameters (a second one would be the element index), so the
# predicates are built by closures rather than lambdas with default arguments.
def _age_between(low: int, high: int) -> Callable[[Column], Column]:
    return lambda o: (o["age"] >= low) & (o["age"] < high)


def _in_channel(channel: str) -> Callable[[Column], Column]:
    return lambda o: o["channel"] == channel


def _start_of_next_day(day: dt.date) -> Column:
    return F.to_timestamp(F.lit((day + dt.timedelta(days=1)).isoformat()))


def transactions_as_of(transactions: DataFrame, as_of: dt.date) -> DataFrame:
    """Lines stamped on or before `as_of` (a range on the timestamp, so Delta can skip files)."""
    return transactions.where(F.col("transaction_ts") < _start_of_next_day(as_of))


def transactions_between(transactions: DataFrame, after: dt.date, until: dt.date) -> DataFrame:
    """Lines stamped on a day in (after, until]: a window that follows a snapshot."""
    stamped = F.col("transaction_ts")
    return transactions.where((stamped >= _start_of_next_day(after)) & (stamped < _start_of_next_day(until)))


def _days_after(day: Column, days: int) -> Column:
    """The start of the `days`-th day after `day` (1: the next day), in the session's time zone."""
    return F.to_timestamp(F.date_add(day, days))


def lines_by_date(transactions: DataFrame, dates: Sequence[dt.date], following_days: int | None = None) -> DataFrame:
    """The lines of each date in `dates`, with that date as `as_of_date`: the lines stamped on
    or before it, or with `following_days` those of the days in (date, date + following_days].
    A line belongs to every date whose window holds it, so the snapshots of several dates
    come from one read of the transactions (a broadcast join with the dates); one date is a
    plain range on the timestamp."""
    dates = sorted(set(dates))
    if following_days is None:
        lines = transactions_as_of(transactions, dates[-1])
    else:
        lines = transactions_between(transactions, dates[0], dates[-1] + dt.timedelta(days=following_days))
    if len(dates) == 1:
        return lines.withColumn(AS_OF, F.lit(dates[0]))
    stamped, as_of = F.col("transaction_ts"), F.col(AS_OF)
    within = stamped < _days_after(as_of, 1)
    if following_days is not None:
        within = (stamped >= _days_after(as_of, 1)) & (stamped < _days_after(as_of, following_days + 1))
    snapshots = transactions.sparkSession.createDataFrame([(d,) for d in dates], f"{AS_OF} date")
    return lines.join(F.broadcast(snapshots), within)


def customer_features(transactions: DataFrame, as_of: dt.date, channels: list[str]) -> DataFrame:
    """One row per customer with a transaction on or before `as_of`; columns: `feature_columns`."""
    return customer_features_by_date(transactions, [as_of], channels)


def customer_features_by_date(transactions: DataFrame, dates: Sequence[dt.date], channels: list[str]) -> DataFrame:
    """`customer_features` as of each of `dates`, stacked (`as_of_date` tells them apart), from
    one aggregation over the lines of every date (`lines_by_date`)."""
    as_of_date = F.col(AS_OF)
    day = F.to_date("transaction_ts")
    age = F.datediff(as_of_date, day)
    purchase = ~F.col("is_return")
    lines = lines_by_date(transactions, dates).select(
        "customer_id", AS_OF, "order_id", "channel", "product_category", "net_amount", "gross_margin",
        F.coalesce("discount_amount", F.lit(0.0)).alias("discount_amount"),
        purchase.alias("is_purchase"), day.alias("day"), age.alias("age"),
    )
    is_purchase = F.col("is_purchase")
    amount = F.col("net_amount")

    def purchase_sum(condition: Column | None = None) -> Column:
        keep = is_purchase if condition is None else is_purchase & condition
        return F.coalesce(F.sum(F.when(keep, amount)), F.lit(0.0))

    aggregates = [
        F.min(F.when(is_purchase, F.col("day"))).alias("first_purchase_date"),
        F.max(F.when(is_purchase, F.col("day"))).alias("last_purchase_date"),
        F.array_sort(F.collect_set(F.when(is_purchase, F.col("day")))).alias("purchase_days"),
        # (order, channel, age) of purchase lines: every order count below comes from this set.
        F.collect_set(F.when(is_purchase, F.struct("order_id", "channel", "age"))).alias("orders"),
        F.sum(amount).alias("monetary"),
        purchase_sum().alias("gross_revenue"),
        F.coalesce(-F.sum(F.when(~is_purchase, amount)), F.lit(0.0)).alias("returned_revenue"),
        *[F.coalesce(F.sum(F.when(F.col("age") < n, amount)), F.lit(0.0)).alias(f"revenue_{n}d") for n in WINDOWS_DAYS],
        F.sum("gross_margin").alias("margin"),
        F.sum(F.when(is_purchase, F.col("discount_amount"))).alias("discount"),
        *[purchase_sum(F.col("channel") == c).alias(f"revenue_{c}") for c in channels],
        F.size(F.collect_set(F.when(is_purchase, F.col("product_category")))).alias("distinct_categories"),
        F.mode(F.when(is_purchase, F.col("product_category")), deterministic=True).alias("top_category"),
    ]
    per_customer = lines.groupBy("customer_id", AS_OF).agg(*aggregates)

    orders, days = F.col("orders"), F.col("purchase_days")
    counts = per_customer.select(
        "*",
        F.size(days).alias("frequency_days"),
        _orders_where(orders, None).alias("frequency_orders"),
        *[_orders_where(orders, _age_between(0, n)).alias(f"orders_{n}d") for n in WINDOWS_DAYS],
        _orders_where(orders, _age_between(TREND_DAYS, 2 * TREND_DAYS)).alias("orders_prior_90d"),
        *[_orders_where(orders, _in_channel(c)).alias(f"orders_{c}") for c in channels],
        F.datediff(as_of_date, F.col("last_purchase_date")).alias("recency_days"),
        F.when(
            F.size(days) >= 2,
            F.datediff(F.col("last_purchase_date"), F.col("first_purchase_date")) / (F.size(days) - 1),
        ).alias("mean_days_between_purchases"),
    )

    frequency_days, frequency_orders = F.col("frequency_days"), F.col("frequency_orders")
    mean_gap, recency = F.col("mean_days_between_purchases"), F.col("recency_days")
    gap_count = F.greatest(frequency_days - 1, F.lit(0))
    gaps = F.zip_with(F.slice(days, 2, gap_count), F.slice(days, 1, gap_count), F.datediff)
    std_gap = F.sqrt(F.aggregate(gaps, F.lit(0.0), lambda acc, gap: acc + F.pow(gap - mean_gap, 2)) / gap_count)
    gross, discount = F.col("gross_revenue"), F.coalesce(F.col("discount"), F.lit(0.0))
    # Highest (revenue, orders, earlier in the configured list) wins; structs compare field by field.
    best_channel = F.greatest(
        *[
            F.struct(
                F.col(f"revenue_{c}").alias("revenue"), F.col(f"orders_{c}").alias("orders"),
                F.lit(-i).alias("position"), F.lit(c).alias("channel"),
            )
            for i, c in enumerate(channels)
        ]
    )["channel"] if len(channels) > 1 else F.lit(channels[0])
    channels_used = sum((F.col(f"orders_{c}") > 0).cast("int") for c in channels)
    shares = [
        share
        for c in channels
        for share in (
            _ratio(F.col(f"revenue_{c}"), gross).alias(f"revenue_share_{c}"),
            _ratio(F.col(f"orders_{c}"), frequency_orders).alias(f"order_share_{c}"),
        )
    ]
    orders_90d, prior = F.col(f"orders_{TREND_DAYS}d"), F.col("orders_prior_90d")

    return counts.select(
        "customer_id",
        AS_OF,
        "first_purchase_date",
        "last_purchase_date",
        "recency_days",
        F.datediff(as_of_date, F.col("first_purchase_date")).alias("tenure_days"),
        "frequency_days",
        "frequency_orders",
        "monetary",
        "gross_revenue",
        "returned_revenue",
        _ratio(gross, frequency_orders).alias("average_order_value"),
        *[f"orders_{n}d" for n in WINDOWS_DAYS],
        *[f"revenue_{n}d" for n in WINDOWS_DAYS],
        "mean_days_between_purchases",
        F.when(frequency_days >= 2, std_gap).alias("std_days_between_purchases"),
        _ratio(recency, mean_gap).alias("recency_ratio"),
        "orders_prior_90d",
        _ratio(orders_90d - prior, orders_90d + prior).alias("order_trend"),
        "margin",
        _ratio(F.col("margin"), F.col("monetary")).alias("margin_rate"),
        *shares,
        F.when(frequency_orders > 0, best_channel).alias("preferred_channel"),
        channels_used.alias("channels_used"),
        (channels_used >= 2).alias("is_omnichannel"),
        "distinct_categories",
        "top_category",
        _ratio(discount, gross + discount).alias("discount_share"),
        _ratio(F.col("returned_revenue"), gross).alias("return_rate"),
    )


def latest_transaction_date(transactions: DataFrame) -> dt.date | None:
    """The default as-of date: the day of the newest transaction (None for an empty table)."""
    return transactions.agg(F.max(F.to_date("transaction_ts"))).first()[0]


def first_transaction_date(transactions: DataFrame) -> dt.date | None:
    """The day of the oldest transaction (None for an empty table)."""
    return transactions.agg(F.min(F.to_date("transaction_ts"))).first()[0]


def feature_markdown() -> str:
    """The feature columns as a Markdown table (kept in the README)."""
    rows = ["| column | meaning |", "|---|---|"]
    for name, text in FEATURE_COLUMNS.items():
        if name == "preferred_channel":
            rows.append("| `revenue_share_<channel>` | purchase revenue in the channel / gross_revenue, per configured channel |")
            rows.append("| `order_share_<channel>` | orders in the channel / frequency_orders |")
        rows.append(f"| `{name}` | {text} |")
    return "\n".join(rows)
