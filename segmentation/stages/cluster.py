"""cluster: K-means segmentation of the customer features of an as-of date, tracked in
MLflow, registered, and written to `customer_clusters` with stable, named clusters.

One MLflow run per job with a child run per candidate k. The chosen model is registered as
`cluster.registered_model`; its clusters are matched to the current champion's (optimal
one-to-one assignment of centroids) so ids and names stay put across retrains, and the
`champion` alias moves only when the silhouette rule in configuration says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides, option_overrides
from segmentation import registry, tables, tracking
from segmentation.clustering.model import (
    CHAMPION_START,
    CLUSTER_ID,
    Candidate,
    Space,
    assign_clusters,
    candidate_ks,
    choose_k,
    distinct_points,
    features_without_spread,
    fit_candidate,
    fit_from_centres,
    preparation,
    model_space,
    SAMPLE_START,
    standardised_centres,
    standardised_points,
    with_cluster_ids,
)
from segmentation.clustering.search import KScore, score_ks
from segmentation.clustering.profiles import (
    NAMING_COLUMNS,
    REVENUE,
    Matching,
    ReferenceClusters,
    cluster_names,
    cluster_profiles,
    match_to_reference,
)
from segmentation.errors import DataQualityError, InsufficientDataError
from segmentation.sufficiency import cluster_shortfall, varying_features
from segmentation.logs import stage
from segmentation.plots import plt
from segmentation.registry import CHAMPION, ChampionMetric, PromotionRule, decide_promotion
from segmentation.sampling import customer_sample, partitioned_by_data, sample_fraction
from segmentation.privacy import CUSTOMER_COLUMN
from segmentation.schema import CLUSTER_COLUMNS, require_numeric_columns

log = logging.getLogger(__name__)

HELP = "segment customers with K-means on their features, register the model, write customer_clusters"
CENTROIDS_ARTIFACT = "cluster/centroids.json"


def add_arguments(parser) -> None:
    add_as_of_argument(parser)
    parser.add_argument("--k", type=int, help="a fixed number of clusters (default: chosen by silhouette)")


def config_overrides(args) -> list[str]:
    return as_of_overrides(args) + option_overrides(args, {"k": "cluster.k"})


@dataclass(frozen=True)
class ClusterDecision:
    """What the training did to the champion alias (`cluster/champion_decision.json`)."""

    model_version: str
    promoted: bool
    reason: str
    champion_version: str | None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClusterResult:
    as_of: dt.date
    customers: int
    features_version: int
    k: int
    silhouette: float
    model_version: str  # the registered version that wrote the snapshot
    version: int | None  # the customer_clusters version written
    table: str
    mlflow_run_id: str
    names: dict[int, str]
    decision: ClusterDecision


@dataclass(frozen=True)
class _Clustering:
    best: Candidate
    candidates: list[KScore]
    space: Space
    matching: Matching
    assigned: DataFrame  # customer_id, its features, cluster_id, distance_to_centroid (not computed yet)
    profiles: list[dict]
    names: dict[int, str]


def run(ctx: StageContext, args=None) -> ClusterResult:
    config, settings = ctx.config, ctx.config.cluster
    target = ctx.table("customer_clusters")
    with tracking.stage_run(config, "cluster", ctx.pipeline_run_id) as parent, stage("cluster") as summary:
        source, version, features = ctx.read_input("customer_features", "no customer features yet; run 'segmentation features' first")
        require_numeric_columns(features, {"cluster.features": settings.features}, "customer_features", booleans=True)
        as_of = ctx.snapshot_as_of(features, source, "has no snapshots: run 'segmentation features' first")
        columns = list(dict.fromkeys(["customer_id", *settings.features, *NAMING_COLUMNS, REVENUE]))
        customers = features.where(F.col("as_of_date") == F.lit(as_of)).select(*columns).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            count = customers.count()
            if count == 0:
                raise DataQualityError(f"{source} has no snapshot as of {as_of}")
            summary.update(as_of=as_of.isoformat(), customers=count, features_version=version)
            settings, too_few_varying = _check_clusterable(customers, count, settings, f"{source} as of {as_of}")
            ctx = StageContext(config.model_copy(update={"cluster": settings}), ctx.spark, ctx.pipeline_run_id)
            _record_inputs(source, version, as_of, settings)

            client = MlflowClient()
            champion = _champion(client, settings.registered_model)
            clustering = _compute(ctx, customers, count, as_of, source, version, champion, too_few_varying)
            model_version, decision = _register_and_decide(client, clustering, customers, champion, settings)
            written = _write(ctx, clustering, as_of, model_version, target)
        finally:
            customers.unpersist()

        best = clustering.best
        result = ClusterResult(as_of, count, version, best.k, best.silhouette, model_version, written, target.location,
                               parent.info.run_id, clustering.names, decision)
        summary.update(k=best.k, silhouette=round(best.silhouette, 4), model_version=model_version,
                       champion=decision.champion_version, version=written, table=target.location)
        _record(clustering, decision)
    return result


def _record_inputs(source, version: int, as_of: dt.date, settings) -> None:
    tracking.log_delta_input(source, version, context="customer_features")
    mlflow.set_tag("as_of", as_of.isoformat())
    mlflow.log_params({"as_of": as_of.isoformat(), **{k: str(v) for k, v in settings.model_dump().items()}})


def _compute(ctx: StageContext, customers: DataFrame, count: int, as_of, source, version: int, champion: Champion | None,
             too_few_varying: str | None) -> _Clustering:
    """Score a candidate per k (a child run each), fit the best, match its clusters to the
    champion's, assign and profile every customer, and name the clusters."""
    settings = ctx.config.cluster
    best, candidates = _fit(ctx, customers, count, as_of, source, version, too_few_varying, champion)
    space = model_space(best.model, settings)
    matching = match_to_reference(space, champion.reference if champion else None, settings.max_match_distance)
    # Each customer's features beside its cluster, for the profiles: no join back to them.
    assigned = assign_clusters(best.model, customers, space, matching.ids, keep=[c for c in customers.columns if c != "customer_id"])
    profiles = [r.asDict() for r in cluster_profiles(assigned, settings.features).collect()]
    names = cluster_names(profiles, matching.inherited_names)
    return _Clustering(best, candidates, space, matching, assigned, profiles, names)


