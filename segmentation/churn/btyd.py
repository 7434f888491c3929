"""BG/NBD's view of each customer as features of the churn model, so that the learned model
starts from what the BG/NBD baselines know: `bgnbd_probability_alive`,
`bgnbd_expected_purchases` over the label window, and `bgnbd_probability_no_purchase`, BG/NBD's
own probability of the churn label (no purchase in the window):
1 - P(alive) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x), since a customer alive at T
drops out only right after a purchase, and an alive customer's rate is Gamma(r + x, alpha + T)
given the history, which makes no purchase in t that likely.

`BgNbdFeatures` is the first stage of the churn pipeline. It holds the BG/NBD parameters
(r, alpha, a, b) that training fits at the evaluation cutoff for the BG/NBD baselines (the
same fit, reused), the time unit of that fit in days and the horizon in that unit. It computes
the customer's (x, t_x, T) from the feature columns, as the lifetime-value summary does from
the transactions: x = frequency_days - 1 (repeat purchase days), t_x = (tenure_days -
recency_days) / unit (first to last purchase), T = tenure_days / unit (first purchase to the
snapshot), and applies `segmentation.clv.bgnbd`'s own P(alive) and expected purchases in a
pandas UDF (eq. 10 needs the Gauss hypergeometric function). Training rows, evaluation rows
and the customers scored later all pass through it, so the model sees the same quantities.

Its parameters are plain floats, so Spark ML's own writer saves it inside the PipelineModel
(`DefaultParamsWritable`), also under Spark Connect, and the registered model still scores
plain `customer_features` rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf

from segmentation.clv.bgnbd import BgNbdParams, expected_purchases, probability_alive

PROBABILITY_ALIVE, EXPECTED_PURCHASES = "bgnbd_probability_alive", "bgnbd_expected_purchases"
NO_PURCHASE = "bgnbd_probability_no_purchase"
BTYD_FEATURES = [PROBABILITY_ALIVE, EXPECTED_PURCHASES, NO_PURCHASE]
BTYD_INPUTS = ["frequency_days", "recency_days", "tenure_days"]  # customer_features columns it reads


def _float_param(name: str, doc: str) -> Param:
    return Param(Params._dummy(), name, doc, TypeConverters.toFloat)


def btyd_scores(bgnbd: BgNbdParams, unit_days: float, horizon: float,
                frequency_days: np.ndarray, recency_days: np.ndarray, tenure_days: np.ndarray) -> pd.DataFrame:
    """P(alive), expected purchases and the probability of no purchase over `horizon` (in
    units of `unit_days`) per customer; NaN where an input is missing."""
    frequency, recency, tenure = (np.asarray(v, dtype=float) for v in (frequency_days, recency_days, tenure_days))
    known = np.isfinite(frequency) & np.isfinite(recency) & np.isfinite(tenure)
    alive, expected, none = (np.full(len(frequency), np.nan) for _ in BTYD_FEATURES)
    if known.any():
        x = np.maximum(frequency[known] - 1.0, 0.0)
        T = np.maximum(tenure[known], 0.0) / unit_days
        t_x = np.clip(tenure[known] - recency[known], 0.0, None) / unit_days
        alive[known] = probability_alive(bgnbd, x, t_x, T)
        expected[known] = expected_purchases(bgnbd, horizon, x, t_x, T)
        quiet_if_alive = np.exp((bgnbd.r + x) * (np.log(bgnbd.alpha + T) - np.log(bgnbd.alpha + T + horizon)))
        none[known] = 1.0 - alive[known] * (1.0 - quiet_if_alive)
    return pd.DataFrame({PROBABILITY_ALIVE: alive, EXPECTED_PURCHASES: expected, NO_PURCHASE: none})


class BgNbdFeatures(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """Adds `BTYD_FEATURES` from the feature columns `frequency_days`, `recency_days` and
    `tenure_days` (null where one is null)."""

    r = _float_param("r", "BG/NBD purchase-rate shape")
    alpha = _float_param("alpha", "BG/NBD purchase-rate scale, in time units")
    a = _float_param("a", "BG/NBD dropout beta a")
    b = _float_param("b", "BG/NBD dropout beta b")
    unitDays = _float_param("unitDays", "days per time unit of the fit (clv.time_unit)")
    horizon = _float_param("horizon", "expected purchases over this many time units (the label window)")

    @keyword_only
    def __init__(self, r: float = 1.0, alpha: float = 1.0, a: float = 1.0, b: float = 1.0,
                 unitDays: float = 7.0, horizon: float = 1.0) -> None:
        super().__init__()
        self._setDefault(r=1.0, alpha=1.0, a=1.0, b=1.0, unitDays=7.0, horizon=1.0)
        self._set(**self._input_kwargs)

    @classmethod
    def fitted(cls, bgnbd: BgNbdParams, unit_days: float, horizon_days: int) -> "BgNbdFeatures":
        return cls(r=bgnbd.r, alpha=bgnbd.alpha, a=bgnbd.a, b=bgnbd.b, unitDays=unit_days, horizon=horizon_days / unit_days)

    def bgnbd(self) -> BgNbdParams:
        return BgNbdParams(*(self.getOrDefault(p) for p in (self.r, self.alpha, self.a, self.b)))

    def _transform(self, dataset: DataFrame) -> DataFrame:
        bgnbd, unit, horizon = self.bgnbd(), self.getOrDefault(self.unitDays), self.getOrDefault(self.horizon)

        @pandas_udf(", ".join(f"{name} double" for name in BTYD_FEATURES))
        def scores(frequency: pd.Series, recency: pd.Series, tenure: pd.Series) -> pd.DataFrame:
            return btyd_scores(bgnbd, unit, horizon, *(s.to_numpy(dtype=float, na_value=np.nan) for s in (frequency, recency, tenure)))

        inputs = [F.col(name).cast("double") for name in BTYD_INPUTS]
        scored = dataset.select("*", scores(*inputs).alias("__bgnbd"))
        return scored.select(
            *[F.col(f"`{c}`") for c in dataset.columns],
            *[F.when(~F.isnan(f"__bgnbd.{name}"), F.col(f"__bgnbd.{name}")).alias(name) for name in BTYD_FEATURES],
        )
