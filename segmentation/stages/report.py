"""report: a self-contained HTML report of a customer_tiers snapshot, written next to the
tables (`<storage.root>/reports/`) and logged to MLflow.

It shows tier sizes and revenue shares with the Pareto curve, the value-tier migration
matrix from the previous snapshot, CLV by tier, the churn champion's lift against its
baselines, both models' quality grades, the top churn drivers of each risk tier, cluster profiles, the treatment outcomes measured as of the date, and KPIs (active customers, repurchase rate, churn rate, mean
churn probability, revenue, CLV) with their change since the previous snapshot. Every
number is a Spark aggregate of the tables; the driver holds a few rows per tier.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame
from pyspark.sql import Window
from pyspark.sql import functions as F

from segmentation.stages.churn import BASELINE_PREFIXES, MODEL
from segmentation.churn.drivers import DRIVERS, TOP_DRIVERS
from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides
from segmentation import report as html_report
from segmentation import registry, tables, tracking
from segmentation.errors import DataQualityError
from segmentation.features.tiers import value_pyramid_summary
from segmentation.grades import GRADE_REASON_TAG, GRADE_TAG
from segmentation.logs import stage
from segmentation.tiers.snapshot import TIER_COLUMNS

log = logging.getLogger(__name__)

HELP = "write the HTML report of a customer_tiers snapshot (next to the tables, and to MLflow)"
ACTIVE_DAYS = 365
CHURN_METRICS = ["roc_auc", "pr_auc", "lift_10", "capture_10", "lift_20", "capture_20"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args)


@dataclass(frozen=True)
class ReportResult:
    as_of: dt.date
    path: Path  # the HTML report written
    bytes: int
    data: dict  # every number of the report, as logged to MLflow (report/data.json)
    mlflow_run_id: str


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> ReportResult:
    config = ctx.config
    with tracking.stage_run(config, "report", ctx.pipeline_run_id) as active, stage("report") as summary:
        ref, version, rows = ctx.read_input("customer_tiers", "does not exist yet; run 'segmentation tiers' first")
        as_of = ctx.snapshot_as_of(rows, ref, "has no snapshots: run 'segmentation tiers' first")
        snapshot = rows.where(F.col("as_of_date") == F.lit(as_of))
        if snapshot.isEmpty():
            raise DataQualityError(f"{ref} has no snapshot as of {as_of}; run 'segmentation tiers' first")
        previous_as_of = rows.where(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]
        tracking.log_delta_input(ref, version, context="customer_tiers")
        mlflow.set_tag("as_of", as_of.isoformat())
        data = report_data(ctx, snapshot, rows, as_of, previous_as_of, version)
        document = render(config, data)
        path = _write(report_path(config, as_of), document)
        result = ReportResult(as_of, path, len(document), data, active.info.run_id)
        _record(result)
        summary.update(as_of=as_of.isoformat(), path=str(path), bytes=result.bytes)
        print(f"\nReport as of {as_of}: {path}\n", flush=True)
    return result


def render(config, data: dict) -> str:
    """The self-contained HTML document: the report's data with its figures inlined."""
    figures = {
        "pareto": html_report.data_uri(html_report.pareto_figure(data["value_tiers"])),
        "clv": html_report.data_uri(html_report.clv_figure(data["clv_by_tier"])),
    }
    if data["migration"]:
        order = [t.name for t in config.features.value_pyramid.tiers]
        figures["migration"] = html_report.data_uri(html_report.migration_figure(data["migration"], order))
    if data["churn"]:
        figures["lift"] = html_report.data_uri(html_report.lift_figure(data["churn"]))
    return html_report.render(data, figures)