def _register_and_decide(client: MlflowClient, clustering: _Clustering, customers: DataFrame, champion: Champion | None,
                         settings) -> tuple[str, ClusterDecision]:
    """Register the best model as a new version and move the champion alias by the rule."""
    ids, names = clustering.matching.ids, clustering.names
    reference_now = ReferenceClusters(clustering.space.inputs, clustering.space.centroids, ids, [names[i] for i in ids])
    # Logged before the model can become champion: the next retrain matches against it.
    mlflow.log_dict(reference_now.as_dict(), CENTROIDS_ARTIFACT)
    model_version = _register(with_cluster_ids(clustering.best.model, ids), customers, settings)
    return model_version, _decide(client, settings, model_version, clustering.best.silhouette, champion)


def _write(ctx: StageContext, clustering: _Clustering, as_of, model_version: str, target) -> int | None:
    snapshot = _with_names(clustering.assigned, clustering.names).select(
        "customer_id", F.lit(as_of).alias("as_of_date"), "cluster_id", "cluster_name",
        "distance_to_centroid", F.lit(int(model_version)).alias("model_version"),
    )
    result = tables.write_snapshot(snapshot.select(*CLUSTER_COLUMNS), target, as_of, run_id=ctx.pipeline_run_id)
    tracking.log_delta_output(target, result.version)
    return result.version


def _record(clustering: _Clustering, decision: ClusterDecision) -> None:
    best, names, profiles = clustering.best, clustering.names, clustering.profiles
    _log_parent(best, clustering.candidates, clustering.space, clustering.matching.ids, names, profiles, decision)
    print(report(best, clustering.candidates, profiles, names, decision), flush=True)


