"""The churn job on generated customers whose dropout process is known: out-of-time training
against baselines, MLflow runs read back through the client, champion/challenger, scoring
with the champion into customer_churn, and the error when no champion exists. On a feed
where churn depends only on recency, the model does not beat the recency rule: no champion,
and the calibrated baseline scores the customers."""

from __future__ import annotations

import datetime as dt
import random

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation.stages import churn
from segmentation.stages import features
from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.churn.btyd import BTYD_FEATURES, BTYD_INPUTS
from segmentation.cli import main
from segmentation.errors import ModelRegistryError
from tests.conftest import PLANTED_DROPOUT, make_config
from tests.integration.test_bad_input import csv_source, row, write_feed

SETTINGS = ["generate.customers=3000", "churn.sample_customers=2000", "churn.gbt={maxIter: 30, maxDepth: 4, stepSize: 0.1, subsamplingRate: 0.8}",
            *PLANTED_DROPOUT]
# The bound stated in the README for this data: expected calibration error (10 bins) below 0.08.
CALIBRATION_BOUND = 0.08


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("churn")
    ctx = StageContext(make_config(root, *SETTINGS), spark)
    generate.run(ctx)
    ingest.run(ctx)
    return ctx, churn.train(ctx)


def test_the_model_beats_the_recency_rule_and_is_calibrated(trained):
    _, result = trained
    model, recency, dropout = (result.metrics[name] for name in (churn.MODEL, churn.RECENCY, churn.DROPOUT))
    assert model["pr_auc"] > recency["pr_auc"]
    assert model["pr_auc"] > dropout["pr_auc"]
    assert model["roc_auc"] > 0.75
    assert model["calibration_error"] < CALIBRATION_BOUND
    assert model["rows"] == recency["rows"] == dropout["rows"] == result.labels.evaluation_rows
    assert model["lift_10"] > 1.0 and 0 < model["capture_10"] < model["capture_20"] <= 1
    confusion = result.confusion
    assert sum(confusion.values()) == result.labels.evaluation_rows
    flagged = confusion["true_positives"] + confusion["false_positives"]
    assert flagged / result.labels.evaluation_rows == pytest.approx(0.2, abs=0.02)  # the contact budget


