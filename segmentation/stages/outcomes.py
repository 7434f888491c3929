"""outcomes: the measured uplift of each treatment, into `treatment_outcomes`.

As of a date D, every earlier tiers snapshot S whose outcome window (S, S +
outcomes.window_days] has ended by D is measured: per treatment of S, its treated customers
against its control customers (`customer_tiers.treatment_group`) over the window, on the
repurchase rate, the churn rate, orders and net revenue per customer, each with its uplift
and confidence interval (see segmentation/treatments/uplift.py for the method). Measuring
again as of D replaces exactly the rows measured as of D. When no snapshot's window has
ended yet, nothing is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
from dataclasses import dataclass

import mlflow
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation import tables, tracking
from segmentation.arguments import add_as_of_argument, as_of_overrides
from segmentation.config import OutcomesConfig
from segmentation.logs import stage
from segmentation.schema import TREATMENT_OUTCOME_FIELDS, TREATMENT_OUTCOMES_SCHEMA
from segmentation.stages.context import StageContext
from segmentation.treatments.outcomes import collect_outcome_groups, outcome_groups
from segmentation.treatments.uplift import Uplift, uplifts_by_treatment

log = logging.getLogger(__name__)

HELP = "measure each treatment's uplift (treated against control customers) over the windows that ended by a date"
INPUTS = {"customer_tiers": "segmentation tiers", "transactions": "segmentation ingest"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args)


def measurable_snapshots(snapshots: list[dt.date], as_of: dt.date, window_days: int) -> list[dt.date]:
    """The snapshots S, oldest first, whose outcome window (S, S + window_days] has ended by `as_of`."""
    return sorted(s for s in set(snapshots) if s + dt.timedelta(days=window_days) <= as_of)


@dataclass(frozen=True)
class SnapshotOutcomes:
    """The uplifts of one snapshot's treatments (those with a treated and a control group)."""

    as_of: dt.date  # the snapshot S
    uplifts: dict[str, tuple[Uplift, ...]]  # treatment -> one per metric


@dataclass(frozen=True)
class OutcomesResult:
    measured_as_of: dt.date  # D
    window_days: int
    snapshots: tuple[SnapshotOutcomes, ...]  # empty: no window had ended
    version: int | None  # the treatment_outcomes version written; None: nothing written
    rows: int
    table: str
    mlflow_run_id: str


