"""run: the whole pipeline for one as-of date, one stage after the other, under one MLflow
parent run: generate (into an empty storage root, or with --generate; never where real feeds
were ingested), ingest (the configured source, else the feed ingested last), features,
clv, cluster, churn training (when nothing scores customers yet: no champion and no
calibrated baseline of an earlier training; or with --train-churn), churn scoring, the tier
tables, the treatment outcomes of earlier snapshots whose window has ended, and the HTML
report. The as-of date is resolved once after ingest (default: the latest transaction date)
and every later stage uses it. --until stops after a stage.

A model stage (clv, cluster, churn) whose data are too few (segmentation/sufficiency.py) is
skipped with its message: the tier tables are still written, its columns stay null and
`lineage.missing_predictions` says why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from segmentation.stages import churn
from segmentation.stages import clv
from segmentation.stages import cluster
from segmentation.stages import features
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages import outcomes
from segmentation.stages import report
from segmentation.stages import tiers
from segmentation.stages.context import StageContext
from segmentation.stages.features import FeaturesResult
from segmentation.stages.generate import GenerateResult
from segmentation.stages.ingest import IngestResult
from segmentation.stages.outcomes import OutcomesResult
from segmentation.stages.report import ReportResult
from segmentation.stages.tiers import TiersResult
from segmentation.arguments import add_as_of_argument
from segmentation import profiling, tables, tracking
from segmentation.errors import DataQualityError, InsufficientDataError
from segmentation.logs import stage
from segmentation.sources import run_source

log = logging.getLogger(__name__)

HELP = "run the whole pipeline for an as-of date (ingest, features, clv, cluster, churn, tiers, outcomes, report) and print where the results are"
STAGES = ["ingest", "features", "clv", "cluster", "churn", "tiers", "outcomes", "report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    generate.add_feed_arguments(parser)
    ingest.add_arguments(parser)
    add_as_of_argument(parser)
    clv.add_holdout_argument(parser)
    parser.add_argument(
        "--generate", action="store_true",
        help="generate a demo feed into the raw table (refused where real batches were ingested); without it, "
        "a demo feed is generated only into an empty storage root",
    )
    parser.add_argument("--train-churn", action="store_true", help="train a churn challenger even when a champion exists")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="stop after this stage (default: report)")


def config_overrides(args: argparse.Namespace) -> list[str]:
    return generate.config_overrides(args) + ingest.config_overrides(args) + clv.config_overrides(args)


@dataclass(frozen=True)
class Resumed:
    """A stage not run again: the finished MLflow run that already did it for these inputs."""

    run_id: str


@dataclass(frozen=True)
class Skipped:
    """A model stage not run because the data are too few for it (see segmentation/sufficiency.py)."""

    reason: str


# The model stages the pipeline skips on too few data, and the table each would have written.
SKIPPABLE = {"clv": "customer_clv", "cluster": "customer_clusters", "churn": "customer_churn"}


def skipped_inputs(results: dict[str, object]) -> dict[str, str]:
    """The tier inputs of the model stages skipped in this run: table key -> why."""
    return {SKIPPABLE[name]: result.reason for name, result in results.items() if isinstance(result, Skipped)}


@dataclass(frozen=True)
class Timing:
    """A stage's wall-clock window (perf_counter seconds)."""

    started: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class ChurnSteps:
    train: object | None  # churn.train's result; None: not trained in this run
    score: object  # churn.score's result, or Resumed


