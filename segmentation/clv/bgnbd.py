"""BG/NBD (Fader, Hardie & Lee 2005): how many purchases a customer will make, and whether
they are still a customer at all.

A customer is summarised by x (repeat purchases), t_x (time of the last purchase since the
first) and T (time from the first purchase to the end of the calibration period), all in one
time unit. The likelihood depends on nothing else, so the fit takes distinct (x, t_x, T)
triples weighted by how many customers share them: its cost depends on the number of
distinct triples, not on the number of customers.

Predictions take and return numpy arrays so that Spark can call them from pandas UDFs.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

from segmentation.clv.fitting import (
    LocalRows,
    PositiveParams,
    WeightedRows,
    arrays,
    check_penalizer,
    floats,
    mean_negative_log_likelihood,
    minimise_penalised,
    reject_rows,
    weighted_columns,
)
from segmentation.errors import DataQualityError

TRIPLE_COLUMNS = ("x", "t_x", "T", "weight")
_FIT_ADVICE = (
    "Try a penalizer such as 0.001 (fit_bgnbd(..., penalizer=0.001)), a coarser time unit "
    "(weeks rather than days), or check the calibration period and the triples: are there "
    "enough customers with repeat purchases, and are t_x and T in the same unit?"
)
# Within this distance of a parameter value where eq. 10 cannot be evaluated (see
# _unevaluable_points), predictions interpolate between values twice as far on either side.
_SINGULARITY_WIDTH = 1e-6


@dataclass(frozen=True)
class BgNbdParams(PositiveParams):
    """r and alpha shape the Gamma distribution of purchase rates (alpha in the data's time
    unit); a and b the Beta distribution of the probability to drop out after a purchase."""

    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class BgNbdFit:
    """A fitted BG/NBD model with what a reviewer needs to judge the fit.

    `log_likelihood` is the weighted sum over customers, without the penalty, in the data's
    time unit (comparable with published values). `standard_errors` come from the inverse
    Hessian of the minimised objective (the negative log-likelihood, plus the penalty when
    `penalizer` > 0) in the original parameter space.
    """

    params: BgNbdParams
    log_likelihood: float
    standard_errors: BgNbdParams
    customers: float
    triples: int
    iterations: int
    penalizer: float


def bgnbd_log_likelihood(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """Log-likelihood of each customer's (x, t_x, T), FHL 2005 section 7, in log space:
    A1 + A2 + log(exp(A3) + [x > 0] exp(A4)) with the sum taken by logaddexp, since the
    powers behind A3 and A4 overflow for frequent buyers and long histories."""
    head, still_active, dropped_out = _likelihood_terms(*floats(params), *arrays(x, t_x, T))
    return head + np.logaddexp(still_active, dropped_out)


def fit_bgnbd(
    triples: pd.DataFrame,
    *,
    penalizer: float = 0.0,
    initial: BgNbdParams | None = None,
    max_iterations: int = 1000,
) -> BgNbdFit:
    """Fit BG/NBD by maximum likelihood on weighted (x, t_x, T) triples.

    The objective is lifetimes' BetaGeoFitter's, so fits are comparable: the weighted mean
    negative log-likelihood plus `penalizer` times the sum of squared parameters, minimised
    over log-parameters, with time rescaled so that the longest T is 1 (which also makes the
    penalty independent of the time unit). `initial` (in the data's time unit) replaces the
    default start, lifetimes' exp(0.1) for every rescaled parameter.
    """
    x, t_x, T, weight = _bgnbd_columns(triples)
    rows = LocalRows({"x": x, "t_x": t_x, "T": T}, weight)
    return fit_bgnbd_rows(rows, penalizer=penalizer, initial=initial, max_iterations=max_iterations)


def fit_bgnbd_rows(
    rows: WeightedRows,
    *,
    penalizer: float = 0.0,
    initial: BgNbdParams | None = None,
    max_iterations: int = 1000,
) -> BgNbdFit:
    """`fit_bgnbd` on triples wherever they are held (columns x, t_x, T; already checked)."""
    check_penalizer(penalizer)
    scale = 1.0 / rows.maximum("T")
    rescale = np.array([1, scale, 1, 1])  # alpha is a time
    start = np.full(4, np.exp(0.1)) if initial is None else np.array(floats(initial)) * rescale
    optimum = minimise_penalised(
        mean_negative_log_likelihood(rows, functools.partial(_weighted_sums, time_scale=scale)),
        start,
        total_weight=rows.total_weight,
        penalizer=penalizer,
        max_iterations=max_iterations,
        failure=f"BG/NBD fit on {rows.count} triples",
        advice=_FIT_ADVICE,
    )
    params = BgNbdParams(*(optimum.params / rescale).tolist())
    log_likelihood, _ = rows.sums(functools.partial(_weighted_sums, time_scale=1.0), np.array(floats(params)))
    return BgNbdFit(
        params=params,
        log_likelihood=float(log_likelihood),
        standard_errors=BgNbdParams(*(optimum.standard_errors / rescale).tolist()),
        customers=rows.total_weight,
        triples=rows.count,
        iterations=optimum.iterations,
        penalizer=penalizer,
    )


def _weighted_sums(params: np.ndarray, columns, weight: np.ndarray, *, time_scale: float) -> tuple[float, np.ndarray]:
    """Sum of w * log-likelihood and of w * gradient over some triples, with t_x and T in
    units of 1 / time_scale (the fit works with the longest T rescaled to 1)."""
    x, t_x, T = columns["x"], columns["t_x"] * time_scale, columns["T"] * time_scale
    head, still_active, dropped_out = _likelihood_terms(*params, x, t_x, T)
    tail = np.logaddexp(still_active, dropped_out)
    gradient = _log_likelihood_gradient(*params, x, t_x, T, dropped_out - tail)
    return float(weight @ (head + tail)), gradient @ weight


def probability_alive(params: BgNbdParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> np.ndarray:
    """Probability that each customer has not dropped out by T (Fader, Hardie & Lee, note 021).

    Computed as a logistic function of the log-odds of having dropped out, so very frequent
    buyers with a long silence get 0, not NaN. A customer without a repeat purchase cannot
    have dropped out yet (drop-out happens after a purchase): 1.
    """
    r, alpha, a, b = floats(params)
    x, t_x, T = arrays(x, t_x, T)
    log_odds_dropped = np.log(a) - np.log(b + np.maximum(x, 1) - 1) + (r + x) * np.log1p((T - t_x) / (alpha + t_x))
    return special.expit(-np.where(x > 0, log_odds_dropped, -np.inf))


def expected_purchases(
    params: BgNbdParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> np.ndarray:
    """Expected purchases in the next t periods of customers with history (x, t_x, T), FHL
    2005 eq. 10: the probability to be alive times the purchases expected while alive."""
    x, t_x, T = arrays(x, t_x, T)
    return probability_alive(params, x, t_x, T) * _purchases_while_alive(params, np.asarray(t, float), x, T)


def expected_purchases_new(params: BgNbdParams, t: ArrayLike) -> np.ndarray:
    """Expected repeat purchases in the first t periods of a new customer, FHL 2005 eq. 9:
    eq. 10 for a customer seen at their first purchase (x = 0, T = 0), who is alive."""
    t = np.asarray(t, dtype=float)
    return _purchases_while_alive(params, t, np.zeros_like(t), np.zeros_like(t))


def _purchases_while_alive(params: BgNbdParams, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Purchases expected in (T, T + t] from a customer alive at T: the numerator of eq. 10.

    Eq. 10 needs 2F1(r + x, b + x; a + b + x - 1; z), z = t / (alpha + T + t), which grows
    like (1 - z)^-x and overflows for frequent buyers. Euler's transformation gives
    (1 - z)^(r + x) 2F1(...) = (1 - z)^(a - 1) 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z),
    whose value stays moderate (x only enters the third parameter) with z in [0, 1).
    """
    for name, point in _unevaluable_points(params, x):
        if abs(getattr(params, name) - point) < _SINGULARITY_WIDTH:
            return _interpolate_across(params, name, point, t, x, T)
    r, alpha, a, b = floats(params)
    c = a + b + x - 1
    log_survival = -np.log1p(t / (alpha + T))  # log(1 - z)
    hypergeometric = special.hyp2f1(a + b - 1 - r, a - 1, c, t / (alpha + T + t))
    # 1 - (1 - z)^(a - 1) * 2F1, written so both terms are small (and accurate) when t is.
    shortfall = -np.expm1((a - 1) * log_survival) - np.exp((a - 1) * log_survival) * (hypergeometric - 1)
    return c / (a - 1) * shortfall


def _unevaluable_points(params: BgNbdParams, x: np.ndarray) -> list[tuple[str, float]]:
    """Parameter values where the expectation is smooth but its formula cannot be evaluated:
    a = 1 (it divides by a - 1), a + b = 1 when some x = 0 (the third parameter of 2F1 is 0)
    and r - a a whole number (scipy's hyp2f1 returns NaN for z > 0.9 when its c - a - b is
    a whole number; it is accurate right next to one)."""
    points = [("a", 1.0), ("r", params.a + round(params.r - params.a))]
    if np.any(x == 0):
        points.append(("b", 1.0 - params.a))
    # Interpolation needs positive parameters on both sides.
    return [(name, point) for name, point in points if point > 4 * _SINGULARITY_WIDTH]


def _interpolate_across(params: BgNbdParams, name: str, point: float, t, x, T) -> np.ndarray:
    """Linear interpolation in parameter `name` between evaluable values either side of `point`."""
    low, high = point - 2 * _SINGULARITY_WIDTH, point + 2 * _SINGULARITY_WIDTH
    below = _purchases_while_alive(dataclasses.replace(params, **{name: low}), t, x, T)
    above = _purchases_while_alive(dataclasses.replace(params, **{name: high}), t, x, T)
    return below + (getattr(params, name) - low) / (high - low) * (above - below)


def _likelihood_terms(r, alpha, a, b, x, t_x, T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A1 + A2, A3 (alive at T) and A4 (dropped out after the last purchase; -inf for x = 0)."""
    head = (
        special.gammaln(r + x)
        - special.gammaln(r)
        + r * np.log(alpha)
        + special.gammaln(a + b)
        + special.gammaln(b + x)
        - special.gammaln(b)
        - special.gammaln(a + b + x)
    )
    still_active = -(r + x) * np.log(alpha + T)
    dropped_out = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x)
    return head, still_active, np.where(x > 0, dropped_out, -np.inf)


def _log_likelihood_gradient(r, alpha, a, b, x, t_x, T, log_share_dropped) -> np.ndarray:
    """Derivatives of each row's log-likelihood by (r, alpha, a, b), shape (4, rows).

    `log_share_dropped` is log(exp(A4) / (exp(A3) + exp(A4))), the weight of the drop-out
    branch in each row's likelihood.
    """
    dropped = np.exp(log_share_dropped)
    digamma = special.digamma
    return np.array(
        [
            digamma(r + x) - digamma(r) + np.log(alpha) - np.log(alpha + T)
            + dropped * (np.log(alpha + T) - np.log(alpha + t_x)),
            r / alpha - (r + x) * ((1 - dropped) / (alpha + T) + dropped / (alpha + t_x)),
            digamma(a + b) - digamma(a + b + x) + dropped / a,
            digamma(a + b) + digamma(b + x) - digamma(b) - digamma(a + b + x)
            - dropped / (b + np.maximum(x, 1) - 1),
        ]
    )


def _bgnbd_columns(triples: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """x, t_x, T and weight as float arrays, after the checks that make the likelihood valid."""
    what = "BG/NBD triples"
    x, t_x, T, weight = weighted_columns(triples, TRIPLE_COLUMNS, what)
    reject_rows(what, "x", (x < 0) | (x != np.floor(x)), "not a whole number >= 0 (repeat purchases)")
    reject_rows(what, "T", T < 0, "negative")
    reject_rows(what, "t_x", t_x < 0, "negative")
    reject_rows(what, "t_x", t_x > T, "greater than T")
    # x counts purchase periods after the first, so a repeat purchase comes strictly later;
    # either rule failing means recency and frequency were computed inconsistently upstream.
    reject_rows(what, "t_x", (x == 0) & (t_x != 0), "not 0 although x = 0 (no repeat purchase)")
    reject_rows(what, "t_x", (x > 0) & (t_x == 0), "0 although x > 0 (repeat purchases come after the first)")
    if T.max() == 0:
        raise DataQualityError(f"{what}: column T: every row is 0, so no customer was observed for any time")
    return x, t_x, T, weight
