"""Figures of a churn evaluation for MLflow: ROC, precision-recall, cumulative gains,
calibration and feature importance, each drawn from bounded evaluation summaries."""

from __future__ import annotations

from segmentation.churn.evaluation import ScoreEvaluation
from segmentation.plots import plt


def roc_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, evaluation in evaluations.items():
        curve = evaluation.curve
        axis.plot([0.0] + [p["false_positive_rate"] for p in curve], [0.0] + [p["recall"] for p in curve],
                  label=f"{name} (AUC {evaluation.metrics['roc_auc']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate (recall)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def precision_recall_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, evaluation in evaluations.items():
        curve = evaluation.curve
        axis.plot([p["recall"] for p in curve], [p["precision"] for p in curve],
                  label=f"{name} (PR AUC {evaluation.metrics['pr_auc']:.3f})")
    base = next(iter(evaluations.values())).metrics["churn_rate"]
    axis.axhline(base, color="grey", linestyle=":", label=f"churn rate {base:.2f}")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_ylim(0, 1.02)
    axis.legend(loc="lower left")
    figure.tight_layout()
    return figure


def gains_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, evaluation in evaluations.items():
        curve = evaluation.curve
        axis.plot([0.0] + [p["share"] for p in curve], [0.0] + [p["recall"] for p in curve],
                  label=f"{name} (top 10%: lift {evaluation.metrics['lift_10']:.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    axis.set_xlabel("share of customers contacted, riskiest first")
    axis.set_ylabel("share of churners reached")
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def calibration_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, evaluation in evaluations.items():
        if evaluation.calibration is None:
            continue
        table = evaluation.calibration
        axis.plot([b["predicted"] for b in table], [b["observed"] for b in table], marker="o",
                  label=f"{name} (ECE {evaluation.metrics['calibration_error']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    axis.set_xlabel("mean predicted churn probability")
    axis.set_ylabel("observed churn rate")
    axis.legend(loc="upper left")
    figure.tight_layout()
    return figure


def importance_figure(importance: dict[str, float]):
    names = list(importance)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    axis.barh(names, [importance[n] for n in names])
    axis.set_xlabel("relative importance")
    figure.tight_layout()
    return figure
