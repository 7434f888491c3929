"""Exact path-dependent TreeSHAP (Lundberg et al. 2018) of a weighted sum of regression
trees, vectorised over rows with numpy (`segmentation/churn/drivers.py` explains the churn
GBT with it).

This module imports numpy alone: the explainer travels to Spark's Python workers inside a
pandas UDF, and each worker imports the module that defines it. With pandas and pyarrow, which
a pandas UDF's worker imports anyway, that costs a worker 0.45 s of CPU; `drivers` (mlflow,
pyspark.ml) cost 1.9 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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
