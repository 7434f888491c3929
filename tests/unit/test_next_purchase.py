"""The expected next purchase date: the Spark columns against a simulation of the BG/NBD
posterior, and the rules that leave it null."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from segmentation.clv.bgnbd import BgNbdParams, probability_alive
from segmentation.clv.next_purchase import NextPurchaseSettings, median_wait, next_purchase_date, probability_purchase_by

CDNOW = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)  # weeks
AS_OF = dt.date(1997, 9, 30)
WEEKS = NextPurchaseSettings(unit_days=7.0, min_alive=0.5, horizon_days=365)


def simulated_waits(params: BgNbdParams, x: int, T: float, draws: int = 400_000) -> np.ndarray:
    """Waits to the next purchase of a customer alive at T: lambda from its Gamma posterior,
    then the Poisson process's exponential wait (drop-out only follows a purchase)."""
    rng = np.random.default_rng(7)
    rate = rng.gamma(shape=params.r + x, scale=1.0 / (params.alpha + T), size=draws)
    return rng.exponential(1.0 / rate)


def scored(spark, rows, settings=WEEKS):
    """(customer_id, x, t_x, T) rows with P(alive) from the numpy model, the median wait and the date."""
    alive = probability_alive(CDNOW, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
    df = spark.createDataFrame(
        [(*r, float(p)) for r, p in zip(rows, alive)], "customer_id string, x long, t_x double, T double, probability_alive double"
    )
    x, T, p = F.col("x"), F.col("T"), F.col("probability_alive")
    return {
        r.customer_id: r for r in df.select(
            "customer_id", "probability_alive", median_wait(CDNOW, x, T).alias("wait"),
            next_purchase_date(CDNOW, settings, x, T, p, F.lit(AS_OF)).alias("date"),
        ).collect()
    }


def test_the_median_wait_is_the_simulated_median_and_the_date_rounds_it_up(spark):
    row = scored(spark, [("A", 2, 30.0, 32.0)])["A"]
    waits = simulated_waits(CDNOW, x=2, T=32.0)
    assert row.wait == pytest.approx(np.median(waits), rel=0.01)
    assert np.mean(waits <= row.wait) == pytest.approx(0.5, abs=0.005)
    days = (row.date - AS_OF).days
    assert days == int(np.ceil(row.wait * 7))
    assert row.probability_alive > WEEKS.min_alive


def test_the_probability_of_a_purchase_by_the_date_is_half_of_p_alive_at_the_median(spark):
    df = spark.createDataFrame([(2, 32.0, 0.8, 10), (2, 32.0, 0.8, 0), (40, 70.0, 0.9, 3)], "x long, T double, p double, days int")
    x, T, p = F.col("x"), F.col("T"), F.col("p")
    rows = df.select(
        probability_purchase_by(CDNOW, 7.0, x, T, p, median_wait(CDNOW, x, T) * 7.0).alias("at_median"),
        probability_purchase_by(CDNOW, 7.0, x, T, p, F.col("days")).alias("by_days"),
    ).collect()
    assert [r.at_median for r in rows] == pytest.approx([0.4, 0.4, 0.45], abs=1e-12)
    simulated = [0.8 * np.mean(simulated_waits(CDNOW, 2, 32.0) <= 10 / 7), 0.0, 0.9 * np.mean(simulated_waits(CDNOW, 40, 70.0) <= 3 / 7)]
    assert [r.by_days for r in rows] == pytest.approx(simulated, abs=0.005)


def test_no_date_below_the_least_p_alive_or_beyond_the_horizon(spark):
    rows = scored(spark, [
        ("frequent", 40, 69.0, 70.0),  # alive, buys about every other week
        ("silent", 40, 10.0, 70.0),  # frequent but gone quiet: P(alive) near 0
        ("once", 0, 0.0, 30.0),  # alive but slow: the median is years away
        ("regular", 5, 50.0, 52.0),
    ])
    assert rows["frequent"].date is not None and (rows["frequent"].date - AS_OF).days <= 14
    assert rows["silent"].probability_alive < 0.5 and rows["silent"].date is None
    assert rows["once"].probability_alive == 1.0 and rows["once"].wait * 7 > 365 and rows["once"].date is None
    regular = (rows["regular"].date - AS_OF).days
    assert 0 < regular <= 365
    # The same customer is dated when the horizon reaches its date, and not one day short of it.
    assert scored(spark, [("regular", 5, 50.0, 52.0)], NextPurchaseSettings(7.0, 0.5, regular))["regular"].date is not None
    assert scored(spark, [("regular", 5, 50.0, 52.0)], NextPurchaseSettings(7.0, 0.5, regular - 1))["regular"].date is None
