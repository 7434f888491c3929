"""BG/NBD: the published CDNOW fit, lifetimes as an oracle, and a 60-digit reference for the
predictions where floating point is at risk (frequent buyers, a + b < 1, a = 1)."""

from __future__ import annotations

import importlib.util
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter
from scipy import optimize

from segmentation.clv.bgnbd import (
    BgNbdParams,
    bgnbd_log_likelihood,
    expected_purchases,
    expected_purchases_new,
    fit_bgnbd,
    probability_alive,
)
from segmentation.errors import DataQualityError, ModelFitError

# lifetimes.datasets imports pkg_resources, which setuptools >= 81 no longer ships, so the
# CSV files it would load are read directly.
LIFETIMES_DATA = Path(importlib.util.find_spec("lifetimes").origin).parent / "datasets"
CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


@pytest.fixture(scope="module")
def customers() -> pd.DataFrame:
    """CDNOW calibration summary: 2,357 customers, time in weeks, calibration ends 1997-09-30."""
    summary = pd.read_csv(LIFETIMES_DATA / "cdnow_customers_summary.csv")
    return summary.rename(columns={"frequency": "x", "recency": "t_x"})[["x", "t_x", "T"]]


@pytest.fixture(scope="module")
def triples(customers) -> pd.DataFrame:
    return customers.groupby(["x", "t_x", "T"]).size().rename("weight").reset_index()


@pytest.fixture(scope="module")
def fit(triples):
    return fit_bgnbd(triples)


@pytest.fixture(scope="module")
def oracle(customers) -> BetaGeoFitter:
    return BetaGeoFitter().fit(*histories(customers))


