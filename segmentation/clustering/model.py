"""K-means segmentation as a Spark ML pipeline, and the choice of k.

The pipeline: log transforms of skewed columns (SQLTransformer), median imputation of
missing values (customers with only returns have no recency), a vector, standardisation,
then KMeans (k-means|| initialisation) or BisectingKMeans, always seeded. k is fixed by
configuration or chosen by silhouette. K-means is fitted on a seeded sample of at most
`cluster.fit_sample` customers and the silhouette computed on one of at most
`cluster.silhouette_sample`, so neither grows with the customer count; every customer is
then assigned. The within-cluster cost of every candidate is kept for an elbow view. To
choose k for KMeans, every candidate is scored on the driver by numpy K-means on the
silhouette sample (`clustering/search.py`) and only the chosen k is fitted with Spark;
BisectingKMeans fits every candidate with Spark.

The registered model ends with `ClusterIds`, which maps K-means' cluster index to the stable
cluster id of `customer_clusters`: loaded with `mlflow.spark`, its `transform` adds
`cluster_id`; through `mlflow.pyfunc`, `predict` returns that id per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.clustering.search import KScore
from segmentation.config import ClusterConfig

VECTOR, SCALED, PREDICTION = "features_vector", "features_scaled", "cluster_index"
CLUSTER_ID = "cluster_id"


def model_input(name: str, log_features: list[str]) -> str:
    return f"{name}__log" if name in log_features else f"{name}__in"


def _imputed_inputs(config: ClusterConfig) -> list[str]:
    return [f"{model_input(f, config.log_features)}__imputed" for f in config.features]


def _preparation_stages(config: ClusterConfig) -> list:
    """The stages before the vector: log transforms, then median imputation of missing values."""
    inputs = [model_input(f, config.log_features) for f in config.features]
    prepared = ", ".join(
        # GREATEST skips nulls: a missing value must stay missing for the imputer.
        f"IF({f} IS NULL, NULL, LN(1 + GREATEST(CAST({f} AS DOUBLE), 0))) AS {f}__log" if f in config.log_features
        else f"CAST({f} AS DOUBLE) AS {f}__in"
        for f in config.features
    )
    return [
        SQLTransformer(statement=f"SELECT *, {prepared} FROM __THIS__"),
        Imputer(inputCols=inputs, outputCols=_imputed_inputs(config), strategy="median"),
    ]


def preparation(config: ClusterConfig) -> Pipeline:
    """Everything before the clusterer: logs, imputation, the vector and standardisation. It
    is fitted once per snapshot; every k and restart clusters the same prepared points."""
    return Pipeline(stages=[
        *_preparation_stages(config),
        VectorAssembler(inputCols=_imputed_inputs(config), outputCol=VECTOR),
        StandardScaler(inputCol=VECTOR, outputCol=SCALED, withMean=True, withStd=True),
    ])


def _clusterer(config: ClusterConfig, k: int, seed: int):
    algorithm = KMeans if config.algorithm == "kmeans" else BisectingKMeans
    return algorithm(featuresCol=SCALED, predictionCol=PREDICTION, k=k, seed=seed, maxIter=config.max_iterations)


@dataclass(frozen=True)
class Candidate(KScore):
    """A k fitted with Spark: its scores and the whole pipeline, raw features in."""

    model: PipelineModel


def fit_candidate(
    points: DataFrame, silhouette_points: DataFrame, prepared: PipelineModel, config: ClusterConfig, k: int
) -> Candidate:
    """Fit one k `config.restarts` times on `points` (customers as the fitted `preparation`
    `prepared` transforms them) and keep the lowest cost; the silhouette (squared euclidean)
    is computed on `silhouette_points`. The candidate's model is the whole pipeline, raw
    features in; its cost and sizes are those of `points`."""
    fits = [_clusterer(config, k, config.seed + restart).fit(points) for restart in range(config.restarts)]
    best = min(fits, key=lambda fitted: fitted.summary.trainingCost)
    silhouette = ClusteringEvaluator(featuresCol=SCALED, predictionCol=PREDICTION).evaluate(best.transform(silhouette_points))
    model = PipelineModel(stages=[*prepared.stages, best])
    return Candidate(k=k, cost=float(best.summary.trainingCost), silhouette=float(silhouette),
                     sizes=[int(s) for s in best.summary.clusterSizes], model=model)


Scored = TypeVar("Scored", bound=KScore)


def choose_k(candidates: Sequence[Scored]) -> Scored:
    """The highest silhouette; ties go to the smaller k (simpler segmentations read better)."""
    return max(candidates, key=lambda c: (round(c.silhouette, 9), -c.k))


def candidate_ks(config: ClusterConfig) -> list[int]:
    return [config.k] if config.k is not None else list(range(config.k_min, config.k_max + 1))


def standardised_points(points: DataFrame) -> np.ndarray:
    """The standardised vectors of `points` (the output of the fitted `preparation`) on the
    driver, one row each: only for a bounded sample, such as the silhouette sample."""
    return np.array([row[0] for row in points.select(vector_to_array(F.col(SCALED))).collect()], dtype=float)


def features_without_spread(customers: DataFrame, config: ClusterConfig) -> tuple[list[str], list[str]]:
    """The features no customer has a value for (median imputation has nothing to fill them
    with), and those with one value for every customer who has one (they cannot separate
    clusters); one aggregate."""
    row = customers.agg(*[agg(F.col(f)).alias(f"{f}__{name}") for f in config.features
                          for name, agg in (("n", F.count), ("low", F.min), ("high", F.max))]).first()
    empty = [f for f in config.features if row[f"{f}__n"] == 0]
    constant = [f for f in config.features if row[f"{f}__n"] > 0 and row[f"{f}__low"] == row[f"{f}__high"]]
    return empty, constant


def distinct_points(points: DataFrame, config: ClusterConfig) -> int:
    """The customers K-means can tell apart: distinct points after logs and imputation (in
    `points`, the output of the fitted `preparation`). There are never more clusters than
    that (Spark's K-means fails outright when k is larger)."""
    return points.select(*_imputed_inputs(config)).distinct().count()


@dataclass(frozen=True)
class Space:
    """The fitted model's space: per input, the scaler's mean and standard deviation, and the
    centroids both standardised and in input units (after logs), indexed as the model does."""

    inputs: list[str]
    mean: np.ndarray
    std: np.ndarray
    centroids_scaled: np.ndarray

    @property
    def centroids(self) -> np.ndarray:
        return self.centroids_scaled * self.std + self.mean

    def standardise(self, points: np.ndarray) -> np.ndarray:
        return (points - self.mean) / np.where(self.std > 0, self.std, 1.0)


def model_space(model: PipelineModel, config: ClusterConfig) -> Space:
    scaler, clusterer = model.stages[3], model.stages[4]
    return Space(
        inputs=[model_input(f, config.log_features) for f in config.features],
        mean=np.array(scaler.mean.toArray()),
        std=np.array(scaler.std.toArray()),
        centroids_scaled=np.array([np.array(c) for c in clusterer.clusterCenters()]),
    )


def stable_cluster_id(index: Column, stable_ids: list[int]) -> Column:
    """The stable id of the model's cluster `index` (0-based, as K-means numbers its clusters)."""
    return F.element_at(F.array(*[F.lit(int(i)) for i in stable_ids]), index + 1)


class ClusterIds(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """The stable cluster id of each row's cluster index."""

    ids = Param(Params._dummy(), "ids", "stable cluster id per cluster index", TypeConverters.toListInt)

    @keyword_only
    def __init__(self, inputCol: str = PREDICTION, outputCol: str = CLUSTER_ID, ids: list[int] | None = None) -> None:
        super().__init__()
        self._setDefault(inputCol=PREDICTION, outputCol=CLUSTER_ID, ids=[])
        self._set(**self._input_kwargs)

    # MLflow's pyfunc flavour reads a `prediction` column; it renames the last stage's output
    # with setOutputCol when there is none.
    def setOutputCol(self, value: str) -> "ClusterIds":
        return self._set(outputCol=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return dataset.withColumn(self.getOutputCol(), stable_cluster_id(F.col(self.getInputCol()), self.getOrDefault(self.ids)))


def with_cluster_ids(model: PipelineModel, stable_ids: list[int]) -> PipelineModel:
    """The model as it is registered: `model`, then its cluster index mapped to the stable id."""
    return PipelineModel(stages=[*model.stages, ClusterIds(ids=stable_ids)])


def assign_clusters(model: PipelineModel, customers: DataFrame, space: Space, stable_ids: list[int]) -> DataFrame:
    """customer_id, the stable cluster id and the (standardised) distance to its centroid."""
    scored = model.transform(customers)
    centroids = F.array(*[F.array(*[F.lit(float(v)) for v in row]) for row in space.centroids_scaled])
    centroid = F.element_at(centroids, F.col(PREDICTION) + 1)
    squared = F.aggregate(
        F.zip_with(vector_to_array(SCALED), centroid, lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda acc, v: acc + v
    )
    return scored.select(
        "customer_id",
        stable_cluster_id(F.col(PREDICTION), stable_ids).alias(CLUSTER_ID),
        F.sqrt(squared).alias("distance_to_centroid"),
        F.col(PREDICTION).alias("model_cluster_index"),
    )
