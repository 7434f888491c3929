"""What every job shares: its context (configuration, session, run id)."""

from __future__ import annotations

import argparse
import datetime as dt
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


def iso_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (expected YYYY-MM-DD)") from None


def add_as_of_argument(parser: argparse.ArgumentParser) -> None:
    """--as-of, shared by every stage that takes a snapshot date (it sets the top-level as_of)."""
    parser.add_argument(
        "--as-of", type=iso_date, metavar="YYYY-MM-DD", help="snapshot date (default: the latest transaction date)"
    )


def as_of_overrides(args: argparse.Namespace) -> list[str]:
    as_of = getattr(args, "as_of", None)
    return [f"as_of={as_of.isoformat()}"] if as_of else []
