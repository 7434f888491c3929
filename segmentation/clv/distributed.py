"""Likelihood rows that stay in Spark: each partition sums its own rows' log-likelihood and
gradient (in a pandas batch, with scipy), and the driver adds one row per partition.

Used when the distinct triples or spend groups are too many to collect: every optimiser
step is then one Spark job over the cached rows, and the driver's work is bounded by the
number of partitions, not of customers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.clv.fitting import RowSums


class SparkRows:
    """Weighted rows in a Spark DataFrame with a `weight` column and the model's columns."""

    def __init__(self, df: DataFrame, columns: list[str]):
        self.columns = columns
        self.df = df.select(*[F.col(c).cast("double") for c in columns], F.col("weight").cast("double")).persist(
            StorageLevel.MEMORY_AND_DISK
        )
        totals = self.df.agg(F.count(F.lit(1)).alias("rows"), F.sum("weight").alias("weight")).first()
        self.count = int(totals["rows"])
        self.total_weight = float(totals["weight"] or 0.0)

    def sums(self, row_sums: RowSums, params: np.ndarray) -> tuple[float, np.ndarray]:
        columns, size = self.columns, len(params)
        names = ["value"] + [f"g{i}" for i in range(size)]

        def partial_sums(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            value, gradient = 0.0, np.zeros(size)
            for batch in batches:
                arrays = {c: batch[c].to_numpy(dtype=float) for c in columns}
                batch_value, batch_gradient = row_sums(params, arrays, batch["weight"].to_numpy(dtype=float))
                value, gradient = value + batch_value, gradient + batch_gradient
            yield pd.DataFrame([[value, *gradient]], columns=names)

        schema = ", ".join(f"{name} double" for name in names)
        totals = self.df.mapInPandas(partial_sums, schema).agg(*[F.sum(n).alias(n) for n in names]).first()
        return float(totals["value"]), np.array([totals[f"g{i}"] for i in range(size)], dtype=float)

    def maximum(self, column: str) -> float:
        return float(self.df.agg(F.max(column)).first()[0])

    def release(self) -> None:
        self.df.unpersist()
