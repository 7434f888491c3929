"""K-means segmentation as a Spark ML pipeline, and the choice of k.

The pipeline: log transforms of skewed columns (SQLTransformer), median imputation of
missing values (customers with only returns have no recency), a vector, standardisation,
then KMeans or BisectingKMeans, always seeded. k is fixed by configuration or chosen by
silhouette. K-means is fitted on a seeded sample of at most `cluster.fit_sample` customers and
the silhouette computed on one of at most `cluster.silhouette_sample`, so neither grows with
the customer count; every customer is then assigned. The within-cluster cost of every
candidate is kept for an elbow view. For KMeans, every candidate k is fitted and scored on the
driver by numpy K-means on the silhouette sample (`clustering/search.py`); the chosen k is
then fitted on the fit sample by Lloyd's iterations from the centres found there (or from the
champion's, `cluster.warm_start`), ending in a Spark KMeansModel. BisectingKMeans fits every
candidate with Spark.

The registered model ends with `ClusterIds`, which maps K-means' cluster index to the stable
cluster id of `customer_clusters`: loaded with `mlflow.spark`, its `transform` adds
`cluster_id`; through `mlflow.pyfunc`, `predict` returns that id per row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np
from pyspark import StorageLevel, keyword_only
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.clustering import search
from segmentation.clustering.search import KScore
from segmentation.config import ClusterConfig
from segmentation.privacy import CUSTOMER_COLUMN

log = logging.getLogger(__name__)

VECTOR, SCALED, PREDICTION = "features_vector", "features_scaled", "cluster_index"
CLUSTER_ID = "cluster_id"
# Lloyd's iterations stop when no centre moves farther than this (Spark's K-means default).
TOLERANCE = 1e-4
# How a fit's centres started: Spark's k-means|| initialisation, the champion's centres, the
# centres the driver's K-means found on the silhouette sample; BisectingKMeans splits instead.
KMEANS_PARALLEL, CHAMPION_START, SAMPLE_START, BISECTING = "k-means||", "champion", "sample", "bisecting"


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
    """A k fitted on the fit sample: its scores, the whole pipeline (raw features in, a Spark
    K-means model last), and where its centres started (see KMEANS_PARALLEL)."""

    model: PipelineModel
    start: str = KMEANS_PARALLEL
    solver: str = "spark"  # where Lloyd's iterations ran: "spark", or "numpy" on the driver


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
                     sizes=[int(s) for s in best.summary.clusterSizes], model=model,
                     start=KMEANS_PARALLEL if config.algorithm == "kmeans" else BISECTING)


def fit_from_centres(
    points: DataFrame, silhouette_points: DataFrame, prepared: PipelineModel, config: ClusterConfig, start: np.ndarray,
    started_from: str,
) -> Candidate:
    """K-means from given standardised centres (the sample's, or the champion's for a
    retrain; `started_from` names them): Lloyd's iterations over `points`, the silhouette on
    `silhouette_points`. The model is the same pipeline as `fit_candidate`'s, with a Spark
    KMeansModel at the centres reached (Spark's K-means takes no initial centres;
    `_kmeans_model_at`).

    With `cluster.fit_sample` set, `points` are at most about that many customers: they come
    to the driver, where an iteration takes milliseconds; in Spark (`lloyd`) each took a
    query plan and two jobs, about 1.3 s at 100,000 customers, and from the driver's centres
    the fit took 35 of them there. Without it (every customer), the iterations run in Spark."""
    on_driver = config.fit_sample is not None
    if on_driver:
        fit = search.lloyd(standardised_points(points), start, config.max_iterations, TOLERANCE)
        centres, cost = fit.centroids, fit.inertia
        sizes = np.bincount(fit.labels, minlength=len(start)).tolist()
        log.info("Lloyd's iterations on the driver over the %d points of the fit sample (cluster.fit_sample)", len(fit.labels))
    else:
        centres, cost, sizes = lloyd(points, start, config.max_iterations)
    clusterer, order = _kmeans_model_at(points.sparkSession, centres, config.seed)
    silhouette = ClusteringEvaluator(featuresCol=SCALED, predictionCol=PREDICTION).evaluate(clusterer.transform(silhouette_points))
    return Candidate(k=len(centres), cost=cost, silhouette=float(silhouette), sizes=[sizes[i] for i in order],
                     model=PipelineModel(stages=[*prepared.stages, clusterer]), start=started_from,
                     solver="numpy" if on_driver else "spark")


def lloyd(points: DataFrame, start: np.ndarray, max_iterations: int) -> tuple[np.ndarray, float, list[int]]:
    """Lloyd's K-means iterations from `start` over the standardised vectors of `points`, one
    Spark aggregate each, until no centre moves more than TOLERANCE or `max_iterations`. An
    empty cluster keeps its centre (as Spark's K-means does). The centres reached, and the
    cost (sum of squared distances) and sizes of the assignment to them."""
    vectors = points.select(vector_to_array(F.col(SCALED)).alias("x")).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        centres = np.array(start, dtype=float)
        for iteration in range(1, max_iterations + 1):
            sizes, sums, _ = _assignment(vectors, centres)
            moved = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centres)
            shift = float(np.sqrt(((moved - centres) ** 2).sum(axis=1)).max())
            centres = moved
            if shift <= TOLERANCE:
                break
        sizes, _, cost = _assignment(vectors, centres)
    finally:
        vectors.unpersist()
    log.info("Lloyd's iterations from the given centres: %d, the last moved a centre by %.2g", iteration, shift)
    return centres, cost, [int(size) for size in sizes]


def _assignment(vectors: DataFrame, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Each point to its nearest centre (ties: the lower index): per centre, the points and
    their sum, and the total squared distance. One aggregate, k rows to the driver."""
    x = F.col("x")
    dimensions = centres.shape[1]
    distances = [sum((x[i] - F.lit(float(centre[i]))) ** 2 for i in range(dimensions)) for centre in centres]
    nearest = F.least(*[F.struct(d.alias("distance"), F.lit(j).alias("index")) for j, d in enumerate(distances)])
    rows = (vectors.select(nearest.alias("n"), x)
            .groupBy(F.col("n.index").alias("index"))
            .agg(F.count(F.lit(1)).alias("size"), F.sum("n.distance").alias("cost"), *[F.sum(x[i]).alias(f"s{i}") for i in range(dimensions)])
            .collect())
    sizes, sums = np.zeros(len(centres)), np.zeros_like(centres)
    for row in rows:
        sizes[row["index"]] = row["size"]
        sums[row["index"]] = [row[f"s{i}"] for i in range(dimensions)]
    return sizes, sums, float(sum(row["cost"] for row in rows))


def _kmeans_model_at(spark, centres: np.ndarray, seed: int):
    """A Spark KMeansModel whose centres are `centres`: K-means with k = len(centres) on those
    k points alone, each its own cluster. Its order of the centres (model index -> index in
    `centres`)."""
    frame = spark.createDataFrame([(Vectors.dense(c),) for c in centres], [SCALED])
    model = KMeans(featuresCol=SCALED, predictionCol=PREDICTION, k=len(centres), initMode="random", maxIter=1, seed=seed).fit(frame)
    found = np.array([np.array(c) for c in model.clusterCenters()])
    gaps = np.sqrt(((found[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    order = [int(i) for i in gaps.argmin(axis=1)]
    if len(found) != len(centres) or sorted(order) != list(range(len(centres))) or gaps.min(axis=1).max() > 1e-9:
        raise RuntimeError(f"Spark's K-means did not keep the {len(centres)} given centres (it found {len(found)})")
    return model, order


def standardised_centres(prepared: PipelineModel, config: ClusterConfig, inputs: list[str], centroids: np.ndarray) -> np.ndarray | None:
    """Centroids in input units (after logs), standardised with the scaler of `prepared` (the
    fitted `preparation`); None when they are of other inputs than `config`'s."""
    scaler = prepared.stages[-1]
    space = Space([model_input(f, config.log_features) for f in config.features], np.array(scaler.mean.toArray()),
                  np.array(scaler.std.toArray()), np.empty((0, len(inputs))))
    return space.standardise(np.asarray(centroids, dtype=float)) if inputs == space.inputs else None


Scored = TypeVar("Scored", bound=KScore)


def choose_k(candidates: Sequence[Scored]) -> Scored:
    """The highest silhouette; ties go to the smaller k (simpler segmentations read better)."""
    return max(candidates, key=lambda c: (round(c.silhouette, 9), -c.k))


def candidate_ks(config: ClusterConfig) -> list[int]:
    return [config.k] if config.k is not None else list(range(config.k_min, config.k_max + 1))


def standardised_points(points: DataFrame) -> np.ndarray:
    """The standardised vectors of `points` (the output of the fitted `preparation`) on the
    driver, one row each in customer id order (the solver's seeded start depends on the rows'
    order, not on how Spark happened to partition them): only for a bounded sample, such as
    the silhouette sample."""
    rows = points.select(CUSTOMER_COLUMN, vector_to_array(F.col(SCALED)).alias(SCALED)).collect()
    return np.array([row[SCALED] for row in sorted(rows, key=lambda row: row[CUSTOMER_COLUMN])], dtype=float)


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


def assign_clusters(model: PipelineModel, customers: DataFrame, space: Space, stable_ids: list[int],
                    keep: Sequence[str] = ()) -> DataFrame:
    """customer_id, the columns of `customers` named in `keep` (as they are: the model adds
    its inputs beside them), the stable cluster id and the (standardised) distance to its
    centroid."""
    scored = model.transform(customers)
    centroids = F.array(*[F.array(*[F.lit(float(v)) for v in row]) for row in space.centroids_scaled])
    centroid = F.element_at(centroids, F.col(PREDICTION) + 1)
    squared = F.aggregate(
        F.zip_with(vector_to_array(SCALED), centroid, lambda a, b: (a - b) * (a - b)), F.lit(0.0), lambda acc, v: acc + v
    )
    return scored.select(
        "customer_id",
        *keep,
        stable_cluster_id(F.col(PREDICTION), stable_ids).alias(CLUSTER_ID),
        F.sqrt(squared).alias("distance_to_centroid"),
        F.col(PREDICTION).alias("model_cluster_index"),
    )
