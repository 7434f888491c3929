"""Real public data in the transaction schema: the CDNOW purchase logs.

CDNOW (Fader, Hardie & Lee 2005) is the standard check for lifetime-value models. The raw
files ship inside the `lifetimes` package; its Python code is not imported (the package is
unmaintained), only its data files are read, by Spark.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from segmentation.errors import ConfigError
from segmentation.schema import RAW_COLUMNS

# dataset -> (file name, columns in the file); the sample file carries the master id first.
CDNOW_FILES = {
    "cdnow_sample": ("CDNOW_sample.txt", ["customer", "sample_id", "date", "cds", "dollars"]),
    "cdnow_master": ("CDNOW_master.txt", ["customer", "date", "cds", "dollars"]),
}


def cdnow_path(dataset: str, path: str | None = None) -> Path:
    """The CDNOW file: `path` if given, else the one inside the installed `lifetimes` package."""
    if dataset not in CDNOW_FILES:
        raise ConfigError(f"generate.dataset: unknown CDNOW dataset '{dataset}' (use {', '.join(CDNOW_FILES)})")
    if path:
        found = Path(path)
    else:
        spec = importlib.util.find_spec("lifetimes")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                "the CDNOW files ship inside the 'lifetimes' package, which is not installed: "
                "pip install 'lifetimes==0.11.3' (a development dependency), or set generate.cdnow_path"
            )
        found = Path(list(spec.submodule_search_locations)[0]) / "datasets" / CDNOW_FILES[dataset][0]
    if not found.is_file():
        raise ConfigError(f"generate.cdnow_path: {found} does not exist")
    return found


def cdnow_transactions(spark: SparkSession, path: Path, dataset: str) -> DataFrame:
    """The CDNOW purchase log as raw (text) transactions: one row per line of the file.

    CDNOW sold CDs online, so every row is a `web` order of `music`; several purchases by a
    customer on one day stay separate rows, numbered in file order of amount for stable ids.
    """
    names = CDNOW_FILES[dataset][1]
    lines = spark.read.text(str(path)).select(F.split(F.trim("value"), r"\s+").alias("f"))
    fields = lines.select(*[F.col("f")[i].alias(name) for i, name in enumerate(names)]).where(
        F.col("date").rlike(r"^\d{8}$")  # skips the master file's header line
    )
    same_day = Window.partitionBy("customer", "date").orderBy("dollars", "cds")
    day = F.to_date("date", "yyyyMMdd")
    values = {
        "transaction_id": F.format_string("cdnow-%s-%s-%d", "customer", "date", F.row_number().over(same_day)),
        "order_id": F.format_string("cdnow-%s-%s", "customer", "date"),
        "customer_id": F.col("customer"),
        "transaction_ts": F.date_format(day, "yyyy-MM-dd HH:mm:ss"),
        "channel": F.lit("web"),
        "store_id": F.lit("CDNOW"),
        "product_category": F.lit("music"),
        "quantity": F.col("cds"),
        "net_amount": F.col("dollars"),
    }
    return fields.select(*[values.get(c, F.lit(None).cast("string")).alias(c) for c in RAW_COLUMNS])
