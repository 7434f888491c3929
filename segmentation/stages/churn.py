"""churn: train the churn classifier out of time and register it (`churn train`), or score
the current customers with the champion into `customer_churn` (`churn score`).

train: features as of each training cutoff with the label "no purchase in the next
`churn.horizon_days`", a Spark ML pipeline fitted on them, and an evaluation on a later
cutoff whose label window follows the training windows. On the same evaluation rows the
model is compared with non-learned baselines (ranking by recency; 1 - P(alive) and the
fewest expected purchases in the label window, from a BG/NBD model fitted on the
transactions up to the evaluation cutoff) and with the current champion. Every training registers a new version of `churn.registered_model` with the alias
`challenger`; it becomes `champion` only when it beats every baseline and the champion on
those rows by more than `churn.min_improvement` in `churn.promote_metric` (the first model
too). Training cutoffs whose look-back starts before the first transaction are dropped. The
best baseline, calibrated on the evaluation rows (`churn/baseline.py`), is logged with every
training run; the run's `score_source` tag says what scores customers.

score: the champion scores every eligible customer (a purchase within
`churn.lookback_days`) of the `customer_features` snapshot, with a risk tier from
`churn.risk_tiers`. Without a champion, the calibrated baseline of the latest training run
that left one scores them; `churn_score_source` names the model version or the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.stages.clv import fit_purchases
from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides, positive_int, option_overrides
from segmentation import registry, tables, tracking
from segmentation.churn.baseline import ARTIFACT as BASELINE_ARTIFACT, BaselineScorer, calibrated_brier, calibrated_probability, calibration_steps
from segmentation.churn.drivers import DRIVERS, DRIVERS_TYPE, driver_importance, score_with_drivers
from segmentation.churn.evaluation import ScoreEvaluation, confusion_matrix, evaluate_score, evaluate_scores, operating_threshold
from segmentation.churn.labels import (
    CUTOFF, LABEL, Cutoffs, churn_cutoffs, churn_examples, cutoffs_with_history, eligible_customers,
)
from segmentation.churn.btyd import BgNbdFeatures
from segmentation.churn.model import (
    PROBABILITY, FittedChurn, class_weights, classifier, feature_importance, fit_churn_model, model_inputs, score_churn,
)
from segmentation.churn.plots import calibration_figure, gains_figure, importance_figure, precision_recall_figure, roc_figure
from segmentation.churn.risk import risk_tier
from segmentation.clv.bgnbd import BgNbdParams
from segmentation.clv.scoring import ScoringSettings, with_clv_scores
from segmentation.clv.summary import UNIT_DAYS, clv_summary
from segmentation.errors import InsufficientDataError, ModelRegistryError
from segmentation.features.customer import first_transaction_date, transactions_as_of
from segmentation.grades import churn_grade
from segmentation.logs import stage
from segmentation.plots import plt
from segmentation.registry import CHALLENGER, CHAMPION, ChampionMetric, PromotionRule, RegisteredVersion, decide_promotion
from segmentation.privacy import CUSTOMER_COLUMN
from segmentation.sampling import customer_sample, partitioned_by_data, sample_fraction
from segmentation.schema import CHURN_COLUMNS, require_numeric_columns
from segmentation.sufficiency import churn_history_shortfall, label_shortfall

log = logging.getLogger(__name__)

HELP = "train the churn classifier out of time and register it (train), or score customers with the champion (score)"
MODEL, RECENCY, DROPOUT, QUIET = "model", "recency rule", "1 - P(alive)", "BG/NBD purchases"
BASELINE_PREFIXES = {RECENCY: "baseline_recency", DROPOUT: "baseline_p_alive", QUIET: "baseline_expected_purchases"}
BASELINE_SCORES = {RECENCY: "recency_score", DROPOUT: "dropout_score", QUIET: "quiet_score"}  # larger = riskier
SCORE_SOURCE_TAG = "score_source"
SCORED_BY_TAG = "scored_by"  # a churn.score run's ScoreSource.identity
LOWER_IS_BETTER = {"brier"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "score"], help="train a new model version, or score with the champion")
    add_as_of_argument(parser)
    parser.add_argument("--model", choices=["gbt", "logistic_regression"], help="the classifier to train (default: from conf)")
    parser.add_argument("--horizon-days", type=positive_int, metavar="N", help="label: no purchase in the N days after a cutoff")


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args) + option_overrides(args, {"model": "churn.model", "horizon_days": "churn.horizon_days"})


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> ChurnTrainResult | ChurnScoreResult:
    return score(ctx) if getattr(args, "action", "train") == "score" else train(ctx)


# ---------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class CustomerSample:
    """The share of customers whose cutoffs make the training and evaluation rows."""

    fraction: float
    customers: int | None  # approximately counted, None without churn.sample_customers
    sample_customers: int | None


@dataclass(frozen=True)
class LabelCounts:
    per_cutoff: dict[str, dict[str, int]]  # training cutoff -> rows and churners
    training_rows: int
    training_churners: int
    evaluation_rows: int
    evaluation_churners: int
    sample: CustomerSample

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChurnDecision:
    """What the training did to the champion alias (`churn/champion_decision.json`)."""

    model_version: str
    promoted: bool
    reason: str
    metric: str
    value: float  # the new version's metric on the evaluation rows
    previous_champion: str | None
    champion_value: float | None  # the previous champion's, on the same rows
    champion_version: str | None  # None: no model is champion, the best baseline scores

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChurnTrainResult:
    as_of: dt.date
    evaluation_cutoff: dt.date
    transactions_version: int
    mlflow_run_id: str
    model_version: str
    metrics: dict[str, dict[str, float | None]]  # per score: the model and each baseline
    decision: ChurnDecision
    threshold: dict[str, float]  # the operating point on the model's curve
    confusion: dict[str, int]
    importance: dict[str, float]
    labels: LabelCounts
    baseline_scorer: BaselineScorer  # the best baseline calibrated, with every baseline's promotion metric
    score_source: str  # what scores customers after this training: model:<version> or baseline:<name>


@dataclass(frozen=True)
class _Evaluated:
    fitted: FittedChurn
    evaluations: dict[str, ScoreEvaluation]
    point: dict[str, float]
    confusion: dict[str, int]
    importance: dict[str, float]


def train(ctx: StageContext) -> ChurnTrainResult:
    config, settings = ctx.config, ctx.config.churn
    with tracking.stage_run(config, "churn.train", ctx.pipeline_run_id) as active, stage("churn.train") as summary:
        source, version, transactions = ctx.read_transactions()
        as_of = ctx.as_of(transactions, source)
        cutoffs = _cutoffs_with_history(transactions, churn_cutoffs(as_of, settings), as_of, settings)
        channels = config.ingest.channels
        sample = _customer_sample(transactions, as_of, settings)
        transactions = customer_sample(transactions, sample.fraction, settings.seed)
        # the training and the evaluation rows from one pass over the transactions
        examples = churn_examples(transactions, (*cutoffs.training, cutoffs.evaluation), settings.horizon_days,
                                  settings.lookback_days, channels)
        require_numeric_columns(
            examples, {"churn.features": settings.features, "churn.recency_baseline": [settings.recency_baseline]},
            "customer_features",
        )
        classifier(settings)  # unknown Spark parameters fail here, before any Spark job
        _log_setup(source, version, as_of, cutoffs, settings)
        summary.update(as_of=as_of.isoformat(), evaluation_cutoff=cutoffs.evaluation.isoformat(), transactions_version=version)

        examples = examples.persist(StorageLevel.MEMORY_AND_DISK)
        evaluated_at = F.col(CUTOFF) == F.lit(cutoffs.evaluation)
        training, evaluation = examples.where(~evaluated_at), examples.where(evaluated_at)
        scored = None
        try:
            labels = _label_counts(training, evaluation, cutoffs, sample, settings.min_positives, settings.min_negatives)
            # BG/NBD at the evaluation cutoff: the baselines' scores, and two features of the model
            bgnbd, btyd = _bgnbd_at(transactions, cutoffs.evaluation, settings.horizon_days, config.clv)
            fitted = _fit(training, labels, cutoffs, settings, BgNbdFeatures.fitted(bgnbd, UNIT_DAYS[config.clv.time_unit], settings.horizon_days))
            scored = _scored_evaluation(fitted.model, evaluation, btyd, settings.recency_baseline)
            evaluated = _evaluate(scored, fitted, settings)
            scorer = best_baseline_scorer(evaluated.evaluations, settings.promote_metric, cutoffs)
            drivers = driver_importance(fitted.model, evaluation)
            champion, champion_metric = _champion_on(evaluation, settings)
            decision = _register_and_decide(evaluated, scored, champion, champion_metric, scorer.baselines, settings)
        finally:
            examples.unpersist()
            if scored is not None:
                scored.unpersist()

        evaluations = evaluated.evaluations
        result = ChurnTrainResult(
            as_of, cutoffs.evaluation, version, active.info.run_id, decision.model_version,
            {name: e.metrics for name, e in evaluations.items()}, decision, evaluated.point, evaluated.confusion,
            evaluated.importance, labels, scorer, score_source(decision, scorer),
        )
        summary.update(
            training_rows=labels.training_rows, evaluation_rows=labels.evaluation_rows,
            pr_auc=round(evaluations[MODEL].metrics["pr_auc"], 4), model_version=decision.model_version,
            champion=decision.champion_version,
        )
        _log_evaluation(evaluations, evaluated.point, evaluated.confusion, evaluated.importance, evaluated.fitted, labels, decision)
        mlflow.log_dict(scorer.as_dict(), BASELINE_ARTIFACT)
        mlflow.set_tag(SCORE_SOURCE_TAG, result.score_source)
        _log_driver_importance(drivers)
        model = evaluations[MODEL].metrics
        grade = churn_grade(model["pr_auc"], model["churn_rate"], model["calibration_error"])
        registry.record_grade(MlflowClient(), settings.registered_model, decision.model_version, grade.tags())
        log.info("churn model version %s graded %s: %s", decision.model_version, grade.grade, grade.reason)
        print(train_report(cutoffs, labels, evaluations, evaluated.point, evaluated.confusion, decision, settings.promote_metric)
              + scored_by(result.score_source) + "\n", flush=True)
    return result


def _fit(training: DataFrame, labels: LabelCounts, cutoffs: Cutoffs, settings, bgnbd: BgNbdFeatures) -> FittedChurn:
    """The model fitted on the training rows, in partitions set by the rows alone, so the same
    rows give the same model whatever the session's partitioning (`partitioned_by_data`)."""
    weights = class_weights(labels.training_rows, labels.training_churners, settings.class_weight)
    log.info("training on %d rows from %d cutoffs (churn rate %.3f), evaluating on %d rows of %s",
             labels.training_rows, len(cutoffs.training), weights.churn_rate, labels.evaluation_rows, cutoffs.evaluation)
    rows = partitioned_by_data(training, labels.training_rows, [CUSTOMER_COLUMN, CUTOFF])
    return fit_churn_model(rows, settings, weights, bgnbd)


