"""The clv job end to end: CDNOW through the project's own loader, ingestion and summary to
the published BG/NBD estimates; the holdout check; lifetimes as an oracle on generated data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter
from pyspark.sql import functions as F

from segmentation.stages import clv
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.cli import main
from segmentation.clv.scoring import SCORE_FIELDS
from segmentation.errors import DataQualityError
from tests.conftest import CONF_DIR, make_config

LIFETIMES_DATA = Path(importlib.util.find_spec("lifetimes").origin).parent / "datasets"
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
CALIBRATION_END = "1997-09-30"


def context(root, spark, *overrides):
    return StageContext(make_config(root, *overrides), spark)


@pytest.fixture(scope="module")
def cdnow(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("cdnow")
    ctx = context(root, spark, "generate.dataset=cdnow_sample")
    generate.run(ctx)
    ingest.run(ctx)
    return root


@pytest.fixture(scope="module")
def calibration(spark, cdnow):
    ctx = context(cdnow, spark, f"as_of={CALIBRATION_END}")
    return ctx, clv.run(ctx)


def snapshot(ctx, day):
    return tables.read(ctx.spark, ctx.table("customer_clv")).where(F.col("as_of_date") == day)


def test_cdnow_reproduces_the_published_bgnbd_estimates(calibration):
    _, result = calibration
    fitted = result.bgnbd
    assert {k: round(getattr(fitted.params, k), 3) for k in PUBLISHED} == PUBLISHED
    assert round(fitted.log_likelihood, 1) == -9582.4
    assert fitted.customers == 2357 and fitted.triples < 2357
    spend = result.gamma_gamma.params  # lifetimes' documented fit: p 6.25, q 3.74, v 15.44
    assert (round(spend.p, 2), round(spend.q, 2), round(spend.v, 1)) == (6.25, 3.74, 15.4)


def test_the_summary_is_the_published_one_customer_by_customer(calibration):
    ctx, _ = calibration
    ours = snapshot(ctx, CALIBRATION_END).select("x", "t_x", "T", "m").toPandas()
    published = pd.read_csv(LIFETIMES_DATA / "cdnow_customers_summary_with_transactions.csv")
    key = ["x", "t_x", "T"]
    ours = ours.assign(t_x=ours["t_x"].round(2), T=ours["T"].round(2), m=ours["m"].fillna(0.0)).sort_values([*key, "m"])
    published = published.sort_values([*key, "zbar"])
    assert len(ours) == len(published) == 2357
    assert (ours[key].to_numpy() == published[key].to_numpy()).all()
    assert np.abs(ours["m"].to_numpy() - published["zbar"].to_numpy()).max() <= 0.005 + 1e-9  # the file rounds to cents


def test_every_customer_is_scored_without_gaps(calibration):
    ctx, result = calibration
    table = snapshot(ctx, CALIBRATION_END)
    assert table.count() == 2357 == result.totals.customers
    for field in SCORE_FIELDS:
        assert table.where(F.col(field).isNull() | F.isnan(field)).count() == 0, field
    assert table.where((F.col("probability_alive") < 0) | (F.col("probability_alive") > 1)).count() == 0
    assert table.where(F.col("holdout_purchases").isNotNull()).count() == 0  # no holdout asked for
    assert result.grade is None  # graded only on a holdout


def test_the_logged_model_reloads_and_scores_like_the_table(calibration):
    ctx, _ = calibration
    tracking.configure_mlflow(ctx.config)
    run = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'clv'", output_format="list")[0]
    assert run.data.metrics["bgnbd.r"] == pytest.approx(0.2426, abs=1e-4)
    assert run.data.tags["input.transactions.version"] == "1"
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/clv_model")
    table = snapshot(ctx, CALIBRATION_END).select("x", "t_x", "T", "m", *SCORE_FIELDS).toPandas()
    predicted = model.predict(table[["x", "t_x", "T", "m"]])
    for field in SCORE_FIELDS:
        np.testing.assert_allclose(predicted[field].to_numpy(), table[field].to_numpy(), rtol=1e-12)


def test_holdout_check_and_the_fit_summed_in_spark(spark, cdnow, calibration):
    """39 weeks of calibration, 39 of holdout (FHL 2005), fitted with the likelihood summed in
    Spark instead of on the driver: the same estimates, and predictions close to the actuals."""
    _, on_driver = calibration
    ctx = context(cdnow, spark, "as_of=1998-06-30", "clv.holdout_days=273", "clv.max_driver_rows=100")
    result = clv.run(ctx)
    assert result.calibration_end.isoformat() == CALIBRATION_END
    for key in PUBLISHED:
        assert getattr(result.bgnbd.params, key) == pytest.approx(getattr(on_driver.bgnbd.params, key), rel=1e-6)
    for key in ("p", "q", "v"):
        assert getattr(result.gamma_gamma.params, key) == pytest.approx(getattr(on_driver.gamma_gamma.params, key), rel=1e-6)
    assert result.totals.holdout_purchases > 1500
    assert result.totals.holdout_expected_purchases == pytest.approx(result.totals.holdout_purchases, rel=0.2)
    table = snapshot(ctx, CALIBRATION_END)
    assert table.where(F.col("holdout_purchases").isNull()).count() == 0
    tracking.configure_mlflow(ctx.config)
    runs = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'clv'", output_format="list")
    holdout_run = next(r for r in runs if r.data.params["holdout_days"] == "273")
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=holdout_run.info.run_id, artifact_path="clv")}
    assert {"clv/fit.json", "clv/holdout.json", "clv/holdout.png"} <= artifacts


def test_next_purchase_dates_against_the_holdout_and_the_grade(spark, cdnow):
    """Of the customers whose expected next purchase date falls in the 39-week holdout, about
    as many bought by it as the model expects (P(alive) / 2 on average); the fit is graded
    from the holdout, on the run and on its logged model."""
    ctx = context(cdnow, spark, "as_of=1998-06-30", "clv.holdout_days=273")
    result = clv.run(ctx)
    totals = result.totals
    table = snapshot(ctx, CALIBRATION_END)
    dated = table.where(F.col("next_purchase_date").isNotNull())
    assert totals.customers_with_next_purchase_date == dated.count() > 0
    assert dated.where(F.col("probability_alive") < 0.5).count() == 0
    assert dated.where(F.datediff("next_purchase_date", "as_of_date") > 365).count() == 0
    assert 0 < totals.next_purchase_checked <= totals.customers_with_next_purchase_date
    assert totals.next_purchase_bought_share == pytest.approx(totals.next_purchase_expected_share, abs=0.1)
    assert result.grade is not None and result.grade.grade in {"Poor", "Fair", "Good", "Excellent"}
    tracking.configure_mlflow(ctx.config)
    run = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'clv'",
                             order_by=["attributes.start_time DESC"], max_results=1, output_format="list")[0]
    assert run.data.tags["quality_grade"] == result.grade.grade
    assert run.data.metrics["next_purchase_bought_share"] == pytest.approx(totals.next_purchase_bought_share)
    assert run.data.metrics["next_purchase_expected_share"] == pytest.approx(totals.next_purchase_expected_share)
    model = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list",
    )[0]
    assert model.tags["quality_grade"] == result.grade.grade
    print(f"next purchase check: {totals.next_purchase_checked} customers, bought {totals.next_purchase_bought_share:.4f}, "
          f"expected {totals.next_purchase_expected_share:.4f}; grade {result.grade.grade} ({result.grade.reason})")


def test_clv_command_prints_json_for_scripts(cdnow, capsys):
    code = main(["clv", "--json", "--as-of", CALIBRATION_END, "--conf-dir", str(CONF_DIR), "--set", f"storage.root={cdnow}"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert round(printed["bgnbd"]["alpha"], 3) == PUBLISHED["alpha"]
    assert printed["calibration_end"] == CALIBRATION_END and printed["customers"] == 2357


def test_lifetimes_agrees_on_generated_customers(spark, tmp_path):
    ctx = context(tmp_path, spark, "generate.customers=1500", "as_of=2025-06-30", "clv.time_unit=week")
    generate.run(ctx)
    ingest.run(ctx)
    result = clv.run(ctx)
    table = snapshot(ctx, "2025-06-30").select("x", "t_x", "T", "expected_purchases", "probability_alive").toPandas()
    oracle = BetaGeoFitter().fit(table["x"], table["t_x"], table["T"])
    for key in PUBLISHED:
        assert getattr(result.bgnbd.params, key) == pytest.approx(oracle.params_[key], rel=1e-3)
    oracle.params_ = pd.Series({key: getattr(result.bgnbd.params, key) for key in PUBLISHED})  # same parameters, same predictions
    expected = oracle.conditional_expected_number_of_purchases_up_to_time(90 / 7, table["x"], table["t_x"], table["T"])
    np.testing.assert_allclose(table["expected_purchases"], expected, rtol=1e-7)
    alive = oracle.conditional_probability_alive(table["x"], table["t_x"], table["T"])
    np.testing.assert_allclose(table["probability_alive"], alive, rtol=1e-7)


def test_a_calibration_end_before_any_purchase_is_an_error(spark, cdnow):
    ctx = context(cdnow, spark, "as_of=1996-12-31")
    with pytest.raises(DataQualityError, match=r"no customer has a purchase on or before 1996-12-31 in transactions"):
        clv.run(ctx)
