"""The drivers behind each churn score: every feature's additive contribution to the model's
margin, and the three that raised it most (`churn_drivers`).

The margin is the classifier's raw score for churn, `rawPrediction[1]`, and for every
customer `base value + sum of the contributions = margin` (to rounding):
- gradient-boosted trees: margin = sum over trees of weight x tree output, and the
  contributions are exact path-dependent TreeSHAP values (Lundberg et al. 2018) over the
  model's own trees, the node covers being the training weight that reached each node. The
  base value is the cover-weighted mean output. Spark's probability is 1 / (1 + exp(-2 margin));
- logistic regression (on standardised features): margin = intercept + coefficient . z,
  with z the standardised value (StandardScaler with mean and deviation of the training
  rows); a feature contributes coefficient x z, the base value is the intercept.

`churn_probability` then multiplies the odds by the class-weight correction: its log-odds
are 2 margin + ln(oddsFactor) for the GBT and margin + ln(oddsFactor) for the logistic
regression. Both are increasing in the margin, so a positive contribution raises the score.
A driver's `value` is the feature as the model takes it: cast to double and imputed.

The trees come from Spark's own model persistence (`write().save` then the `data/` Parquet
files), not from the JVM, so this also works on Spark Connect. They are written under
MLflow's DFS temporary directory (`MLFLOW_DFS_TMP`, /tmp/mlflow by default), where MLflow's
Spark flavour stages models too; a cluster needs it on storage every node sees. The explainer
is a few arrays per tree; it travels to the executors inside the pandas UDF.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.environment_variables import MLFLOW_DFS_TMP
from pyspark.ml import PipelineModel
from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation.churn.model import PROBABILITY, SCALED, VECTOR, model_features
from segmentation.churn.treeshap import Tree, TreeExplainer  # numpy only: the explainer travels to the workers

DRIVERS = "churn_drivers"
CONTRIBUTIONS = "churn_contributions"
DRIVERS_TYPE = "array<struct<feature:string,value:double,contribution:double>>"
TOP_DRIVERS = 3


def trees_of(model, spark: SparkSession) -> tuple[list[Tree], list[float]]:
    """A fitted GBT's trees and weights, read from its persisted form (no JVM call)."""
    path = f"{MLFLOW_DFS_TMP.get().rstrip('/')}/segmentation-trees-{uuid.uuid4().hex}"
    model.write().save(path)
    try:
        nodes = spark.read.parquet(f"{path}/data").select(
            "treeID", "nodeData.id", "nodeData.prediction", "nodeData.impurityStats", "nodeData.leftChild",
            "nodeData.rightChild", "nodeData.split.featureIndex", "nodeData.split.leftCategoriesOrThreshold",
            "nodeData.split.numCategories",
        ).toPandas()  # bounded by the model's trees, not by customers
    finally:
        if os.path.isdir(path):  # a local directory; a distributed file system keeps it under MLFLOW_DFS_TMP
            shutil.rmtree(path, ignore_errors=True)
    if (nodes["numCategories"] >= 0).any():
        raise ValueError("categorical tree splits are not supported: the churn features are continuous")
    trees = []
    for _, tree in nodes.sort_values(["treeID", "id"]).groupby("treeID"):
        if not np.array_equal(tree["id"].to_numpy(), np.arange(len(tree))):
            raise ValueError("tree node ids are not 0..n-1")
        trees.append(Tree(
            left=tree["leftChild"].to_numpy(np.int64), right=tree["rightChild"].to_numpy(np.int64),
            feature=tree["featureIndex"].to_numpy(np.int64),
            threshold=np.array([t[0] if len(t) else np.nan for t in tree["leftCategoriesOrThreshold"]]),
            value=tree["prediction"].to_numpy(float),
            cover=np.array([stats[0] for stats in tree["impurityStats"]], dtype=float),  # variance: weighted count first
        ))
    return trees, list(model.treeWeights)


# ------------------------------------------------------------------------------ in Spark


@dataclass(frozen=True)
class Explained:
    """`model.transform(rows)` with CONTRIBUTIONS (array<double>, in feature order)."""

    rows: DataFrame
    base_value: float


def explained(model: PipelineModel, rows: DataFrame) -> Explained:
    """Each row scored by `model`, with every feature's contribution to its margin."""
    fitted = model.stages[-2]
    if isinstance(fitted, LogisticRegressionModel):
        scaled = vector_to_array(F.col(SCALED))
        column = F.array(*[scaled[j] * F.lit(float(c)) for j, c in enumerate(fitted.coefficients.toArray())])
        base = float(fitted.intercept)
    else:
        explainer = TreeExplainer.of(*trees_of(fitted, rows.sparkSession))
        column = _tree_shap(explainer)(vector_to_array(F.col(VECTOR)))
        base = explainer.base_value
    return Explained(model.transform(rows).withColumn(CONTRIBUTIONS, column), base)


def _tree_shap(explainer: TreeExplainer):
    @F.pandas_udf("array<double>")  # type: ignore[call-overload]
    def tree_shap(rows: pd.Series) -> pd.Series:
        x = np.stack(rows.to_numpy()).astype(float) if len(rows) else np.empty((0, 0))
        return pd.Series(list(explainer.contributions(x)))

    return tree_shap


def top_drivers(features: list[str], top: int = TOP_DRIVERS) -> Column:
    """The `top` features with the largest positive contributions, largest first (on the
    rows of `explained`): name, the model's input value and the contribution."""
    values, contributions = vector_to_array(F.col(VECTOR)), F.col(CONTRIBUTIONS)
    entries = F.array(*[
        F.struct(F.lit(name).alias("feature"), values[j].alias("value"), contributions[j].alias("contribution"))
        for j, name in enumerate(features)
    ])
    raising = F.filter(entries, lambda e: e["contribution"] > 0)
    ranked = F.array_sort(raising, lambda a, b: F.when(a["contribution"] > b["contribution"], -1)
                          .when(a["contribution"] < b["contribution"], 1)
                          .when(a["feature"] < b["feature"], -1).when(a["feature"] > b["feature"], 1).otherwise(0))
    return F.slice(ranked, 1, top).cast(DRIVERS_TYPE)


def score_with_drivers(model: PipelineModel, customers: DataFrame) -> DataFrame:
    """`customers` plus `churn_probability` and `churn_drivers` from a fitted pipeline."""
    scored = explained(model, customers).rows
    return scored.select(*customers.columns, PROBABILITY, top_drivers(model_features(model)).alias(DRIVERS))


def driver_importance(model: PipelineModel, rows: DataFrame) -> dict[str, float]:
    """Global importance: each feature's mean absolute contribution over `rows`, largest first."""
    features, contributions = model_features(model), F.col(CONTRIBUTIONS)
    means = explained(model, rows).rows.agg(*[F.avg(F.abs(contributions[j])) for j in range(len(features))]).first()
    return dict(sorted(((name, float(means[j] or 0.0)) for j, name in enumerate(features)), key=lambda p: -p[1]))