def _evaluate(scored: DataFrame, fitted: FittedChurn, settings) -> _Evaluated:
    """The model and the baselines on the scored evaluation rows, and the operating point."""
    # score column and whether it is a probability; all four share their Spark jobs
    scores = {MODEL: (PROBABILITY, True), RECENCY: ("recency_score", False), DROPOUT: ("dropout_score", True),
              QUIET: ("quiet_score", False)}
    by_column = evaluate_scores(scored, dict(scores.values()))
    evaluations = {name: by_column[column] for name, (column, _) in scores.items()}
    point = operating_threshold(evaluations[MODEL].curve, settings.operating_point, settings.contact_budget)
    confusion = confusion_matrix(scored, PROBABILITY, point["threshold"])
    importance = feature_importance(fitted.model)
    return _Evaluated(fitted, evaluations, point, confusion, importance)


def _champion_on(evaluation: DataFrame, settings) -> tuple[RegisteredVersion | None, float | None]:
    """The current champion and its metric on the new model's evaluation rows (None when it
    predicts another horizon or cannot score them)."""
    champion = registry.aliased_version(MlflowClient(), settings.registered_model, CHAMPION)
    comparable = champion is not None and horizon_mismatch(model_horizon(champion), settings.horizon_days) is None
    return champion, (_champion_metric(champion, evaluation, settings.promote_metric) if comparable else None)


