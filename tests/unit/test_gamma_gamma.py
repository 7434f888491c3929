"""Gamma-Gamma and discounted CLV on the CDNOW sample, with lifetimes as an oracle."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter

from segmentation.clv.bgnbd import BgNbdParams, expected_purchases
from segmentation.clv.gamma_gamma import (
    GammaGammaParams,
    discounted_clv,
    expected_average_value,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)
from segmentation.errors import DataQualityError, ModelFitError

# lifetimes.datasets imports pkg_resources, which setuptools >= 81 no longer ships, so the
# CSV files it would load are read directly.
LIFETIMES_DATA = Path(importlib.util.find_spec("lifetimes").origin).parent / "datasets"
# lifetimes' month for weekly data (its customer_lifetime_value with freq="W").
WEEKS_PER_MONTH = 4.345


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    """CDNOW calibration summary with m, the mean value of each customer's repeat purchases."""
    summary = pd.read_csv(LIFETIMES_DATA / "cdnow_customers_summary_with_transactions.csv")
    return summary.rename(columns={"zbar": "m"})[["x", "t_x", "T", "m"]]


@pytest.fixture(scope="module")
def repeat(customers) -> pd.DataFrame:
    return customers[customers["x"] > 0]


@pytest.fixture(scope="module")
def fit(repeat):
    return fit_gamma_gamma(repeat.assign(weight=1))


@pytest.fixture(scope="module")
def oracle(repeat) -> GammaGammaFitter:
    return GammaGammaFitter().fit(repeat["x"].to_numpy(), repeat["m"].to_numpy())


def params_array(params: GammaGammaParams) -> np.ndarray:
    return np.array(list(params.as_dict().values()))


def test_cdnow_fit_agrees_with_lifetimes_and_its_documentation(fit, oracle, repeat):
    np.testing.assert_allclose(params_array(fit.params), oracle.params_.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(params_array(fit.standard_errors), oracle.standard_errors_.to_numpy(), rtol=1e-4)
    assert fit.log_likelihood == pytest.approx(-oracle._negative_log_likelihood_ * len(repeat), rel=1e-9)
    # lifetimes' documentation prints p: 6.25, q: 3.74, v: 15.44 (rounding 15.4477...).
    np.testing.assert_allclose(params_array(fit.params), [6.25, 3.74, 15.44], atol=0.01)
    assert (fit.customers, fit.groups) == (946, 946)


def test_weighted_groups_fit_like_one_row_per_customer(fit, repeat):
    groups = repeat.groupby(["x", "m"]).size().rename("weight").reset_index()

    grouped = fit_gamma_gamma(groups)

    assert grouped.groups < grouped.customers == 946
    np.testing.assert_allclose(params_array(grouped.params), params_array(fit.params), rtol=1e-8)
    assert grouped.log_likelihood == pytest.approx(fit.log_likelihood, abs=1e-6)


def test_log_likelihood_is_finite_for_large_spend_and_many_purchases():
    values = gamma_gamma_log_likelihood(GammaGammaParams(6.25, 3.74, 15.44), [1, 5000, 3], [1e-3, 50.0, 1e9])

    assert np.all(np.isfinite(values))


def test_expected_average_value_agrees_with_lifetimes(fit, oracle, customers):
    oracle.params_ = pd.Series(fit.params.as_dict())

    np.testing.assert_allclose(
        expected_average_value(fit.params, customers["x"], customers["m"]),
        oracle.conditional_expected_average_profit(customers["x"], customers["m"]),
        rtol=1e-12,
    )


def test_expected_average_value_by_hand():
    params = GammaGammaParams(p=1.0, q=2.0, v=1.0)
    # p (v + x m) / (p x + q - 1): one purchase of 2 gives 3 / 2; no purchase gives the
    # population mean p v / (q - 1) = 1 whatever m says.
    np.testing.assert_allclose(expected_average_value(params, [1, 0, 0], [2.0, np.nan, 7.0]), [1.5, 1.0, 1.0])
    # Without repeat purchases and q <= 1 the mean spend does not exist.
    assert expected_average_value(GammaGammaParams(1.0, 0.9, 1.0), 0, 0)[()] == np.inf


def test_discounted_clv_agrees_with_lifetimes(customers, fit):
    x, t_x, T, m = (customers[column] for column in ("x", "t_x", "T", "m"))
    bgnbd = BetaGeoFitter().fit(x.to_numpy(), t_x.to_numpy(), T.to_numpy())
    gamma_gamma = GammaGammaFitter()
    gamma_gamma.params_ = pd.Series(fit.params.as_dict())

    expected = gamma_gamma.customer_lifetime_value(bgnbd, x, t_x, T, m, time=12, discount_rate=0.01, freq="W")
    clv = discounted_clv(
        BgNbdParams(**bgnbd.params_.to_dict()),
        fit.params,
        x,
        t_x,
        T,
        m,
        months=12,
        monthly_discount_rate=0.01,
        periods_per_month=WEEKS_PER_MONTH,
    )

    np.testing.assert_allclose(clv, expected.to_numpy(), rtol=1e-10)
    assert np.all(clv > 0)


def test_discounted_clv_of_one_month_by_hand():
    bgnbd, gamma_gamma = BgNbdParams(0.243, 4.414, 0.793, 2.426), GammaGammaParams(1.0, 2.0, 1.0)

    clv = discounted_clv(
        bgnbd, gamma_gamma, 1, 1.0, 3.0, 2.0, months=1, monthly_discount_rate=0.5, periods_per_month=4
    )

    # 1.5 per purchase (as by hand above) times the purchases in 4 periods, discounted by 1 + 0.5.
    assert clv == pytest.approx(expected_purchases(bgnbd, 4, 1, 1.0, 3.0), rel=1e-12)


def test_non_convergence_raises_with_advice(repeat):
    with pytest.raises(ModelFitError, match=r"did not converge after 1 iterations.*penalizer such as 0\.001"):
        fit_gamma_gamma(repeat.assign(weight=1), max_iterations=1)


GOOD = {"x": [1, 2, 3], "m": [10.0, 20.0, 15.0], "weight": [3, 1, 2]}


@pytest.mark.parametrize(
    "change, column",
    [
        ({"x": [0, 2, 3]}, "x"),
        ({"x": [1, 2.5, 3]}, "x"),
        ({"m": [10.0, 0.0, 15.0]}, "m"),
        ({"m": [10.0, float("inf"), 15.0]}, "m"),
        ({"weight": [3, -1, 2]}, "weight"),
    ],
)
def test_bad_groups_name_the_column(change, column):
    with pytest.raises(DataQualityError, match=f"column {column}:"):
        fit_gamma_gamma(pd.DataFrame({**GOOD, **change}))


def test_missing_columns_are_named():
    with pytest.raises(DataQualityError, match="missing column.*m"):
        fit_gamma_gamma(pd.DataFrame(GOOD).drop(columns="m"))