def outcome_records(result: OutcomesResult, settings: OutcomesConfig, run_id: str) -> list[dict[str, object]]:
    """The table's rows, in its column order; an undefined number (NaN) is null."""
    def defined(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    records = []
    for snapshot in result.snapshots:
        for treatment, uplifts in snapshot.uplifts.items():
            for u in uplifts:
                records.append({
                    "as_of_date": snapshot.as_of, "measured_as_of": result.measured_as_of, "window_days": result.window_days,
                    "treatment": treatment, "metric": u.metric,
                    "treated_customers": int(u.treated_customers), "control_customers": int(u.control_customers),
                    "treated_value": defined(u.treated_value), "control_value": defined(u.control_value),
                    "uplift": defined(u.uplift), "ci_low": defined(u.ci_low), "ci_high": defined(u.ci_high),
                    "confidence": settings.confidence, "significant": bool(u.significant), "too_small": bool(u.too_small),
                    "pipeline_run_id": run_id,
                })
    return [{name: record[name] for name in TREATMENT_OUTCOME_FIELDS} for record in records]


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> OutcomesResult:
    settings = ctx.config.outcomes
    target = ctx.table("treatment_outcomes")
    with tracking.stage_run(ctx.config, "outcomes", ctx.pipeline_run_id) as active, stage("outcomes") as summary:
        read = {key: ctx.read_input(key, f"does not exist yet; run '{command}' first") for key, command in INPUTS.items()}
        transactions_ref, _, transactions = read["transactions"]
        as_of = ctx.as_of(transactions, transactions_ref)
        _record_inputs(read, as_of, settings)
        tiers = read["customer_tiers"][2]
        snapshots = [row[0] for row in tiers.select("as_of_date").distinct().collect()]
        measured = measurable_snapshots(snapshots, as_of, settings.window_days)
        outcomes = tuple(_measure(tiers, transactions, snapshot, settings) for snapshot in measured)
        result = OutcomesResult(as_of, settings.window_days, outcomes, None, 0, target.location, active.info.run_id)
        if not measured:
            log.info("no snapshot of customer_tiers before %s has an outcome window of %d days that ended by then: "
                     "nothing measured, nothing written", as_of, settings.window_days)
        else:
            records = outcome_records(result, settings, ctx.pipeline_run_id)
            written = tables.write_snapshot(
                ctx.spark.createDataFrame(records, TREATMENT_OUTCOMES_SCHEMA), target, as_of,
                run_id=ctx.pipeline_run_id, column="measured_as_of",
            )
            tracking.log_delta_output(target, written.version)
            result = OutcomesResult(as_of, settings.window_days, outcomes, written.version, len(records),
                                    target.location, active.info.run_id)
            _record_outcome(result, records)
        summary.update(measured_as_of=as_of.isoformat(), snapshots=[s.isoformat() for s in measured],
                       rows=result.rows, version=result.version, table=result.table)
        print(report(result), flush=True)
    return result


def _record_inputs(read: dict[str, tuple[tables.TableRef, int, DataFrame]], as_of: dt.date, settings: OutcomesConfig) -> None:
    for key, (ref, version, _) in read.items():
        tracking.log_delta_input(ref, version, context=key)
    mlflow.set_tag("as_of", as_of.isoformat())
    mlflow.log_params({"as_of": as_of.isoformat(), **{f"outcomes.{k}": v for k, v in settings.model_dump().items()}})


def _measure(tiers: DataFrame, transactions: DataFrame, snapshot: dt.date, settings: OutcomesConfig) -> SnapshotOutcomes:
    rows = tiers.where(F.col("as_of_date") == F.lit(snapshot))
    groups = collect_outcome_groups(outcome_groups(rows, transactions, snapshot, settings.window_days))
    uplifts = uplifts_by_treatment(groups, settings)
    without_control = sorted({treatment for treatment, _ in groups} - set(uplifts))
    if without_control:
        log.info("snapshot %s: no control group (holdout share 0) for %s: not measured", snapshot, ", ".join(without_control))
    return SnapshotOutcomes(snapshot, uplifts)


def _record_outcome(result: OutcomesResult, records: list[dict[str, object]]) -> None:
    metrics = {}
    for snapshot in result.snapshots:
        for treatment, uplifts in snapshot.uplifts.items():
            for u in uplifts:
                for name, value in (("uplift", u.uplift), ("ci_low", u.ci_low), ("ci_high", u.ci_high)):
                    if not math.isnan(value):
                        metrics[tracking.metric_name(f"{snapshot.as_of}.{treatment}.{u.metric}.{name}")] = value
    mlflow.log_metrics(metrics)
    # Aggregates per treatment and group only: no customer id leaves Spark.
    mlflow.log_text(json.dumps(records, indent=2, default=str), "outcomes/treatment_outcomes.json")


def report(result: OutcomesResult) -> str:
    """The stage's printed summary: one line per snapshot, treatment and metric."""
    if not result.snapshots:
        return (f"\nTreatment outcomes as of {result.measured_as_of}: no snapshot's {result.window_days}-day window "
                "has ended yet; nothing measured\n")
    lines = ["", f"Treatment outcomes as of {result.measured_as_of} ({result.window_days}-day windows):",
             f"  {'snapshot':<11}{'treatment':<16}{'metric':<26}{'treated':>9}{'control':>9}"
             f"{'treated':>10}{'control':>10}{'uplift':>10}  interval"]
    for snapshot in result.snapshots:
        for treatment, uplifts in snapshot.uplifts.items():
            for u in uplifts:
                flag = " too small to tell" if u.too_small else (" significant" if u.significant else "")
                lines.append(
                    f"  {snapshot.as_of.isoformat():<11}{treatment:<16}{u.metric:<26}{u.treated_customers:>9,}"
                    f"{u.control_customers:>9,}{u.treated_value:>10.3f}{u.control_value:>10.3f}{u.uplift:>+10.3f}"
                    f"  [{u.ci_low:+.3f}, {u.ci_high:+.3f}]{flag}"
                )
        if not snapshot.uplifts:
            lines.append(f"  {snapshot.as_of.isoformat():<11}no treatment with both a treated and a control group")
    return "\n".join(lines) + "\n"