def _register_and_decide(evaluated: _Evaluated, scored: DataFrame, champion: RegisteredVersion | None,
                         champion_metric: float | None, baselines: dict[str, float], settings) -> ChurnDecision:
    """Register the new version as challenger, and as champion when the rule says so."""
    client = MlflowClient()
    model_version = _register(evaluated.fitted, scored, settings)
    registry.set_challenger(client, settings.registered_model, model_version)
    metric = evaluated.evaluations[MODEL].metrics[settings.promote_metric]
    return _decide(client, settings, model_version, metric, champion, champion_metric, baselines)


def baseline_metrics(evaluations: dict[str, ScoreEvaluation], metric: str) -> dict[str, float]:
    """Each baseline's value of the promotion metric on the evaluation rows; for the Brier
    score, that of the baseline calibrated on those rows (as it would score customers)."""
    if metric == "brier":
        return {name: calibrated_brier(calibration_steps(evaluations[name].buckets)) for name in BASELINE_SCORES}
    return {name: evaluations[name].metrics[metric] for name in BASELINE_SCORES}


def best_baseline_scorer(evaluations: dict[str, ScoreEvaluation], metric: str, cutoffs: Cutoffs) -> BaselineScorer:
    """The baseline with the best promotion metric, calibrated on the evaluation rows."""
    rule = PromotionRule(metric, higher_is_better=metric not in LOWER_IS_BETTER, min_improvement=0.0)
    baselines = baseline_metrics(evaluations, metric)
    name = registry.best_baseline(baselines, rule)
    return BaselineScorer(name, BASELINE_SCORES[name], calibration_steps(evaluations[name].buckets),
                          cutoffs.evaluation.isoformat(), cutoffs.horizon_days, metric, baselines)


def score_source(decision: ChurnDecision, scorer: BaselineScorer) -> str:
    """What scores customers after a training: the champion, or without one the best baseline."""
    return f"model:{decision.champion_version}" if decision.champion_version else scorer.source


def _cutoffs_with_history(transactions: DataFrame, cutoffs: Cutoffs, as_of: dt.date, settings) -> Cutoffs:
    """The cutoffs whose look-back the data cover; an InsufficientDataError when the history
    cannot hold the kept cutoffs' windows (or none is kept)."""
    first_day = first_transaction_date(transactions)
    kept, dropped = cutoffs_with_history(cutoffs, first_day, settings.lookback_days)
    for cutoff in dropped:
        log.warning("training cutoff %s dropped: its look-back of %d days starts before the first transaction",
                    cutoff, settings.lookback_days)
    shortfall = churn_history_shortfall(first_day, as_of, settings.lookback_days, settings.horizon_days,
                                        len(kept.training), len(cutoffs.training))
    if shortfall:
        raise InsufficientDataError("churn", shortfall)
    return kept


