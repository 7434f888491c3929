"""What every job shares: its context (configuration, session, run id)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from segmentation.config import Config
from segmentation.tables import TableRef, table_ref


@dataclass
class JobContext:
    config: Config
    spark: SparkSession
    pipeline_run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def table(self, key: str) -> TableRef:
        return table_ref(self.config, key)
