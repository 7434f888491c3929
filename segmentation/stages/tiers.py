"""tiers: assemble `customer_tiers` for an as-of date from the features, CLV, cluster and
churn snapshots, then bring `customer_tier_history` (SCD type 2) up to date and record the
movement since the previous snapshot in `tier_migrations` and `tier_events`.

The snapshot replaces exactly its as-of partition in one Delta commit, guarded by CHECK
constraints (non-null keys, probabilities in [0, 1], the configured tier domains); a retried
write of the same pipeline run is skipped by Delta's idempotent-write options. Each row
carries its lineage: the pipeline run, the Delta versions read, the model versions and the
MLflow run of the lifetime-value fit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides
from segmentation import tables, tracking
from segmentation.config import Config
from segmentation.errors import DataQualityError, SegmentationError
from segmentation.features.rules import UNMATCHED
from segmentation.logs import stage
from segmentation.tiers.history import HISTORY_KEY, tier_history
from segmentation.tiers.migrations import SCORES_BEST_FIRST, check_events, migration_matrix, tier_events
from segmentation.tiers.snapshot import PREDICTED_COLUMNS, TIER_COLUMNS, Lineage, customer_tiers, joined_inputs, value_cuts

log = logging.getLogger(__name__)

HELP = "assemble customer_tiers for a date; update the tier history, migrations and events"
HISTORY_ATTEMPTS = 5
INPUTS = {
    "customer_features": "segmentation features",
    "customer_clv": "segmentation clv",
    "customer_clusters": "segmentation cluster",
    "customer_churn": "segmentation churn score",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args)


def tier_orders(config: Config) -> dict[str, list[str]]:
    """Ordered tier dimensions, best first (an upgrade moves towards the front)."""
    return {
        "value_tier": [t.name for t in config.features.value_pyramid.tiers],
        "churn_risk_tier": [t.name for t in reversed(config.churn.risk_tiers)],
        **{score: SCORES_BEST_FIRST for score in ("r_score", "f_score", "m_score")},
    }


def tier_names(config: Config) -> dict[str, list[str]]:
    """The tier names of each dimension the configuration fixes (cluster names are learnt)."""
    def rule_table(rules) -> list[str]:
        return [*(rule.name for rule in rules), UNMATCHED]

    return {
        **tier_orders(config),
        "rfm_segment": rule_table(config.features.rfm.segments),
        "lifecycle_stage": rule_table(config.features.lifecycle),
        "business_tier": rule_table(config.features.business_rules),
        "stickiness": rule_table(config.tiers.stickiness),
        "treatment": rule_table(config.tiers.playbook),
    }


def constraints(config: Config) -> dict[str, str]:
    def domain(names) -> str:
        return ", ".join("'" + n.replace("'", "''") + "'" for n in names)

    return {
        "customer_id_not_null": "customer_id IS NOT NULL",
        "as_of_date_not_null": "as_of_date IS NOT NULL",
        "churn_probability_range": "churn_probability IS NULL OR (churn_probability >= 0 AND churn_probability <= 1)",
        "probability_alive_range": "probability_alive IS NULL OR (probability_alive >= 0 AND probability_alive <= 1)",
        "value_tier_domain": f"value_tier IN ({domain(t.name for t in config.features.value_pyramid.tiers)})",
        "churn_risk_tier_domain": f"churn_risk_tier IS NULL OR churn_risk_tier IN ({domain(t.name for t in config.churn.risk_tiers)})",
        "stickiness_domain": f"stickiness IN ({domain(tier_names(config)['stickiness'])})",
        "treatment_priority_range": "treatment_priority IS NULL OR (treatment_priority >= 1 AND treatment_priority <= 9)",
        "treatment_group_domain": "treatment_group IS NULL OR treatment_group IN ('treated', 'control')",
    }


@dataclass(frozen=True)
class Movement:
    """The snapshots next to this one and the events recorded into it."""

    previous_as_of: dt.date | None
    next_as_of: dt.date | None
    events: int

    def as_dict(self) -> dict[str, object]:
        return {"previous_as_of": self.previous_as_of.isoformat() if self.previous_as_of else None,
                "next_as_of": self.next_as_of.isoformat() if self.next_as_of else None, "events": self.events}


@dataclass(frozen=True)
class TiersResult:
    as_of: dt.date
    customers: int
    version: int | None  # the customer_tiers version written; None: a retry Delta skipped
    history_version: int | None
    table: str
    movement: Movement
    counts: dict[str, dict[str, int]]  # customers per tier of each dimension
    lineage: Lineage
    mlflow_run_id: str

    @property
    def skipped(self) -> bool:
        return self.version is None


@dataclass(frozen=True)
class _Inputs:
    as_of: dt.date
    read: dict[str, tuple[tables.TableRef, int, DataFrame]]  # key -> table, version read, rows
    snapshots: dict[str, DataFrame]  # key -> its rows as of `as_of`


def run(ctx: StageContext, args: argparse.Namespace | None = None, skipped: dict[str, str] | None = None) -> TiersResult:
    """`skipped`: the model tables a pipeline run skipped for too few data (key -> why); their
    columns stay null and `lineage.missing_predictions` says why."""
    config = ctx.config
    target = ctx.table("customer_tiers")
    with tracking.stage_run(config, "tiers", ctx.pipeline_run_id) as active, stage("tiers") as summary:
        check_events(config.tiers.events, TIER_COLUMNS, tier_orders(config), tier_names(config))
        inputs = _read_inputs(ctx, skipped or {})
        _record_inputs(config, inputs)
        lineage = _lineage(ctx, inputs.read, inputs.snapshots, inputs.as_of, missing_predictions(skipped or {}))
        written = _write_snapshot(ctx, inputs, lineage)
        history = _update_history(ctx, config.tiers.tracked)
        tracking.log_delta_output(target, written.version)
        tracking.log_delta_output(ctx.table("customer_tier_history"), history.version)
        movement = _write_movement(ctx, inputs.as_of)
        counts = _tier_counts(ctx, inputs.as_of)
        result = TiersResult(inputs.as_of, sum(counts["value_tier"].values()), written.version, history.version,
                             target.location, movement, counts, lineage, active.info.run_id)
        _record_outcome(result)
        summary.update(as_of=result.as_of.isoformat(), customers=result.customers, version=result.version,
                       skipped=result.skipped, history_version=result.history_version, table=result.table,
                       **movement.as_dict())
        print(report(result.as_of, counts, movement), flush=True)
    return result


def _read_inputs(ctx: StageContext, skipped: dict[str, str]) -> _Inputs:
    """The input tables at their current versions, and their snapshots of the as-of date
    (the skipped ones are not read)."""
    read = {key: ctx.read_input(key, f"does not exist yet; run '{command}' first") for key, command in INPUTS.items() if key not in skipped}
    features_ref, _, features = read["customer_features"]
    as_of = ctx.snapshot_as_of(features, features_ref, "has no snapshots: run 'segmentation features' first")
    return _Inputs(as_of, read, {key: _snapshot(ref, df, as_of, INPUTS[key]) for key, (ref, _, df) in read.items()})


def missing_predictions(skipped: dict[str, str]) -> dict[str, str]:
    """Each tier column left null by a skipped model table, with why (`lineage.missing_predictions`)."""
    return {column: f"{key} not written: {reason}" for key, reason in skipped.items() for column in PREDICTED_COLUMNS[key]}


def _record_inputs(config: Config, inputs: _Inputs) -> None:
    for key, (ref, version, _) in inputs.read.items():
        tracking.log_delta_input(ref, version, context=key)
    mlflow.set_tags({"as_of": inputs.as_of.isoformat()})
    mlflow.log_params({"as_of": inputs.as_of.isoformat(), "value_rank_by": config.tiers.value_rank_by})


def _write_snapshot(ctx: StageContext, inputs: _Inputs, lineage: Lineage) -> tables.WriteResult:
    """Compute the tier rows of the as-of date and replace its snapshot, under the table's constraints."""
    config, spark, target = ctx.config, ctx.spark, ctx.table("customer_tiers")
    snapshots = inputs.snapshots
    joined = joined_inputs(snapshots["customer_features"], *[snapshots.get(key) for key in PREDICTED_COLUMNS])
    joined = joined.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        settings = config.tiers.model_copy(update={"value_rank_by": lineage.value_rank_by})
        cuts = value_cuts(joined, settings, config.features)
        rows = customer_tiers(joined, cuts, settings, config.features, inputs.as_of, lineage)
        if not tables.exists(spark, target):
            tables.ensure_table(spark, target, rows.schema, partition_by=["as_of_date"], constraints=constraints(config))
        tables.add_constraints(spark, target, constraints(config))
        return tables.write_snapshot(
            rows, target, inputs.as_of, run_id=ctx.pipeline_run_id,
            idempotency_key=(f"customer_tiers:{ctx.pipeline_run_id}:{inputs.as_of.isoformat()}", 0),
            merge_schema=True,  # a table written before a column was added (treatment_group) gains it
        )
    finally:
        joined.unpersist()