@dataclass(frozen=True)
class PipelineResult:
    """What each stage returned (None: not run, e.g. after --until), or Resumed when a
    finished run had already done it. clv, cluster and churn results are their stages' own."""

    as_of: dt.date | None  # None when the run stopped after ingest
    timings: dict[str, Timing]  # by stage, in the order they ran
    generate: GenerateResult | None = None
    ingest: IngestResult | None = None
    features: FeaturesResult | Resumed | None = None
    clv: object | Resumed | Skipped | None = None
    cluster: object | Resumed | Skipped | None = None
    churn: ChurnSteps | Skipped | None = None
    tiers: TiersResult | Resumed | None = None  # None also with clv.holdout_days
    outcomes: OutcomesResult | Resumed | None = None  # None also with clv.holdout_days
    report: ReportResult | Resumed | None = None  # None also with clv.holdout_days


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> PipelineResult:
    config = ctx.config
    until = STAGES.index(getattr(args, "until", None) or STAGES[-1])
    timings: dict[str, Timing] = {}
    results: dict[str, object] = {}
    with tracking.stage_run(config, "pipeline", ctx.pipeline_run_id) as parent, stage("pipeline") as summary:
        if config.ingest.source.table == "raw_transactions":
            ctx = _with_run_source(ctx, args, timings, results)
        elif getattr(args, "generate", False):
            raise DataQualityError(
                f"--generate writes the raw_transactions table, but the configured source is {config.ingest.source.path or config.ingest.source.table}"
            )
        results["ingest"] = _timed(ctx.spark, timings, "ingest", lambda: ingest.run(ctx, args))
        if until > 0:
            ctx = _at_as_of(ctx)
            mlflow.set_tag("as_of", ctx.config.as_of.isoformat())
            summary.update(as_of=ctx.config.as_of.isoformat())
        steps = [
            ("features", ["transactions"], lambda: features.run(ctx, args)),
            ("clv", ["transactions"], lambda: clv.run(ctx, args)),
            ("cluster", ["customer_features"], lambda: cluster.run(ctx, args)),
            ("churn", [], lambda: _churn(ctx, args)),
            ("tiers", INPUTS_OF_TIERS, lambda: _tiers(ctx, args, skipped_inputs(results))),
            ("outcomes", list(outcomes.INPUTS), lambda: None if ctx.config.clv.holdout_days else outcomes.run(ctx, args)),
            ("report", ["customer_tiers"], lambda: None if ctx.config.clv.holdout_days else report.run(ctx, args)),
        ]
        for name, inputs, step in steps[:until]:
            done = _finished_run(ctx, name, inputs) if inputs else None
            if done is not None:
                log.info("%s: already done for these inputs in MLflow run %s: resumed past it", name, done)
                results[name] = Resumed(done)
                continue
            results[name] = _timed(ctx.spark, timings, name, step if name not in SKIPPABLE else _skippable(name, step))
        summary.update(pipeline_run_id=ctx.pipeline_run_id, mlflow_run_id=parent.info.run_id)
        mlflow.set_tag("status", "finished")
    _print_where(ctx, parent.info.run_id, until)
    return PipelineResult(ctx.config.as_of if until > 0 else None, timings, **results)


INPUTS_OF_TIERS = list(tiers.INPUTS)


def _with_run_source(ctx: StageContext, args, timings, results) -> StageContext:
    """Generate a demo feed when asked or into an empty storage root; after a real feed was
    ingested, ingest from that feed (see `sources.run_source`)."""
    raw = ctx.table("raw_transactions")
    history = ingest.committed_batches(ctx)
    plan = run_source(
        asked_to_generate=getattr(args, "generate", False), raw_table=str(raw), raw_exists=tables.exists(ctx.spark, raw),
        real=ingest.real_batches(history, str(raw)), batches=len(history),
    )
    if plan.generate:
        log.info("generate: %s", plan.reason)
        results["generate"] = _timed(ctx.spark, timings, "generate", lambda: generate.run(ctx, args))
    if plan.source is None:
        return ctx
    log.info("ingest: no raw table; ingesting %s", plan.reason)
    config = ctx.config
    ingest_config = config.ingest.model_copy(update={"source": plan.source})
    return StageContext(config.model_copy(update={"ingest": ingest_config}), ctx.spark, ctx.pipeline_run_id)


def _skippable(name: str, step):
    """The model stage's step, which gives Skipped when the data are too few for it: the rule
    tiers are still written, without that stage's columns."""
    def run_or_skip():
        try:
            return step()
        except InsufficientDataError as error:
            log.warning("%s skipped: %s", name, error.shortfall)
            print(f"\n{name} skipped, too few data: {error.shortfall}\n", flush=True)
            mlflow.set_tag(f"skipped.{name}", error.shortfall[:5000])
            return Skipped(error.shortfall)
    return run_or_skip


def _timed(spark, timings: dict[str, Timing], name: str, step):
    """Run a stage with its Spark jobs in a job group named after it (`profiling.grouped`) and record its
    wall-clock window (perf_counter), also when it fails."""
    started = time.perf_counter()
    try:
        with profiling.grouped(spark, name):
            return step()
    finally:
        timings[name] = Timing(started, time.perf_counter())


def resume_filter(stage_name: str, as_of: dt.date, config_hash: str, versions: dict[str, int | None]) -> str | None:
    """The MLflow filter of a finished run of this stage for the same as-of date and
    configuration that read its inputs at these Delta versions; None when an input table
    does not exist yet (nothing can have read it)."""
    if any(v is None for v in versions.values()):
        return None
    return " AND ".join([
        f"tags.stage = '{stage_name}'", f"tags.as_of = '{as_of.isoformat()}'",
        f"tags.config_hash = '{config_hash}'", "attributes.status = 'FINISHED'",
        *[f"tags.`{tracking.input_tag(key)}` = '{version}'" for key, version in versions.items()],
    ])


def resume_outputs(stage_name: str) -> list[str]:
    """The tables a finished run must have left for the stage to be resumed past: its primary
    output (migrations and events only exist once there are two snapshots)."""
    return OUTPUTS.get(stage_name, [])[:1]


def resumed_from(run_id: str | None, outputs_exist: dict[str, bool]) -> str | None:
    """The run to resume past: the finished run found, provided its outputs still exist."""
    if run_id is None or not all(outputs_exist.values()):
        return None
    return run_id


