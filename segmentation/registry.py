"""The MLflow model registry of both registered models (`cluster.registered_model`,
`churn.registered_model`): the version an alias points at, how a fitted Spark pipeline
becomes a new version, and the promotion rule that moves the `champion` alias.

Registry aliases (`champion`, `challenger`), not the deprecated stages. `decide_promotion`
is a function of plain values (no Spark, no MLflow); `record_decision` applies what it
decided: it moves the alias and tags the active run with `champion_decision` and
`champion_reason`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
import pyspark
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from segmentation.errors import SetupError

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel

CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG, REASON_TAG = "champion_decision", "champion_reason"
# A Spark ML pipeline loads with the Spark and MLflow versions that saved it.
PIP_REQUIREMENTS = [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"]


@dataclass(frozen=True)
class RegisteredVersion:
    """A version of a registered model with the tags and metrics of the run that logged it."""

    name: str
    version: str
    run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def aliased_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> RegisteredVersion | None:
    """The version `alias` points at; None when the model or the alias does not exist yet
    (before the first promotion)."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    run = client.get_run(version.run_id)
    return RegisteredVersion(name, str(version.version), version.run_id, dict(run.data.tags), dict(run.data.metrics))


def register_spark_model(model: PipelineModel, name: str, inputs: pd.DataFrame, outputs: pd.DataFrame | pd.Series) -> str:
    """Log `model` as the active run's `model` artifact, with the signature of a few input
    rows and the model's output on them, and register it as a new version of `name`."""
    with warnings.catch_warnings():  # an integer output (a cluster index) is never missing
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(inputs, outputs)
    if _connect_client():
        # mlflow.spark's own save copies the saved model through the JVM's Hadoop FileSystem,
        # which a Spark Connect client has not. The same artifact, logged the way
        # mlflow.spark.log_model logs to a local artifact store (Model._log_v2).
        info = mlflow.models.Model._log_v2(
            artifact_path="model", flavor=_ConnectSparkFlavor, spark_model=model, registered_model_name=name,
            signature=signature, pip_requirements=PIP_REQUIREMENTS,
        )
    else:
        info = mlflow.spark.log_model(
            model, "model", registered_model_name=name, signature=signature, pip_requirements=PIP_REQUIREMENTS,
        )
    return str(info.registered_model_version)


def load_spark_model(uri: str) -> PipelineModel:
    """A registered Spark ML pipeline (`models:/name/version`), on a classic or a Spark
    Connect session. Connect: the artifact is downloaded here and the server reads it."""
    if not _connect_client():
        return mlflow.spark.load_model(uri)
    from pyspark.ml import PipelineModel

    local = mlflow.artifacts.download_artifacts(uri)
    data = mlflow.models.Model.load(local).flavors[mlflow.spark.FLAVOR_NAME]["model_data"]
    # The server reads this client's folder: it runs on this machine (make connect-server).
    return PipelineModel.load(os.path.join(local, data))


def _connect_client() -> bool:
    """A Spark Connect session outside Databricks (where mlflow.spark stages models in a
    Unity Catalog volume itself)."""
    from segmentation.spark import is_connect, running_on_databricks

    return is_connect() and not running_on_databricks()


class _ConnectSparkFlavor:
    """mlflow.spark's flavor as a Connect client saves it: the server writes the pipeline
    (Spark ML's format) into the model folder, then mlflow.spark's own metadata is added, so
    the artifact is the one mlflow.spark.log_model makes and loads with mlflow.spark or pyfunc."""

    @staticmethod
    def save_model(spark_model: PipelineModel, path: str, mlflow_model, signature=None, pip_requirements=None, **_) -> None:
        data = os.path.join(path, "sparkml")
        spark_model.write().save(data)  # by the server, on this machine
        if not os.path.isdir(os.path.join(data, "metadata")):
            raise SetupError(
                "the Spark Connect server saved the model where this client cannot read it: Spark ML models are "
                "logged to MLflow from a Connect session only with the server on this machine (make connect-server)"
            )
        mlflow.spark._save_model_metadata(
            dst_dir=path, spark_model=spark_model, mlflow_model=mlflow_model, conda_env=None, code_paths=None,
            signature=signature, pip_requirements=pip_requirements,
        )


def set_challenger(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHALLENGER, version)