def _log_setup(source, version: int, as_of: dt.date, cutoffs: Cutoffs, settings) -> None:
    tracking.log_delta_input(source, version, context="transactions")
    mlflow.set_tags({
        "as_of": as_of.isoformat(), "evaluation_cutoff": cutoffs.evaluation.isoformat(),
        "training_cutoffs": ",".join(c.isoformat() for c in cutoffs.training),
        "horizon_days": str(settings.horizon_days), "model_type": settings.model, "registered_model": settings.registered_model,
        "out_of_time": str(all(cutoffs.window_end(c) <= cutoffs.evaluation for c in cutoffs.training)).lower(),
    })
    mlflow.log_params({
        "as_of": as_of.isoformat(), "evaluation_cutoff": cutoffs.evaluation.isoformat(),
        "training_cutoffs": ",".join(c.isoformat() for c in cutoffs.training),
        **{key: str(value) for key, value in settings.model_dump(exclude={"training_cutoffs", "evaluation_cutoff", "risk_tiers"}).items()},
    })


def _customer_sample(transactions: DataFrame, as_of: dt.date, settings) -> CustomerSample:
    """The share of customers whose cutoffs make the rows: at most `churn.sample_customers`
    of the (approximately counted) customers with transactions up to `as_of`."""
    if settings.sample_customers is None:
        return CustomerSample(1.0, None, None)
    customers = transactions_as_of(transactions, as_of).agg(F.approx_count_distinct("customer_id", 0.01)).first()[0]
    fraction = sample_fraction(int(customers), settings.sample_customers)
    if fraction < 1:
        log.info("training and evaluation rows from a sample of about %d of the %d customers (churn.sample_customers)",
                 settings.sample_customers, customers)
    return CustomerSample(fraction, int(customers), settings.sample_customers)


def cutoffs_without_rows(training: tuple[dt.date, ...], per_cutoff: dict[str, dict[str, int]]) -> list[dt.date]:
    """The training cutoffs no row came from (no customer bought in the look-back before them)."""
    return [cutoff for cutoff in training if cutoff.isoformat() not in per_cutoff]


def one_class_only(part: str, rows: int, churners: int, cutoffs: Cutoffs) -> str | None:
    """Why the `part` rows cannot train or evaluate a classifier (they need both classes), if they cannot."""
    if rows == 0 or churners in (0, rows):
        return (
            f"the {part} rows need churners and stayers: {churners} churners among {rows} rows "
            f"(cutoffs {cutoffs.as_dict()}); check churn.training_cutoffs, churn.evaluation_cutoff and the data's dates"
        )
    return None


def _label_counts(training: DataFrame, evaluation: DataFrame, cutoffs: Cutoffs, sample: CustomerSample,
                  min_positives: int, min_negatives: int) -> LabelCounts:
    """Rows and churners per cutoff (one small aggregate each); both sets need both classes,
    with at least the configured churners and stayers."""
    per_cutoff = {
        r[CUTOFF].isoformat(): {"rows": int(r.rows), "churners": int(r.churners)}
        for r in training.groupBy(CUTOFF).agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("churners")).collect()
    }
    for cutoff in cutoffs_without_rows(cutoffs.training, per_cutoff):
        log.warning("training cutoff %s: no customer bought in the look-back before it, no rows", cutoff)
    held = evaluation.agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("churners")).first()
    counts = LabelCounts(
        per_cutoff=per_cutoff,
        training_rows=sum(c["rows"] for c in per_cutoff.values()),
        training_churners=sum(c["churners"] for c in per_cutoff.values()),
        evaluation_rows=int(held.rows),
        evaluation_churners=int(held.churners or 0),
        sample=sample,
    )
    for part, rows, churners in (("training", counts.training_rows, counts.training_churners),
                                 ("evaluation", counts.evaluation_rows, counts.evaluation_churners)):
        problem = one_class_only(part, rows, churners, cutoffs) or label_shortfall(part, rows, churners, min_positives, min_negatives)
        if problem:
            raise InsufficientDataError("churn", problem)
    return counts


def _bgnbd_at(transactions: DataFrame, cutoff: dt.date, horizon_days: int, clv) -> tuple[BgNbdParams, DataFrame]:
    """BG/NBD fitted on the transactions up to `cutoff` (the lifetime-value stage's model and
    settings), and each customer's P(alive) at `cutoff` and purchases expected in the label window."""
    unit = UNIT_DAYS[clv.time_unit]
    summary = clv_summary(transactions, cutoff, clv.time_unit)
    fit = fit_purchases(summary, clv)
    log.info("BG/NBD baseline at %s: %s", cutoff, {k: round(v, 4) for k, v in fit.params.as_dict().items()})
    scoring = ScoringSettings.from_days(horizon_days, clv.months, clv.monthly_discount_rate, unit)
    return fit.params, with_clv_scores(summary, fit.params, None, scoring).select("customer_id", "probability_alive", "expected_purchases")