def _fit(ctx: StageContext, customers: DataFrame, count: int, as_of, source, version: int,
         too_few_varying: str | None, champion: Champion | None) -> tuple[Candidate, list[KScore]]:
    """The fitted model and every candidate k's scores (a child run each). K-means fits and
    scores every candidate k on the driver (numpy K-means on the silhouette sample), then
    fits the chosen k on the fit sample by Lloyd's iterations from the centres found there,
    or from the champion's when it has that k (`cluster.warm_start`). BisectingKMeans
    fits every k with Spark. `too_few_varying` (fewer than 2 features vary) fails once the
    distinct points are counted."""
    settings = ctx.config.cluster
    snapshot = f"{source} as of {as_of}"
    prepared = preparation(settings).fit(customers)
    # Not cached: from an uncached input, K-means caches its own vectors, which it iterates
    # over much faster than over a cached DataFrame (8 s instead of 26 s per k at 100,000 customers).
    points = prepared.transform(customers)
    fit_fraction = sample_fraction(count, settings.fit_sample)
    silhouette = sample_fraction(count, settings.silhouette_sample)
    fit_points = partitioned_by_data(customer_sample(points, fit_fraction, settings.seed), round(fit_fraction * count), [CUSTOMER_COLUMN])
    silhouette_points = customer_sample(points, silhouette, settings.seed + 1)
    if fit_fraction < 1:
        log.info("K-means fits on a sample of about %d of the %d customers (cluster.fit_sample); all are assigned",
                 round(fit_fraction * count), count)
    distinct = _distinct_points(fit_points, count, settings, snapshot, sampled=fit_fraction < 1)
    if too_few_varying:
        raise InsufficientDataError("cluster", f"{snapshot}: {too_few_varying}")
    ks = candidate_ks(settings)
    for k in ks:
        if k >= distinct:
            log.warning("k=%d skipped: only %d customers with distinct features", k, distinct)
    ks = [k for k in ks if k < distinct]
    params = {"algorithm": settings.algorithm, "seed": settings.seed, "silhouette_sample_fraction": silhouette}

    def fitted_params(candidate: Candidate) -> dict:
        return {**params, "solver": candidate.solver, "fit_sample_fraction": fit_fraction}

    if settings.algorithm != "kmeans":
        candidates = [fit_candidate(fit_points, silhouette_points, prepared, settings, k) for k in ks]
        for candidate in candidates:
            _log_candidate(ctx, as_of, source, version, candidate, fitted_params(candidate))
        return choose_k(candidates), candidates

    start = _champion_start(champion, prepared, settings)
    warm = [] if start is None else [len(start)]
    # A fixed k that starts from the champion's centres needs no search on the driver.
    scores = [] if ks == warm else score_ks(standardised_points(silhouette_points), ks, settings.seed, settings.restarts,
                                             settings.max_iterations)
    if len(ks) > 1:
        for score in scores:
            _log_candidate(ctx, as_of, source, version, score, {**params, "solver": "numpy", "fit_sample_fraction": silhouette})
    k = choose_k(scores).k if scores else ks[0]
    if k in warm:
        log.info("k=%d starts from the centres of champion version %s (cluster.warm_start)", k, champion.version)
        best = fit_from_centres(fit_points, silhouette_points, prepared, settings, start, CHAMPION_START)
    else:
        [centres] = [score.centroids for score in scores if score.k == k]
        best = fit_from_centres(fit_points, silhouette_points, prepared, settings, centres, SAMPLE_START)
    if len(ks) == 1:
        _log_candidate(ctx, as_of, source, version, best, fitted_params(best))
        return best, [best]
    log.info("k=%d fitted from the %s's centres: silhouette %.4f, cost %.1f, sizes %s", best.k, best.start,
             best.silhouette, best.cost, best.sizes)
    return best, scores


def _champion_start(champion: Champion | None, prepared, settings) -> np.ndarray | None:
    """The champion's centroids in the new fit's standardised space, for a K-means retrain to
    start from (None without a champion or its centroids, for other features, BisectingKMeans,
    or with cluster.warm_start off)."""
    if not settings.warm_start or settings.algorithm != "kmeans" or champion is None or champion.reference is None:
        return None
    reference = champion.reference
    return standardised_centres(prepared, settings, reference.inputs, reference.centroids)


def _log_candidate(ctx: StageContext, as_of, source, version: int, candidate: KScore, params: dict) -> None:
    """A child run with a candidate's scores: parameters, metrics and sizes, no model."""
    tags = {"as_of": as_of.isoformat()}
    with tracking.stage_run(ctx.config, "cluster.candidate", ctx.pipeline_run_id, tags, run_name=f"k={candidate.k}"):
        tracking.log_delta_input(source, version, context="customer_features")
        mlflow.log_params({"k": candidate.k, **params})
        mlflow.log_metrics({"silhouette": candidate.silhouette, "cost": candidate.cost})
        mlflow.log_dict({"cluster_sizes": candidate.sizes}, "cluster_sizes.json")
    log.info("k=%d (%s): silhouette %.4f, cost %.1f, sizes %s", candidate.k, params["solver"], candidate.silhouette,
             candidate.cost, candidate.sizes)


