"""The tags every stage run carries, the Delta versions it records, and where a new
experiment's artifacts go for each kind of tracking store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from segmentation import tracking
from segmentation.tables import TableRef
from tests.conftest import make_config


def test_a_stage_run_carries_exactly_the_reviewer_tags_and_its_delta_versions(config):
    transactions = TableRef("transactions", "/data/transactions", is_path=True)
    features = TableRef("customer_features", "/data/customer_features", is_path=True)
    with tracking.stage_run(config, "pipeline", "p-1") as parent:
        with tracking.stage_run(config, "features", "p-1", {"as_of": "2025-12-31"}) as child:
            tracking.log_delta_input(transactions, 0, context="transactions")
            tracking.log_delta_output(features, 7)
            tracking.log_delta_output(TableRef("ingest_log", "/data/ingest_log", is_path=True), None)  # skipped write
            with tracking.stage_run(config, "cluster.candidate", "p-1", run_name="k=3") as grandchild:
                pass
    run = MlflowClient().get_run(child.info.run_id)
    own = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    assert own == {
        "stage": "features", "pipeline_run_id": "p-1", "config_hash": config.fingerprint(), "environment": "local",
        "git_commit": tracking.git_commit(), "as_of": "2025-12-31",
        "input.transactions.version": "0", "output.customer_features.version": "7",
    }
    assert set(tracking.RUN_TAGS) | {tracking.AS_OF, tracking.input_tag("transactions"), tracking.output_tag("customer_features")} == set(own)
    assert run.info.run_name == "features" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("transactions", "v0")  # a version of 0 is kept
    assert '"path": "/data/transactions"' in dataset.dataset.source

    nested = MlflowClient().get_run(grandchild.info.run_id)
    assert nested.info.run_name == "k=3" and nested.data.tags["mlflow.parentRunId"] == child.info.run_id
    assert {k: nested.data.tags[k] for k in tracking.RUN_TAGS} == {
        "stage": "cluster.candidate", "pipeline_run_id": "p-1", "config_hash": config.fingerprint(),
        "environment": "local", "git_commit": tracking.git_commit(),
    }
    found = MlflowClient().search_runs([run.info.experiment_id], "tags.`input.transactions.version` = '0' AND tags.stage = 'features'")
    assert [r.info.run_id for r in found] == [child.info.run_id]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com", "databricks", "databricks://prod"])
def test_a_tracking_server_chooses_the_artifact_root(config, uri):
    assert tracking.is_server(uri)
    assert tracking.default_artifact_location(config, uri) is None


@pytest.mark.parametrize("uri", ["sqlite:////tmp/mlflow.db", "postgresql://user:secret@db:5432/mlflow", "file:///tmp/mlruns"])
def test_a_store_the_client_writes_keeps_artifacts_under_the_storage_root(config, uri):
    assert not tracking.is_server(uri)
    assert tracking.default_artifact_location(config, uri) == (Path(config.storage.root) / "mlartifacts").resolve().as_uri()
    configured = config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"artifact_location": "s3://bucket/ml"})})
    assert tracking.default_artifact_location(configured, uri) == "s3://bucket/ml"


def test_the_local_store_is_created_under_the_storage_root(config):
    experiment_id = tracking.configure_mlflow(config)
    assert mlflow.get_tracking_uri() == f"sqlite:///{Path(config.storage.root) / 'mlflow.db'}"
    location = MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (Path(config.storage.root) / "mlartifacts").resolve().as_uri()


@pytest.fixture()
def empty_stores(tmp_path, monkeypatch) -> Path:
    """Where this test's empty MLflow store is kept (none is made yet)."""
    folder = tmp_path / "empty-stores"
    monkeypatch.setattr(tracking, "EMPTY_STORES", folder)
    tracking._empty_store.cache_clear()
    yield folder
    tracking._empty_store.cache_clear()


def _store(root: Path) -> tuple[MlflowClient, str]:
    experiment_id = tracking.configure_mlflow(make_config(root))
    return MlflowClient(), experiment_id


def test_a_new_store_is_a_copy_of_an_empty_one_and_mlflow_adds_its_default_experiment(tmp_path, empty_stores):
    _, first_id = _store(tmp_path / "first")
    [empty] = empty_stores.iterdir()
    assert empty.name == f"empty-{mlflow.__version__}.db"
    with mlflow.start_run(experiment_id=first_id):
        mlflow.log_param("root", "first")
    second, second_id = _store(tmp_path / "second")
    experiments = {e.name: e for e in second.search_experiments()}
    assert set(experiments) == {"Default", "segmentation"}  # the copy held none: MLflow made Default
    assert experiments["segmentation"].artifact_location == (tmp_path / "second" / "mlartifacts").resolve().as_uri()
    assert second.search_runs([second_id]) == []  # nothing of the first store's
    assert [r.data.params for r in _store(tmp_path / "first")[0].search_runs([first_id])] == [{"root": "first"}]


def test_without_an_empty_store_mlflow_makes_the_store(tmp_path, empty_stores):
    empty_stores.write_text("")  # a file where the folder would be: no empty store can be made
    client, _ = _store(tmp_path / "root")
    assert not empty_stores.is_dir()
    assert {e.name for e in client.search_experiments()} == {"Default", "segmentation"}
    assert (tmp_path / "root" / "mlflow.db").is_file()
