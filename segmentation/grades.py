"""A quality grade for business users: Poor, Fair, Good or Excellent, from the measures a
model's training already computes on rows it did not learn from.

A grade holds when every one of its conditions holds; a model gets the best grade that
holds, Poor otherwise. The thresholds are constants documented in the README ("Quality
grades"), so grades stay comparable between runs and deployments.

Churn, on the out-of-time evaluation rows:
- ranking: the PR AUC's lift over the churn rate (PR AUC / churn rate), taken as the share
  of the way from a random ranking (lift 1) to a perfect one (lift 1 / churn rate), so that
  feeds with different churn rates are graded alike; this share is
  (PR AUC - churn rate) / (1 - churn rate);
- calibration: the expected calibration error (mean gap between predicted and observed churn).

Lifetime value, on the holdout check (`clv.holdout_days`):
- the relative error of the predicted total of holdout purchases against the actual total;
- the correlation of predicted and actual holdout purchases over customers.
"""

from __future__ import annotations

from dataclasses import dataclass

GRADE_TAG, GRADE_REASON_TAG = "quality_grade", "quality_grade_reason"
POOR = "Poor"


@dataclass(frozen=True)
class Grade:
    grade: str  # Poor, Fair, Good or Excellent
    reason: str  # the measures it was given, for people

    def tags(self) -> dict[str, str]:
        """The MLflow tags of a graded run or model."""
        return {GRADE_TAG: self.grade, GRADE_REASON_TAG: self.reason}


@dataclass(frozen=True)
class ChurnGradeRule:
    grade: str
    min_lift_share: float  # (lift - 1) / (1 / churn rate - 1) at least this
    max_calibration_error: float  # expected calibration error at most this


@dataclass(frozen=True)
class ClvGradeRule:
    grade: str
    max_relative_error: float  # |predicted - actual| / actual total holdout purchases at most this
    min_correlation: float  # per-customer correlation of predicted and actual at least this


# Best first.
CHURN_GRADES = (
    ChurnGradeRule("Excellent", min_lift_share=0.50, max_calibration_error=0.03),
    ChurnGradeRule("Good", min_lift_share=0.30, max_calibration_error=0.06),
    ChurnGradeRule("Fair", min_lift_share=0.15, max_calibration_error=0.12),
)
CLV_GRADES = (
    ClvGradeRule("Excellent", max_relative_error=0.05, min_correlation=0.70),
    ClvGradeRule("Good", max_relative_error=0.15, min_correlation=0.50),
    ClvGradeRule("Fair", max_relative_error=0.30, min_correlation=0.30),
)


def lift_share(pr_auc: float, churn_rate: float) -> float:
    """How far the PR AUC's lift over the churn rate goes from random (0) to perfect (1)."""
    if churn_rate >= 1.0:
        return 0.0  # every row churned: no ranking can do better than random
    return (pr_auc - churn_rate) / (1.0 - churn_rate)


def churn_grade(pr_auc: float, churn_rate: float, calibration_error: float | None) -> Grade:
    """The churn model's grade from its evaluation; without a calibration error (a score that
    is not a probability) the ranking alone decides."""
    if churn_rate <= 0.0:
        return Grade(POOR, f"no churner among the evaluation rows (churn rate {churn_rate:.4f})")
    share = lift_share(pr_auc, churn_rate)
    ece = 0.0 if calibration_error is None else calibration_error
    grade = next((r.grade for r in CHURN_GRADES if share >= r.min_lift_share and ece <= r.max_calibration_error), POOR)
    calibration = "" if calibration_error is None else f", calibration error {calibration_error:.4f}"
    return Grade(grade, (f"PR AUC {pr_auc:.4f} is {pr_auc / churn_rate:.2f} times the churn rate {churn_rate:.4f} "
                         f"({share:.0%} of the way from random to perfect){calibration}"))


def clv_grade(predicted: float, actual: float, correlation: float | None) -> Grade:
    """The lifetime value model's grade from its holdout check (predicted and actual total
    holdout purchases, and their correlation over customers; None when either is constant)."""
    if actual <= 0:
        return Grade(POOR, f"no purchase in the holdout (the model expected {predicted:,.1f})")
    error = abs(predicted - actual) / actual
    r = -1.0 if correlation is None else correlation
    grade = next((g.grade for g in CLV_GRADES if error <= g.max_relative_error and r >= g.min_correlation), POOR)
    shown = "undefined" if correlation is None else f"{correlation:.3f}"
    return Grade(grade, (f"predicted {predicted:,.1f} holdout purchases against {actual:,.0f} actual "
                         f"({error:.1%} off), per-customer correlation {shown}"))
