"""The drivers behind each churn score: TreeSHAP against Shapley values computed from their
definition on a hand-made tree, and, on a real Spark GBT and logistic regression fitted on a
small hand-made set, contributions that add up to the model's own margin."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from segmentation.churn.drivers import CONTRIBUTIONS, DRIVERS, driver_importance, explained, score_with_drivers, top_drivers
from segmentation.churn.labels import LABEL
from segmentation.churn.model import PROBABILITY, class_weights, fit_churn_model
from segmentation.churn.treeshap import Tree, TreeExplainer
from segmentation.config import load_config
from tests.conftest import CONF_DIR

# Node 0 splits feature 0 at 2; its left child splits feature 1, its right child feature 0
# again (a feature twice on one path) and then feature 2. Covers are unequal on purpose.
TREE = Tree(
    left=np.array([1, 3, 5, -1, -1, -1, 7, -1, -1]),
    right=np.array([2, 4, 6, -1, -1, -1, 8, -1, -1]),
    feature=np.array([0, 1, 0, -1, -1, -1, 2, -1, -1]),
    threshold=np.array([2.0, 0.5, 5.0, np.nan, np.nan, np.nan, 1.0, np.nan, np.nan]),
    value=np.array([0.0, 0.0, 0.0, -1.0, 0.5, 2.0, 0.0, 3.0, -2.0]),
    cover=np.array([100.0, 40.0, 60.0, 10.0, 30.0, 15.0, 45.0, 5.0, 40.0]),
)


def _expected_value(tree: Tree, x: np.ndarray, known: set[int], node: int = 0) -> float:
    """E[f(x) | x_S] as path-dependent TreeSHAP defines it (Lundberg et al. 2018,
    Algorithm 1): a known feature follows x, an unknown one both children by cover."""
    if tree.left[node] < 0:
        return float(tree.value[node])
    left, right = int(tree.left[node]), int(tree.right[node])
    feature = int(tree.feature[node])
    if feature in known:
        return _expected_value(tree, x, known, left if x[feature] <= tree.threshold[node] else right)
    return sum(tree.cover[child] / tree.cover[node] * _expected_value(tree, x, known, child) for child in (left, right))


def _shapley_by_definition(tree: Tree, x: np.ndarray, features: int) -> np.ndarray:
    phi = np.zeros(features)
    for i in range(features):
        others = [k for k in range(features) if k != i]
        for size in range(features):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(features - size - 1) / math.factorial(features)
                phi[i] += weight * (_expected_value(tree, x, {*subset, i}) - _expected_value(tree, x, set(subset)))
    return phi


def _prediction(tree: Tree, x: np.ndarray) -> float:
    node = 0
    while tree.left[node] >= 0:
        node = tree.left[node] if x[tree.feature[node]] <= tree.threshold[node] else tree.right[node]
    return float(tree.value[node])


def test_tree_shap_equals_the_shapley_values_of_their_definition():
    rows = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 9.0, 2.0], [3.0, 0.0, 0.5, 3.0], [3.0, 7.0, 4.0, 4.0], [6.0, 0.0, 0.0, 5.0],
                     [2.0, 0.5, 1.0, 6.0]])
    explainer = TreeExplainer.of([TREE, TREE], [1.0, 0.5])  # the same tree twice: weights add up
    phi = explainer.contributions(rows)
    for row, contributions in zip(rows, phi):
        assert contributions == pytest.approx(1.5 * _shapley_by_definition(TREE, row, 4), abs=1e-12)
        assert explainer.base_value + contributions.sum() == pytest.approx(1.5 * _prediction(TREE, row), abs=1e-12)
    # E[f] = (10 * -1 + 30 * 0.5 + 15 * 2 + 5 * 3 + 40 * -2) / 100, for both trees
    assert explainer.base_value == pytest.approx(1.5 * -0.3)
    assert (phi[:, 3] == 0.0).all()  # no split on it


def test_a_tree_without_a_split_explains_nothing():
    stump = Tree(np.array([-1]), np.array([-1]), np.array([-1]), np.array([np.nan]), np.array([0.7]), np.array([10.0]))
    explainer = TreeExplainer.of([stump], [2.0])
    assert explainer.base_value == pytest.approx(1.4)
    assert explainer.contributions(np.array([[1.0, 2.0]])).tolist() == [[0.0, 0.0]]


FEATURES = ["recency_days", "orders_365d", "noise"]


def _customers(spark, n=400, seed=5):
    """Churn made likelier by recency and less likely by orders; some features are null."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        recency, orders, noise = rng.uniform(0, 300), rng.randint(0, 12), rng.gauss(0, 1)
        churned = rng.random() < 1 / (1 + math.exp(-(recency / 60 - orders / 3 - 1)))
        rows.append((f"c{i}", None if i % 17 == 0 else recency, None if i % 23 == 0 else orders, noise, float(churned)))
    return spark.createDataFrame(rows, f"customer_id string, recency_days double, orders_365d int, noise double, {LABEL} double")


