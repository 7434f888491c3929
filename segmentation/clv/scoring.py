"""Per-customer lifetime value in Spark: the fitted models applied in a pandas UDF (eq. 10
needs the Gauss hypergeometric function, which Spark does not have).

Only the parameters travel to the executors; every customer is scored where its row is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from segmentation.clv.bgnbd import BgNbdParams, expected_purchases, probability_alive
from segmentation.clv.gamma_gamma import GammaGammaParams, discounted_clv, expected_average_value
from segmentation.schema import CLV_SCORE_COLUMNS

DAYS_PER_MONTH = 365.25 / 12
SCORE_FIELDS = CLV_SCORE_COLUMNS  # the scores, named and ordered as in customer_clv


@dataclass(frozen=True)
class ScoringSettings:
    """Horizons in the summary's time unit."""

    horizon: float  # expected purchases over this long
    months: int  # CLV over this many months
    monthly_discount_rate: float
    periods_per_month: float

    @classmethod
    def from_days(cls, horizon_days: int, months: int, monthly_discount_rate: float, unit_days: float) -> "ScoringSettings":
        return cls(horizon_days / unit_days, months, monthly_discount_rate, DAYS_PER_MONTH / unit_days)

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def customer_scores(
    bgnbd: BgNbdParams, spend: GammaGammaParams | None, settings: ScoringSettings, x, t_x, T, m
) -> pd.DataFrame:
    """SCORE_FIELDS for arrays of customers. Without a spend model, or where its mean spend
    does not exist (q <= 1), value and CLV are NaN rather than infinite."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    m = np.nan_to_num(np.asarray(m, dtype=float), nan=0.0)
    scores = {
        "probability_alive": probability_alive(bgnbd, x, t_x, T),
        "expected_purchases": expected_purchases(bgnbd, settings.horizon, x, t_x, T),
        "expected_average_value": np.full(len(x), np.nan),
        "clv": np.full(len(x), np.nan),
    }
    if spend is not None:
        value = expected_average_value(spend, x, m)
        clv = discounted_clv(
            bgnbd, spend, x, t_x, T, m,
            months=settings.months, monthly_discount_rate=settings.monthly_discount_rate,
            periods_per_month=settings.periods_per_month,
        )
        scores["expected_average_value"] = np.where(np.isfinite(value), value, np.nan)
        scores["clv"] = np.where(np.isfinite(clv), clv, np.nan)
    return pd.DataFrame(scores)[SCORE_FIELDS]


def expected_purchases_over(bgnbd: BgNbdParams, horizon: float) -> Column:
    """Expected purchases in the next `horizon` (the summary's unit) as a column over x, t_x, T."""

    @pandas_udf("double")
    def expected(x: pd.Series, t_x: pd.Series, T: pd.Series) -> pd.Series:
        return pd.Series(expected_purchases(bgnbd, horizon, *(s.to_numpy(dtype=float) for s in (x, t_x, T))))

    return expected("x", "t_x", "T")


def with_clv_scores(
    summary: DataFrame, bgnbd: BgNbdParams, spend: GammaGammaParams | None, settings: ScoringSettings
) -> DataFrame:
    """`summary` (x, t_x, T, m, ...) plus the SCORE_FIELDS columns; NaN becomes null."""

    @pandas_udf(", ".join(f"{name} double" for name in SCORE_FIELDS))
    def score(x: pd.Series, t_x: pd.Series, T: pd.Series, m: pd.Series) -> pd.DataFrame:
        return customer_scores(bgnbd, spend, settings, x, t_x, T, m)

    scored = summary.select("*", score("x", "t_x", "T", "m").alias("_scores"))
    return scored.select(
        *summary.columns,
        *[F.when(~F.isnan(f"_scores.{name}"), F.col(f"_scores.{name}")).alias(name) for name in SCORE_FIELDS],
    )
