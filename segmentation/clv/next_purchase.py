"""The expected next purchase date under BG/NBD, as Spark columns.

A customer alive at T with x repeat purchases has the purchase rate lambda ~ Gamma(r + x,
alpha + T) a posteriori (the Gamma prior times the Poisson likelihood lambda^x e^(-lambda T);
the drop-out probability does not involve lambda). Drop-out happens only right after a
purchase, so a customer alive at T stays alive until the next purchase, which comes after an
Exp(lambda) wait. Integrating lambda out:

    P(wait > t | alive) = ((alpha + T) / (alpha + T + t))^(r + x)

whose median is (alpha + T) (2^(1 / (r + x)) - 1), in the model's time unit. The expected
next purchase date is the snapshot date plus that median, rounded up to a whole day: the
first day by which a customer who is still alive has even odds of having bought again. The
unconditional probability of a purchase by then is P(alive) times one half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from segmentation.clv.bgnbd import BgNbdParams


@dataclass(frozen=True)
class NextPurchaseSettings:
    unit_days: float  # days per unit of x, t_x and T
    min_alive: float  # no date below this P(alive)
    horizon_days: int  # no date further than this from the snapshot date


def median_wait(params: BgNbdParams, x: Column, T: Column) -> Column:
    """The median time to the next purchase of a customer alive at T, in the model's unit;
    2^(1 / (r + x)) - 1 as expm1 keeps its precision for frequent buyers."""
    return (F.lit(params.alpha) + T) * F.expm1(F.lit(math.log(2.0)) / (F.lit(params.r) + x))


def next_purchase_date(
    params: BgNbdParams, settings: NextPurchaseSettings, x: Column, T: Column, probability_alive: Column, as_of: Column
) -> Column:
    """`as_of` plus the median wait in whole days (rounded up); null when P(alive) is below
    `settings.min_alive` or the date is more than `settings.horizon_days` away."""
    days = F.ceil(median_wait(params, x, T) * F.lit(settings.unit_days))
    within = (probability_alive >= F.lit(settings.min_alive)) & (days <= F.lit(settings.horizon_days))
    return F.when(within, F.date_add(as_of, days.cast("int")))


def probability_purchase_by(params: BgNbdParams, unit_days: float, x: Column, T: Column, probability_alive: Column, days: Column) -> Column:
    """The model's probability that the customer buys again within `days` days of T:
    P(alive) (1 - P(wait > t | alive))."""
    t = days / F.lit(unit_days)
    alpha_T = F.lit(params.alpha) + T
    return probability_alive * (F.lit(1.0) - F.pow(alpha_T / (alpha_T + t), F.lit(params.r) + x))