def _wanted(settings) -> tuple[int, str]:
    ks = candidate_ks(settings)
    return ks[0], f"k = {ks[0]}" if len(ks) == 1 else f"k from {ks[0]} to {ks[-1]}"


def _check_clusterable(customers: DataFrame, count: int, settings, snapshot: str):
    """The cluster settings without the features that have one value for every customer
    (left out with a warning), and why too few features vary (fewer than 2: the settings are
    then kept, for the distinct points to be counted first); an InsufficientDataError when
    there are no more customers than the smallest k (K-means needs more customers than
    clusters) or a feature has no value at all (nothing to impute from)."""
    smallest, wanted = _wanted(settings)
    if count <= smallest:
        raise InsufficientDataError("cluster", f"{snapshot}: {_customers(count)}, too few for {wanted} (K-means needs more customers than clusters)")
    empty, constant = features_without_spread(customers, settings)
    if empty:
        raise InsufficientDataError(
            "cluster", f"{snapshot}: cluster.features {', '.join(empty)} have no value for any of the {_customers(count)}; "
            "leave them out of cluster.features"
        )
    varying, shortfall = varying_features(settings.features, constant, count)
    if shortfall or not constant:
        return settings, shortfall
    log.warning("cluster.features %s left out: the same value for all %s, they cannot separate clusters",
                ", ".join(constant), _customers(count))
    return settings.model_copy(update={"features": varying, "log_features": [f for f in settings.log_features if f in varying]}), None


def _distinct_points(points: DataFrame, count: int, settings, snapshot: str, sampled: bool) -> int:
    """How many customers of `points` (the K-means sample when `sampled`) K-means can tell
    apart; a DataQualityError when too few for every k."""
    smallest, wanted = _wanted(settings)
    distinct = distinct_points(points, settings)
    where = " in the K-means sample (cluster.fit_sample)" if sampled else ""
    if distinct <= smallest:
        raise InsufficientDataError(
            "cluster", f"{snapshot}: {_customers(count)} but only {distinct} with distinct cluster.features{where}, too few for {wanted} "
            "(K-means needs more distinct customers than clusters)"
        )
    shortfall = cluster_shortfall(distinct, candidate_ks(settings)[-1], settings.min_customers_per_cluster)
    if shortfall:
        raise InsufficientDataError("cluster", f"{snapshot}{where}: {shortfall}")
    return distinct


def _customers(count: int) -> str:
    return f"{count} customer" if count == 1 else f"{count} customers"


@dataclass(frozen=True)
class Champion:
    version: str
    silhouette: float | None
    reference: ReferenceClusters | None  # None when its centroids cannot be read


