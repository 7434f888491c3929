"""What every job shares: its context (configuration, session, run id)."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession

from segmentation import tables
from segmentation.config import Config
from segmentation.errors import DataQualityError
from segmentation.tables import TableRef, table_ref


@dataclass
class JobContext:
    config: Config
    spark: SparkSession
    pipeline_run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def table(self, key: str) -> TableRef:
        return table_ref(self.config, key)

    def read_input(self, key: str, missing: str) -> tuple[TableRef, int, DataFrame]:
        """A stage's input table at its current version (the version is what runs record);
        `missing` says what to run first when the table does not exist yet."""
        ref = self.table(key)
        if not tables.exists(self.spark, ref):
            raise DataQualityError(f"{ref}: {missing}")
        version = tables.current_version(self.spark, ref)
        return ref, version, tables.read(self.spark, ref, version)

    def read_transactions(self) -> tuple[TableRef, int, DataFrame]:
        return self.read_input("transactions", "no transactions table yet; run 'segmentation ingest' first")

    def as_of(self, transactions: DataFrame, ref: TableRef) -> dt.date:
        """The snapshot date: configured, else the day of the latest transaction (a Spark job)."""
        from segmentation.features.customer import latest_transaction_date

        as_of = self.config.as_of or latest_transaction_date(transactions)
        if as_of is None:
            raise DataQualityError(f"{ref} has no rows: nothing to compute from")
        return as_of


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (expected YYYY-MM-DD)") from None


def optional_iso_date(text: str) -> dt.date | None:
    """A date, or None for an empty value: schedulers such as Databricks jobs pass a job
    parameter left blank as the empty string, and blank means "not given"."""
    return iso_date(text) if text.strip() else None


def add_as_of_argument(parser: argparse.ArgumentParser) -> None:
    """--as-of, shared by every stage that takes a snapshot date (it sets the top-level as_of)."""
    parser.add_argument(
        "--as-of", type=optional_iso_date, metavar="YYYY-MM-DD",
        help="snapshot date (default, or empty: the latest transaction date)",
    )


def as_of_overrides(args: argparse.Namespace) -> list[str]:
    as_of = getattr(args, "as_of", None)
    return [f"as_of={as_of.isoformat()}"] if as_of else []