def _write(path: Path, document: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path


def _record(result: ReportResult) -> None:
    mlflow.log_artifact(str(result.path), "report")
    mlflow.log_dict(result.data, "report/data.json")
    mlflow.log_metrics({f"kpi.{k}": float(v) for k, v in result.data["kpis"].items() if v is not None})


def report_path(config, as_of: dt.date) -> Path:
    return Path(config.storage.root) / "reports" / f"customer_tiers_{as_of.isoformat()}.html"


def kpis(snapshot: DataFrame) -> dict[str, float | None]:
    """The report's KPIs of a snapshot: Spark aggregates, then `kpi_values`."""
    active = F.col("recency_days") < ACTIVE_DAYS
    row = snapshot.agg(
        F.count(F.lit(1)).alias("customers"),
        F.count(F.when(active, 1)).alias("active_customers"),
        F.count(F.when(active & (F.col("frequency_orders") >= 2), 1)).alias("repeat_active"),
        F.count(F.when(F.col("lifecycle_stage") == "churned", 1)).alias("churned"),
        F.avg("churn_probability").alias("mean_churn_probability"),
        F.sum("revenue_365d").alias("revenue_365d"),
        F.sum("clv").alias("total_clv"),
    ).first()
    return kpi_values(row.asDict())


def kpi_values(totals: dict[str, object]) -> dict[str, float | None]:
    """The KPIs from a snapshot's totals (customers, active_customers, repeat_active, churned,
    mean_churn_probability, revenue_365d, total_clv): active customers bought in the last
    ACTIVE_DAYS days, the repurchase rate is the share of them with two or more orders, the
    churn rate the share of customers in lifecycle stage churned; a rate is None where its
    base is zero."""
    customers, active_customers = int(totals["customers"]), int(totals["active_customers"])
    return {
        "customers": customers,
        "active_customers": active_customers,
        "repurchase_rate": totals["repeat_active"] / active_customers if active_customers else None,
        "churn_rate": totals["churned"] / customers if customers else None,
        "mean_churn_probability": totals["mean_churn_probability"],
        "revenue_365d": totals["revenue_365d"],
        "total_clv": totals["total_clv"],
    }


def report_data(ctx: StageContext, snapshot: DataFrame, rows: DataFrame, as_of: dt.date, previous_as_of, version: int) -> dict:
    config = ctx.config
    value_tiers = [r.asDict() for r in value_pyramid_summary(snapshot, config.features.value_pyramid).collect()]
    quantiles = F.percentile_approx("clv", [0.1, 0.25, 0.5, 0.75, 0.9], 1000)
    clv_rows = snapshot.groupBy("value_tier", "value_rank").agg(quantiles.alias("q")).orderBy("value_rank").collect()
    clv_by_tier = [
        {"value_tier": r.value_tier, **dict(zip(["p10", "p25", "p50", "p75", "p90"], r.q or [None] * 5))} for r in clv_rows
    ]
    totals = snapshot.agg(F.count(F.lit(1)).alias("n"), F.sum("revenue_365d").alias("revenue")).first()
    cluster_rows = snapshot.groupBy("cluster_name").agg(
        F.count(F.lit(1)).alias("customers"), F.sum("revenue_365d").alias("revenue"),
        F.avg("clv").alias("mean_clv"), F.avg("churn_probability").alias("mean_churn_probability"),
    ).orderBy(F.desc("customers")).collect()
    clusters = [
        {"cluster_name": r.cluster_name, "customers": int(r.customers), "customer_share": r.customers / totals.n,
         "revenue_share": (r.revenue / totals.revenue) if totals.revenue else None,
         "mean_clv": r.mean_clv, "mean_churn_probability": r.mean_churn_probability}
        for r in cluster_rows
    ]
    migration = []
    previous_kpis = None
    if previous_as_of is not None:
        previous_kpis = kpis(rows.where(F.col("as_of_date") == F.lit(previous_as_of)))
        migrations_ref = ctx.table("tier_migrations")
        if tables.exists(ctx.spark, migrations_ref):
            cells = tables.read(ctx.spark, migrations_ref).where(
                (F.col("to_date") == F.lit(as_of)) & (F.col("from_date") == F.lit(previous_as_of)) & (F.col("dimension") == "value_tier")
            )
            migration = [{"from_tier": r.from_tier, "to_tier": r.to_tier, "customers": int(r.customers)} for r in cells.collect()]
    lineage = snapshot.select("lineage.pipeline_run_id", "lineage.value_rank_by", "lineage.clv_run_id").first()
    return {
        "as_of": as_of.isoformat(),
        "previous_as_of": previous_as_of.isoformat() if previous_as_of else None,
        "pipeline_run_id": lineage.pipeline_run_id,
        "value_rank_by": lineage.value_rank_by,
        "tiers_version": version,
        "kpis": kpis(snapshot),
        "previous_kpis": previous_kpis,
        "value_tiers": value_tiers,
        "clv_by_tier": clv_by_tier,
        "clusters": clusters,
        "migration": migration,
        "churn": churn_summary(config.churn.registered_model),
        "churn_score_sources": churn_score_sources(snapshot),
        "churn_drivers": churn_drivers_by_tier(snapshot, [t.name for t in config.churn.risk_tiers]),
        "clv_grade": clv_grade_summary(lineage.clv_run_id),
        "outcomes": treatment_outcomes(ctx, as_of),
        "missing_predictions": missing_predictions(snapshot),
    }


def missing_predictions(snapshot: DataFrame) -> dict[str, str]:
    """The tier columns a skipped model stage left null, with why (lineage.missing_predictions)."""
    if "missing_predictions" not in snapshot.schema["lineage"].dataType.fieldNames():  # written before the field existed
        return {}
    missing = snapshot.select("lineage.missing_predictions").first()[0] or {}
    return {column: missing[column] for column in TIER_COLUMNS if column in missing}  # a Delta map keeps no order


def churn_score_sources(snapshot: DataFrame) -> list[str]:
    """The distinct churn_score_source values of a tiers snapshot (a handful)."""
    if "churn_score_source" not in snapshot.columns:  # a snapshot written before the column existed
        return []
    rows = snapshot.where(F.col("churn_score_source").isNotNull()).select("churn_score_source").distinct().collect()
    return sorted(r[0] for r in rows)


def treatment_outcomes(ctx: StageContext, as_of: dt.date) -> list[dict]:
    """The uplifts measured as of `as_of` (`segmentation outcomes`), by snapshot, treatment and metric."""
    ref = ctx.table("treatment_outcomes")
    if not tables.exists(ctx.spark, ref):
        return []
    rows = tables.read(ctx.spark, ref).where(F.col("measured_as_of") == F.lit(as_of)).orderBy("treatment", "as_of_date", "metric")
    columns = ["as_of_date", "treatment", "metric", "treated_customers", "control_customers", "treated_value",
               "control_value", "uplift", "ci_low", "ci_high", "significant", "too_small"]
    return [{**r.asDict(), "as_of_date": r.as_of_date.isoformat()} for r in rows.select(*columns).collect()]


def churn_drivers_by_tier(snapshot: DataFrame, risk_tiers: list[str], top: int = TOP_DRIVERS) -> list[dict]:
    """Per risk tier (in `risk_tiers` order), the `top` features with the largest mean
    contribution over the tier's customers with drivers (a feature outside a customer's
    `churn_drivers` counts 0), and the share of those customers whose drivers include it."""
    if DRIVERS not in snapshot.columns:  # a snapshot written before the drivers existed
        return []
    explained = snapshot.where(F.col(DRIVERS).isNotNull())
    sizes = explained.groupBy("churn_risk_tier").agg(F.count(F.lit(1)).alias("tier_customers"))
    totals = (
        explained.select("churn_risk_tier", F.explode(DRIVERS).alias("driver"))
        .groupBy("churn_risk_tier", F.col("driver.feature").alias("feature"))
        .agg(F.sum("driver.contribution").alias("total"), F.count(F.lit(1)).alias("customers"))
        .join(sizes, on="churn_risk_tier", how="inner")
    )
    order = Window.partitionBy("churn_risk_tier").orderBy(F.desc("mean_contribution"), "feature")
    ranked = totals.select(
        "churn_risk_tier", "feature", (F.col("total") / F.col("tier_customers")).alias("mean_contribution"),
        (F.col("customers") / F.col("tier_customers")).alias("customer_share"),
    ).withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top)
    rows = [r.asDict() for r in ranked.collect()]  # at most `top` per tier
    return sorted(rows, key=lambda r: (risk_tiers.index(r["churn_risk_tier"]) if r["churn_risk_tier"] in risk_tiers else len(risk_tiers),
                                       r["rank"]))


