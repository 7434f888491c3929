"""features: customer features and rule-based tiers as of a date, into `customer_features`.

One row per customer with a transaction on or before the as-of date: recency, frequency,
monetary value, windows, rhythm, trend, margin, channel and category behaviour, then the RFM
scores and segment, the value-pyramid tier, the lifecycle stage and the business's rule
tier. The table is partitioned by `as_of_date`; re-running a date replaces exactly that
snapshot. Rules are checked against the feature columns before anything runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from dataclasses import dataclass

import mlflow
from pyspark import StorageLevel
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides
from segmentation import tables, tracking
from segmentation.errors import DataQualityError
from segmentation.features.customer import customer_features
from segmentation.features.rules import UNMATCHED
from segmentation.features.tiers import TierCuts, tier_counts, tier_cuts, value_pyramid_summary, with_rule_tiers
from segmentation.logs import stage

log = logging.getLogger(__name__)

HELP = "compute customer features and rule-based tiers (RFM, value pyramid, lifecycle, business rules) as of a date"
RULE_TABLES = {
    "rfm_segment": "features.rfm.segments",
    "lifecycle_stage": "features.lifecycle",
    "business_tier": "features.business_rules",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args)


@dataclass(frozen=True)
class FeaturesResult:
    as_of: dt.date
    transactions_version: int
    customers: int
    version: int | None  # the customer_features version written
    table: str
    unmatched: dict[str, int]  # customers no row of each rule table matched


def unmatched_customers(counts: list[dict]) -> dict[str, int]:
    """Customers per rule table that no row matched, from the tier counts."""
    return {
        scheme: sum(r["customers"] for r in counts if r["scheme"] == scheme and r["tier"] == UNMATCHED)
        for scheme in RULE_TABLES
    }


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> FeaturesResult:
    config, settings = ctx.config, ctx.config.features
    target = ctx.table("customer_features")
    with tracking.stage_run(config, "features", ctx.pipeline_run_id), stage("features") as summary:
        source, version, transactions = ctx.read_transactions()
        channels = config.ingest.channels
        # Every rule is checked against the feature columns before a single job runs.
        with_rule_tiers(customer_features(transactions, dt.date.today(), channels), TierCuts(), settings)
        as_of = ctx.as_of(transactions, source)
        summary.update(as_of=as_of.isoformat(), transactions_version=version)
        log.info("features as of %s from %s version %s", as_of, source, version)
        tracking.log_delta_input(source, version, context="transactions")
        mlflow.set_tag("as_of", as_of.isoformat())
        mlflow.log_params(_params(config, as_of))

        features = customer_features(transactions, as_of, channels).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if features.isEmpty():
                first = transactions.agg(F.min(F.to_date("transaction_ts"))).first()[0]
                raise DataQualityError(
                    f"no customer has a transaction on or before {as_of} in {source} (the first is on {first})"
                )
            cuts = tier_cuts(features, settings)
            tiered = with_rule_tiers(features, cuts, settings)
            result = tables.write_snapshot(tiered, target, as_of, run_id=ctx.pipeline_run_id)
            tracking.log_delta_output(target, result.version)
            counts = [row.asDict() for row in tier_counts(tiered).collect()]
            pareto = [row.asDict() for row in value_pyramid_summary(tiered, settings.value_pyramid).collect()]
        finally:
            features.unpersist()

        customers = sum(row["customers"] for row in counts if row["scheme"] == "value_tier")
        unmatched = unmatched_customers(counts)
        for scheme, count in unmatched.items():
            if count and scheme != "business_tier":
                log.warning("%d customers match no row of %s: counted as '%s'", count, RULE_TABLES[scheme], UNMATCHED)
        outcome = FeaturesResult(as_of, version, customers, result.version, target.location, unmatched)
        summary.update(customers=customers, version=result.version, table=target.location)
        _log_run(cuts, counts, pareto, customers, unmatched)
        print(report(as_of, customers, counts, pareto, settings.value_pyramid.rank_by), flush=True)
    return outcome


def report(as_of: dt.date, customers: int, counts: list[dict], pareto: list[dict], rank_by: str) -> str:
    """The stage's printed summary: the Pareto table and the customers per tier of each scheme."""
    lines = [
        "",
        f"Customer features as of {as_of}: {customers:,} customers",
        "",
        f"Value pyramid by {rank_by} (revenue = trailing 12 months):",
        f"  {'tier':<12}{'customers':>12}{'share':>9}{'revenue':>16}{'share':>9}{'cum. cust.':>12}{'cum. rev.':>11}",
    ]
    for row in pareto:
        lines.append(
            f"  {row['value_tier']:<12}{row['customers']:>12,}{_pct(row['customer_share']):>9}"
            f"{row['revenue']:>16,.2f}{_pct(row['revenue_share']):>9}"
            f"{_pct(row['cumulative_customer_share']):>12}{_pct(row['cumulative_revenue_share']):>11}"
        )
    for scheme in ("rfm_segment", "lifecycle_stage", "business_tier"):
        rows = sorted((r for r in counts if r["scheme"] == scheme), key=lambda r: -r["customers"])
        lines += ["", f"{scheme}:"]
        lines += [f"  {r['tier']:<22}{r['customers']:>12,}{_pct(r['customers'] / customers):>9}" for r in rows]
    return "\n".join(lines) + "\n"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _params(config, as_of: dt.date) -> dict[str, object]:
    settings = config.features
    return {
        "as_of": as_of.isoformat(),
        "quantile_relative_error": settings.quantile_relative_error,
        "rfm.columns": f"{settings.rfm.recency},{settings.rfm.frequency},{settings.rfm.monetary}",
        "value_pyramid.rank_by": settings.value_pyramid.rank_by,
        "value_pyramid.tiers": ",".join(f"{t.name}:{t.share or 'rest'}" for t in settings.value_pyramid.tiers),
        "channels": ",".join(config.ingest.channels),
    }


def _log_run(cuts: TierCuts, counts, pareto, customers: int, unmatched: dict[str, int]) -> None:
    metrics = {"customers": float(customers)}
    metrics.update({f"unmatched.{scheme}": float(count) for scheme, count in unmatched.items()})
    metrics.update({tracking.metric_name(f"{r['scheme']}.{r['tier']}"): float(r["customers"]) for r in counts})
    for row in pareto:
        for key in ("customer_share", "revenue_share"):
            if row[key] is not None:
                metrics[tracking.metric_name(f"pareto.{row['value_tier']}.{key}")] = float(row[key])
    mlflow.log_metrics(metrics)
    # Aggregates only: no customer id or per-customer value leaves Spark.
    mlflow.log_dict({"quantile_cuts": cuts.as_dict()}, "features/quantile_cuts.json")
    mlflow.log_text(json.dumps(pareto, indent=2, default=str), "features/pareto.json")
    mlflow.log_text(json.dumps(counts, indent=2), "features/tier_counts.json")