def _finished_run(ctx: StageContext, stage_name: str, inputs: list[str]) -> str | None:
    """A finished MLflow run of this stage for the same as-of date and configuration whose
    inputs were at their current Delta versions (and whose output table still exists), so
    a re-run after a failure resumes instead of redoing it; its id, else None."""
    config, fingerprint = ctx.config, ctx.config.fingerprint()
    experiment_id, client = mlflow.active_run().info.experiment_id, MlflowClient()

    def finished(versions: dict[str, int | None]) -> list:
        conditions = resume_filter(stage_name, config.as_of, fingerprint, versions)
        return [] if conditions is None else client.search_runs([experiment_id], conditions, max_results=1)

    # Most runs find no finished run of the stage at all (one query to the tracking store);
    # only then are the inputs' versions asked for (one DESCRIBE HISTORY each).
    if not finished({}):
        return None
    runs = finished({key: tables.current_version(ctx.spark, ctx.table(key)) for key in inputs})
    if not runs:
        return None
    outputs = {key: tables.exists(ctx.spark, ctx.table(key)) for key in resume_outputs(stage_name)}
    return resumed_from(runs[0].info.run_id, outputs)


def _at_as_of(ctx: StageContext) -> StageContext:
    """The context with the snapshot date fixed, so every stage works on the same date."""
    source, _, transactions = ctx.read_transactions()
    as_of = ctx.as_of(transactions, source)
    return StageContext(ctx.config.model_copy(update={"as_of": as_of}), ctx.spark, ctx.pipeline_run_id)


def champion_scored(scored_run_id: str | None, scored_by: str | None, scoring_now: str | None) -> bool:
    """Whether the finished churn.score run found scored these features with what scores
    customers today (the champion's version, or the baseline with the training run that
    calibrated it: `ScoreSource.identity`)."""
    return scored_run_id is not None and scoring_now is not None and scored_by == scoring_now


def _churn(ctx: StageContext, args) -> ChurnSteps:
    """Train when asked or when nothing scores customers yet (no champion and no calibrated
    baseline of an earlier training), then score (unless what scores today already scored
    this snapshot of the features)."""
    scoring = churn.current_score_source(ctx.config)
    if getattr(args, "train_churn", False) or scoring is None:
        return ChurnSteps(churn.train(ctx), churn.score(ctx))
    scored = _finished_run(ctx, "churn.score", ["customer_features"])
    scored_by = MlflowClient().get_run(scored).data.tags.get(churn.SCORED_BY_TAG) if scored is not None else None
    if champion_scored(scored, scored_by, scoring.identity):
        log.info("churn.score: %s already scored these features in MLflow run %s: resumed past it", scoring.name, scored)
        return ChurnSteps(None, Resumed(scored))
    return ChurnSteps(None, churn.score(ctx))


def _tiers(ctx: StageContext, args, skipped: dict[str, str]) -> TiersResult | None:
    if ctx.config.clv.holdout_days:
        log.warning("tiers skipped: with clv.holdout_days the CLV snapshot is at the calibration end, not the as-of date")
        return None
    return tiers.run(ctx, args, skipped)


OUTPUTS: dict[str, list[str]] = {
    "ingest": ["raw_transactions", "transactions", "transactions_quarantine", "ingest_log"],
    "features": ["customer_features"],
    "clv": ["customer_clv"],
    "cluster": ["customer_clusters"],
    "churn": ["customer_churn"],
    "churn.score": ["customer_churn"],
    "tiers": ["customer_tiers", "customer_tier_history", "tier_migrations", "tier_events"],
    "outcomes": ["treatment_outcomes"],
    "report": [],
}


def _print_where(ctx: StageContext, mlflow_run_id: str, until: int) -> None:
    config = ctx.config
    uri = tracking.tracking_uri(config)
    keys = [key for name in STAGES[: until + 1] for key in OUTPUTS[name]]
    lines = ["", "Results:"]
    for key in keys:
        ref = ctx.table(key)
        # What this run committed, else (a stage resumed past, a table it did not write) Delta's newest version.
        version = tables.committed_by(ctx.pipeline_run_id, ref)
        if version is None:
            version = tables.current_version(ctx.spark, ref)
        if version is not None:
            lines.append(f"  {key:<24} {ref.location}  (Delta version {version})")
    path = report.report_path(config, config.as_of) if config.as_of and until >= STAGES.index("report") else None
    if path is not None and path.is_file():
        lines.append(f"  {'report':<24} {path}")
    lines += [
        f"  {'MLflow tracking store':<24} {uri}",
        f"  {'MLflow pipeline run':<24} {mlflow_run_id}",
        f"  browse runs at {uri}" if tracking.is_server(uri) else f"  browse runs with: mlflow ui --backend-store-uri {uri}",
        "",
    ]
    print("\n".join(lines), flush=True)
