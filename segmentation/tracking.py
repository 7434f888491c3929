"""MLflow tracking: where runs go, what every run carries, how inputs are recorded.

Local by default: a SQLite store and an artifact folder under `storage.root`. Every run is
tagged with the stage, the configuration fingerprint, the git commit and the pipeline run
id, and records the Delta versions it read as dataset inputs.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from segmentation.config import Config
from segmentation.tables import TableRef

log = logging.getLogger(__name__)


def tracking_uri(config: Config) -> str:
    return config.mlflow.tracking_uri or f"sqlite:///{Path(config.storage.root) / 'mlflow.db'}"


def configure_mlflow(config: Config) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; its id."""
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if config.mlflow.registry_uri:
        mlflow.set_registry_uri(config.mlflow.registry_uri)
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = config.mlflow.artifact_location
    if artifacts is None and "://" not in uri.removeprefix("sqlite://"):
        artifacts = (Path(config.storage.root) / "mlartifacts").resolve().as_uri()
    experiment_id = mlflow.create_experiment(config.mlflow.experiment, artifact_location=artifacts)
    log.info("created MLflow experiment %s at %s", config.mlflow.experiment, uri)
    return experiment_id


def metric_name(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . / and spaces only."""
    return re.sub(r"[^\w\-. /]", "_", text)


def git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


@contextmanager
def stage_run(config: Config, stage: str, pipeline_run_id: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, nested under the active pipeline run if there is one."""
    experiment_id = configure_mlflow(config)
    all_tags = {
        "stage": stage,
        "pipeline_run_id": pipeline_run_id,
        "config_hash": config.fingerprint(),
        "environment": config.environment,
        "git_commit": git_commit(),
        **(tags or {}),
    }
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, nested=nested, tags=all_tags) as run:
        yield run


CHAMPION = "champion"


def aliased_version(client, name: str, alias: str = CHAMPION):
    """The registered model version an alias points at; None when the model or alias does not
    exist yet (before the first promotion)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def log_delta_input(ref: TableRef, version: int | None, context: str) -> None:
    """Record a Delta table version the active run read (an MLflow dataset input)."""
    source = (
        DeltaDatasetSource(path=ref.location, delta_table_version=version)
        if ref.is_path
        else DeltaDatasetSource(delta_table_name=ref.location, delta_table_version=version)
    )
    # The digest carries the version: MLflow's source JSON omits a version of 0 (falsy).
    mlflow.log_input(MetaDataset(source=source, name=ref.key, digest=f"v{version}"), context=context)
    mlflow.set_tag(f"input.{ref.key}.version", str(version))
