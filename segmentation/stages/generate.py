"""generate: write a raw transaction feed (synthetic, or the real CDNOW logs) to a Delta table."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from segmentation.stages.context import StageContext
from segmentation.arguments import positive_int, share
from segmentation import tables
from segmentation.datasets import cdnow_path, cdnow_transactions
from segmentation.generate import generate_customers, generate_transactions
from segmentation.errors import DataQualityError
from segmentation.logs import stage
from segmentation.sources import GENERATED_PROPERTY

log = logging.getLogger(__name__)

HELP = "write a raw transaction feed (synthetic or CDNOW) to the raw_transactions table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=["synthetic", "cdnow_sample", "cdnow_master"], help="what to generate")
    parser.add_argument("--customers", type=positive_int, help="number of synthetic customers")
    parser.add_argument("--seed", type=int, help="random seed of the synthetic feed")
    parser.add_argument(
        "--defect-share", type=lambda text: share(text, most=0.5), metavar="SHARE",
        help="share of rows made defective on purpose (0-0.5)",
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "generate.dataset": args.dataset,
        "generate.customers": args.customers,
        "generate.seed": args.seed,
        "generate.defect_share": args.defect_share,
    }
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


@dataclass(frozen=True)
class GenerateResult:
    dataset: str  # synthetic, cdnow_sample or cdnow_master
    rows: int | None
    table: str
    version: int | None
    customers: int | None = None  # synthetic only
    seed: int | None = None  # synthetic only
    file: str | None = None  # CDNOW only: the file read

    def summary(self) -> dict[str, object]:
        """What the stage logs, in its order: the dataset and its origin, then the write."""
        origin = {"customers": self.customers, "seed": self.seed} if self.dataset == "synthetic" else {"file": self.file}
        return {"dataset": self.dataset, **origin, "rows": self.rows, "table": self.table, "version": self.version}


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> GenerateResult:
    config = ctx.config.generate
    target = ctx.table("raw_transactions")
    with stage("generate") as summary:
        if config.dataset == "synthetic":
            raw = generate_transactions(generate_customers(ctx.spark, config), config)
            origin = {"customers": config.customers, "seed": config.seed}
        else:
            path = cdnow_path(config.dataset, config.cdnow_path)
            raw = cdnow_transactions(ctx.spark, path, config.dataset)
            origin = {"file": path.name}
        _check_overwritable(ctx, target)
        written = tables.write(raw, target, mode="overwrite", run_id=ctx.pipeline_run_id, overwrite_schema=True)
        tables.set_properties(ctx.spark, target, {GENERATED_PROPERTY: config.dataset})
        result = GenerateResult(config.dataset, written.rows, target.location, written.version, **origin)
        summary.update(result.summary())
    return result


def _check_overwritable(ctx: StageContext, target: tables.TableRef) -> None:
    """Generated rows replace only what `segmentation generate` wrote: a raw table a real feed
    landed in is never overwritten."""
    if not tables.exists(ctx.spark, target) or GENERATED_PROPERTY in tables.properties(ctx.spark, target):
        return
    if not tables.read(ctx.spark, target).isEmpty():
        raise DataQualityError(
            f"{target} holds rows that 'segmentation generate' did not write: refusing to overwrite them "
            "(generate into another storage.root)"
        )