def record_grade(client: MlflowClient, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Tag the active run and the version it registered with a quality grade (`grades.Grade.tags`)."""
    mlflow.set_tags(dict(tags))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


# ---------------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class PromotionRule:
    """When a new version replaces the champion, on one metric. Exactly one of:
    `tolerance`: unless it is worse than the champion's metric by more than this (a tie
    promotes; the cluster rule, against the silhouette the champion's run logged);
    `min_improvement`: only when it is better by more than this (a tie keeps; the churn rule,
    against the champion re-scored on the new version's evaluation rows)."""

    metric: str
    higher_is_better: bool = True
    tolerance: float | None = None
    min_improvement: float | None = None

    def __post_init__(self) -> None:
        if (self.tolerance is None) == (self.min_improvement is None):
            raise ValueError("a promotion rule takes exactly one of tolerance and min_improvement")


@dataclass(frozen=True)
class ChampionMetric:
    """The current champion as the rule sees it."""

    version: str
    value: float | None  # its value of the rule's metric; None when it could not be scored
    incomparable: str | None = None  # why its metric says nothing about the new version's (it is then replaced)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str

    @property
    def outcome(self) -> str:
        """The `champion_decision` tag."""
        return "promoted" if self.promote else "kept"


def _gain(candidate: float, current: float, rule: PromotionRule) -> float:
    return (candidate - current) if rule.higher_is_better else (current - candidate)


def best_baseline(baselines: Mapping[str, float], rule: PromotionRule) -> str:
    """The name of the baseline with the best value of the rule's metric (the first on a tie)."""
    best = max if rule.higher_is_better else min
    return best(baselines, key=lambda name: baselines[name])


def baseline_shortfall(candidate: float, baselines: Mapping[str, float], rule: PromotionRule) -> str | None:
    """Why a new version whose metric is `candidate` does not beat every baseline by more than
    the rule's min_improvement (None when it does; a tie with a baseline is a loss)."""
    margin = rule.min_improvement or 0.0
    name = best_baseline(baselines, rule)
    if _gain(candidate, baselines[name], rule) > margin:
        return None
    return (f"{rule.metric} {candidate:.4f} does not beat the {name} baseline's {baselines[name]:.4f} "
            f"on the same evaluation rows by more than {margin}")


def decide_promotion(candidate: float, champion: ChampionMetric | None, rule: PromotionRule,
                     baselines: Mapping[str, float] | None = None) -> Decision:
    """Whether a new version whose metric is `candidate` replaces `champion`, and why.

    With `baselines` (name -> the rule's metric of a non-learned score on the same rows), a
    version that does not beat every one of them by more than min_improvement is never
    promoted, not even the first. Then: no champion, a champion whose metric is not
    comparable, or one that could not be scored: promote. Otherwise the rule's tolerance or
    required improvement decides; the reasons are the runs' `champion_reason` tags and read by
    people and tests.
    """
    shortfall = baseline_shortfall(candidate, baselines, rule) if baselines else None
    if shortfall is not None:
        return Decision(False, shortfall)
    if champion is None:
        return Decision(True, "no champion yet")
    if champion.incomparable is not None:
        return Decision(True, f"champion version {champion.version} {champion.incomparable}: the metrics are not comparable")
    if champion.value is None:
        return Decision(True, f"champion version {champion.version} cannot score the evaluation rows")
    name, current = rule.metric, champion.value
    if rule.tolerance is not None:
        tolerance = rule.tolerance
        if rule.higher_is_better:
            promote = candidate >= current - tolerance
            relation, sign = (">=" if promote else "<"), "-"
        else:
            promote = candidate <= current + tolerance
            relation, sign = ("<=" if promote else ">"), "+"
        return Decision(promote, f"{name} {candidate:.4f} {relation} champion's {current:.4f} {sign} {tolerance}")
    promote = _gain(candidate, current, rule) > rule.min_improvement
    relation = "beats" if promote else "does not beat"
    return Decision(promote, (f"{name} {candidate:.4f} {relation} champion version {champion.version}'s {current:.4f} "
                              f"on the same evaluation rows by more than {rule.min_improvement}"))


def record_decision(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Move the `champion` alias to `version` when the decision promotes it; tag the active
    run with the decision either way."""
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    mlflow.set_tags({DECISION_TAG: decision.outcome, REASON_TAG: decision.reason})