def histories(customers: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(customers[column].to_numpy() for column in ("x", "t_x", "T"))


def params_array(params: BgNbdParams) -> np.ndarray:
    return np.array(list(params.as_dict().values()))


def test_cdnow_fit_reproduces_the_published_estimates(fit, triples):
    assert {name: round(value, 3) for name, value in fit.params.as_dict().items()} == CDNOW.as_dict()
    assert round(fit.log_likelihood, 1) == -9582.4
    assert (fit.customers, fit.triples, fit.penalizer) == (2357, len(triples), 0.0)
    assert len(triples) < 2357


def test_weighted_triples_fit_like_one_row_per_customer(fit, customers):
    per_customer = fit_bgnbd(customers.assign(weight=1))

    np.testing.assert_allclose(params_array(per_customer.params), params_array(fit.params), rtol=1e-8)
    assert per_customer.log_likelihood == pytest.approx(fit.log_likelihood, abs=1e-6)
    assert per_customer.triples == 2357


def test_a_start_at_the_published_values_reaches_the_same_optimum(fit, triples):
    restarted = fit_bgnbd(triples, initial=CDNOW)

    np.testing.assert_allclose(params_array(restarted.params), params_array(fit.params), rtol=1e-5)
    assert restarted.iterations < fit.iterations


def test_log_likelihood_is_the_weighted_sum_over_customers(fit, customers):
    per_customer = bgnbd_log_likelihood(fit.params, customers["x"], customers["t_x"], customers["T"])

    assert per_customer.sum() == pytest.approx(fit.log_likelihood, rel=1e-12)


def test_fit_and_standard_errors_agree_with_lifetimes(fit, oracle):
    np.testing.assert_allclose(params_array(fit.params), oracle.params_.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(params_array(fit.standard_errors), oracle.standard_errors_.to_numpy(), rtol=1e-4)


def test_penalised_fit_uses_the_lifetimes_objective(triples, customers):
    oracle = BetaGeoFitter(penalizer_coef=0.01).fit(*histories(customers))

    penalised = fit_bgnbd(triples, penalizer=0.01)

    np.testing.assert_allclose(params_array(penalised.params), oracle.params_.to_numpy(), rtol=1e-6)
    assert penalised.params.a < 0.5  # the penalty visibly moves the estimate


def test_predictions_agree_with_lifetimes_formulas(fit, customers):
    oracle = BetaGeoFitter()
    oracle.params_ = pd.Series(fit.params.as_dict())
    x, t_x, T = histories(customers)

    np.testing.assert_allclose(
        probability_alive(fit.params, x, t_x, T), oracle.conditional_probability_alive(x, t_x, T), rtol=1e-12
    )
    for t in (39, 52):
        np.testing.assert_allclose(
            expected_purchases(fit.params, t, x, t_x, T),
            oracle.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T),
            rtol=1e-10,
        )
    horizons = np.array([1.0, 39.0, 52.0, 78.0])
    np.testing.assert_allclose(
        expected_purchases_new(fit.params, horizons),
        oracle.expected_number_of_purchases_up_to_time(horizons),
        rtol=1e-10,
    )


def test_probability_alive_by_hand():
    params = BgNbdParams(r=1.0, alpha=1.0, a=1.0, b=2.0)
    # x = 1, t_x = 1, T = 3: odds of having dropped out = a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x)
    # = 1/2 * 2^2 = 2, so P(alive) = 1/3. Without a repeat purchase a customer cannot have dropped out.
    np.testing.assert_allclose(probability_alive(params, [1, 0], [1, 0], [3, 3]), [1 / 3, 1.0], rtol=1e-15)


def hyp2f1_series(a: Decimal, b: Decimal, c: Decimal, z: Decimal) -> Decimal:
    """The Gauss series summed term by term until terms are below 1e-45 of the sum and shrinking."""
    term = total = Decimal(1)
    k = 0
    while True:
        term *= (a + k) * (b + k) / ((c + k) * (k + 1)) * z
        total += term
        k += 1
        shrinking = abs((a + k) * (b + k) * z) < abs((c + k) * (k + 1))
        if shrinking and abs(term) < Decimal("1e-45") * abs(total):
            return total


def reference_expected_purchases(params: dict[str, Decimal], t, x: int, t_x, T) -> float:
    """FHL 2005 eq. 10 exactly as printed (untransformed 2F1) in 60-digit decimal arithmetic."""
    with localcontext() as context:
        context.prec, context.Emax, context.Emin = 60, 10**9, -(10**9)
        r, alpha, a, b = (params[name] for name in ("r", "alpha", "a", "b"))
        t, t_x, T = (Decimal(repr(float(value))) for value in (t, t_x, T))
        survival = (alpha + T) / (alpha + T + t)
        hypergeometric = hyp2f1_series(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
        numerator = (a + b + x - 1) / (a - 1) * (1 - survival ** (r + x) * hypergeometric)
        odds_dropped = a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x) if x > 0 else 0
        return float(numerator / (1 + odds_dropped))


# x, t_x, T: seen once, a new customer, t_x = T, a customer gone quiet, frequent buyers, a long history.
HISTORIES = [(0, 0, 38.86), (0, 0, 0), (1, 1.71, 38.86), (7, 38.86, 38.86), (29, 38.43, 38.86),
             (500, 38.0, 40.0), (5000, 38.86, 38.86), (3, 10.0, 5000.0)]  # fmt: skip
# name: (r alpha a b, offsets of the reference from them, relative tolerance). The reference
# cannot be evaluated at a removable singularity, so it is taken 1e-25 away; near one the
# predictions interpolate, which costs some accuracy.
REFERENCE_CASES = {
    "cdnow": ("0.243 4.414 0.793 2.426", {}, 1e-10),
    "a + b < 1": ("0.2 4 0.3 0.5", {}, 1e-10),
    "small a and b": ("0.5 1 0.05 0.1", {}, 1e-10),
    "a = 1": ("0.243 4.414 1 2.426", {"a": "1e-25"}, 1e-7),
    "a + b = 1": ("0.1 0.5 0.6 0.4", {"b": "1e-25"}, 1e-9),
    "r - a whole": ("1.5 2 0.5 3", {}, 1e-9),
}


@pytest.mark.parametrize("case", REFERENCE_CASES)
@pytest.mark.parametrize("t", [52.0, 400.0])
def test_expected_purchases_match_a_high_precision_reference(case, t):
    values, offsets, tolerance = REFERENCE_CASES[case]
    names = ("r", "alpha", "a", "b")
    exact = {name: Decimal(value) + Decimal(offsets.get(name, 0)) for name, value in zip(names, values.split())}
    params = BgNbdParams(*map(float, values.split()))
    x, t_x, T = map(np.array, zip(*HISTORIES))
    expected = [reference_expected_purchases(exact, t, *history) for history in HISTORIES]

    np.testing.assert_allclose(expected_purchases(params, t, x, t_x, T), expected, rtol=tolerance)
    np.testing.assert_allclose(
        expected_purchases_new(params, t), reference_expected_purchases(exact, t, 0, 0, 0), rtol=tolerance
    )


def test_predictions_stay_finite_at_the_extremes():
    x = np.array([0, 0, 1, 5000, 5000, 500, 3])
    t_x = np.array([0, 0, 1e-3, 38.86, 0.5, 1e5, 1e5])
    T = np.array([0, 1e5, 1e5, 38.86, 1e5, 1e5, 1e5])
    for params in (CDNOW, BgNbdParams(0.2, 4.0, 0.3, 0.5), BgNbdParams(20.0, 0.01, 30.0, 0.01)):
        alive = probability_alive(params, x, t_x, T)
        purchases = expected_purchases(params, [1e-3, 52, 1e6, 52, 52, 1e6, 52], x, t_x, T)
        assert np.all(np.isfinite(bgnbd_log_likelihood(params, x, t_x, T)))
        assert np.all((alive >= 0) & (alive <= 1)) and np.all(np.isfinite(purchases) & (purchases >= 0))
    # A frequent buyer silent for a long time is gone, not NaN.
    assert probability_alive(CDNOW, 5000, 0.5, 1e5)[()] == 0.0


def test_non_convergence_raises_with_advice(triples):
    with pytest.raises(ModelFitError, match=r"did not converge after 1 iterations.*penalizer such as 0\.001"):
        fit_bgnbd(triples, max_iterations=1)


def test_data_that_cannot_identify_the_parameters_raise_with_advice():
    nobody_returned = pd.DataFrame({"x": [0, 0], "t_x": [0.0, 0.0], "T": [10.0, 20.0], "weight": [5, 3]})

    with pytest.raises(ModelFitError, match="penalizer such as 0.001"):
        fit_bgnbd(nobody_returned)


def test_precision_loss_at_the_optimum_is_not_a_failure(triples, fit, monkeypatch):
    """BFGS reports "precision loss" when asked for more than floating point gives."""
    minimize = optimize.minimize

    def too_strict(*args, **kwargs):
        return minimize(*args, **{**kwargs, "options": {**kwargs["options"], "gtol": 1e-30}})

    monkeypatch.setattr(optimize, "minimize", too_strict)

    np.testing.assert_allclose(params_array(fit_bgnbd(triples).params), params_array(fit.params), rtol=1e-5)


GOOD = {"x": [0, 2, 1], "t_x": [0.0, 5.0, 3.0], "T": [10.0, 10.0, 8.0], "weight": [4, 1, 2]}


@pytest.mark.parametrize(
    "change, column",
    [
        ({"x": [0, -1, 1]}, "x"),
        ({"x": [0, 1.5, 1]}, "x"),
        ({"t_x": [0.0, 12.0, 3.0]}, "t_x"),
        ({"t_x": [0.0, None, 3.0]}, "t_x"),
        ({"t_x": [1.0, 5.0, 3.0]}, "t_x"),
        ({"t_x": [0.0, 0.0, 3.0]}, "t_x"),
        ({"T": [10.0, 10.0, -8.0]}, "T"),
        ({"weight": [4, 0, 2]}, "weight"),
        ({"weight": ["4", "one", "2"]}, "weight"),
    ],
)
def test_bad_triples_name_the_column(change, column):
    with pytest.raises(DataQualityError, match=f"column {column}:"):
        fit_bgnbd(pd.DataFrame({**GOOD, **change}))


def test_missing_columns_are_named():
    with pytest.raises(DataQualityError, match="missing column.*weight"):
        fit_bgnbd(pd.DataFrame(GOOD).drop(columns="weight"))


def test_parameters_and_penalizer_must_be_valid(triples):
    with pytest.raises(ValueError, match="BgNbdParams.alpha"):
        BgNbdParams(r=0.2, alpha=-1.0, a=0.8, b=2.4)
    with pytest.raises(ValueError, match="penalizer"):
        fit_bgnbd(triples, penalizer=-0.1)
