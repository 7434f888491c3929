"""What the BG/NBD and Gamma-Gamma fits share: weighted rows, input checks, and the
penalised maximum-likelihood fit with standard errors from the Hessian.

A model's likelihood is a weighted sum over rows (triples, spend groups). The fit only asks
the rows for that sum and its gradient at given parameters (`WeightedRows.sums`), so the
same fit runs on rows held by the driver (`LocalRows`) or on a Spark DataFrame that sums
per partition (`segmentation.clv.distributed.SparkRows`) when there are too many rows to
collect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from scipy import optimize

from segmentation.errors import DataQualityError, ModelFitError

# BFGS stops when every log-parameter derivative of the mean objective is below this
# (lifetimes' tolerance); "precision loss" below the second, scipy's default, is also an optimum.
GRADIENT_TOLERANCE = 1e-7
PRECISION_LOSS_TOLERANCE = 1e-5

# (params, columns of some rows, their weights) -> (sum of w * log-likelihood, sum of w * gradient)
RowSums = Callable[[np.ndarray, Mapping[str, np.ndarray], np.ndarray], tuple[float, np.ndarray]]


class WeightedRows(Protocol):
    """Rows of a likelihood with their weights (customer counts), wherever they are held."""

    total_weight: float
    count: int

    def sums(self, row_sums: RowSums, params: np.ndarray) -> tuple[float, np.ndarray]: ...

    def maximum(self, column: str) -> float: ...


@dataclass(frozen=True)
class LocalRows:
    """Rows held by the driver as numpy arrays."""

    columns: dict[str, np.ndarray]
    weight: np.ndarray

    @property
    def total_weight(self) -> float:
        return float(self.weight.sum())

    @property
    def count(self) -> int:
        return len(self.weight)

    def sums(self, row_sums: RowSums, params: np.ndarray) -> tuple[float, np.ndarray]:
        return row_sums(params, self.columns, self.weight)

    def maximum(self, column: str) -> float:
        return float(self.columns[column].max())


def mean_negative_log_likelihood(rows: WeightedRows, row_sums: RowSums) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The objective the optimiser minimises: -sum(w * ll) / sum(w), with its gradient."""
    total = rows.total_weight

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = rows.sums(row_sums, params)
        return -value / total, -np.asarray(gradient) / total

    return objective


@dataclass(frozen=True)
class PositiveParams:
    """Model parameters, positive and finite: bad ones (e.g. from a registry) are rejected
    where they are made, rather than turning into NaN predictions for every customer."""

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{type(self).__name__}.{name} must be positive and finite, got {value}")

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def floats(params: object) -> tuple[float, ...]:
    return tuple(float(value) for value in dataclasses.astuple(params))


def arrays(*columns) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(column, dtype=float) for column in columns)


def weighted_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> list[np.ndarray]:
    """The named columns as finite float arrays with positive weights, or a DataQualityError
    that names the column at fault."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataQualityError(f"{what}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    if frame.empty:
        raise DataQualityError(f"{what}: no rows to fit")
    arrays = []
    for column in columns:
        try:
            values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        except (TypeError, ValueError) as error:
            raise DataQualityError(f"{what}: column {column}: not numeric ({error})") from error
        reject_rows(what, column, ~np.isfinite(values), "null or not finite")
        arrays.append(values)
    reject_rows(what, "weight", arrays[-1] <= 0, "not positive (a weight counts customers)")
    return arrays


def reject_rows(what: str, column: str, bad: np.ndarray, problem: str) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataQualityError(
            f"{what}: column {column}: {int(bad.sum())} row(s) {problem} (first at position {first})"
        )


def check_penalizer(penalizer: float) -> None:
    if not (np.isfinite(penalizer) and penalizer >= 0):
        raise ValueError(f"penalizer must be a finite number >= 0, got {penalizer}")


@dataclass(frozen=True)
class Optimum:
    params: np.ndarray
    standard_errors: np.ndarray
    iterations: int


def minimise_penalised(
    mean_negative_log_likelihood: Callable[[np.ndarray], tuple[float, np.ndarray]],
    start: np.ndarray,
    *,
    total_weight: float,
    penalizer: float,
    max_iterations: int,
    failure: str,
    advice: str,
) -> Optimum:
    """Minimise mean NLL + penalizer * sum(params^2) over log-parameters (positive without
    bounds, as lifetimes does) with BFGS and the analytic gradient; ModelFitError otherwise."""

    def objective(log_params: np.ndarray) -> tuple[float, np.ndarray]:
        params = np.exp(log_params)
        value, gradient = mean_negative_log_likelihood(params)
        return value + penalizer * params @ params, params * (gradient + 2 * penalizer * params)

    # Trial steps far from the optimum may overflow; BFGS backs off from non-finite values.
    with np.errstate(all="ignore"):
        result = optimize.minimize(
            objective,
            np.log(start),
            jac=True,
            method="BFGS",
            options={"maxiter": max_iterations, "gtol": GRADIENT_TOLERANCE},
        )
    params = np.exp(result.x)
    if not (converged(result) and np.isfinite(result.fun) and np.all(np.isfinite(params))):
        raise ModelFitError(f"{failure} did not converge after {result.nit} iterations: {result.message} {advice}")

    def total_gradient(params: np.ndarray) -> np.ndarray:
        return total_weight * (mean_negative_log_likelihood(params)[1] + 2 * penalizer * params)

    hessian = numerical_hessian(total_gradient, params)
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        raise ModelFitError(
            f"{failure} stopped where the likelihood is not curved in every direction (its Hessian is "
            f"not positive definite), so the data do not pin the parameters down: {params}. {advice}"
        ) from None
    return Optimum(params, np.sqrt(np.diag(np.linalg.inv(hessian))), result.nit)


def converged(result: optimize.OptimizeResult) -> bool:
    """BFGS reports "precision loss" when floating point cannot lower the objective any
    further; where the gradient is already that small, this is the optimum, not a failure."""
    at_precision_limit = result.status == 2 and np.max(np.abs(result.jac)) < PRECISION_LOSS_TOLERANCE
    return bool(result.success or at_precision_limit)


def numerical_hessian(gradient: Callable[[np.ndarray], np.ndarray], params: np.ndarray) -> np.ndarray:
    """Central differences of the analytic gradient, steps relative to each (positive) parameter."""
    steps = 1e-5 * params
    columns = [
        (gradient(params + step) - gradient(params - step)) / (2 * step[i])
        for i, step in enumerate(np.diag(steps))
    ]
    hessian = np.array(columns)
    return (hessian + hessian.T) / 2
