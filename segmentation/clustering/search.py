"""The choice of k on the driver: K-means and the silhouette in numpy on a bounded sample.

Scoring every candidate k with distributed fits costs a Spark job per Lloyd iteration, per
restart, per k; on the silhouette sample (at most `cluster.silhouette_sample` points,
whatever the customer count) the same search takes well under a second in numpy. Only the
chosen k is then fitted on the fit sample, by Lloyd's iterations from the centres found here
(`model.fit_from_centres`), where Spark's k-means|| restarts from scratch took a Spark job
per iteration. The silhouette is the one Spark's ClusteringEvaluator computes (squared
euclidean distance), so both solvers' scores read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class KScore:
    """What the choice of k looks at: the within-cluster cost, the silhouette and the sizes."""

    k: int
    cost: float
    silhouette: float
    sizes: list[int]


@dataclass(frozen=True)
class SampleFit(KScore):
    """A k fitted on the driver's sample: its scores, and the centroids reached (in the
    sample's units: standardised), for the fit of the chosen k on the fit sample to start from."""

    centroids: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class KMeansFit:
    centroids: np.ndarray  # (k, d)
    labels: np.ndarray  # (n,) the index of each point's centroid
    inertia: float  # the sum of squared distances to the centroids


def _squared_distances(points: np.ndarray, centroids: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """(n, k) squared euclidean distances, clipped at 0 (the expansion can round below it)."""
    squared = norms[:, None] - 2.0 * points @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)[None, :]
    return np.maximum(squared, 0.0)


def _cluster_sums(points: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster index below k: the number of points and their sum (a one-hot product,
    much faster than np.add.at)."""
    members = np.zeros((k, len(points)))
    members[labels, np.arange(len(points))] = 1.0
    return members.sum(axis=1), members @ points


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k initial centroids by greedy k-means++: each new centroid is the best (lowest total
    cost) of a few candidates drawn with probability proportional to the squared distance to
    the centroids so far."""
    n = len(points)
    norms = np.einsum("ij,ij->i", points, points)
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(n))]
    closest = _squared_distances(points, points[chosen], norms)[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        # Fewer distinct points than k: every point is a centroid already, draw uniformly.
        draws = (np.searchsorted(np.cumsum(closest), rng.random(trials) * total, side="right") if total > 0
                 else rng.integers(n, size=trials))
        draws = np.minimum(draws, n - 1)
        candidates = np.minimum(closest[:, None], _squared_distances(points, points[draws], norms))
        best = int(np.argmin(candidates.sum(axis=0)))
        chosen.append(int(draws[best]))
        closest = candidates[:, best]
    return points[chosen].copy()


def lloyd(points: np.ndarray, centroids: np.ndarray, max_iterations: int, tolerance: float = 1e-4) -> KMeansFit:
    """Lloyd iterations from `centroids` until no centroid moves farther than `tolerance` (as
    Spark's KMeans decides convergence) or `max_iterations`; an empty cluster keeps its centroid."""
    norms = np.einsum("ij,ij->i", points, points)
    centroids = centroids.astype(float, copy=True)
    k = len(centroids)
    for _ in range(max_iterations):
        # ||x||² is the same for every centroid: the nearest one needs only the rest.
        labels = np.argmin(np.einsum("ij,ij->i", centroids, centroids)[None, :] - 2.0 * points @ centroids.T, axis=1)
        counts, sums = _cluster_sums(points, labels, k)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
        shift = np.max(np.sum((moved - centroids) ** 2, axis=1))
        centroids = moved
        if shift <= tolerance * tolerance:
            break
    distances = _squared_distances(points, centroids, norms)
    labels = np.argmin(distances, axis=1)
    return KMeansFit(centroids, labels, float(distances[np.arange(len(points)), labels].sum()))


def fit_kmeans(points: np.ndarray, k: int, seed: int, restarts: int, max_iterations: int) -> KMeansFit:
    """K-means `restarts` times (seeds seed, seed+1, ...), the lowest inertia kept."""
    fits = [lloyd(points, kmeans_plus_plus(points, k, np.random.default_rng(seed + restart)), max_iterations)
            for restart in range(restarts)]
    return min(fits, key=lambda fit: fit.inertia)


def silhouette_sqeuclidean(points: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette with squared euclidean distances, as Spark's ClusteringEvaluator
    (and scikit-learn's silhouette_score(metric="sqeuclidean")) computes it: a point alone in
    its cluster scores 0. In O(n·k·d): the squared distances from x to the points y_j of a
    cluster C sum to |C|·||x||² - 2·x·S_C + Q_C (S_C: their sum, Q_C: the sum of their squared
    norms). Fewer than two non-empty clusters have no silhouette: 0."""
    clusters, labels = np.unique(labels, return_inverse=True)
    if len(clusters) < 2:
        return 0.0
    norms = np.einsum("ij,ij->i", points, points)
    sizes, sums = _cluster_sums(points, labels, len(clusters))
    squares = np.bincount(labels, weights=norms)
    total = np.maximum(sizes[None, :] * norms[:, None] - 2.0 * points @ sums.T + squares[None, :], 0.0)
    rows = np.arange(len(points))
    own = sizes[labels]
    within = total[rows, labels] / np.maximum(own - 1.0, 1.0)
    mean_to_others = total / sizes[None, :]
    mean_to_others[rows, labels] = np.inf
    nearest = mean_to_others.min(axis=1)
    spread = np.maximum(within, nearest)
    scores = np.where((own > 1) & (spread > 0), (nearest - within) / np.where(spread > 0, spread, 1.0), 0.0)
    return float(scores.mean())


def score_ks(points: np.ndarray, ks: list[int], seed: int, restarts: int, max_iterations: int) -> list[SampleFit]:
    """Every k of `ks` fitted on `points` and scored: cost, silhouette and sizes on `points`,
    and the centroids reached."""
    # One BLAS thread: the products are small ((n, d) by (d, k)), and several BLAS threads
    # fighting over busy cores made them ten times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        return [_score(points, k, seed, restarts, max_iterations) for k in ks]


def _score(points: np.ndarray, k: int, seed: int, restarts: int, max_iterations: int) -> SampleFit:
    fit = fit_kmeans(points, k, seed, restarts, max_iterations)
    sizes = np.bincount(fit.labels, minlength=k)
    return SampleFit(k, fit.inertia, silhouette_sqeuclidean(points, fit.labels), [int(s) for s in sizes], fit.centroids)