def _record_outcome(result: TiersResult) -> None:
    counts = result.counts
    mlflow.log_dict({"lineage": result.lineage.as_dict(), "tier_counts": counts, **result.movement.as_dict()}, "tiers/snapshot.json")
    mlflow.log_metrics({tracking.metric_name(f"{dim}.{tier}"): n for dim, tiers in counts.items() for tier, n in tiers.items()})


def _snapshot(ref, df: DataFrame, as_of: dt.date, command: str) -> DataFrame:
    snapshot = df.where(F.col("as_of_date") == F.lit(as_of))
    if snapshot.isEmpty():
        raise DataQualityError(f"{ref} has no snapshot as of {as_of}; run '{command} --as-of {as_of}' first")
    return snapshot


def value_rank_by(configured: str, features_rank_by: str, missing: dict[str, str]) -> str:
    """The column the value pyramid ranks by: tiers.value_rank_by, or the features' own
    (features.value_pyramid.rank_by) when a skipped model left it empty."""
    return features_rank_by if configured in missing else configured


def _lineage(ctx: StageContext, read, snapshots, as_of: dt.date, missing: dict[str, str]) -> Lineage:
    """The versions read, the model versions in the inputs and the MLflow runs behind them."""
    client = MlflowClient()
    rank_by = value_rank_by(ctx.config.tiers.value_rank_by, ctx.config.features.value_pyramid.rank_by, missing)
    if rank_by != ctx.config.tiers.value_rank_by:
        log.warning("value tiers ranked by %s: %s", rank_by, missing[ctx.config.tiers.value_rank_by])

    def version_read(key: str) -> int | None:
        return read[key][1] if key in read else None

    def model_version(key: str) -> int | None:
        if key not in snapshots:
            return None
        value = snapshots[key].agg(F.max("model_version")).first()[0]
        return None if value is None else int(value)

    def model_run(name: str, version: int | None) -> str | None:
        if version is None:
            return None
        try:
            return client.get_model_version(name, str(version)).run_id
        except MlflowException:
            log.warning("model %s version %s is not in the registry: its run is not in the lineage", name, version)
            return None

    clv_runs = client.search_runs(
        [mlflow.active_run().info.experiment_id],
        filter_string=f"tags.stage = 'clv' AND tags.as_of = '{as_of.isoformat()}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    cluster_version, churn_version = model_version("customer_clusters"), model_version("customer_churn")
    return Lineage(
        pipeline_run_id=ctx.pipeline_run_id,
        features_version=read["customer_features"][1], clv_version=version_read("customer_clv"),
        clusters_version=version_read("customer_clusters"), churn_version=version_read("customer_churn"),
        clv_run_id=clv_runs[0].info.run_id if clv_runs and "customer_clv" in read else None,
        cluster_model_version=cluster_version, churn_model_version=churn_version,
        value_rank_by=rank_by,
        cluster_run_id=model_run(ctx.config.cluster.registered_model, cluster_version),
        churn_run_id=model_run(ctx.config.churn.registered_model, churn_version),
        missing_predictions=missing,
    )


def _update_history(ctx: StageContext, tracked: list[str]) -> tables.WriteResult:
    """Recompute the SCD2 rows from every snapshot and MERGE the differences.

    The pipeline of another date may write its snapshot meanwhile. The history is merged
    again until no snapshot arrived during the merge, so whichever pipeline merges last
    merges a history computed from every snapshot."""
    snapshots_ref = ctx.table("customer_tiers")
    read_version = tables.current_version(ctx.spark, snapshots_ref)
    for _ in range(HISTORY_ATTEMPTS):
        snapshots = tables.read(ctx.spark, snapshots_ref, version=read_version)
        result = tables.merge(
            tier_history(snapshots, tracked), ctx.table("customer_tier_history"), on=HISTORY_KEY,
            compare=["valid_to", "is_current", *tracked], run_id=ctx.pipeline_run_id, delete_missing=True,
        )
        latest = tables.current_version(ctx.spark, snapshots_ref)
        if latest == read_version:
            return result
        log.info("%s changed (version %d -> %d) while the history was merged: merging again", snapshots_ref, read_version, latest)
        read_version = latest
    raise SegmentationError(
        f"{snapshots_ref} kept changing while its history was merged ({HISTORY_ATTEMPTS} attempts): "
        "run 'segmentation tiers' again once the other pipelines have finished"
    )


def movement_pairs(previous: dt.date | None, as_of: dt.date, following: dt.date | None) -> list[tuple[dt.date, dt.date]]:
    """The (from, to) snapshot pairs whose movement a new snapshot changes: from the snapshot
    before it into it and, when it arrives out of order, from it into the snapshot after it."""
    return [(b, a) for b, a in ((previous, as_of), (as_of, following)) if b is not None and a is not None]


def _write_movement(ctx: StageContext, as_of: dt.date) -> Movement:
    """Migrations and events of every pair `movement_pairs` names; the events counted are those into `as_of`."""
    tiers = tables.read(ctx.spark, ctx.table("customer_tiers"))
    bounds = tiers.agg(
        F.max(F.when(F.col("as_of_date") < F.lit(as_of), F.col("as_of_date"))).alias("before"),
        F.min(F.when(F.col("as_of_date") > F.lit(as_of), F.col("as_of_date"))).alias("after"),
    ).first()
    pairs = movement_pairs(bounds.before, as_of, bounds.after)
    if not pairs:
        log.info("no other snapshot than %s: no migrations yet", as_of)
    events = 0
    for before, after in pairs:
        written = _movement_between(ctx, tiers, before, after)
        events += written if after == as_of else 0
    return Movement(bounds.before, bounds.after, events)


def _movement_between(ctx: StageContext, tiers: DataFrame, before: dt.date, after: dt.date) -> int:
    """Write the migration matrix and the events from `before` to `after`, replacing those
    previously recorded into `after`; the number of events."""
    previous, current = (tiers.where(F.col("as_of_date") == F.lit(d)) for d in (before, after))
    settings = ctx.config.tiers
    matrix = migration_matrix(previous, current, settings.tracked, before, after)
    tables.write_snapshot(matrix, ctx.table("tier_migrations"), after, run_id=ctx.pipeline_run_id, column="to_date")
    events = tier_events(previous, current, settings.events, tier_orders(ctx.config), before, after)
    written = tables.write_snapshot(events, ctx.table("tier_events"), after, run_id=ctx.pipeline_run_id)
    log.info("movement %s -> %s: %s events", before, after, written.rows)
    return written.rows or 0


def _tier_counts(ctx: StageContext, as_of: dt.date) -> dict[str, dict[str, int]]:
    snapshot = tables.read(ctx.spark, ctx.table("customer_tiers")).where(F.col("as_of_date") == F.lit(as_of))
    dimensions = ["value_tier", "stickiness", "treatment", "churn_risk_tier", "lifecycle_stage"]
    stacked = snapshot.select(F.explode(F.array(*[
        F.struct(F.lit(d).alias("dimension"), F.coalesce(F.col(d).cast("string"), F.lit("(none)")).alias("tier")) for d in dimensions
    ])).alias("t"))
    counts: dict[str, dict[str, int]] = {d: {} for d in dimensions}
    for row in stacked.groupBy("t.dimension", "t.tier").count().collect():
        counts[row.dimension][row.tier] = int(row["count"])
    return counts


def report(as_of: dt.date, counts: dict[str, dict[str, int]], movement: Movement) -> str:
    lines = ["", f"Customer tiers as of {as_of}:"]
    for dimension, tiers in counts.items():
        total = sum(tiers.values()) or 1
        lines.append(f"  {dimension}: " + ", ".join(f"{t} {n:,} ({n / total:.1%})" for t, n in sorted(tiers.items(), key=lambda p: -p[1])))
    if movement.previous_as_of:
        lines.append(f"Movement since {movement.previous_as_of.isoformat()}: {movement.events:,} events in tier_events")
    return "\n".join(lines) + "\n"