@pytest.mark.parametrize("model", ["gbt", "logistic_regression"])
def test_contributions_add_up_to_the_margin_of_a_fitted_model(spark, model):
    rows = _customers(spark).persist()
    settings = load_config("local", CONF_DIR, [
        f"churn.model={model}", f"churn.features=[{', '.join(FEATURES)}]", "churn.gbt={maxIter: 8, maxDepth: 3, subsamplingRate: 0.8}",
    ]).churn
    churners = int(rows.agg(F.sum(LABEL)).first()[0])
    fitted = fit_churn_model(rows, settings, class_weights(rows.count(), churners, "balanced"))
    result = explained(fitted.model, rows)
    checked = result.rows.select(
        "customer_id", vector_to_array("rawPrediction")[1].alias("margin"), CONTRIBUTIONS,
        vector_to_array("features_vector").alias("values"), top_drivers(FEATURES).alias(DRIVERS),
    ).collect()
    assert len(checked) == 400
    for row in checked:
        assert result.base_value + sum(row[CONTRIBUTIONS]) == pytest.approx(row.margin, abs=1e-6)
        expected = sorted(((c, f) for f, c in zip(FEATURES, row[CONTRIBUTIONS]) if c > 0), reverse=True)[:3]
        assert [(d.feature, d.contribution) for d in row[DRIVERS]] == [(f, c) for c, f in expected]
        assert [d.value for d in row[DRIVERS]] == [row["values"][FEATURES.index(f)] for _, f in expected]
    # A customer without recency is explained by the imputed (median) value the model saw.
    median = rows.approxQuantile("recency_days", [0.5], 0.0)[0]
    imputed = next(row for row in checked if row.customer_id == "c0")["values"][0]
    assert imputed == pytest.approx(median, rel=0.02)
    # Recency drives churn in the data: it is the most frequent first driver.
    firsts = [row[DRIVERS][0].feature for row in checked if row[DRIVERS]]
    assert max(set(firsts), key=firsts.count) == "recency_days"

    importance = driver_importance(fitted.model, rows)
    assert list(importance) == sorted(FEATURES, key=lambda f: -importance[f]) and next(iter(importance)) == "recency_days"
    for j, feature in enumerate(FEATURES):
        assert importance[feature] == pytest.approx(np.mean([abs(row[CONTRIBUTIONS][j]) for row in checked]))

    scored = score_with_drivers(fitted.model, rows.drop(LABEL))
    assert scored.columns == ["customer_id", *FEATURES, PROBABILITY, DRIVERS]
    assert scored.schema[DRIVERS].dataType.simpleString() == "array<struct<feature:string,value:double,contribution:double>>"
    rows.unpersist()


def test_the_report_ranks_each_risk_tiers_drivers_by_mean_contribution(spark):
    from segmentation.report import render
    from segmentation.stages.report import churn_drivers_by_tier

    def drivers(*entries):
        return [{"feature": f, "value": v, "contribution": c} for f, v, c in entries]

    snapshot = spark.createDataFrame([
        ("c1", "critical", drivers(("recency_days", 10.0, 0.6), ("orders_365d", 1.0, 0.2))),
        ("c2", "critical", drivers(("recency_days", 20.0, 0.4))),
        ("c3", "critical", []),  # nothing raised the score: counts 0 for every feature
        ("c4", "critical", None),  # scored without a model: not counted
        ("c5", "low", drivers(("orders_365d", 0.0, 0.1))),
        ("c6", None, None),  # not scored
    ], f"customer_id string, churn_risk_tier string, {DRIVERS} array<struct<feature:string,value:double,contribution:double>>")
    ranked = churn_drivers_by_tier(snapshot, ["critical", "high", "low"])
    assert [(r["churn_risk_tier"], r["rank"], r["feature"]) for r in ranked] == [
        ("critical", 1, "recency_days"), ("critical", 2, "orders_365d"), ("low", 1, "orders_365d")]
    assert [r["mean_contribution"] for r in ranked] == pytest.approx([1.0 / 3, 0.2 / 3, 0.1])
    assert [r["customer_share"] for r in ranked] == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert [r["feature"] for r in churn_drivers_by_tier(snapshot, ["critical", "low"], top=1)] == ["recency_days", "orders_365d"]
    assert churn_drivers_by_tier(snapshot.drop(DRIVERS), ["critical"]) == []
    document = render({"as_of": "2025-01-01", "pipeline_run_id": "r", "value_rank_by": "clv", "tiers_version": 1, "kpis": {},
                       "value_tiers": [], "clusters": [], "migration": [], "churn": None, "churn_drivers": ranked},
                      {"pareto": "", "clv": ""})
    assert "<td>critical</td><td>1</td><td>recency_days</td><td>+0.333</td><td>66.7%</td>" in document
