"""K-means segmentation on planted groups: recovery, scikit-learn's cost as an oracle, seeds,
stable identity across a retrain on perturbed data, and names."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

from pyspark.ml import PipelineModel

from segmentation.clustering.model import (
    SCALED,
    assign_clusters,
    choose_k,
    CHAMPION_START,
    SAMPLE_START,
    fit_candidate,
    fit_from_centres,
    model_space,
    preparation,
    standardised_points,
    with_cluster_ids,
)
from segmentation.sampling import partitioned_by_data
from segmentation.clustering.search import fit_kmeans, score_ks, silhouette_sqeuclidean
from segmentation.clustering.profiles import (
    ReferenceClusters,
    cluster_profiles,
    cluster_name,
    cluster_names,
    distinguishing_feature,
    match_to_reference,
    population_spread,
    qualifiers,
)
from tests.conftest import base_section

CENTRES = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 2.0], [0.0, 8.0, -2.0], [8.0, 8.0, 6.0]])
CONFIG = base_section("cluster", features=["f1", "f2", "f3"], log_features=[], k_min=2, k_max=6, seed=7, max_iterations=50)


def planted_points(scale=1.0, shift=0.0, seed=0, per_group=150) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated Gaussian groups and each point's group; `scale` and `shift`
    perturb them slightly."""
    rng = np.random.default_rng(seed)
    groups = [rng.normal(centre * scale + shift, 1.0, size=(per_group, 3)) for centre in CENTRES]
    return np.vstack(groups), np.repeat(np.arange(len(CENTRES)), per_group)


def planted(spark, scale=1.0, shift=0.0, seed=0, per_group=150):
    points, groups = planted_points(scale, shift, seed, per_group)
    rows = [(f"c{label}-{i % per_group}", int(label), *map(float, point)) for i, (label, point) in enumerate(zip(groups, points))]
    return spark.createDataFrame(rows, "customer_id string, label int, f1 double, f2 double, f3 double")


@pytest.fixture(scope="module")
def data(spark):
    return planted(spark).cache()


def fit(data, config, *ks):
    """Candidates as the job fits K-means: the preparation once, every k fitted on the
    driver's sample, then on the fit sample from the centres found there."""
    prepared = preparation(config).fit(data)
    points = prepared.transform(data).cache()
    scores = score_ks(standardised_points(points), list(ks), config.seed, config.restarts, config.max_iterations)
    return [fit_from_centres(points, points, prepared, config, score.centroids, SAMPLE_START) for score in scores]


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


