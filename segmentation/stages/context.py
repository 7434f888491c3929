"""What every stage shares: its context (configuration, session, run id)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segmentation import tables
from segmentation.config import Config
from segmentation.errors import DataQualityError
from segmentation.tables import TableRef, table_ref


@dataclass
class StageContext:
    config: Config
    spark: SparkSession
    pipeline_run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def table(self, key: str) -> TableRef:
        return table_ref(self.config, key)

    def read_input(self, key: str, missing: str) -> tuple[TableRef, int, DataFrame]:
        """A stage's input table at its current version (the version is what runs record);
        `missing` says what to run first when the table does not exist yet."""
        ref = self.table(key)
        version = tables.current_version(self.spark, ref)
        if version is None:
            raise DataQualityError(f"{ref}: {missing}")
        return ref, version, tables.read(self.spark, ref, version)

    def read_transactions(self) -> tuple[TableRef, int, DataFrame]:
        return self.read_input("transactions", "no transactions table yet; run 'segmentation ingest' first")

    def as_of(self, transactions: DataFrame, ref: TableRef) -> dt.date:
        """The snapshot date of a stage reading transactions: configured, else the day of the
        latest transaction (a Spark job, run only when no date is configured)."""
        from segmentation.features.customer import latest_transaction_date

        return resolve_as_of(self.config.as_of, lambda: latest_transaction_date(transactions),
                             f"{ref} has no rows: nothing to compute from")

    def snapshot_as_of(self, snapshots: DataFrame, ref: TableRef, missing: str, column: str = "as_of_date") -> dt.date:
        """The snapshot date of a stage reading snapshot tables: configured, else the newest
        `column` of `snapshots`; `missing` says what to run when there is none."""
        return resolve_as_of(self.config.as_of, lambda: snapshots.agg(F.max(column)).first()[0], f"{ref} {missing}")


def resolve_as_of(configured: dt.date | None, latest: Callable[[], dt.date | None], missing: str) -> dt.date:
    """The as-of date every stage uses: the configured one, else `latest()` (asked only then);
    `missing` is the error when there is neither."""
    as_of = configured or latest()
    if as_of is None:
        raise DataQualityError(missing)
    return as_of


NOTEBOOK_ENV, NOTEBOOK_SETTINGS = "SEGMENTATION_ENV", "SEGMENTATION_SET"


def notebook_context(env: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> StageContext:
    """The context a notebook works in, built the way the command line builds a job's.

    The environment is `env`, else $SEGMENTATION_ENV, else "databricks" on Databricks and
    "local" elsewhere; the configuration folder is $SEGMENTATION_CONF_DIR, else ./conf, else
    the package's own. `overrides` come first, then the key=value settings of $SEGMENTATION_SET
    (one per line, or separated by semicolons), so whoever starts the kernel has the last
    word. Relative paths resolve against the project folder, as for a command started there:
    the folder above the configuration folder, or, with the package's own configuration, the
    source checkout it belongs to (else the current directory). So a notebook opened from
    notebooks/ sees the tables of `segmentation run`.
    """
    import contextlib
    import os
    import re
    from pathlib import Path

    from segmentation.config import PACKAGE_CONF_DIR, default_conf_dir, load_config
    from segmentation.logs import configure_logging
    from segmentation.spark import get_spark, running_on_databricks

    env = env or os.environ.get(NOTEBOOK_ENV) or ("databricks" if running_on_databricks() else "local")
    settings = [item.strip() for item in re.split(r"[;\n]", os.environ.get(NOTEBOOK_SETTINGS, "")) if item.strip()]
    conf_dir = default_conf_dir().resolve()
    project = conf_dir.parent
    if conf_dir == PACKAGE_CONF_DIR:
        checkout = PACKAGE_CONF_DIR.parents[1]
        project = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    with contextlib.chdir(project) if project.is_dir() else contextlib.nullcontext():
        config = load_config(env, conf_dir, [*overrides, *settings])
    configure_logging(config.logging.level)
    return StageContext(config, get_spark(config.spark))
