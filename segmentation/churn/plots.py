"""Figures of a churn evaluation for MLflow: ROC, precision-recall, cumulative gains,
calibration and feature importance, each drawn from bounded evaluation summaries."""

from __future__ import annotations

from segmentation.churn.evaluation import ScoreEvaluation
from segmentation.plots import plt


def _curves(evaluations: dict[str, ScoreEvaluation], x: str, y: str, label, from_origin: bool):
    """One line per score through its ranking-curve points (x, y), riskiest first."""
    figure, axis = plt.subplots(figsize=(6, 5))
    start = [0.0] if from_origin else []
    for name, evaluation in evaluations.items():
        curve = evaluation.curve
        axis.plot(start + [p[x] for p in curve], start + [p[y] for p in curve], label=label(name, evaluation.metrics))
    return figure, axis


def _finish(figure, axis, xlabel: str, ylabel: str, legend: str):
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.legend(loc=legend)
    figure.tight_layout()
    return figure


def roc_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = _curves(evaluations, "false_positive_rate", "recall",
                           lambda name, m: f"{name} (AUC {m['roc_auc']:.3f})", from_origin=True)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    return _finish(figure, axis, "false positive rate", "true positive rate (recall)", "lower right")


def precision_recall_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = _curves(evaluations, "recall", "precision",
                           lambda name, m: f"{name} (PR AUC {m['pr_auc']:.3f})", from_origin=False)
    base = next(iter(evaluations.values())).metrics["churn_rate"]
    axis.axhline(base, color="grey", linestyle=":", label=f"churn rate {base:.2f}")
    axis.set_ylim(0, 1.02)
    return _finish(figure, axis, "recall", "precision", "lower left")


def gains_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = _curves(evaluations, "share", "recall",
                           lambda name, m: f"{name} (top 10%: lift {m['lift_10']:.2f})", from_origin=True)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    return _finish(figure, axis, "share of customers contacted, riskiest first", "share of churners reached", "lower right")


def calibration_figure(evaluations: dict[str, ScoreEvaluation]):
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, evaluation in evaluations.items():
        if evaluation.calibration is None:
            continue
        table = evaluation.calibration
        axis.plot([b["predicted"] for b in table], [b["observed"] for b in table], marker="o",
                  label=f"{name} (ECE {evaluation.metrics['calibration_error']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    return _finish(figure, axis, "mean predicted churn probability", "observed churn rate", "upper left")


def importance_figure(importance: dict[str, float], xlabel: str = "relative importance"):
    names = list(importance)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    axis.barh(names, [importance[n] for n in names])
    axis.set_xlabel(xlabel)
    figure.tight_layout()
    return figure