def _champion(client: MlflowClient, name: str) -> Champion | None:
    """The model version the alias points at, read once per job (None before the first promotion)."""
    version = registry.aliased_version(client, name, CHAMPION)
    if version is None:
        return None
    try:
        reference = ReferenceClusters.from_dict(mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{CENTROIDS_ARTIFACT}"))
    except (MlflowException, OSError, KeyError, ValueError) as error:
        log.warning("champion version %s has no readable %s (%s): clusters get new ids", version.version, CENTROIDS_ARTIFACT, error)
        reference = None
    return Champion(version.version, version.metrics.get("silhouette"), reference)


def _with_names(assigned: DataFrame, names: dict[int, str]) -> DataFrame:
    mapping = F.create_map(*[v for cluster_id, name in sorted(names.items()) for v in (F.lit(cluster_id), F.lit(name))])
    return assigned.select("*", F.element_at(mapping, F.col("cluster_id")).alias("cluster_name"))


def _register(model: PipelineModel, customers: DataFrame, settings) -> str:
    sample = customers.select(*[F.col(c).cast("double") for c in settings.features]).limit(5)
    predictions = model.transform(sample).select(CLUSTER_ID).toPandas()
    return registry.register_spark_model(model, settings.registered_model, sample.toPandas(), predictions)


def _decide(client: MlflowClient, settings, version: str, silhouette: float, champion: Champion | None) -> ClusterDecision:
    """Move the champion alias only by the configured rule; the decision is logged either way."""
    current = champion.version if champion else None
    # A champion whose run logged no silhouette (its job stopped after the promotion) is
    # replaced as if there were none.
    compared = ChampionMetric(champion.version, champion.silhouette) if champion and champion.silhouette is not None else None
    rule = PromotionRule("silhouette", tolerance=settings.promote_tolerance)
    decision = decide_promotion(silhouette, compared, rule)
    registry.record_decision(client, settings.registered_model, version, decision)
    log.info("model version %s %s as %s: %s", version, "promoted" if decision.promote else "not promoted", CHAMPION, decision.reason)
    return ClusterDecision(version, decision.promote, decision.reason, version if decision.promote else current)


def _log_parent(best: Candidate, candidates, space: Space, ids, names, profiles, decision: ClusterDecision) -> None:
    mlflow.log_metrics({"silhouette": best.silhouette, "cost": best.cost, "k": best.k})
    mlflow.set_tag("kmeans_start", best.start)
    mlflow.log_dict({"profiles": profiles, "names": {str(k): v for k, v in names.items()}}, "cluster/profiles.json")
    mlflow.log_dict(decision.as_dict(), "cluster/champion_decision.json")
    mlflow.log_dict(
        {"inputs": space.inputs, "centroids_standardised": {str(i): row.tolist() for i, row in zip(ids, space.centroids_scaled)}},
        "cluster/centroids_standardised.json",
    )
    mlflow.log_figure(_plot_choice(candidates), "cluster/k_choice.png")
    mlflow.log_figure(_plot_sizes(profiles, names), "cluster/sizes.png")
    mlflow.log_figure(_plot_heatmap(space, ids, names), "cluster/heatmap.png")
    plt.close("all")


def _plot_choice(candidates):
    figure, left = plt.subplots(figsize=(7, 4))
    ks = [c.k for c in candidates]
    left.plot(ks, [c.silhouette for c in candidates], marker="o", color="tab:blue")
    left.set_xlabel("k")
    left.set_ylabel("silhouette (sample)", color="tab:blue")
    right = left.twinx()
    right.plot(ks, [c.cost for c in candidates], marker="s", color="tab:red")
    right.set_ylabel("within-cluster cost", color="tab:red")
    figure.tight_layout()
    return figure


def _plot_sizes(profiles, names):
    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [f"{p['cluster_id']}: {names[p['cluster_id']]}" for p in profiles]
    axis.barh(labels, [p["customers"] for p in profiles])
    axis.set_xlabel("customers")
    figure.tight_layout()
    return figure


def _plot_heatmap(space: Space, ids, names):
    figure, axis = plt.subplots(figsize=(9, 0.6 * len(ids) + 2))
    order = np.argsort(ids)
    image = axis.imshow(space.centroids_scaled[order], cmap="coolwarm", vmin=-2, vmax=2, aspect="auto")
    axis.set_yticks(range(len(ids)), [f"{ids[i]}: {names[ids[i]]}" for i in order])
    axis.set_xticks(range(len(space.inputs)), space.inputs, rotation=60, ha="right")
    figure.colorbar(image, label="standardised centroid")
    figure.tight_layout()
    return figure


def report(best: Candidate, candidates, profiles, names, decision: ClusterDecision) -> str:
    lines = ["", "K-means candidates:"]
    lines += [f"  k={c.k}: silhouette {c.silhouette:.4f}, cost {c.cost:,.1f}" for c in candidates]
    lines += [f"Chosen k={best.k}. Clusters:"]
    width = max(34, *(len(name) + 2 for name in names.values()))
    for p in profiles:
        lines.append(
            f"  {p['cluster_id']:>3}  {names[p['cluster_id']]:<{width}}{p['customers']:>10,}  "
            f"{100 * p['customer_share']:5.1f}% of customers  {100 * (p['revenue_share'] or 0):5.1f}% of revenue"
        )
    lines.append(f"Model version {decision.model_version}: {'promoted to champion' if decision.promoted else 'not promoted'} ({decision.reason})")
    return "\n".join(lines) + "\n"