def _btyd_scores(transactions: DataFrame, cutoff: dt.date, horizon_days: int, clv) -> DataFrame:
    """P(alive) at `cutoff` and the purchases expected in the label window (`_bgnbd_at`)."""
    return _bgnbd_at(transactions, cutoff, horizon_days, clv)[1]


def _scored_evaluation(model: PipelineModel, evaluation: DataFrame, btyd: DataFrame, recency: str) -> DataFrame:
    """Evaluation rows with the model's probability, the baselines' scores (larger = riskier)
    and the model's inputs as doubles (the pipeline casts them so), which give the registered
    signature its example rows (`_register`) without scoring any row again."""
    scored = score_churn(model, evaluation).join(btyd, on="customer_id", how="left")
    baselines = [score.alias(BASELINE_SCORES[name]) for name, score in baseline_scores(recency).items()]
    inputs = [F.col(name).cast("double").alias(name) for name in model_inputs(model)]
    return scored.select("customer_id", LABEL, PROBABILITY, *baselines, *inputs).persist(StorageLevel.MEMORY_AND_DISK)


def baseline_scores(recency: str) -> dict[str, Column]:
    """The baselines' scores (`BASELINE_SCORES`) over rows with the recency feature and the
    BG/NBD columns of `_btyd_scores`."""
    return {
        RECENCY: F.col(recency).cast("double"),
        DROPOUT: F.lit(1.0) - F.col("probability_alive"),
        QUIET: -F.col("expected_purchases"),
    }


def model_horizon(version: RegisteredVersion) -> int | None:
    """The label a model version predicts, from its run's `horizon_days` tag (None when its run does not say)."""
    horizon = version.tags.get("horizon_days")
    return int(horizon) if horizon else None


def horizon_mismatch(horizon: int | None, configured: int) -> str | None:
    """Why a model for `horizon` days cannot be compared with one for churn.horizon_days, if it cannot."""
    if horizon in (None, configured):
        return None
    return f"predicts no purchase in {horizon} days, not the configured {configured}"


def _champion_metric(champion: RegisteredVersion, evaluation: DataFrame, metric: str) -> float | None:
    """The champion's metric on the new model's evaluation rows (None when it cannot score them)."""
    try:
        model = registry.load_spark_model(champion.uri)
        scored = score_churn(model, evaluation).persist(StorageLevel.MEMORY_AND_DISK)
    except Exception as error:  # noqa: BLE001 - any failure to load or apply it is reported, not fatal
        log.warning("champion version %s cannot score the evaluation rows (%s)", champion.version, str(error).splitlines()[0])
        return None
    try:
        return evaluate_score(scored, PROBABILITY, is_probability=True).metrics[metric]
    finally:
        scored.unpersist()


def _register(fitted: FittedChurn, scored: DataFrame, settings) -> str:
    """Log the pipeline with its signature and register it as a new version. The signature's
    example: five scored evaluation rows (`_scored_evaluation`), their inputs as doubles (a
    double column accepts nulls) and the probability the model gave them."""
    inputs = model_inputs(fitted.model)
    example = scored.select(*inputs, PROBABILITY).limit(5).toPandas()
    return registry.register_spark_model(fitted.model, settings.registered_model, example[inputs], example[PROBABILITY].rename(None))


def _decide(client: MlflowClient, settings, version: str, metric: float, champion: RegisteredVersion | None,
            champion_metric: float | None, baselines: dict[str, float] | None = None) -> ChurnDecision:
    """The new version becomes champion when it beats every baseline by more than
    min_improvement and there is no champion, the champion predicts another horizon or cannot
    score the evaluation rows, or it beats the champion's metric by more than min_improvement."""
    name = settings.promote_metric
    rule = PromotionRule(name, higher_is_better=name not in LOWER_IS_BETTER, min_improvement=settings.min_improvement)
    compared = None if champion is None else ChampionMetric(
        champion.version, champion_metric, horizon_mismatch(model_horizon(champion), settings.horizon_days),
    )
    decision = decide_promotion(metric, compared, rule, baselines)
    registry.record_decision(client, settings.registered_model, version, decision)
    log.info("churn model version %s %s: %s", version, "promoted to champion" if decision.promote else "stays challenger", decision.reason)
    return ChurnDecision(
        model_version=version, promoted=decision.promote, reason=decision.reason, metric=name, value=metric,
        previous_champion=champion.version if champion else None, champion_value=champion_metric,
        champion_version=version if decision.promote else (champion.version if champion else None),
    )


