"""The uplift estimator on known counts: intervals worked out by hand, and Welch's against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from segmentation.treatments.uplift import (
    METRICS,
    GroupOutcome,
    Mean,
    Proportion,
    mean_uplift,
    proportion_uplift,
    treatment_uplifts,
    uplifts_by_treatment,
    welch_degrees_of_freedom,
)
from tests.conftest import base_section

Z_975 = 1.959964  # the 97.5% normal quantile: a 95% two-sided interval


def test_two_proportion_interval_by_hand():
    # Treated: 300 of 1000 repurchase (0.30); control: 120 of 500 (0.24). Uplift 0.06.
    # SE = sqrt(0.30 * 0.70 / 1000 + 0.24 * 0.76 / 500) = sqrt(0.00021 + 0.0003648) = sqrt(0.0005748) = 0.0239750
    # half width = 1.959964 * 0.0239750 = 0.0469901, interval 0.06 -/+ 0.0469901 = [0.0130099, 0.1069901]
    uplift = proportion_uplift("repurchase_rate", Proportion(1000, 300), Proportion(500, 120), 100, 0.95)
    assert (uplift.treated_value, uplift.control_value) == (0.3, 0.24)
    assert uplift.uplift == pytest.approx(0.06)
    assert math.sqrt(0.00021 + 0.0003648) == pytest.approx(0.0239750, abs=1e-7)
    assert Z_975 * 0.0239750 == pytest.approx(0.0469901, abs=1e-6)
    assert (uplift.ci_low, uplift.ci_high) == (pytest.approx(0.0130099, abs=1e-6), pytest.approx(0.1069901, abs=1e-6))
    assert uplift.significant and not uplift.too_small
    assert (uplift.treated_customers, uplift.control_customers) == (1000, 500)


def test_a_wider_confidence_widens_the_interval_until_it_covers_zero():
    # 99.9%: z = 3.290527, half width = 3.290527 * 0.0239750 = 0.0788904 > 0.06.
    uplift = proportion_uplift("repurchase_rate", Proportion(1000, 300), Proportion(500, 120), 100, 0.999)
    assert uplift.ci_low == pytest.approx(0.06 - 0.0788904, abs=1e-6) and uplift.ci_low < 0
    assert not uplift.significant


def test_sparse_or_small_groups_are_too_small_to_tell():
    # 4 of 1000 treated repurchase: n * p = 4 < 5, the normal interval is not to be trusted.
    few_successes = proportion_uplift("repurchase_rate", Proportion(1000, 4), Proportion(1000, 40), 100, 0.95)
    assert few_successes.too_small
    # ... nor with 996 of 1000: n * (1 - p) = 4.
    few_failures = proportion_uplift("churn_rate", Proportion(1000, 996), Proportion(1000, 960), 100, 0.95)
    assert few_failures.too_small
    # 99 control customers against a minimum of 100.
    small_group = proportion_uplift("repurchase_rate", Proportion(1000, 300), Proportion(99, 30), 100, 0.95)
    assert small_group.too_small and not proportion_uplift(
        "repurchase_rate", Proportion(1000, 300), Proportion(100, 30), 100, 0.95
    ).too_small
    empty = proportion_uplift("repurchase_rate", Proportion(1000, 300), Proportion(0, 0), 100, 0.95)
    assert empty.too_small and not empty.significant and math.isnan(empty.ci_low) and math.isnan(empty.control_value)


def test_welch_interval_by_hand():
    # Treated: 50 customers, mean 2.0 orders, variance 4.0; control: 40, mean 1.5, variance 1.0.
    # s1 = 4.0 / 50 = 0.08, s0 = 1.0 / 40 = 0.025, SE = sqrt(0.105) = 0.3240370
    # df = 0.105^2 / (0.08^2 / 49 + 0.025^2 / 39) = 0.011025 / (0.000130612 + 0.0000160256) = 75.185
    # t(0.975, 75.185) = 1.992022, half width = 1.992022 * 0.3240370 = 0.6454888
    treated, control = Mean(50, 2.0, 4.0), Mean(40, 1.5, 1.0)
    assert welch_degrees_of_freedom(treated, control) == pytest.approx(0.011025 / (0.08**2 / 49 + 0.025**2 / 39))
    assert welch_degrees_of_freedom(treated, control) == pytest.approx(75.185, abs=1e-3)
    assert stats.t.ppf(0.975, 75.185) == pytest.approx(1.992022, abs=1e-6)
    uplift = mean_uplift("orders_per_customer", treated, control, 30, 0.95)
    assert uplift.uplift == pytest.approx(0.5)
    assert (uplift.ci_low, uplift.ci_high) == (pytest.approx(0.5 - 0.6454888, abs=1e-6), pytest.approx(0.5 + 0.6454888, abs=1e-6))
    assert not uplift.significant and not uplift.too_small
    assert mean_uplift("orders_per_customer", treated, control, 41, 0.95).too_small


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_interval_matches_scipy_on_raw_samples(seed):
    rng = np.random.default_rng(seed)
    treated, control = rng.gamma(2.0, 30.0, size=40), rng.normal(45.0, 10.0, size=25)
    summary = [Mean(len(x), float(x.mean()), float(x.var(ddof=1))) for x in (treated, control)]
    uplift = mean_uplift("net_revenue_per_customer", *summary, 2, 0.95)
    expected = stats.ttest_ind(treated, control, equal_var=False).confidence_interval(0.95)
    assert uplift.uplift == pytest.approx(treated.mean() - control.mean())
    assert (uplift.ci_low, uplift.ci_high) == (pytest.approx(expected.low), pytest.approx(expected.high))


def test_constant_groups_give_an_interval_without_width_and_one_customer_none():
    same = mean_uplift("orders_per_customer", Mean(200, 0.0, 0.0), Mean(200, 0.0, 0.0), 100, 0.95)
    assert (same.uplift, same.ci_low, same.ci_high, same.significant) == (0.0, 0.0, 0.0, False)
    single = mean_uplift("orders_per_customer", Mean(200, 1.0, 2.0), Mean(1, 3.0, math.nan), 100, 0.95)
    assert single.too_small and not single.significant and math.isnan(single.ci_high) and single.control_value == 3.0


def test_a_treatment_gets_the_four_metrics_and_churn_mirrors_repurchase():
    settings = base_section("outcomes", min_group_customers=100, confidence=0.95)
    treated = GroupOutcome(1000, 300, 0.5, 1.2, 40.0, 900.0)
    control = GroupOutcome(500, 120, 0.4, 1.0, 35.0, 800.0)
    uplifts = treatment_uplifts(treated, control, settings)
    assert tuple(u.metric for u in uplifts) == METRICS
    repurchase, churn = uplifts[0], uplifts[1]
    assert (churn.treated_value, churn.control_value) == (pytest.approx(0.7), pytest.approx(0.76))
    assert churn.uplift == pytest.approx(-repurchase.uplift)
    assert (churn.ci_low, churn.ci_high) == (pytest.approx(-repurchase.ci_high), pytest.approx(-repurchase.ci_low))
    assert uplifts[2].uplift == pytest.approx(0.1) and uplifts[3].uplift == pytest.approx(5.0)
    # A treatment without a control group (holdout share 0) is not measured.
    measured = uplifts_by_treatment(
        {("win_back", "treated"): treated, ("win_back", "control"): control, ("newsletter", "treated"): treated}, settings
    )
    assert list(measured) == ["win_back"] and measured["win_back"] == uplifts
