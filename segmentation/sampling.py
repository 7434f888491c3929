"""Samples of customers whose size does not grow with the customer count.

Model fits that gain nothing from more customers past some size (K-means centroids, the
churn classifier, silhouettes) run on a seeded sample of at most a configured number of
customers; every customer is still scored. The sample is taken by a seeded hash of the
customer id, so a customer is in or out of it in every table and at every cutoff alike,
and the same data and seed always give the same sample.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.privacy import CUSTOMER_COLUMN

_BUCKETS = 1_000_000
# Rows per partition of a model's training input (`partitioned_by_data`).
TRAINING_PARTITION_ROWS = 50_000


def sample_fraction(customer_count: int, sample_size: int | None) -> float:
    """The share of `customer_count` customers that makes a sample of `sample_size` (1.0 when
    they are fewer, or when `sample_size` is None: no sampling)."""
    if sample_size is None or customer_count <= sample_size:
        return 1.0
    return sample_size / customer_count


def customer_sample(df: DataFrame, fraction: float, seed: int) -> DataFrame:
    """The rows of `df` whose customer falls in a seeded sample of about `fraction` of the
    customers (all rows when `fraction` >= 1)."""
    if fraction >= 1.0:
        return df
    bucket = F.pmod(F.xxhash64(F.col(CUSTOMER_COLUMN), F.lit(seed)), F.lit(_BUCKETS))
    return df.where(bucket < F.lit(int(round(fraction * _BUCKETS))))


def partitioned_by_data(df: DataFrame, rows: int, keys: list[str]) -> DataFrame:
    """`df` (about `rows` rows) in partitions set by the data alone: about
    TRAINING_PARTITION_ROWS rows each, by a hash of `keys`, sorted by them within. Spark's
    seeded estimators draw per partition, with a seed of the partition's index (K-means||
    starting centres, a GBT's subsamples and split candidates), so a model fitted on this
    is the same for the same rows whatever the session's shuffle partitions, the input's
    files or the cluster's size."""
    partitions = max(1, math.ceil(rows / TRAINING_PARTITION_ROWS))
    return df.repartition(partitions, *keys).sortWithinPartitions(*keys)