def _log_evaluation(evaluations: dict[str, ScoreEvaluation], point, confusion, importance, fitted: FittedChurn, labels: LabelCounts,
                    decision: ChurnDecision) -> None:
    metrics = {f"{key}": value for key, value in evaluations[MODEL].metrics.items() if value is not None}
    for name, prefix in BASELINE_PREFIXES.items():
        metrics.update({f"{prefix}_{key}": value for key, value in evaluations[name].metrics.items() if value is not None})
    metrics.update({
        "threshold": point["threshold"], "threshold_share": point["share"], "threshold_precision": point["precision"],
        "threshold_recall": point["recall"], **{k: float(v) for k, v in confusion.items()},
        "training_rows": labels.training_rows, "evaluation_rows": labels.evaluation_rows,
        "sample_fraction": labels.sample.fraction, **fitted.weights.as_dict(),
    })
    if decision.champion_value is not None:
        metrics[f"champion_{decision.metric}"] = decision.champion_value
    mlflow.log_metrics(metrics)
    mlflow.log_dict({name: e.as_dict() for name, e in evaluations.items()}, "churn/evaluation.json")
    mlflow.log_dict({"threshold": point, "confusion_matrix": confusion}, "churn/operating_point.json")
    mlflow.log_dict({"labels": labels.as_dict(), "class_weights": fitted.weights.as_dict()}, "churn/labels.json")
    mlflow.log_dict(importance, "churn/feature_importance.json")
    mlflow.log_dict(decision.as_dict(), "churn/champion_decision.json")
    if fitted.search:
        mlflow.log_dict({"candidates": fitted.search}, "churn/search.json")
    mlflow.log_figure(roc_figure(evaluations), "churn/roc.png")
    mlflow.log_figure(precision_recall_figure(evaluations), "churn/precision_recall.png")
    mlflow.log_figure(gains_figure(evaluations), "churn/cumulative_gains.png")
    mlflow.log_figure(calibration_figure(evaluations), "churn/calibration.png")
    mlflow.log_figure(importance_figure(importance), "churn/feature_importance.png")
    plt.close("all")


def _log_driver_importance(importance: dict[str, float]) -> None:
    """Mean absolute contribution to the margin per feature, on the evaluation rows."""
    mlflow.log_dict(importance, "churn/driver_importance.json")
    mlflow.log_figure(importance_figure(importance, "mean |contribution| to the margin (evaluation rows)"), "churn/driver_importance.png")
    plt.close("all")


def _sample_line(sample: CustomerSample) -> list[str]:
    if sample.fraction >= 1:
        return []
    return [f"Rows from a seeded sample of about {sample.sample_customers:,} of {sample.customers:,} customers "
            "(churn.sample_customers); every eligible customer is scored."]


def train_report(cutoffs: Cutoffs, labels: LabelCounts, evaluations: dict[str, ScoreEvaluation], point, confusion,
                 decision: ChurnDecision, metric: str) -> str:
    lines = [
        "",
        f"Churn = no purchase in the {cutoffs.horizon_days} days after a cutoff.",
        f"Training cutoffs {', '.join(c.isoformat() for c in cutoffs.training)}: {labels.training_rows:,} rows, "
        f"{labels.training_churners / labels.training_rows:.1%} churned.",
        f"Evaluation cutoff {cutoffs.evaluation} (out of time): {labels.evaluation_rows:,} rows, "
        f"{labels.evaluation_churners / labels.evaluation_rows:.1%} churned.",
        *_sample_line(labels.sample),
        "",
        f"  {'score':<18}{'ROC AUC':>9}{'PR AUC':>9}{'lift@10%':>10}{'capture@10%':>13}{'lift@20%':>10}{'capture@20%':>13}{'Brier':>8}{'ECE':>8}",
    ]
    for name, evaluation in evaluations.items():
        m = evaluation.metrics
        brier = f"{m['brier']:8.4f}" if m["brier"] is not None else f"{'-':>8}"
        ece = f"{m['calibration_error']:8.4f}" if m["calibration_error"] is not None else f"{'-':>8}"
        lines.append(
            f"  {name:<18}{m['roc_auc']:9.4f}{m['pr_auc']:9.4f}{m['lift_10']:10.2f}{m['capture_10']:13.1%}"
            f"{m['lift_20']:10.2f}{m['capture_20']:13.1%}{brier}{ece}"
        )
    lines += [
        "",
        f"Operating point: churn_probability >= {point['threshold']:.4f} flags {point['share']:.1%} of customers, "
        f"precision {point['precision']:.1%}, recall {point['recall']:.1%}.",
        f"  confusion: TP {confusion['true_positives']:,}  FP {confusion['false_positives']:,}  "
        f"FN {confusion['false_negatives']:,}  TN {confusion['true_negatives']:,}",
        f"Model version {decision.model_version} ({CHALLENGER}): "
        f"{'promoted to ' + CHAMPION if decision.promoted else 'not promoted'} ({decision.reason}).",
    ]
    return "\n".join(lines) + "\n"


def scored_by(source: str) -> str:
    """The training report's line on what scores customers (`score_source`)."""
    if source.startswith("model:"):
        return f"Customers are scored by model version {source.removeprefix('model:')} ({CHAMPION})."
    return (f"No churn model is champion: customers are scored by the {source.removeprefix('baseline:')} baseline, "
            f"turned into a probability on the evaluation rows (score source '{source}').")


# ---------------------------------------------------------------------------------- score


