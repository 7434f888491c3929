"""The quality grades at their thresholds."""

from __future__ import annotations

import pytest

from segmentation.grades import CHURN_GRADES, CLV_GRADES, churn_grade, clv_grade, lift_share


def pr_auc_for(share: float, churn_rate: float) -> float:
    """The PR AUC whose lift goes `share` of the way from random to perfect."""
    return churn_rate + share * (1.0 - churn_rate)


@pytest.mark.parametrize("churn_rate", [0.04, 0.3, 0.7])
def test_the_lift_share_runs_from_random_to_perfect(churn_rate):
    assert lift_share(churn_rate, churn_rate) == pytest.approx(0.0)
    assert lift_share(1.0, churn_rate) == pytest.approx(1.0)


@pytest.mark.parametrize("rule", CHURN_GRADES, ids=lambda r: r.grade)
def test_a_churn_grade_holds_exactly_at_its_thresholds(rule):
    rate = 0.2
    assert churn_grade(pr_auc_for(rule.min_lift_share + 1e-9, rate), rate, rule.max_calibration_error).grade == rule.grade
    assert churn_grade(pr_auc_for(rule.min_lift_share - 1e-6, rate), rate, 0.0).grade != rule.grade
    assert churn_grade(pr_auc_for(0.99, rate), rate, rule.max_calibration_error + 1e-6).grade != rule.grade


def test_churn_grades_from_excellent_to_poor():
    assert churn_grade(0.9, 0.2, 0.01).grade == "Excellent"
    assert churn_grade(0.9, 0.2, 0.05).grade == "Good"  # ranks very well, calibrated less well
    assert churn_grade(0.232, 0.04, 0.02).grade == "Fair"  # lift 5.8, 20% of the way to perfect
    assert churn_grade(0.25, 0.2, 0.0).grade == "Poor"
    assert churn_grade(0.9, 0.2, 0.2).grade == "Poor"  # badly calibrated
    assert churn_grade(0.9, 0.2, None).grade == "Excellent"  # no probability: the ranking alone
    assert churn_grade(0.0, 0.0, 0.0).grade == "Poor"


def test_the_reason_names_the_lift_and_the_calibration_error():
    reason = churn_grade(0.232, 0.04, 0.0123).reason
    assert "5.80 times the churn rate" in reason and "0.0123" in reason


@pytest.mark.parametrize("rule", CLV_GRADES, ids=lambda r: r.grade)
def test_a_clv_grade_holds_exactly_at_its_thresholds(rule):
    actual = 1000.0
    assert clv_grade(actual * (1 + rule.max_relative_error), actual, rule.min_correlation).grade == rule.grade
    assert clv_grade(actual * (1 - rule.max_relative_error), actual, rule.min_correlation).grade == rule.grade
    assert clv_grade(actual * (1 + rule.max_relative_error) + 1e-6, actual, 1.0).grade != rule.grade
    assert clv_grade(actual, actual, rule.min_correlation - 1e-9).grade != rule.grade


def test_clv_grades_from_excellent_to_poor():
    assert clv_grade(1653, 1882, 0.75).grade == "Good"  # 12% under
    assert clv_grade(1900, 1882, 0.75).grade == "Excellent"
    assert clv_grade(1900, 1882, 0.4).grade == "Fair"
    assert clv_grade(1000, 1882, 0.9).grade == "Poor"
    assert clv_grade(1900, 1882, None).grade == "Poor"  # no correlation to speak of
    assert clv_grade(5.0, 0, 0.9).grade == "Poor"
