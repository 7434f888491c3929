"""Gamma-Gamma (Fader & Hardie, note 025): what a customer spends per repeat purchase, and
customer lifetime value as that spend times BG/NBD's expected purchases, discounted monthly.

Each customer's spend per purchase varies around their own mean, which varies across
customers; the model shrinks a customer's observed average m towards the population mean,
less so the more repeat purchases x it rests on. It is fitted on customers with x >= 1, as
(x, m) groups weighted by how many customers share them, like the BG/NBD triples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

from segmentation.clv.bgnbd import BgNbdParams, expected_purchases
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

GROUP_COLUMNS = ("x", "m", "weight")
_FIT_ADVICE = (
    "Try a penalizer such as 0.001 (fit_gamma_gamma(..., penalizer=0.001)), or check the spend "
    "values: one currency unit, no extreme outliers, and m the mean of repeat purchases only."
)


@dataclass(frozen=True)
class GammaGammaParams(PositiveParams):
    """p is the shape of the spend per purchase around a customer's mean; q and v are the
    shape and scale (in currency) of the distribution of that mean's inverse across customers."""

    p: float
    q: float
    v: float


@dataclass(frozen=True)
class GammaGammaFit:
    """A fitted Gamma-Gamma model; the fields mean what they mean in `BgNbdFit`."""

    params: GammaGammaParams
    log_likelihood: float
    standard_errors: GammaGammaParams
    customers: float
    groups: int
    iterations: int
    penalizer: float


def gamma_gamma_log_likelihood(params: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> np.ndarray:
    """Log-density of each customer's average spend m over x repeat purchases (note 025,
    eq. 1a). The powers are written as log1p of ratios, so that neither large spends nor
    many purchases overflow or cancel."""
    return _log_likelihood(*floats(params), *arrays(x, m))


def fit_gamma_gamma(
    groups: pd.DataFrame,
    *,
    penalizer: float = 0.0,
    initial: GammaGammaParams | None = None,
    max_iterations: int = 1000,
) -> GammaGammaFit:
    """Fit Gamma-Gamma by maximum likelihood on weighted (x, m) groups of repeat customers.

    The objective is lifetimes' GammaGammaFitter's: the weighted mean negative log-likelihood
    plus `penalizer` times the sum of squared parameters (v in the data's currency unit),
    minimised over log-parameters from exp(0.1) each unless `initial` is given.
    """
    what = "Gamma-Gamma groups"
    x, m, weight = weighted_columns(groups, GROUP_COLUMNS, what)
    reject_rows(what, "x", (x < 1) | (x != np.floor(x)), "not a whole number >= 1 (repeat purchases)")
    reject_rows(what, "m", m <= 0, "not positive (mean spend of repeat purchases)")
    return fit_gamma_gamma_rows(
        LocalRows({"x": x, "m": m}, weight), penalizer=penalizer, initial=initial, max_iterations=max_iterations
    )


def fit_gamma_gamma_rows(
    rows: WeightedRows,
    *,
    penalizer: float = 0.0,
    initial: GammaGammaParams | None = None,
    max_iterations: int = 1000,
) -> GammaGammaFit:
    """`fit_gamma_gamma` on groups wherever they are held (columns x, m; already checked)."""
    check_penalizer(penalizer)
    optimum = minimise_penalised(
        mean_negative_log_likelihood(rows, _weighted_sums),
        np.full(3, np.exp(0.1)) if initial is None else np.array(floats(initial)),
        total_weight=rows.total_weight,
        penalizer=penalizer,
        max_iterations=max_iterations,
        failure=f"Gamma-Gamma fit on {rows.count} groups",
        advice=_FIT_ADVICE,
    )
    params = GammaGammaParams(*optimum.params.tolist())
    log_likelihood, _ = rows.sums(_weighted_sums, optimum.params)
    return GammaGammaFit(
        params=params,
        log_likelihood=float(log_likelihood),
        standard_errors=GammaGammaParams(*optimum.standard_errors.tolist()),
        customers=rows.total_weight,
        groups=rows.count,
        iterations=optimum.iterations,
        penalizer=penalizer,
    )


def _weighted_sums(params: np.ndarray, columns, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Sum of w * log-likelihood and of w * gradient over some groups."""
    x, m = columns["x"], columns["m"]
    return float(weight @ _log_likelihood(*params, x, m)), _log_likelihood_gradient(*params, x, m) @ weight


def expected_average_value(params: GammaGammaParams, x: ArrayLike, m: ArrayLike) -> np.ndarray:
    """Expected spend per future purchase given x repeat purchases averaging m (note 025,
    eq. 5): p (v + x m) / (p x + q - 1), a weighted mean of m and the population mean
    p v / (q - 1). With x = 0, m is ignored and the population mean is returned; where the
    mean does not exist (p x + q <= 1, heavy-tailed spend) the result is inf.
    """
    p, q, v = floats(params)
    x, m = arrays(x, m)
    denominator = p * x + q - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        value = p * (v + x * np.where(x > 0, m, 0.0)) / denominator
    return np.where(denominator > 0, value, np.inf)


def discounted_clv(
    bgnbd_params: BgNbdParams,
    gg_params: GammaGammaParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    m: ArrayLike,
    *,
    months: int,
    monthly_discount_rate: float,
    periods_per_month: float,
) -> np.ndarray:
    """Customer lifetime value over the next `months`: for each month i, the expected spend
    per purchase times the purchases expected in that month, discounted by (1 + rate)^i.

    This is lifetimes' GammaGammaFitter.customer_lifetime_value (same spend, same monthly
    differences of eq. 10, same discounting) except that the month length is stated rather
    than looked up from a time-unit letter: lifetimes uses 4.345 periods for weeks, 30 for
    days and 720 for hours; pass the same to reproduce it, or e.g. 365.25 / 12 for days.
    """
    if months < 1 or periods_per_month <= 0:
        raise ValueError(f"months must be >= 1 and periods_per_month > 0, got {months} and {periods_per_month}")
    x, t_x, T = arrays(x, t_x, T)
    horizons = np.arange(months + 1) * periods_per_month
    cumulative = np.array([expected_purchases(bgnbd_params, horizon, x, t_x, T) for horizon in horizons])
    discounts = (1 + monthly_discount_rate) ** -np.arange(1, months + 1)
    return expected_average_value(gg_params, x, m) * (discounts @ np.diff(cumulative, axis=0))


def _log_likelihood(p, q, v, x, m) -> np.ndarray:
    """Per-group log-likelihood from plain numbers: the optimiser's trial steps may leave the
    range GammaGammaParams accepts."""
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        - np.log(m)
        - q * np.log1p(x * m / v)
        - p * x * np.log1p(v / (x * m))
    )


def _log_likelihood_gradient(p, q, v, x, m) -> np.ndarray:
    """Derivatives of each group's log-likelihood by (p, q, v), shape (3, rows)."""
    digamma = special.digamma
    return np.array(
        [
            x * (digamma(p * x + q) - digamma(p * x) - np.log1p(v / (x * m))),
            digamma(p * x + q) - digamma(q) - np.log1p(x * m / v),
            q / v - (p * x + q) / (x * m + v),
        ]
    )