@dataclass(frozen=True)
class ChurnScoreResult:
    as_of: dt.date
    customers: int  # scored: eligible customers of the snapshot
    not_eligible: int  # in the snapshot without a purchase within churn.lookback_days
    model_version: str | None  # the champion that scored them; None when a baseline did
    version: int | None  # the customer_churn version written
    table: str
    mlflow_run_id: str
    risk_tiers: dict[str, int]  # customers per churn.risk_tiers name
    mean_churn_probability: float
    score_source: str = ""  # customer_churn.churn_score_source: model:<version> or baseline:<name>


@dataclass(frozen=True)
class ScoreSource:
    """What scores customers: the champion, or without one the calibrated baseline that a
    training run logged."""

    champion: RegisteredVersion | None
    baseline: BaselineScorer | None
    run_id: str  # the run that logged the model or the baseline
    horizon: int | None

    @property
    def name(self) -> str:
        return f"model:{self.champion.version}" if self.champion else self.baseline.source  # type: ignore[union-attr]

    @property
    def identity(self) -> str:
        """What scores, as the churn.score run's `scored_by` tag records it: the model version,
        or the baseline with the training run that calibrated it."""
        return self.name if self.champion else f"{self.name}@{self.run_id}"

    @property
    def described(self) -> str:
        if self.champion:
            return f"{self.champion.uri} ({CHAMPION})"
        return (f"the {self.baseline.name} baseline calibrated in training run {self.run_id} "  # type: ignore[union-attr]
                f"(no churn model is {CHAMPION}: none beat every baseline)")


def score(ctx: StageContext) -> ChurnScoreResult:
    config, settings = ctx.config, ctx.config.churn
    target = ctx.table("customer_churn")
    with tracking.stage_run(config, "churn.score", ctx.pipeline_run_id) as active, stage("churn.score") as summary:
        scoring = _score_source(config)  # first: without a champion or a training run, nothing else matters
        source, version, features = ctx.read_input("customer_features", "no customer features yet; run 'segmentation features' first")
        as_of = ctx.snapshot_as_of(features, source, "has no snapshots: run 'segmentation features' first")
        snapshot = features.where(F.col("as_of_date") == F.lit(as_of))
        _record_score_inputs(source, version, as_of, scoring, settings)

        scored = _scores(ctx, scoring, snapshot, as_of, settings)
        written, rows = _write_scores(ctx, scored, target, as_of)
        counts, scored_count, mean = _score_totals(rows, settings.risk_tiers)
        in_snapshot = snapshot.count()

        model_version = scoring.champion.version if scoring.champion else None
        result = ChurnScoreResult(as_of, scored_count, in_snapshot - scored_count, model_version, written, target.location,
                                  active.info.run_id, counts, mean, scoring.name)
        summary.update(as_of=as_of.isoformat(), customers=scored_count, not_eligible=result.not_eligible,
                       score_source=scoring.name, version=written, table=target.location)
        _record_scores(result, scoring, settings.lookback_days)
    return result


def _score_source(config) -> ScoreSource:
    """What scores customers (`current_score_source`); a ModelRegistryError when nothing can."""
    scoring = current_score_source(config)
    if scoring is None:
        raise ModelRegistryError(
            f"registered model '{config.churn.registered_model}' has no '{CHAMPION}' version in {tracking.tracking_uri(config)}: "
            "run 'segmentation churn train' first"
        )
    if scoring.baseline is not None:
        log.warning("no churn model is %s: %s scores customers", CHAMPION, scoring.baseline.source)
    return scoring


def current_score_source(config) -> ScoreSource | None:
    """The champion; without one, the baseline scorer of the latest finished training run of
    the registered model that left no champion; None before any such training. MLflow must
    point at the configured store (`tracking.configure_mlflow`); no run needs to be active."""
    settings = config.churn
    champion = registry.aliased_version(MlflowClient(), settings.registered_model, CHAMPION)
    if champion is not None:
        return ScoreSource(champion, None, champion.run_id, model_horizon(champion))
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=(f"tags.stage = 'churn.train' AND tags.registered_model = '{settings.registered_model}' "
                       f"AND tags.{SCORE_SOURCE_TAG} LIKE 'baseline:%' AND attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    scorer = BaselineScorer.from_dict(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{BASELINE_ARTIFACT}"))
    return ScoreSource(None, scorer, run.info.run_id, scorer.horizon_days)


def _record_score_inputs(source, version: int, as_of: dt.date, scoring: ScoreSource, settings) -> None:
    tracking.log_delta_input(source, version, context="customer_features")
    tags = {"as_of": as_of.isoformat(), SCORE_SOURCE_TAG: scoring.name, SCORED_BY_TAG: scoring.identity, "horizon_days": str(scoring.horizon)}
    if scoring.champion:
        tags.update(model_version=scoring.champion.version, model_run_id=scoring.champion.run_id)
    else:
        tags.update(baseline_run_id=scoring.run_id)
    mlflow.set_tags(tags)
    if horizon_mismatch(scoring.horizon, settings.horizon_days):
        log.warning("the %s predicts churn over %s days; churn.horizon_days is %d (train a new model to change it)",
                    CHAMPION if scoring.champion else "baseline", scoring.horizon, settings.horizon_days)
    mlflow.log_params({"as_of": as_of.isoformat(), "model_uri": scoring.champion.uri if scoring.champion else scoring.name,
                       "lookback_days": settings.lookback_days})


