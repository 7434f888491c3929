"""The churn pipeline's BG/NBD stage: P(alive) and expected purchases from the feature
columns, equal to segmentation.clv.bgnbd's own on (x, t_x, T) worked out by hand, and
saved and reloaded with the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from scipy import integrate, stats

from segmentation.churn.btyd import EXPECTED_PURCHASES, NO_PURCHASE, PROBABILITY_ALIVE, BgNbdFeatures
from segmentation.churn.labels import LABEL
from segmentation.churn.model import PROBABILITY, class_weights, fit_churn_model, model_features, model_inputs, score_churn
from segmentation.clv.bgnbd import BgNbdParams, expected_purchases, probability_alive
from tests.unit.test_churn import churn_settings

PARAMS = BgNbdParams(r=0.8, alpha=4.5, a=0.6, b=2.4)  # alpha in weeks


def test_the_stage_computes_bgnbds_own_probability_alive_and_expected_purchases(spark):
    # frequency_days, recency_days, tenure_days -> x, t_x, T in weeks:
    #   5 purchase days, first 140 days ago, last 14 days ago: x 4, t_x 126/7 = 18, T 20
    #   2 purchase days, first 70 days ago, last 63 days ago: x 1, t_x 1, T 10 (long silence)
    #   one purchase day 21 days ago: x 0, t_x 0, T 3 (P(alive) 1: no repeat, no dropout yet)
    #   no tenure: null features (the pipeline's imputer fills them)
    rows = spark.createDataFrame(
        [("steady", 5, 14, 140), ("silent", 2, 63, 70), ("once", 1, 21, 21), ("unknown", 3, 7, None)],
        "customer_id string, frequency_days int, recency_days int, tenure_days int",
    )
    stage = BgNbdFeatures.fitted(PARAMS, unit_days=7.0, horizon_days=91)
    got = {r.customer_id: r for r in stage.transform(rows).collect()}
    x, t_x, T = np.array([4.0, 1.0, 0.0]), np.array([18.0, 1.0, 0.0]), np.array([20.0, 10.0, 3.0])
    alive = probability_alive(PARAMS, x, t_x, T)
    expected = expected_purchases(PARAMS, 13.0, x, t_x, T)
    for i, name in enumerate(["steady", "silent", "once"]):
        assert got[name][PROBABILITY_ALIVE] == pytest.approx(alive[i], rel=1e-12)
        assert got[name][EXPECTED_PURCHASES] == pytest.approx(expected[i], rel=1e-12)
        # No purchase in 13 weeks: dropped out, or alive with a rate (Gamma(r + x, alpha + T)
        # given the history) that brings none; integrated numerically over the rate.
        rate = stats.gamma(PARAMS.r + x[i], scale=1 / (PARAMS.alpha + T[i]))
        quiet, _ = integrate.quad(lambda lam: rate.pdf(lam) * np.exp(-lam * 13.0), 0, np.inf)
        assert got[name][NO_PURCHASE] == pytest.approx(1 - alive[i] + alive[i] * quiet, rel=1e-7)
    assert got["once"][PROBABILITY_ALIVE] == 1.0
    assert got["silent"][PROBABILITY_ALIVE] < got["steady"][PROBABILITY_ALIVE] < 1.0
    assert got["unknown"][PROBABILITY_ALIVE] is None and got["unknown"][EXPECTED_PURCHASES] is None and got["unknown"][NO_PURCHASE] is None


def test_the_pipeline_takes_them_as_features_and_reloads_with_its_parameters(spark, tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(200):
        tenure = int(rng.integers(60, 400))
        recency = int(rng.integers(0, tenure + 1))
        frequency = int(rng.integers(1, 12))
        churned = float(rng.random() < recency / (tenure + 30))  # the longer the silence, the likelier
        rows.append((f"c{i}", frequency, recency, tenure, float(rng.random()), churned))
    frame = spark.createDataFrame(rows, f"customer_id string, frequency_days int, recency_days int, tenure_days int, noise double, {LABEL} double")
    settings = churn_settings("churn.model=logistic_regression", "churn.features=[noise]")
    churners = int(frame.agg(F.sum(LABEL)).first()[0])
    fitted = fit_churn_model(frame, settings, class_weights(200, churners, "balanced"), BgNbdFeatures.fitted(PARAMS, 7.0, 90))
    assert model_features(fitted.model) == ["noise", PROBABILITY_ALIVE, EXPECTED_PURCHASES, NO_PURCHASE]
    assert model_inputs(fitted.model) == ["noise", "frequency_days", "recency_days", "tenure_days"]
    fitted.model.write().overwrite().save(str(tmp_path / "m"))
    loaded = PipelineModel.load(str(tmp_path / "m"))
    assert loaded.stages[0].bgnbd() == PARAMS
    assert loaded.stages[0].getOrDefault("horizon") == pytest.approx(90 / 7)
    before = {r.customer_id: r[PROBABILITY] for r in score_churn(fitted.model, frame).collect()}
    after = {r.customer_id: r[PROBABILITY] for r in score_churn(loaded, frame).collect()}
    assert after == pytest.approx(before, rel=1e-12)
