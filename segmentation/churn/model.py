"""The churn classifier as a Spark ML pipeline: median imputation, a feature vector, then a
gradient-boosted tree classifier (default) or a standardised logistic regression, seeded.

Class imbalance: with `class_weight: balanced` each class carries half of the training
weight, which makes the learner attend to the rarer class but inflates its predicted odds by
w_churn / w_stay. The last stage, `ChurnProbability`, multiplies the odds back by
w_stay / w_churn (the prior correction), so `churn_probability` stays calibrated to the
observed churn rate. The stage is part of the saved model, so every consumer of the
registered model gets the same corrected probability: `mlflow.spark.load_model` gives a
pipeline whose `transform` adds `churn_probability`, and `mlflow.pyfunc.load_model(...)
.predict` returns it per row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark import keyword_only
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import Imputer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.churn.btyd import BTYD_FEATURES, BTYD_INPUTS, BgNbdFeatures
from segmentation.churn.labels import LABEL
from segmentation.config import ChurnConfig
from segmentation.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHT = "class_weight"
PROBABILITY = "churn_probability"
VECTOR, SCALED = "features_vector", "features_scaled"
IMPUTED = "__imputed"  # suffix of a feature's imputed column


class ChurnProbability(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """The churn-class probability as a double, its odds multiplied by `oddsFactor`."""

    oddsFactor = Param(Params._dummy(), "oddsFactor", "factor applied to the predicted odds of churn", TypeConverters.toFloat)

    @keyword_only
    def __init__(self, inputCol: str = "probability", outputCol: str = PROBABILITY, oddsFactor: float = 1.0) -> None:
        super().__init__()
        self._setDefault(inputCol="probability", outputCol=PROBABILITY, oddsFactor=1.0)
        self._set(**self._input_kwargs)

    # MLflow's pyfunc flavour reads a `prediction` column; it renames the last stage's output
    # with setOutputCol when there is none, so `predict` returns the churn probability.
    def setOutputCol(self, value: str) -> "ChurnProbability":
        return self._set(outputCol=value)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        raw = vector_to_array(F.col(self.getInputCol()))[1]
        factor = F.lit(self.getOrDefault(self.oddsFactor))
        corrected = raw * factor / (raw * factor + (F.lit(1.0) - raw))
        return dataset.withColumn(self.getOutputCol(), corrected)


@dataclass(frozen=True)
class ClassWeights:
    churners: float
    stayers: float
    churn_rate: float

    @property
    def odds_factor(self) -> float:
        return self.stayers / self.churners

    def as_dict(self) -> dict[str, float]:
        return {"weight_churners": self.churners, "weight_stayers": self.stayers, "training_churn_rate": self.churn_rate}


def class_weights(rows: int, churners: int, scheme: str) -> ClassWeights:
    """Balanced: each class weighs rows / 2 in total; none: every row weighs 1."""
    if rows == 0 or churners in (0, rows):
        raise ValueError(f"the training rows need both classes: {churners} churners among {rows}")
    rate = churners / rows
    if scheme == "none":
        return ClassWeights(1.0, 1.0, rate)
    return ClassWeights(rows / (2.0 * churners), rows / (2.0 * (rows - churners)), rate)


def with_class_weight(examples: DataFrame, weights: ClassWeights) -> DataFrame:
    return examples.withColumn(WEIGHT, F.when(F.col(LABEL) == 1.0, weights.churners).otherwise(weights.stayers))


def classifier(settings: ChurnConfig):
    """The configured Spark ML classifier; an unknown parameter name fails with its key."""
    if settings.model == "gbt":
        estimator, params, key = GBTClassifier(seed=settings.seed), settings.gbt, "churn.gbt"
    else:
        estimator, params, key = LogisticRegression(), settings.logistic_regression, "churn.logistic_regression"
    _check_params(estimator, params, key)
    _check_params(estimator, settings.search, "churn.search")
    features = SCALED if settings.model == "logistic_regression" else VECTOR
    return estimator.setParams(featuresCol=features, labelCol=LABEL, weightCol=WEIGHT, predictionCol="churn_class", **params)


def _check_params(estimator, params: dict, key: str) -> None:
    fixed = {"featuresCol", "labelCol", "weightCol", "seed", "probabilityCol", "rawPredictionCol", "predictionCol"}
    known = {p.name for p in estimator.params} - fixed
    unknown = [name for name in params if name not in known]
    if unknown:
        raise ConfigError(
            f"{key}: {', '.join(unknown)} not parameters of Spark's {type(estimator).__name__} "
            f"(known: {', '.join(sorted(known))})"
        )


def churn_pipeline(settings: ChurnConfig, weights: ClassWeights, bgnbd: BgNbdFeatures | None = None) -> Pipeline:
    """The pipeline over `settings.features`; with `bgnbd`, it first adds BG/NBD's P(alive) and
    expected purchases (`segmentation.churn.btyd`) and takes them as features too."""
    features = settings.features + (BTYD_FEATURES if bgnbd is not None else [])
    # Doubles first: the imputer needs them, and feature tables may hold integers or decimals.
    as_double = ", ".join(f"CAST({name} AS DOUBLE) AS {name}__in" for name in features)
    imputed = [f"{name}{IMPUTED}" for name in features]
    stages = [
        *([bgnbd] if bgnbd is not None else []),
        SQLTransformer(statement=f"SELECT *, {as_double} FROM __THIS__"),
        Imputer(inputCols=[f"{name}__in" for name in features], outputCols=imputed, strategy="median"),
        VectorAssembler(inputCols=imputed, outputCol=VECTOR),
    ]
    if settings.model == "logistic_regression":
        stages.append(StandardScaler(inputCol=VECTOR, outputCol=SCALED, withMean=True, withStd=True))
    stages += [classifier(settings), ChurnProbability(oddsFactor=weights.odds_factor)]
    return Pipeline(stages=stages)


@dataclass
class FittedChurn:
    model: PipelineModel
    weights: ClassWeights
    search: list[dict] = field(default_factory=list)  # one row per candidate: params and validation PR AUC


def fit_churn_model(examples: DataFrame, settings: ChurnConfig, weights: ClassWeights,
                    bgnbd: BgNbdFeatures | None = None) -> FittedChurn:
    """Fit the pipeline (`churn_pipeline`) on weighted training examples; with `settings.search`,
    choose the parameters by TrainValidationSplit (PR AUC on a seeded split of the training rows)."""
    pipeline = churn_pipeline(settings, weights, bgnbd)
    weighted = with_class_weight(examples, weights)
    if not settings.search:
        return FittedChurn(pipeline.fit(weighted), weights)
    estimator = pipeline.getStages()[-2]
    grid = ParamGridBuilder()
    for name, values in settings.search.items():
        grid = grid.addGrid(estimator.getParam(name), values)
    maps = grid.build()
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=PROBABILITY, labelCol=LABEL, metricName="areaUnderPR")
    split = TrainValidationSplit(
        estimator=pipeline, estimatorParamMaps=maps, evaluator=evaluator,
        trainRatio=settings.search_train_ratio, seed=settings.seed,
    )
    log.info("searching %d parameter combinations by validation PR AUC", len(maps))
    fitted = split.fit(weighted)
    search = [
        {**{param.name: value for param, value in params.items()}, "validation_pr_auc": metric}
        for params, metric in zip(maps, fitted.validationMetrics)
    ]
    return FittedChurn(fitted.bestModel, weights, search)


def score_churn(model: PipelineModel, customers: DataFrame) -> DataFrame:
    """`customers` plus `churn_probability` from a fitted pipeline (the champion's or a new one)."""
    scored = model.transform(customers)
    return scored.select(*customers.columns, PROBABILITY)


def model_features(model: PipelineModel) -> list[str]:
    """The features a fitted churn pipeline takes, in its vector's order."""
    assembler = next(stage for stage in model.stages if isinstance(stage, VectorAssembler))
    return [name.removesuffix(IMPUTED) for name in assembler.getInputCols()]


def model_inputs(model: PipelineModel) -> list[str]:
    """The customer_features columns a fitted churn pipeline reads: its features, and the
    columns its BG/NBD stage computes its own from."""
    computed = [stage for stage in model.stages if isinstance(stage, BgNbdFeatures)]
    features = [name for name in model_features(model) if not (computed and name in BTYD_FEATURES)]
    return features + [name for name in (BTYD_INPUTS if computed else []) if name not in features]


def feature_importance(model: PipelineModel) -> dict[str, float]:
    """Tree importances (GBT) or absolute standardised coefficients (logistic regression),
    normalised to sum to 1, largest first."""
    features = model_features(model)
    fitted = model.stages[-2]
    raw = fitted.featureImportances.toArray() if hasattr(fitted, "featureImportances") else abs(fitted.coefficients.toArray())
    total = float(raw.sum()) or 1.0
    pairs = sorted(zip(features, (float(v) / total for v in raw)), key=lambda p: -p[1])
    return dict(pairs)