def test_the_same_customers_give_the_same_model_however_spark_partitioned_them(data):
    """Six clusters on four groups: where K-means settles depends on its start, which Spark
    draws partition by partition. Points arriving in one partition or in five, in another
    order, are refitted from the same partitions (`partitioned_by_data`), and the
    driver's solver reads them in the same order, so the job's fit from its centres is the same too."""
    prepared = preparation(CONFIG).fit(data)
    points = prepared.transform(data)
    arrivals = [points.coalesce(1), points.repartition(5, F.rand(seed=3))]
    fits = [fit_candidate(partitioned_by_data(p, p.count(), ["customer_id"]), points, prepared, CONFIG, 6) for p in arrivals]
    one, five = (model_space(f.model, CONFIG).centroids_scaled for f in fits)
    np.testing.assert_allclose(one, five, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(*(standardised_points(p) for p in arrivals))
    # The job's K-means: the driver's centres on either arrival, then Lloyd's iterations from them.
    [score] = score_ks(standardised_points(arrivals[1]), [6], CONFIG.seed, CONFIG.restarts, CONFIG.max_iterations)
    one, five = (model_space(fit_from_centres(p, points, prepared, CONFIG, score.centroids, SAMPLE_START).model, CONFIG).centroids_scaled
                 for p in arrivals)
    np.testing.assert_allclose(one, five, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fit_sample", [100_000, None], ids=["on the driver", "in Spark"])
def test_a_fit_from_given_centres_reaches_scikit_learn_s_lloyd_from_the_same_start(data, fit_sample):
    """A retrain's start: six centres picked from the points (four groups, so where K-means
    settles depends on them). Lloyd's iterations (on the driver for a bounded fit sample, in
    Spark without one) reach the centres, cost and sizes of scikit-learn's Lloyd from the same
    start, and the model assigns customers by them."""
    config = CONFIG.model_copy(update={"fit_sample": fit_sample})
    prepared = preparation(config).fit(data)
    points = prepared.transform(data).cache()
    scaled = standardised_points(points)
    start = scaled[[0, 1, 2, 150, 300, 450]]
    fitted = fit_from_centres(points, points, prepared, config, start, CHAMPION_START)
    oracle = SkKMeans(n_clusters=6, init=start, n_init=1, max_iter=CONFIG.max_iterations, tol=0.0, algorithm="lloyd").fit(scaled)

    def rows(centres):
        return np.array(sorted(map(tuple, np.round(centres, 9))))

    np.testing.assert_allclose(rows(model_space(fitted.model, CONFIG).centroids_scaled), rows(oracle.cluster_centers_), atol=1e-7)
    assert fitted.cost == pytest.approx(oracle.inertia_, rel=1e-9)
    assert fitted.start == CHAMPION_START and fitted.k == 6
    assert fitted.solver == ("numpy" if fit_sample else "spark")
    assigned = fitted.model.transform(data).groupBy("cluster_index").count().collect()
    assert fitted.sizes == [dict(assigned).get(i, 0) for i in range(6)]
    assert sorted(fitted.sizes) == sorted(np.bincount(oracle.labels_, minlength=6).tolist())


def test_the_silhouette_is_spark_s_on_the_same_points_and_clusters(data, candidates):
    """The driver's silhouette (cluster sums) equals ClusteringEvaluator's (squared euclidean)."""
    best = next(c for c in candidates if c.k == 4)
    rows = best.model.transform(data).select(vector_to_array(SCALED), "cluster_index").collect()
    points, clusters = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    assert silhouette_sqeuclidean(points, clusters) == pytest.approx(best.silhouette, abs=1e-9)


def test_the_silhouette_is_scikit_learn_s_with_lone_points_and_duplicates():
    rng = np.random.default_rng(3)
    points = np.vstack([rng.normal(size=(60, 4)), np.zeros((5, 4))])  # five identical points
    clusters = rng.integers(0, 4, size=len(points))
    clusters[0] = 9  # alone in its cluster: scores 0; the labels need not be 0..k-1
    expected = silhouette_score(points, clusters, metric="sqeuclidean")
    assert silhouette_sqeuclidean(points, clusters) == pytest.approx(expected, abs=1e-12)
    separated, groups = planted_points()
    assert silhouette_sqeuclidean(separated, groups) == pytest.approx(silhouette_score(separated, groups, metric="sqeuclidean"))
    assert silhouette_sqeuclidean(points, np.zeros(len(points), dtype=int)) == 0.0  # one cluster: none


def test_driver_kmeans_recovers_planted_groups_and_picks_their_number():
    points, groups = planted_points()
    fit = fit_kmeans(points, 4, seed=7, restarts=3, max_iterations=50)
    assert adjusted_rand_score(groups, fit.labels) == 1.0
    oracle = SkKMeans(n_clusters=4, n_init=10, random_state=0).fit(points)
    assert fit.inertia == pytest.approx(oracle.inertia_, rel=1e-9)
    scores = score_ks(points, [2, 3, 4, 5, 6], seed=7, restarts=3, max_iterations=50)
    assert [s.k for s in scores] == [2, 3, 4, 5, 6] and choose_k(scores).k == 4
    assert [s.cost for s in scores] == sorted((s.cost for s in scores), reverse=True)
    assert sorted(next(s for s in scores if s.k == 4).sizes) == [150] * 4


def test_driver_kmeans_gives_the_same_clusters_for_a_seed():
    points, _ = planted_points(seed=5)
    first, second = (fit_kmeans(points, 5, seed=11, restarts=2, max_iterations=50) for _ in range(2))
    np.testing.assert_array_equal(first.centroids, second.centroids)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_driver_kmeans_with_fewer_distinct_points_than_k_leaves_clusters_empty():
    points = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 10, axis=0)
    fit = fit_kmeans(points, 3, seed=1, restarts=2, max_iterations=10)
    assert fit.inertia == 0.0 and len(np.unique(fit.labels)) == 2
    assert silhouette_sqeuclidean(points, fit.labels) == 1.0


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


# Within-cluster standard deviations of the hand-made profiles below.
WITHIN = {"recency_days": 60.0, "frequency_orders": 1.0, "monetary": 40.0, "channels_used": 0.3, "return_rate": 0.1}


def profile(cluster_id: int, customers: int, **means) -> dict:
    """A profile as cluster_profiles gives it, with the means given and WITHIN's deviations."""
    result = {"cluster_id": cluster_id, "customers": customers, "median_recency_days": means["recency_days"]}
    for feature, std in WITHIN.items():
        result[f"mean_{feature}"], result[f"std_{feature}"] = means[feature], std
    return result


def demo_like() -> list[dict]:
    """One active high-value cluster and three that are all "lapsed low-spend" (recency over
    180 days, spend under half the mean of 454): one returns most of what it buys, the other
    two differ in how often they bought."""
    return [
        profile(0, 200, recency_days=20, frequency_orders=12, monetary=1000, channels_used=2.5, return_rate=0.02),
        profile(1, 400, recency_days=600, frequency_orders=4, monetary=60, channels_used=1.0, return_rate=0.0),
        profile(2, 100, recency_days=500, frequency_orders=1, monetary=50, channels_used=1.0, return_rate=0.6),
        profile(3, 300, recency_days=550, frequency_orders=1, monetary=40, channels_used=1.0, return_rate=0.05),
    ]


def test_population_spread_is_the_standard_deviation_over_every_customer():
    # Cluster 0 holds customers at -2 and 2 (mean 0, std 2), cluster 1 two at 4 (std 0).
    profiles = [{"cluster_id": 0, "customers": 2, "mean_x": 0.0, "std_x": 2.0},
                {"cluster_id": 1, "customers": 2, "mean_x": 4.0, "std_x": 0.0}]
    assert population_spread(profiles)["x"] == pytest.approx(np.std([-2.0, 2.0, 4.0, 4.0]))


def test_clusters_sharing_a_name_are_told_apart_by_what_differs_most():
    """Among the three lapsed low-spend clusters the widest gap, in population standard
    deviations, is in return rate: 0.05 to 0.6 over a spread of about 0.2 (frequency: 1 to 4
    over about 4.2; recency: 50 days over about 230). Cluster 2 is above it; 1 and 3, below,
    still share a name and then differ most in frequency (return rate is used up)."""
    profiles = demo_like()
    spread = population_spread(profiles)
    lapsed = profiles[1:]
    assert distinguishing_feature(lapsed, spread) == "return_rate"
    assert distinguishing_feature([profiles[1], profiles[3]], spread, exclude={"return_rate"}) == "frequency_orders"
    expected = {
        0: "active high-value omnichannel",
        1: "lapsed low-spend, low-return, frequent",
        2: "lapsed low-spend, high-return",
        3: "lapsed low-spend, low-return, occasional",
    }
    assert cluster_names(profiles) == expected
    assert cluster_names(profiles[::-1]) == expected  # the same profiles, the same names


def test_inherited_names_are_kept_and_new_clusters_are_told_apart_from_them():
    """Cluster 1 kept the champion's "lapsed low-spend", cluster 0 an old numbered name: both
    stay. Clusters 2 and 3 would also be "lapsed low-spend": the return-rate gap puts 2 above
    and 1 and 3 below, so 3 is the low-return one and 1 keeps its plain name."""
    inherited = {1: "lapsed low-spend", 0: "active high-value omnichannel 2"}
    assert cluster_names(demo_like(), inherited) == {
        0: "active high-value omnichannel 2",
        1: "lapsed low-spend",
        2: "lapsed low-spend, high-return",
        3: "lapsed low-spend, low-return",
    }


def test_only_identical_profiles_get_a_number():
    same = dict(recency_days=400, frequency_orders=2, monetary=50, channels_used=1.0, return_rate=0.0)
    twins = [profile(2, 100, **same), profile(0, 100, **same), profile(1, 50, **{**same, "recency_days": 10})]
    assert cluster_names(twins) == {0: "lapsed mid-value", 1: "active mid-value", 2: "lapsed mid-value 2"}
    assert cluster_names(twins, {2: "lapsed mid-value"}) == {0: "lapsed mid-value 2", 1: "active mid-value", 2: "lapsed mid-value"}


def test_the_words_of_a_feature():
    assert qualifiers("return_rate") == ("high-return", "low-return")
    assert qualifiers("order_share_web") == ("web-first", "little web")
    assert qualifiers("basket_size") == ("high basket size", "low basket size")


def test_the_registered_model_maps_cluster_indexes_to_stable_ids(data, candidates, tmp_path):
    """The registered pipeline's last stage gives customer_clusters' cluster id, also once
    saved and loaded (as MLflow's Spark flavour does)."""
    best = next(c for c in candidates if c.k == 4)
    stable = [13, 10, 12, 11]
    expected = dict(assign_clusters(best.model, data, model_space(best.model, CONFIG), stable).select("customer_id", "cluster_id").collect())
    with_cluster_ids(best.model, stable).write().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert dict(loaded.transform(data).select("customer_id", "cluster_id").collect()) == expected
    assert set(expected.values()) == set(stable)


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


def test_profiles_by_hand_with_shares_from_one_pass(spark):
    """Two clusters of hand-made customers: counts, shares of customers and of revenue (the
    totals summed from the clusters), and each feature's mean, median and population spread."""
    rows = [  # cluster_id, recency_days, frequency_orders, monetary, channels_used, revenue_365d
        (1, 10.0, 4.0, 100.0, 1.0, 60.0), (1, 20.0, 6.0, 300.0, 2.0, 20.0), (1, 30.0, 8.0, 200.0, 3.0, 0.0),
        (2, 400.0, 1.0, 50.0, 1.0, 20.0),
    ]
    assigned = spark.createDataFrame(rows, "cluster_id int, recency_days double, frequency_orders double, monetary double, "
                                           "channels_used double, revenue_365d double")
    first, second = [r.asDict() for r in cluster_profiles(assigned, ["recency_days", "monetary"]).collect()]
    assert (first["cluster_id"], first["customers"], second["customers"]) == (1, 3, 1)
    assert (first["customer_share"], first["revenue_share"], second["revenue_share"]) == (0.75, 0.8, 0.2)
    assert (first["mean_monetary"], first["median_monetary"]) == (200.0, 200.0)
    assert first["std_recency_days"] == pytest.approx(np.std([10.0, 20.0, 30.0]))
    assert (second["mean_recency_days"], second["std_recency_days"]) == (400.0, 0.0)
