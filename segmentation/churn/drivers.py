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

import math
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

DRIVERS = "churn_drivers"
CONTRIBUTIONS = "churn_contributions"
DRIVERS_TYPE = "array<struct<feature:string,value:double,contribution:double>>"
TOP_DRIVERS = 3


# ------------------------------------------------------------------------------ TreeSHAP


@dataclass(frozen=True)
class Tree:
    """One regression tree as arrays indexed by node id (-1: no child, a leaf)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray  # go left when value <= threshold (Spark's rule; NaN goes right)
    value: np.ndarray
    cover: np.ndarray  # training weight that reached the node


@dataclass(frozen=True)
class LeafPath:
    """A leaf seen from the root: its distinct split features, the range each must fall in
    to reach the leaf, and the share of the cover that reaches it through that feature's
    splits (the leaf's 'zero fractions')."""

    value: float  # tree weight x leaf output
    features: np.ndarray
    lower: np.ndarray  # reach the leaf when lower < x (-inf: no bound) ...
    upper: np.ndarray  # ... and x <= upper (+inf: no bound)
    cover_share: np.ndarray


def leaf_paths(tree: Tree, weight: float) -> list[LeafPath]:
    """Every leaf of `tree`, its output scaled by the tree's weight in the ensemble."""
    paths: list[LeafPath] = []

    def walk(node: int, bounds: dict[int, list[float]]) -> None:
        if tree.left[node] < 0:
            features = np.array(sorted(bounds), dtype=np.int64)
            paths.append(LeafPath(
                weight * float(tree.value[node]), features,
                np.array([bounds[f][0] for f in features]), np.array([bounds[f][1] for f in features]),
                np.array([bounds[f][2] for f in features]),
            ))
            return
        feature, threshold = int(tree.feature[node]), float(tree.threshold[node])
        for child, goes_left in ((tree.left[node], True), (tree.right[node], False)):
            lower, upper, share = bounds.get(feature, [-math.inf, math.inf, 1.0])
            share *= float(tree.cover[child]) / float(tree.cover[node])
            bound = [lower, min(upper, threshold), share] if goes_left else [max(lower, threshold), upper, share]
            walk(int(child), {**bounds, feature: bound})

    walk(0, {})
    return paths


def shapley_of_leaf(value: float, shares: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """Shapley values of the leaf's game v(S) = value x prod(reached_k if k in S else share_k)
    for each row of `reached` (rows x features, 0/1): the leaf's part of E[f(x) | x_S] in
    path-dependent TreeSHAP. Sum over subsets by the coefficients of prod(share_k + reached_k t)."""
    rows, d = reached.shape
    weights = np.array([math.factorial(s) * math.factorial(d - 1 - s) / math.factorial(d) for s in range(d)])
    result = np.empty((rows, d))
    for i in range(d):
        coefficients = np.zeros((rows, d))
        coefficients[:, 0] = 1.0
        for k in range(d):
            if k == i:
                continue
            shifted = np.zeros_like(coefficients)
            shifted[:, 1:] = coefficients[:, :-1] * reached[:, k:k + 1]
            coefficients = coefficients * shares[k] + shifted
        result[:, i] = value * (reached[:, i] - shares[i]) * (coefficients @ weights)
    return result


@dataclass(frozen=True)
class TreeExplainer:
    """Exact path-dependent TreeSHAP of a weighted sum of trees, vectorised over rows."""

    leaves: tuple[LeafPath, ...]
    base_value: float

    @classmethod
    def of(cls, trees: list[Tree], weights: list[float]) -> "TreeExplainer":
        leaves = [leaf for tree, weight in zip(trees, weights) for leaf in leaf_paths(tree, weight)]
        base = sum(leaf.value * float(np.prod(leaf.cover_share)) for leaf in leaves)
        return cls(tuple(leaves), base)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Rows x features: each feature's contribution to each row's margin."""
        phi = np.zeros(x.shape)
        for leaf in self.leaves:
            if len(leaf.features) == 0:
                continue
            values = x[:, leaf.features]
            reached = (~(values <= leaf.lower) & ((values <= leaf.upper) | np.isinf(leaf.upper))).astype(np.int64)
            # Rows share few reach patterns (at most 2^depth): solve each pattern once.
            bits = np.arange(len(leaf.features))
            codes, inverse = _distinct(reached @ (1 << bits), len(bits))
            patterns = (codes[:, None] >> bits) & 1
            phi[:, leaf.features] += shapley_of_leaf(leaf.value, leaf.cover_share, patterns)[inverse]
        return phi


def _distinct(codes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct codes and each row's position among them (np.unique without a sort
    while the codes are few)."""
    if bits > 20:
        return np.unique(codes, return_inverse=True)
    present = np.flatnonzero(np.bincount(codes, minlength=1 << bits))
    position = np.empty(1 << bits, dtype=np.int64)
    position[present] = np.arange(len(present))
    return present, position[codes]


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