def _scores(ctx: StageContext, scoring: ScoreSource, snapshot: DataFrame, as_of: dt.date, settings) -> DataFrame:
    """customer_churn's rows: the eligible customers of the snapshot, scored by the champion
    or by the calibrated baseline."""
    eligible = eligible_customers(snapshot, settings.lookback_days)
    if scoring.champion:
        model_version, drivers = F.lit(int(scoring.champion.version)), F.col(DRIVERS)
        scored = score_with_drivers(registry.load_spark_model(scoring.champion.uri), eligible)
    else:
        # A baseline is one quantity turned into a probability: no contributions to list (README).
        model_version, drivers = F.lit(None).cast("int"), F.lit(None).cast(DRIVERS_TYPE)
        scored = _baseline_scored(ctx, scoring.baseline, eligible, as_of, settings)  # type: ignore[arg-type]
    probability = F.col(PROBABILITY)
    return scored.select(
        "customer_id", F.lit(as_of).alias("as_of_date"), probability.alias("churn_probability"),
        risk_tier(probability, settings.risk_tiers).alias("churn_risk_tier"),
        model_version.alias("model_version"), F.lit(scoring.name).alias("churn_score_source"), drivers.alias(DRIVERS),
    ).select(*CHURN_COLUMNS)


def _baseline_scored(ctx: StageContext, scorer: BaselineScorer, eligible: DataFrame, as_of: dt.date, settings) -> DataFrame:
    """`eligible` with the baseline's calibrated probability; the BG/NBD baselines refit BG/NBD
    on the transactions up to `as_of`, as training fitted it up to the evaluation cutoff."""
    name = next(name for name, column in BASELINE_SCORES.items() if column == scorer.score)
    if name != RECENCY:
        _, _, transactions = ctx.read_transactions()
        eligible = eligible.join(_btyd_scores(transactions, as_of, scorer.horizon_days, ctx.config.clv), on="customer_id", how="left")
    score = baseline_scores(settings.recency_baseline)[name]
    return eligible.select("customer_id", calibrated_probability(score, scorer.steps).alias(PROBABILITY))


def _write_scores(ctx: StageContext, scored: DataFrame, target, as_of: dt.date) -> tuple[int | None, DataFrame]:
    """Replace the as-of date's snapshot; the version written and its rows, read back."""
    # a table written before a column was added (churn_score_source, churn_drivers) gains it
    result = tables.write_snapshot(scored, target, as_of, run_id=ctx.pipeline_run_id, merge_schema=True)
    tracking.log_delta_output(target, result.version)
    return result.version, tables.read(ctx.spark, target, result.version).where(F.col("as_of_date") == F.lit(as_of))


def _score_totals(written: DataFrame, risk_tiers) -> tuple[dict[str, int], int, float]:
    """Customers per risk tier (every configured tier, in order), customers scored, mean
    probability: one grouped aggregate, a row per tier."""
    rows = written.groupBy("churn_risk_tier").agg(
        F.count(F.lit(1)).alias("customers"), F.sum("churn_probability").alias("total"), F.count("churn_probability").alias("with_probability"),
    ).collect()
    tiers = {r.churn_risk_tier: int(r.customers) for r in rows}
    with_probability = sum(int(r.with_probability) for r in rows)
    mean = sum(float(r.total) for r in rows if r.total is not None) / with_probability if with_probability else 0.0
    return {tier.name: tiers.get(tier.name, 0) for tier in risk_tiers}, sum(tiers.values()), mean


def _record_scores(result: ChurnScoreResult, scoring: ScoreSource, lookback: int) -> None:
    mlflow.log_metrics({"customers_scored": result.customers, "customers_not_eligible": result.not_eligible,
                        "mean_churn_probability": result.mean_churn_probability,
                        **{tracking.metric_name(f"churn_risk_tier.{name}"): count for name, count in result.risk_tiers.items()}})
    mlflow.log_dict({"risk_tiers": result.risk_tiers}, "churn/risk_tiers.json")
    print(score_report(result.as_of, scoring.described, result.risk_tiers, result.customers, result.customers + result.not_eligible,
                       lookback), flush=True)


def score_report(as_of: dt.date, scored_by: str, counts: dict[str, int], scored: int, in_snapshot: int, lookback: int) -> str:
    lines = ["", f"Churn scores as of {as_of} by {scored_by}:"]
    lines += [f"  {name:<10}{count:>12,}  {count / scored if scored else 0:6.1%}" for name, count in counts.items()]
    lines.append(f"{scored:,} customers scored; {in_snapshot - scored:,} without a purchase in the last {lookback} days are not.")
    return "\n".join(lines) + "\n"
