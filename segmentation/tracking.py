"""MLflow tracking: where runs go, what every run carries, how inputs are recorded.

Local by default: a SQLite store and an artifact folder under `storage.root`; with an
http(s) tracking URI (an `mlflow server`) or Databricks, the server decides where artifacts
go and serves the registry. Every run is tagged with the stage, the pipeline run id, the
configuration fingerprint, the environment and the git commit (`RUN_TAGS`); a stage with a
snapshot date adds `as_of`. Every Delta version a run reads is a dataset input and an
`input.<table>.version` tag, and every version it writes an `output.<table>.version` tag, so
a reviewer can filter runs by data version and join them to the Delta history.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from segmentation.config import CACHE_DIR, Config
from segmentation.tables import TableRef

log = logging.getLogger(__name__)

# The tags every stage run carries (run-resume and the lineage search by them), and the one
# a stage with a snapshot date adds.
RUN_TAGS = ("stage", "pipeline_run_id", "config_hash", "environment", "git_commit")
AS_OF = "as_of"


def input_tag(key: str) -> str:
    """The tag holding the Delta version of table `key` a run read."""
    return f"input.{key}.version"


def output_tag(key: str) -> str:
    """The tag holding the Delta version of table `key` a run wrote."""
    return f"output.{key}.version"


def tracking_uri(config: Config) -> str:
    return config.mlflow.tracking_uri or f"sqlite:///{Path(config.storage.root) / 'mlflow.db'}"


def configure_mlflow(config: Config) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; its id."""
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        _start_from_empty_store(database)
    mlflow.set_tracking_uri(uri)
    if config.mlflow.registry_uri:
        mlflow.set_registry_uri(config.mlflow.registry_uri)
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = default_artifact_location(config, uri)
    experiment_id = mlflow.create_experiment(config.mlflow.experiment, artifact_location=artifacts)
    log.info("created MLflow experiment %s at %s", config.mlflow.experiment, uri)
    return experiment_id


# MLflow makes a new SQLite store by running its schema migrations one by one: about 1 s of
# CPU, paid by every new storage root (each test's). A copy of an empty store made once per
# MLflow version takes 35 ms. The copy holds the schema and no experiment: MLflow adds its
# Default experiment on opening it, as it does in a store it made itself.
EMPTY_STORES = CACHE_DIR / "mlflow"


def _start_from_empty_store(database: Path) -> None:
    """A new SQLite store at `database` as a copy of the empty one; left to MLflow when the
    store exists, or the copy cannot be made (then MLflow makes it, as without the copy)."""
    if database.exists():
        return
    empty = _empty_store()
    if empty is None:
        return
    staged = database.with_name(f".{database.name}.{uuid.uuid4().hex}")
    try:
        shutil.copyfile(empty, staged)
        os.link(staged, database)  # never over a store another process made meanwhile
    except OSError as error:
        log.debug("MLflow store %s left to MLflow to create (%s)", database, error)
    finally:
        staged.unlink(missing_ok=True)


@functools.cache
def _empty_store() -> Path | None:
    """An empty SQLite tracking store of this MLflow version (made once per machine and
    user); None when it cannot be made."""
    empty = EMPTY_STORES / f"empty-{mlflow.__version__}.db"
    if empty.is_file():
        return empty
    try:
        EMPTY_STORES.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=EMPTY_STORES) as scratch:
            database = Path(scratch) / "mlflow.db"
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            SqlAlchemyStore(f"sqlite:///{database}", Path(scratch).as_uri()).engine.dispose()
            with sqlite3.connect(database) as connection:
                connection.execute("DELETE FROM experiment_tags")
                connection.execute("DELETE FROM experiments")  # MLflow's Default, with this folder as its artifacts'
            connection.close()
            os.replace(database, empty)
    except Exception as error:  # noqa: BLE001 - without the copy MLflow makes each store itself
        log.debug("no empty MLflow store to copy (%s)", error)
        return None
    return empty


def is_server(uri: str) -> bool:
    """A tracking server (`mlflow server`, Databricks) rather than a database or folder the
    client writes itself: the server then owns the artifact root and the registry."""
    return urlparse(uri).scheme in ("http", "https", "databricks") or uri == "databricks"


def default_artifact_location(config: Config, uri: str) -> str | None:
    """Where a new experiment's artifacts go: configured, else the server's own root, else
    `<storage.root>/mlartifacts` next to a store the client writes directly (SQLite, a
    PostgreSQL URI, a folder)."""
    if config.mlflow.artifact_location is not None:
        return config.mlflow.artifact_location
    if is_server(uri):
        return None
    return (Path(config.storage.root) / "mlartifacts").resolve().as_uri()


def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces only."""
    return re.sub(r"[^\w\-. /]", "_", text)


@functools.cache
def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def run_tags(config: Config, stage: str, pipeline_run_id: str) -> dict[str, str]:
    """The `RUN_TAGS` of a stage run."""
    return {
        "stage": stage,
        "pipeline_run_id": pipeline_run_id,
        "config_hash": config.fingerprint(),
        "environment": config.environment,
        "git_commit": git_commit(),
    }


@contextmanager
def stage_run(
    config: Config, stage: str, pipeline_run_id: str, tags: dict[str, str] | None = None, run_name: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage (named after it unless `run_name` says otherwise), nested
    under the active run if there is one (the pipeline's, or a stage's for its child runs)."""
    experiment_id = configure_mlflow(config)
    all_tags = {**run_tags(config, stage, pipeline_run_id), **(tags or {})}
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or stage, nested=nested, tags=all_tags) as run:
        yield run


def log_delta_input(ref: TableRef, version: int | None, context: str) -> None:
    """Record a Delta table version the active run read (an MLflow dataset input)."""
    source = (
        DeltaDatasetSource(path=ref.location, delta_table_version=version)
        if ref.is_path
        else DeltaDatasetSource(delta_table_name=ref.location, delta_table_version=version)
    )
    # The digest carries the version: MLflow's source JSON omits a version of 0 (falsy).
    mlflow.log_input(MetaDataset(source=source, name=ref.key, digest=f"v{version}"), context=context)
    mlflow.set_tag(input_tag(ref.key), str(version))


def log_delta_output(ref: TableRef, version: int | None) -> None:
    """Record the Delta version the active run wrote (None: the write was skipped as a retry
    of a commit already made, and nothing is tagged)."""
    if version is not None:
        mlflow.set_tag(output_tag(ref.key), str(version))
