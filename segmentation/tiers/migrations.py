"""Movement between two snapshots: a from-tier x to-tier matrix per dimension, and the
events (upgrades, downgrades, entries into a tier) the playbook triggers on.

A customer only in the later snapshot comes from "(new)"; one only in the earlier goes to
"(gone)"; a missing tier value (a customer the churn model did not score) is "(none)".
Revenue is trailing 12-month revenue, before and after.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.config import TierEvent
from segmentation.errors import ConfigError

NEW, GONE, NONE = "(new)", "(gone)", "(none)"
MIGRATION_COLUMNS = [
    "from_date", "to_date", "dimension", "from_tier", "to_tier", "customers", "revenue_before", "revenue_after",
]
EVENT_COLUMNS = ["customer_id", "as_of_date", "previous_as_of_date", "event", "dimension", "from_tier", "to_tier", "direction", "action"]
SCORES_BEST_FIRST = ["5", "4", "3", "2", "1"]


def _tier(snapshot: Column, dimension: str) -> Column:
    return F.coalesce(snapshot[dimension].cast("string"), F.lit(NONE))


def _paired(previous: DataFrame, current: DataFrame, dimensions: list[str], how: str) -> DataFrame:
    def side(df: DataFrame, name: str) -> DataFrame:
        return df.select("customer_id", F.struct(*[F.col(d) for d in dimensions], "revenue_365d").alias(name))

    return side(previous, "before").join(side(current, "after"), on="customer_id", how=how)


def migration_matrix(previous: DataFrame, current: DataFrame, dimensions: list[str], from_date: dt.date, to_date: dt.date) -> DataFrame:
    """Customers and revenue per (dimension, from_tier, to_tier) between two snapshots."""
    paired = _paired(previous, current, dimensions, "full")
    before, after = F.col("before"), F.col("after")
    cells = F.array(*[
        F.struct(
            F.lit(d).alias("dimension"),
            F.when(before.isNull(), F.lit(NEW)).otherwise(_tier(before, d)).alias("from_tier"),
            F.when(after.isNull(), F.lit(GONE)).otherwise(_tier(after, d)).alias("to_tier"),
        )
        for d in dimensions
    ])
    stacked = paired.select(
        F.explode(cells).alias("cell"),
        F.coalesce(before["revenue_365d"], F.lit(0.0)).alias("revenue_before"),
        F.coalesce(after["revenue_365d"], F.lit(0.0)).alias("revenue_after"),
    )
    return stacked.groupBy("cell.dimension", "cell.from_tier", "cell.to_tier").agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum("revenue_before").alias("revenue_before"),
        F.sum("revenue_after").alias("revenue_after"),
    ).select(F.lit(from_date).alias("from_date"), F.lit(to_date).alias("to_date"), *MIGRATION_COLUMNS[2:])


def check_events(
    events: list[TierEvent], columns: list[str], orders: dict[str, list[str]], names: dict[str, list[str]] | None = None
) -> None:
    """Every event rule names a tier column, an ordered one for a direction, and tiers that
    exist: `names` lists each dimension's tier names where the configuration fixes them (a
    misspelt tier would never fire). A missing value is always the tier "(none)"."""
    for event in events:
        where = f"tiers.events rule '{event.name}'"
        if event.dimension not in columns:
            raise ConfigError(f"{where}: '{event.dimension}' is not a column of customer_tiers")
        if event.direction != "any" and event.dimension not in orders:
            raise ConfigError(
                f"{where}: direction '{event.direction}' needs an ordered dimension ({', '.join(sorted(orders))})"
            )
        known = (names or {}).get(event.dimension)
        unknown = [t for t in (*event.from_tiers, *event.to_tiers) if known is not None and t not in (*known, NONE)]
        if unknown:
            raise ConfigError(
                f"{where}: {', '.join(repr(t) for t in unknown)} is not a tier of {event.dimension} ({', '.join(known)})"
            )


def tier_events(
    previous: DataFrame, current: DataFrame, events: list[TierEvent], orders: dict[str, list[str]],
    from_date: dt.date, to_date: dt.date,
) -> DataFrame:
    """One row per customer and event that fired between the snapshots (customers in both).

    `orders` lists each ordered dimension's tiers best first: an upgrade moves to a better one.
    """
    dimensions = sorted({e.dimension for e in events})
    paired = _paired(previous, current, dimensions, "inner")
    fired = []
    for event in events:
        old, new = _tier(F.col("before"), event.dimension), _tier(F.col("after"), event.dimension)
        condition = old != new
        if event.from_tiers:
            condition &= old.isin(event.from_tiers)
        if event.to_tiers:
            condition &= new.isin(event.to_tiers)
        direction = F.lit("change")
        if event.dimension in orders:
            rank = F.create_map(*[v for i, tier in enumerate(orders[event.dimension]) for v in (F.lit(tier), F.lit(i))])
            old_rank, new_rank = F.element_at(rank, old), F.element_at(rank, new)
            direction = F.when(new_rank < old_rank, "upgrade").when(new_rank > old_rank, "downgrade").otherwise("change")
            if event.direction != "any":
                condition &= direction == event.direction
        fired.append(F.when(condition, F.struct(
            F.lit(event.name).alias("event"), F.lit(event.dimension).alias("dimension"),
            old.alias("from_tier"), new.alias("to_tier"), direction.alias("direction"), F.lit(event.action).alias("action"),
        )))
    if not fired:
        return current.limit(0).select(
            "customer_id", F.lit(to_date).alias("as_of_date"), F.lit(from_date).alias("previous_as_of_date"),
            *[F.lit(None).cast("string").alias(c) for c in EVENT_COLUMNS[3:]],
        )
    exploded = paired.select("customer_id", F.explode(F.filter(F.array(*fired), lambda e: e.isNotNull())).alias("e"))
    return exploded.select(
        "customer_id", F.lit(to_date).alias("as_of_date"), F.lit(from_date).alias("previous_as_of_date"),
        "e.event", "e.dimension", "e.from_tier", "e.to_tier", "e.direction", "e.action",
    )
