"""K-means segmentation on planted groups: recovery, scikit-learn's cost as an oracle, seeds,
stable identity across a retrain on perturbed data, and names."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score

from segmentation.clustering.model import SCALED, assign_clusters, choose_k, fit_candidate, model_space, preparation
from segmentation.clustering.profiles import ReferenceClusters, cluster_name, match_to_reference, unique_names
from tests.conftest import base_section

CENTRES = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 2.0], [0.0, 8.0, -2.0], [8.0, 8.0, 6.0]])
CONFIG = base_section("cluster", features=["f1", "f2", "f3"], log_features=[], k_min=2, k_max=6, seed=7, max_iterations=50)


def planted(spark, scale=1.0, shift=0.0, seed=0, per_group=150):
    """Four well separated Gaussian groups; `scale` and `shift` perturb them slightly."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, centre in enumerate(CENTRES):
        for i, point in enumerate(rng.normal(centre * scale + shift, 1.0, size=(per_group, 3))):
            rows.append((f"c{label}-{i}", label, *map(float, point)))
    return spark.createDataFrame(rows, "customer_id string, label int, f1 double, f2 double, f3 double")


@pytest.fixture(scope="module")
def data(spark):
    return planted(spark).cache()


def fit(data, config, *ks):
    """Candidates as the job fits them: the preparation once, then every k on its points."""
    prepared = preparation(config).fit(data)
    points = prepared.transform(data).cache()
    return [fit_candidate(points, points, prepared, config, k) for k in ks]


@pytest.fixture(scope="module")
def candidates(data):
    return fit(data, CONFIG, *range(CONFIG.k_min, CONFIG.k_max + 1))


def labels(model, df):
    rows = model.transform(df).select("customer_id", "label", "cluster_index").orderBy("customer_id").collect()
    return [r["label"] for r in rows], [r["cluster_index"] for r in rows]


def test_silhouette_picks_the_planted_k_and_recovers_the_groups(data, candidates):
    best = choose_k(candidates)
    assert best.k == 4
    truth, found = labels(best.model, data)
    assert adjusted_rand_score(truth, found) > 0.95
    costs = [c.cost for c in candidates]
    assert costs == sorted(costs, reverse=True)  # the elbow view: cost falls with k


def test_cost_matches_scikit_learn_on_the_same_standardised_data(data, candidates):
    best = next(c for c in candidates if c.k == 4)
    scaled = np.array([r[0] for r in best.model.transform(data).select(vector_to_array(SCALED)).collect()])
    oracle = SkKMeans(n_clusters=4, n_init=10, random_state=0).fit(scaled)
    assert best.cost == pytest.approx(oracle.inertia_, rel=0.01)


def test_the_same_seed_gives_the_same_model(data):
    (first,), (second,) = fit(data, CONFIG, 4), fit(data, CONFIG, 4)
    first, second = model_space(first.model, CONFIG), model_space(second.model, CONFIG)
    np.testing.assert_array_equal(first.centroids_scaled, second.centroids_scaled)


def test_ids_and_names_survive_a_retrain_on_perturbed_data(spark, data, candidates):
    best = next(c for c in candidates if c.k == 4)
    space = model_space(best.model, CONFIG)
    stable = [10, 11, 12, 13]
    reference = ReferenceClusters(space.inputs, space.centroids, stable, ["a", "b", "c", "d"])
    before = dict(assign_clusters(best.model, data, space, stable).join(data, "customer_id").groupBy("label").agg(F.first("cluster_id")).collect())

    perturbed = planted(spark, scale=1.02, shift=0.1, seed=1).cache()
    (retrained,) = fit(perturbed, CONFIG.model_validate({**CONFIG.model_dump(), "seed": 99}), 4)
    new_space = model_space(retrained.model, CONFIG)
    matching = match_to_reference(new_space, reference, max_distance=1.0)
    assert sorted(matching.ids) == stable and set(matching.inherited_names.values()) == {"a", "b", "c", "d"}
    after = dict(
        assign_clusters(retrained.model, perturbed, new_space, matching.ids).join(perturbed, "customer_id")
        .groupBy("label").agg(F.first("cluster_id")).collect()
    )
    assert after == before  # every planted group keeps its cluster id


def test_a_cluster_without_counterpart_gets_a_new_id(data, candidates):
    space = model_space(next(c for c in candidates if c.k == 4).model, CONFIG)
    far = space.centroids.copy()
    far[3] += 100.0  # the reference's fourth cluster is nowhere near any new one
    matching = match_to_reference(space, ReferenceClusters(space.inputs, far, [0, 1, 2, 3], ["a", "b", "c", "d"]), 1.0)
    assert sorted(matching.ids) == [0, 1, 2, 4]
    assert 3 not in matching.inherited_names and None in matching.distances


def test_distance_to_centroid_is_the_standardised_euclidean_distance(data, candidates):
    best = next(c for c in candidates if c.k == 4)
    space = model_space(best.model, CONFIG)
    scored = best.model.transform(data).select("customer_id", vector_to_array(SCALED).alias("v"), "cluster_index")
    rows = scored.join(assign_clusters(best.model, data, space, [0, 1, 2, 3]), "customer_id").limit(20).collect()
    for row in rows:
        expected = np.linalg.norm(np.array(row["v"]) - space.centroids_scaled[row["cluster_index"]])
        assert row["distance_to_centroid"] == pytest.approx(expected)


def test_names_read_from_the_profile():
    profile = {"median_recency_days": 20, "mean_monetary": 900.0, "mean_channels_used": 2.4}
    assert cluster_name(profile, overall_mean_monetary=300.0) == "active high-value omnichannel"
    lapsed = {"median_recency_days": 400, "mean_monetary": 50.0, "mean_channels_used": 1.0}
    assert cluster_name(lapsed, overall_mean_monetary=300.0) == "lapsed low-spend"
    assert unique_names({2: "x", 0: "x", 1: "y"}) == {0: "x", 1: "y", 2: "x 2"}


def test_a_missing_value_of_a_log_feature_gets_the_median_not_zero(spark):
    """A customer with only returns has no recency: imputed with the median in log space,
    not taken as 0 (the most recent of all)."""
    config = base_section("cluster", features=["f1", "f2"], log_features=["f1"], k=2)
    rows = [("a", 0.0, 1.0), ("b", np.e - 1, 2.0), ("c", np.e ** 2 - 1, 3.0), ("d", None, 4.0)]
    customers = spark.createDataFrame(rows, "customer_id string, f1 double, f2 double")
    prepared = preparation(config).fit(customers).transform(customers)
    imputed = {r.customer_id: r.f1__log__imputed for r in prepared.select("customer_id", "f1__log__imputed").collect()}
    assert imputed["a"] == 0.0 and imputed["b"] == pytest.approx(1.0) and imputed["c"] == pytest.approx(2.0)
    assert imputed["d"] == pytest.approx(1.0)  # the median of 0, 1 and 2
