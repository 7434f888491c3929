"""churn: train the churn classifier out of time and register it (`churn train`), or score
the current customers with the champion into `customer_churn` (`churn score`).

train: features as of each training cutoff with the label "no purchase in the next
`churn.horizon_days`", a Spark ML pipeline fitted on them, and an evaluation on a later
cutoff whose label window follows the training windows. On the same evaluation rows the
model is compared with non-learned baselines (ranking by recency; 1 - P(alive) and the
fewest expected purchases in the label window, from a BG/NBD model fitted on the
transactions up to the evaluation cutoff) and with the current champion. Every training registers a new version of `churn.registered_model` with the alias
`challenger`; it becomes `champion` only when it beats the champion on those rows by
`churn.promote_metric` (the first model becomes champion).

score: the champion scores every eligible customer (a purchase within
`churn.lookback_days`) of the `customer_features` snapshot, with a risk tier from
`churn.risk_tiers`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging

import mlflow
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.clv import fit_purchases
from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides, positive_int
from segmentation import registry, tables, tracking
from segmentation.churn.evaluation import ScoreEvaluation, confusion_matrix, evaluate_score, operating_threshold
from segmentation.churn.labels import CUTOFF, LABEL, Cutoffs, churn_cutoffs, churn_examples, eligible_customers, training_examples
from segmentation.churn.model import PROBABILITY, FittedChurn, class_weights, classifier, feature_importance, fit_churn_model, score_churn
from segmentation.churn.plots import calibration_figure, gains_figure, importance_figure, precision_recall_figure, roc_figure
from segmentation.churn.risk import risk_tier
from segmentation.clv.scoring import ScoringSettings, with_clv_scores
from segmentation.clv.summary import UNIT_DAYS, clv_summary
from segmentation.errors import DataQualityError, ModelRegistryError
from segmentation.features.customer import transactions_as_of
from segmentation.logs import stage
from segmentation.plots import plt
from segmentation.registry import CHALLENGER, CHAMPION, ChampionMetric, PromotionRule, RegisteredVersion, decide_promotion
from segmentation.sampling import customer_sample, sample_fraction
from segmentation.schema import CHURN_COLUMNS, require_numeric_columns

log = logging.getLogger(__name__)

HELP = "train the churn classifier out of time and register it (train), or score customers with the champion (score)"
MODEL, RECENCY, DROPOUT, QUIET = "model", "recency rule", "1 - P(alive)", "BG/NBD purchases"
BASELINE_PREFIXES = {RECENCY: "baseline_recency", DROPOUT: "baseline_p_alive", QUIET: "baseline_expected_purchases"}
LOWER_IS_BETTER = {"brier"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "score"], help="train a new model version, or score with the champion")
    add_as_of_argument(parser)
    parser.add_argument("--model", choices=["gbt", "logistic_regression"], help="the classifier to train (default: from conf)")
    parser.add_argument("--horizon-days", type=positive_int, metavar="N", help="label: no purchase in the N days after a cutoff")


def config_overrides(args: argparse.Namespace) -> list[str]:
    overrides = as_of_overrides(args)
    if getattr(args, "model", None):
        overrides.append(f"churn.model={args.model}")
    if getattr(args, "horizon_days", None) is not None:
        overrides.append(f"churn.horizon_days={args.horizon_days}")
    return overrides


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> dict[str, object]:
    return score(ctx) if getattr(args, "action", "train") == "score" else train(ctx)


# ---------------------------------------------------------------------------------- train


def train(ctx: StageContext) -> dict[str, object]:
    config, settings = ctx.config, ctx.config.churn
    with tracking.stage_run(config, "churn.train", ctx.pipeline_run_id) as active, stage("churn.train") as summary:
        source, version, transactions = ctx.read_transactions()
        as_of = ctx.as_of(transactions, source)
        cutoffs = churn_cutoffs(as_of, settings)
        channels = config.ingest.channels
        sample = _customer_sample(transactions, as_of, settings)
        transactions = customer_sample(transactions, sample["fraction"], settings.seed)
        training = training_examples(transactions, cutoffs, settings.lookback_days, channels)
        require_numeric_columns(
            training, {"churn.features": settings.features, "churn.recency_baseline": [settings.recency_baseline]},
            "customer_features",
        )
        classifier(settings)  # unknown Spark parameters fail here, before any Spark job
        _log_setup(source, version, as_of, cutoffs, settings)
        summary.update(as_of=as_of.isoformat(), evaluation_cutoff=cutoffs.evaluation.isoformat(), transactions_version=version)

        training = training.persist(StorageLevel.MEMORY_AND_DISK)
        evaluation = churn_examples(transactions, cutoffs.evaluation, settings.horizon_days, settings.lookback_days, channels)
        evaluation = evaluation.persist(StorageLevel.MEMORY_AND_DISK)
        scored = None
        try:
            labels = {**_label_counts(training, evaluation, cutoffs), "sample": sample}
            weights = class_weights(labels["training_rows"], labels["training_churners"], settings.class_weight)
            log.info("training on %d rows from %d cutoffs (churn rate %.3f), evaluating on %d rows of %s",
                     labels["training_rows"], len(cutoffs.training), weights.churn_rate, labels["evaluation_rows"], cutoffs.evaluation)
            fitted = fit_churn_model(training, settings, weights)
            btyd = _btyd_scores(transactions, cutoffs.evaluation, settings.horizon_days, config.clv)
            scored = _scored_evaluation(fitted.model, evaluation, btyd, settings.recency_baseline)
            evaluations = {
                MODEL: evaluate_score(scored, PROBABILITY, is_probability=True),
                RECENCY: evaluate_score(scored, "recency_score", is_probability=False),
                DROPOUT: evaluate_score(scored, "dropout_score", is_probability=True),
                QUIET: evaluate_score(scored, "quiet_score", is_probability=False),
            }
            point = operating_threshold(evaluations[MODEL].curve, settings.operating_point, settings.contact_budget)
            confusion = confusion_matrix(scored, PROBABILITY, point["threshold"])
            importance = feature_importance(fitted.model, settings.features)

            client = MlflowClient()
            champion = registry.aliased_version(client, settings.registered_model, CHAMPION)
            comparable = champion is not None and _other_horizon(champion, settings) is None
            champion_metric = _champion_metric(champion, evaluation, settings.promote_metric) if comparable else None
            model_version = _register(fitted, evaluation, settings)
            registry.set_challenger(client, settings.registered_model, model_version)
            decision = _decide(client, settings, model_version, evaluations[MODEL].metrics[settings.promote_metric], champion, champion_metric)
        finally:
            training.unpersist()
            evaluation.unpersist()
            if scored is not None:
                scored.unpersist()

        _log_evaluation(evaluations, point, confusion, importance, fitted, labels, decision)
        summary.update(
            training_rows=labels["training_rows"], evaluation_rows=labels["evaluation_rows"],
            pr_auc=round(evaluations[MODEL].metrics["pr_auc"], 4), model_version=model_version,
            champion=decision["champion_version"],
        )
        print(train_report(cutoffs, labels, evaluations, point, confusion, decision, settings.promote_metric), flush=True)
    metrics = {name: e.metrics for name, e in evaluations.items()}
    return {**summary, "mlflow_run_id": active.info.run_id, "metrics": metrics, "decision": decision,
            "threshold": point, "confusion": confusion, "importance": importance, "labels": labels}


def _log_setup(source, version: int, as_of: dt.date, cutoffs: Cutoffs, settings) -> None:
    tracking.log_delta_input(source, version, context="transactions")
    mlflow.set_tags({
        "as_of": as_of.isoformat(), "evaluation_cutoff": cutoffs.evaluation.isoformat(),
        "training_cutoffs": ",".join(c.isoformat() for c in cutoffs.training),
        "horizon_days": str(settings.horizon_days), "model_type": settings.model,
        "out_of_time": str(all(cutoffs.window_end(c) <= cutoffs.evaluation for c in cutoffs.training)).lower(),
    })
    mlflow.log_params({
        "as_of": as_of.isoformat(), "evaluation_cutoff": cutoffs.evaluation.isoformat(),
        "training_cutoffs": ",".join(c.isoformat() for c in cutoffs.training),
        **{key: str(value) for key, value in settings.model_dump(exclude={"training_cutoffs", "evaluation_cutoff", "risk_tiers"}).items()},
    })


def _customer_sample(transactions: DataFrame, as_of: dt.date, settings) -> dict[str, object]:
    """The share of customers whose cutoffs make the rows: at most `churn.sample_customers`
    of the (approximately counted) customers with transactions up to `as_of`."""
    if settings.sample_customers is None:
        return {"fraction": 1.0, "customers": None, "sample_customers": None}
    customers = transactions_as_of(transactions, as_of).agg(F.approx_count_distinct("customer_id", 0.01)).first()[0]
    fraction = sample_fraction(int(customers), settings.sample_customers)
    if fraction < 1:
        log.info("training and evaluation rows from a sample of about %d of the %d customers (churn.sample_customers)",
                 settings.sample_customers, customers)
    return {"fraction": fraction, "customers": int(customers), "sample_customers": settings.sample_customers}


def _label_counts(training: DataFrame, evaluation: DataFrame, cutoffs: Cutoffs) -> dict[str, object]:
    """Rows and churners per cutoff (one small aggregate each); both sets need both classes."""
    per_cutoff = {
        r[CUTOFF].isoformat(): {"rows": int(r.rows), "churners": int(r.churners)}
        for r in training.groupBy(CUTOFF).agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("churners")).collect()
    }
    for cutoff in cutoffs.training:
        if cutoff.isoformat() not in per_cutoff:
            log.warning("training cutoff %s: no customer bought in the look-back before it, no rows", cutoff)
    held = evaluation.agg(F.count(F.lit(1)).alias("rows"), F.sum(LABEL).alias("churners")).first()
    counts = {
        "per_cutoff": per_cutoff,
        "training_rows": sum(c["rows"] for c in per_cutoff.values()),
        "training_churners": sum(c["churners"] for c in per_cutoff.values()),
        "evaluation_rows": int(held.rows),
        "evaluation_churners": int(held.churners or 0),
    }
    for part in ("training", "evaluation"):
        rows, churners = counts[f"{part}_rows"], counts[f"{part}_churners"]
        if rows == 0 or churners in (0, rows):
            raise DataQualityError(
                f"the {part} rows need churners and stayers: {churners} churners among {rows} rows "
                f"(cutoffs {cutoffs.as_dict()}); check churn.training_cutoffs, churn.evaluation_cutoff and the data's dates"
            )
    return counts


def _btyd_scores(transactions: DataFrame, cutoff: dt.date, horizon_days: int, clv) -> DataFrame:
    """P(alive) at `cutoff` and the purchases expected in the label window, from BG/NBD fitted
    on the transactions up to the cutoff (the lifetime-value stage's model and settings)."""
    unit = UNIT_DAYS[clv.time_unit]
    summary = clv_summary(transactions, cutoff, clv.time_unit)
    fit = fit_purchases(summary, clv)
    log.info("BG/NBD baseline at %s: %s", cutoff, {k: round(v, 4) for k, v in fit.params.as_dict().items()})
    scoring = ScoringSettings.from_days(horizon_days, clv.months, clv.monthly_discount_rate, unit)
    return with_clv_scores(summary, fit.params, None, scoring).select("customer_id", "probability_alive", "expected_purchases")


def _scored_evaluation(model: PipelineModel, evaluation: DataFrame, btyd: DataFrame, recency: str) -> DataFrame:
    """Evaluation rows with the model's probability and the baselines' scores (larger = riskier)."""
    scored = score_churn(model, evaluation).join(btyd, on="customer_id", how="left")
    return scored.select(
        "customer_id", LABEL, PROBABILITY,
        F.col(recency).cast("double").alias("recency_score"),
        (F.lit(1.0) - F.col("probability_alive")).alias("dropout_score"),
        (-F.col("expected_purchases")).alias("quiet_score"),
    ).persist(StorageLevel.MEMORY_AND_DISK)


def _horizon_days(version: RegisteredVersion) -> int | None:
    """The label a model version predicts (None when its run does not say)."""
    horizon = version.tags.get("horizon_days")
    return int(horizon) if horizon else None


def _other_horizon(champion: RegisteredVersion, settings) -> str | None:
    """Why the champion's metrics cannot be compared with a model for churn.horizon_days, if they cannot."""
    horizon = _horizon_days(champion)
    if horizon in (None, settings.horizon_days):
        return None
    return f"predicts no purchase in {horizon} days, not the configured {settings.horizon_days}"


def _champion_metric(champion: RegisteredVersion, evaluation: DataFrame, metric: str) -> float | None:
    """The champion's metric on the new model's evaluation rows (None when it cannot score them)."""
    try:
        model = mlflow.spark.load_model(champion.uri)
        scored = score_churn(model, evaluation).persist(StorageLevel.MEMORY_AND_DISK)
    except Exception as error:  # noqa: BLE001 - any failure to load or apply it is reported, not fatal
        log.warning("champion version %s cannot score the evaluation rows (%s)", champion.version, str(error).splitlines()[0])
        return None
    try:
        return evaluate_score(scored, PROBABILITY, is_probability=True).metrics[metric]
    finally:
        scored.unpersist()


def _register(fitted: FittedChurn, evaluation: DataFrame, settings) -> str:
    """Log the pipeline with its signature and register it as a new version."""
    # Doubles: the pipeline casts every feature to double, and a double column accepts nulls.
    sample = evaluation.select(*[F.col(c).cast("double") for c in settings.features]).limit(5)
    output = score_churn(fitted.model, sample).select(PROBABILITY).toPandas()
    return registry.register_spark_model(fitted.model, settings.registered_model, sample.toPandas(), output[PROBABILITY].rename(None))


def _decide(client: MlflowClient, settings, version: str, metric: float, champion: RegisteredVersion | None,
            champion_metric: float | None) -> dict:
    """The new version becomes champion when there is none, when the champion predicts another
    horizon or cannot score the evaluation rows, or when it beats the champion's metric by
    more than min_improvement."""
    name = settings.promote_metric
    rule = PromotionRule(name, higher_is_better=name not in LOWER_IS_BETTER, min_improvement=settings.min_improvement)
    compared = None if champion is None else ChampionMetric(champion.version, champion_metric, _other_horizon(champion, settings))
    decision = decide_promotion(metric, compared, rule)
    registry.record_decision(client, settings.registered_model, version, decision)
    log.info("churn model version %s %s: %s", version, "promoted to champion" if decision.promote else "stays challenger", decision.reason)
    return {
        "model_version": version, "promoted": decision.promote, "reason": decision.reason, "metric": name, "value": metric,
        "previous_champion": champion.version if champion else None, "champion_value": champion_metric,
        "champion_version": version if decision.promote else champion.version,  # type: ignore[union-attr]
    }


def _log_evaluation(evaluations: dict[str, ScoreEvaluation], point, confusion, importance, fitted: FittedChurn, labels, decision) -> None:
    metrics = {f"{key}": value for key, value in evaluations[MODEL].metrics.items() if value is not None}
    for name, prefix in BASELINE_PREFIXES.items():
        metrics.update({f"{prefix}_{key}": value for key, value in evaluations[name].metrics.items() if value is not None})
    metrics.update({
        "threshold": point["threshold"], "threshold_share": point["share"], "threshold_precision": point["precision"],
        "threshold_recall": point["recall"], **{k: float(v) for k, v in confusion.items()},
        "training_rows": labels["training_rows"], "evaluation_rows": labels["evaluation_rows"],
        "sample_fraction": labels["sample"]["fraction"], **fitted.weights.as_dict(),
    })
    if decision["champion_value"] is not None:
        metrics[f"champion_{decision['metric']}"] = decision["champion_value"]
    mlflow.log_metrics(metrics)
    mlflow.log_dict({name: e.as_dict() for name, e in evaluations.items()}, "churn/evaluation.json")
    mlflow.log_dict({"threshold": point, "confusion_matrix": confusion}, "churn/operating_point.json")
    mlflow.log_dict({"labels": labels, "class_weights": fitted.weights.as_dict()}, "churn/labels.json")
    mlflow.log_dict(importance, "churn/feature_importance.json")
    mlflow.log_dict(decision, "churn/champion_decision.json")
    if fitted.search:
        mlflow.log_dict({"candidates": fitted.search}, "churn/search.json")
    mlflow.log_figure(roc_figure(evaluations), "churn/roc.png")
    mlflow.log_figure(precision_recall_figure(evaluations), "churn/precision_recall.png")
    mlflow.log_figure(gains_figure(evaluations), "churn/cumulative_gains.png")
    mlflow.log_figure(calibration_figure(evaluations), "churn/calibration.png")
    mlflow.log_figure(importance_figure(importance), "churn/feature_importance.png")
    plt.close("all")


def _sample_line(sample: dict[str, object]) -> list[str]:
    if sample["fraction"] >= 1:
        return []
    return [f"Rows from a seeded sample of about {sample['sample_customers']:,} of {sample['customers']:,} customers "
            "(churn.sample_customers); every eligible customer is scored."]


def train_report(cutoffs: Cutoffs, labels, evaluations: dict[str, ScoreEvaluation], point, confusion, decision, metric: str) -> str:
    lines = [
        "",
        f"Churn = no purchase in the {cutoffs.horizon_days} days after a cutoff.",
        f"Training cutoffs {', '.join(c.isoformat() for c in cutoffs.training)}: {labels['training_rows']:,} rows, "
        f"{labels['training_churners'] / labels['training_rows']:.1%} churned.",
        f"Evaluation cutoff {cutoffs.evaluation} (out of time): {labels['evaluation_rows']:,} rows, "
        f"{labels['evaluation_churners'] / labels['evaluation_rows']:.1%} churned.",
        *_sample_line(labels["sample"]),
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
        f"Model version {decision['model_version']} ({CHALLENGER}): "
        f"{'promoted to ' + CHAMPION if decision['promoted'] else 'not promoted'} ({decision['reason']}).",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- score


def score(ctx: StageContext) -> dict[str, object]:
    config, settings = ctx.config, ctx.config.churn
    target = ctx.table("customer_churn")
    with tracking.stage_run(config, "churn.score", ctx.pipeline_run_id) as active, stage("churn.score") as summary:
        source, version, features = ctx.read_input("customer_features", "no customer features yet; run 'segmentation features' first")
        as_of = ctx.snapshot_as_of(features, source, "has no snapshots: run 'segmentation features' first")
        champion = registry.aliased_version(MlflowClient(), settings.registered_model, CHAMPION)
        if champion is None:
            raise ModelRegistryError(
                f"registered model '{settings.registered_model}' has no '{CHAMPION}' version in {tracking.tracking_uri(config)}: "
                "run 'segmentation churn train' first"
            )
        model = mlflow.spark.load_model(champion.uri)
        snapshot = features.where(F.col("as_of_date") == F.lit(as_of))
        customers = eligible_customers(snapshot, settings.lookback_days)
        tracking.log_delta_input(source, version, context="customer_features")
        horizon = _horizon_days(champion)
        mlflow.set_tags({"as_of": as_of.isoformat(), "model_version": champion.version, "model_run_id": champion.run_id,
                         "horizon_days": str(horizon)})
        if horizon not in (None, settings.horizon_days):
            log.warning("the champion predicts churn over %s days; churn.horizon_days is %d (train a new model to change it)",
                        horizon, settings.horizon_days)
        mlflow.log_params({"as_of": as_of.isoformat(), "model_uri": champion.uri, "lookback_days": settings.lookback_days})

        probability = F.col(PROBABILITY)
        scored = score_churn(model, customers).select(
            "customer_id", F.lit(as_of).alias("as_of_date"), probability.alias("churn_probability"),
            risk_tier(probability, settings.risk_tiers).alias("churn_risk_tier"),
            F.lit(int(champion.version)).alias("model_version"),
        )
        result = tables.write_snapshot(scored.select(*CHURN_COLUMNS), target, as_of, run_id=ctx.pipeline_run_id)
        tracking.log_delta_output(target, result.version)
        written = tables.read(ctx.spark, target, result.version).where(F.col("as_of_date") == F.lit(as_of))
        tiers = {r.churn_risk_tier: int(r.customers) for r in written.groupBy("churn_risk_tier").agg(F.count(F.lit(1)).alias("customers")).collect()}
        totals = written.agg(F.count(F.lit(1)).alias("scored"), F.avg("churn_probability").alias("mean")).first()
        in_snapshot = snapshot.count()
        scored_count = int(totals.scored)
        counts = {tier.name: tiers.get(tier.name, 0) for tier in settings.risk_tiers}
        mlflow.log_metrics({"customers_scored": scored_count, "customers_not_eligible": in_snapshot - scored_count,
                            "mean_churn_probability": float(totals.mean or 0.0),
                            **{tracking.metric_name(f"churn_risk_tier.{name}"): count for name, count in counts.items()}})
        mlflow.log_dict({"risk_tiers": counts}, "churn/risk_tiers.json")
        summary.update(as_of=as_of.isoformat(), customers=scored_count, not_eligible=in_snapshot - scored_count,
                       model_version=champion.version, version=result.version, table=target.location)
        print(score_report(as_of, champion, counts, scored_count, in_snapshot, settings.lookback_days), flush=True)
    return {**summary, "mlflow_run_id": active.info.run_id, "risk_tiers": counts}


def score_report(as_of: dt.date, champion: RegisteredVersion, counts: dict[str, int], scored: int, in_snapshot: int, lookback: int) -> str:
    lines = ["", f"Churn scores as of {as_of} by {champion.uri} ({CHAMPION}):"]
    lines += [f"  {name:<10}{count:>12,}  {count / scored if scored else 0:6.1%}" for name, count in counts.items()]
    lines.append(f"{scored:,} customers scored; {in_snapshot - scored:,} without a purchase in the last {lookback} days are not.")
    return "\n".join(lines) + "\n"