def test_cutoffs_labels_and_artifacts_are_in_the_run(trained):
    ctx, result = trained
    tracking.configure_mlflow(ctx.config)
    client = MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["stage"] == "churn.train" and tags["out_of_time"] == "true"
    assert tags["evaluation_cutoff"] == result.evaluation_cutoff.isoformat() and len(tags["training_cutoffs"].split(",")) == 4
    assert tags["horizon_days"] == "90" and tags["input.transactions.version"] == str(result.transactions_version)
    for key in ("roc_auc", "pr_auc", "lift_10", "capture_20", "brier", "calibration_error", "baseline_recency_pr_auc",
                "baseline_p_alive_pr_auc", "baseline_p_alive_brier", "threshold", "true_positives"):
        assert key in metrics, key
    assert metrics["pr_auc"] == pytest.approx(result.metrics["model"]["pr_auc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "churn")}
    assert {f"churn/{name}" for name in ("roc.png", "precision_recall.png", "cumulative_gains.png", "calibration.png",
            "feature_importance.png", "evaluation.json", "operating_point.json", "champion_decision.json",
            "driver_importance.png", "driver_importance.json")} <= artifacts
    # Global importance: mean absolute contribution per feature over the evaluation rows, largest first.
    importance = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/churn/driver_importance.json")
    assert set(importance) == {*ctx.config.churn.features, *BTYD_FEATURES} and list(importance.values()) == sorted(importance.values(), reverse=True)
    assert min(importance.values()) >= 0 and next(iter(importance.values())) > 0
    assert sum(result.importance.values()) == pytest.approx(1.0)
    per_cutoff = result.labels.per_cutoff
    assert sorted(per_cutoff) == tags["training_cutoffs"].split(",")
    assert sum(c["rows"] for c in per_cutoff.values()) == result.labels.training_rows
    # The rows come from a sample of about 2,000 of the 3,000 customers (churn.sample_customers).
    sample = result.labels.sample
    assert sample.sample_customers == 2000 and 2900 <= sample.customers <= 3100
    assert metrics["sample_fraction"] == pytest.approx(2000 / sample.customers)


def test_the_registered_signature_takes_the_models_inputs_as_doubles(trained):
    """The signature's example rows come from the scored evaluation rows: the columns the
    pipeline reads (its features and BG/NBD's own inputs), as doubles, and a double out."""
    ctx, result = trained
    tracking.configure_mlflow(ctx.config)
    info = mlflow.models.get_model_info(f"models:/churn_classifier/{result.model_version}")
    inputs = {spec.name: spec.type.name for spec in info.signature.inputs.inputs}
    expected = [*ctx.config.churn.features, *(c for c in BTYD_INPUTS if c not in ctx.config.churn.features)]
    assert list(inputs) == expected and set(inputs.values()) == {"double"}
    assert [spec.type.name for spec in info.signature.outputs.inputs] == ["double"]


def test_first_model_is_champion_and_a_retrain_that_does_not_beat_it_stays_challenger(spark, trained):
    """The same rows and settings again (a retrain without new data): a seeded fit on rows
    partitioned by the data alone gives the same model, so the same PR AUC, which does not
    beat the champion's by more than churn.min_improvement (0): the new version stays
    challenger."""
    ctx, result = trained
    assert result.decision.promoted and result.decision.reason == "no champion yet"
    baselines = result.baseline_scorer.baselines
    assert result.score_source == "model:1" and set(baselines) == {churn.RECENCY, churn.DROPOUT, churn.QUIET}
    assert all(result.metrics["model"]["pr_auc"] > value for value in baselines.values())
    again = StageContext(make_config(ctx.config.root, *SETTINGS), spark)
    second = churn.train(again)
    decision = second.decision
    assert second.metrics["model"]["pr_auc"] == pytest.approx(result.metrics["model"]["pr_auc"], abs=1e-9)
    assert not decision.promoted and decision.champion_version == "1" and decision.model_version == "2"
    # The champion was re-scored on the challenger's evaluation rows (the same cutoff, the same rows).
    assert decision.champion_value == pytest.approx(result.metrics["model"]["pr_auc"], abs=1e-9)
    client = MlflowClient()
    assert client.get_model_version_by_alias("churn_classifier", "champion").version == 1
    assert client.get_model_version_by_alias("churn_classifier", "challenger").version == 2
    run = client.get_run(second.mlflow_run_id)
    assert run.data.tags["champion_decision"] == "kept" and "does not beat champion version 1" in run.data.tags["champion_reason"]
    assert run.data.metrics["champion_pr_auc"] == pytest.approx(decision.champion_value)


def test_score_uses_the_champion_and_replaces_its_snapshot(spark, trained):
    ctx, _ = trained
    features.run(ctx)
    first = churn.score(ctx)
    scored = tables.read(spark, ctx.table("customer_churn"))
    assert scored.columns == churn.CHURN_COLUMNS
    snapshot = tables.read(spark, ctx.table("customer_features")).where(F.col("as_of_date") == first.as_of)
    eligible = snapshot.where(F.col("recency_days") < ctx.config.churn.lookback_days)
    assert scored.count() == eligible.count() == first.customers
    assert first.customers + first.not_eligible == snapshot.count()
    assert scored.join(eligible, "customer_id", "left_anti").count() == 0
    assert {r[0] for r in scored.select("model_version").distinct().collect()} == {1}  # champion, not the newer challenger
    assert {r[0] for r in scored.select("churn_score_source").distinct().collect()} == {"model:1"} and first.score_source == "model:1"
    assert scored.where((F.col("churn_probability") < 0) | (F.col("churn_probability") > 1)).count() == 0
    tiers = {r[0]: r[1] for r in scored.groupBy("churn_risk_tier").count().collect()}
    assert set(tiers) <= {"critical", "high", "medium", "low"} and tiers == {k: v for k, v in first.risk_tiers.items() if v}
    high = scored.where(F.col("churn_risk_tier") == "critical").agg(F.min("churn_probability")).first()[0]
    assert high is None or high >= 0.75
    # Every scored customer has up to 3 drivers, each a configured or BG/NBD feature that raised the score, largest first.
    drivers = [r.churn_drivers for r in scored.select("churn_drivers").collect()]
    assert all(d is not None and len(d) <= 3 for d in drivers) and sum(len(d) == 3 for d in drivers) > len(drivers) / 2
    for entries in drivers:
        assert all(e.feature in {*ctx.config.churn.features, *BTYD_FEATURES} and e.contribution > 0 and e.value is not None for e in entries)
        assert [e.contribution for e in entries] == sorted((e.contribution for e in entries), reverse=True)
    # The champion loads the same way for a reviewer, through the registry alias.
    model = mlflow.spark.load_model("models:/churn_classifier@champion")
    assert model.stages[-1].getOutputCol() == "churn_probability"
    # ... and through MLflow's generic interface: 200 rows of customer_features as pandas get
    # the probability customer_churn holds for them (the rows not eligible are scored too).
    rows = snapshot.orderBy("customer_id").limit(200)
    expected = dict(scored.join(rows, "customer_id", "inner").select("customer_id", "churn_probability").collect())
    frame = rows.toPandas()
    predicted = dict(zip(frame["customer_id"], mlflow.pyfunc.load_model("models:/churn_classifier@champion").predict(frame)))
    assert len(predicted) == 200 and all(0.0 <= p <= 1.0 for p in predicted.values())
    assert expected and {c: predicted[c] for c in expected} == pytest.approx(expected, abs=1e-9)
    churn.score(ctx)
    assert tables.read(spark, ctx.table("customer_churn")).count() == first.customers


def test_scoring_without_a_champion_says_what_to_run(spark, trained, capsys):
    ctx, _ = trained
    nobody = StageContext(make_config(ctx.config.root, *SETTINGS, "churn.registered_model=nobody"), spark)
    with pytest.raises(ModelRegistryError, match="registered model 'nobody' has no 'champion' version .* run 'segmentation churn train' first"):
        churn.score(nobody)
    code = main(["churn", "score", "--set", f"storage.root={ctx.config.root}", "--set", "churn.registered_model=nobody"])
    assert code == 1
    assert "segmentation churn: error: registered model 'nobody' has no 'champion' version" in capsys.readouterr().err


def test_a_champion_for_another_horizon_is_not_compared_but_replaced(spark, trained):
    ctx, _ = trained
    other = StageContext(make_config(
        ctx.config.root, *SETTINGS, "churn.horizon_days=60", "churn.model=logistic_regression",
    ), spark)
    result = churn.train(other)
    decision = result.decision
    assert decision.promoted and decision.champion_value is None
    assert "predicts no purchase in 90 days, not the configured 60" in decision.reason
    assert MlflowClient().get_model_version_by_alias("churn_classifier", "champion").version == int(decision.model_version)


# ------------------------------------------- a feed where churn depends only on recency

# Of four training cutoffs 60 days apart, the earliest's 120-day look-back starts before the data.
RECENCY_ONLY = [
    "churn.registered_model=recency_only", "churn.lookback_days=120", "churn.horizon_days=60", "churn.training_cutoffs=4",
    "churn.sample_customers=null", "churn.min_improvement=0.02", "churn.gbt={maxIter: 10, maxDepth: 3}",
    "ingest.reference_time=2025-06-30T12:00:00", "clv.penalizer=0.001",  # BG/NBD converges on such regular buyers
]


def recency_only_feed(path, customers: int = 600, seed: int = 3):
    """Customers who buy every 3 to 10 days from early January 2024 until they stop for good
    on a uniformly random day: who churns next depends on nothing but the days since the last
    purchase, so the recency rule ranks as well as any model can. 600 customers give the
    evaluation rows 126 churners and 298 stayers (churn.min_positives and min_negatives: 100)."""
    rng, start, end = random.Random(seed), dt.date(2024, 1, 1), dt.date(2024, 12, 31)
    lines = []
    for customer in range(customers):
        stop = start + dt.timedelta(days=rng.randint(30, 600))
        day, n = start + dt.timedelta(days=rng.randint(0, 9)), 0
        while day <= min(stop, end):
            lines.append(row(f"{customer}-{n}", customer_id=f"C{customer}", transaction_ts=f"{day} 10:00:00", net_amount="20.00"))
            day, n = day + dt.timedelta(days=rng.randint(3, 10)), n + 1
    return write_feed(path, lines)


@pytest.fixture(scope="module")
def recency_only(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("recency_only")
    feed = recency_only_feed(root / "feed.csv")
    ctx = StageContext(make_config(root / "data", *csv_source(feed), *RECENCY_ONLY), spark)
    ingest.run(ctx)
    return ctx


def test_a_model_that_does_not_beat_the_rule_never_scores(spark, recency_only, capsys, caplog):
    ctx = recency_only
    result = churn.train(ctx)
    report = capsys.readouterr().out
    decision, baselines = result.decision, result.baseline_scorer.baselines
    best = max(baselines, key=baselines.get)
    # The cutoff whose 120-day look-back starts before 2024-01-01 is dropped; three remain.
    dropped = [r.getMessage() for r in caplog.records if "look-back of 120 days starts before the first transaction" in r.getMessage()]
    assert len(dropped) == 1 and len(result.labels.per_cutoff) == 3
    assert result.metrics["model"]["pr_auc"] <= baselines[best] + 0.02
    assert not decision.promoted and decision.champion_version is None
    assert decision.reason.startswith(f"pr_auc {decision.value:.4f} does not beat the {best} baseline's")
    assert result.score_source == f"baseline:{best}"
    assert f"No churn model is champion: customers are scored by the {best} baseline" in report
    client = MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("recency_only", "champion")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["score_source"] == f"baseline:{best}" and run.data.tags["champion_decision"] == "kept"
    assert len(run.data.tags["training_cutoffs"].split(",")) == 3

    features.run(ctx)
    scored = churn.score(ctx)
    assert scored.score_source == f"baseline:{best}" and scored.model_version is None
    assert f"by the {best} baseline calibrated in training run {result.mlflow_run_id}" in capsys.readouterr().out
    rows = tables.read(spark, ctx.table("customer_churn"))
    assert rows.columns == churn.CHURN_COLUMNS and rows.count() == scored.customers > 0
    assert {tuple(r) for r in rows.select("churn_score_source", "model_version").distinct().collect()} == {(f"baseline:{best}", None)}
    assert rows.where(F.col("churn_probability").isNull() | (F.col("churn_probability") < 0) | (F.col("churn_probability") > 1)).count() == 0
    assert client.get_run(scored.mlflow_run_id).data.tags["score_source"] == f"baseline:{best}"
    if best == churn.RECENCY:  # the calibrated rule: a longer silence never gets a lower probability
        snapshot = tables.read(spark, ctx.table("customer_features")).where(F.col("as_of_date") == scored.as_of)
        pairs = sorted((r.recency_days, r.churn_probability) for r in rows.join(snapshot, "customer_id").collect())
        assert all(a[1] <= b[1] for a, b in zip(pairs, pairs[1:]))
        assert pairs[0][1] < pairs[-1][1]
