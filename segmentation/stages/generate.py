"""generate: write a raw transaction feed (synthetic, or the real CDNOW logs) to a Delta table."""

from __future__ import annotations

import argparse
import logging

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


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> dict[str, object]:
    config = ctx.config.generate
    target = ctx.table("raw_transactions")
    with stage("generate") as summary:
        if config.dataset == "synthetic":
            raw = generate_transactions(generate_customers(ctx.spark, config), config)
            summary.update(dataset="synthetic", customers=config.customers, seed=config.seed)
        else:
            path = cdnow_path(config.dataset, config.cdnow_path)
            raw = cdnow_transactions(ctx.spark, path, config.dataset)
            summary.update(dataset=config.dataset, file=path.name)
        _check_overwritable(ctx, target)
        result = tables.write(raw, target, mode="overwrite", run_id=ctx.pipeline_run_id, overwrite_schema=True)
        tables.set_properties(ctx.spark, target, {GENERATED_PROPERTY: config.dataset})
        summary.update(rows=result.rows, table=target.location, version=result.version)
    return summary


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