def churn_summary(name: str) -> dict | None:
    """The churn champion's evaluation (model and baselines) from its MLflow run."""
    version = registry.aliased_version(MlflowClient(), name)
    if version is None:
        return None
    metrics, tags = version.metrics, version.tags
    scores = {MODEL: {m: metrics.get(m) for m in CHURN_METRICS}}
    for baseline, prefix in BASELINE_PREFIXES.items():
        if f"{prefix}_pr_auc" in metrics:  # models trained before a baseline existed lack it
            scores[baseline] = {m: metrics.get(f"{prefix}_{m}") for m in CHURN_METRICS}
    return {
        "model": f"{name} version {version.version} ({tags.get('model_type', '?')})",
        "evaluation_cutoff": tags.get("evaluation_cutoff"),
        "horizon_days": tags.get("horizon_days"),
        "scores": scores,
        **graded(tags),
    }


def graded(tags: dict[str, str]) -> dict[str, str | None]:
    """The quality grade a run was tagged with (None for runs from before grades)."""
    return {"grade": tags.get(GRADE_TAG), "grade_reason": tags.get(GRADE_REASON_TAG)}


def clv_grade_summary(run_id: str | None) -> dict[str, str | None]:
    """The grade of the lifetime value fit behind the snapshot (None without a holdout check)."""
    return graded(MlflowClient().get_run(run_id).data.tags if run_id else {})
