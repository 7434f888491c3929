"""run: the whole pipeline, one stage after the other, under one MLflow parent run.

Stages so far: generate (when the raw table is missing, or with --generate), ingest, features, clv, cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys

import mlflow

from jobs import clv, cluster, features, generate, ingest
from jobs.common import JobContext, add_as_of_argument
from segmentation import tables, tracking
from segmentation.logs import stage

log = logging.getLogger(__name__)

HELP = "run the whole pipeline (generate if needed, ingest, features, clv, cluster) and print where the results are"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    generate.add_arguments(parser)
    add_as_of_argument(parser)
    clv.add_holdout_argument(parser)
    parser.add_argument(
        "--generate", action="store_true", help="regenerate the raw feed even when the raw table exists"
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    return generate.config_overrides(args) + clv.config_overrides(args)


def run(ctx: JobContext, args: argparse.Namespace | None = None) -> dict[str, object]:
    config = ctx.config
    results: dict[str, object] = {}
    with tracking.stage_run(config, "pipeline", ctx.pipeline_run_id) as parent, stage("pipeline") as summary:
        raw = ctx.table("raw_transactions")
        uses_raw_table = config.ingest.source.table == "raw_transactions"
        if uses_raw_table and (getattr(args, "generate", False) or not tables.exists(ctx.spark, raw)):
            results["generate"] = generate.run(ctx, args)
        results["ingest"] = ingest.run(ctx, args)
        results["features"] = features.run(ctx, args)
        results["clv"] = clv.run(ctx, args)
        results["cluster"] = cluster.run(ctx, args)
        summary.update(pipeline_run_id=ctx.pipeline_run_id, mlflow_run_id=parent.info.run_id)
        mlflow.set_tag("status", "finished")
    _print_where(ctx, parent.info.run_id)
    return results


def _print_where(ctx: JobContext, mlflow_run_id: str) -> None:
    config = ctx.config
    uri = tracking.tracking_uri(config)
    keys = ["raw_transactions", "transactions", "transactions_quarantine", "ingest_log", "customer_features", "customer_clv", "customer_clusters"]
    lines = ["", "Results:"]
    for key in keys:
        ref = ctx.table(key)
        lines.append(f"  {key:<24} {ref.location}  (Delta version {tables.current_version(ctx.spark, ref)})")
    lines += [
        f"  {'MLflow tracking store':<24} {uri}",
        f"  {'MLflow pipeline run':<24} {mlflow_run_id}",
        f"  browse runs with: mlflow ui --backend-store-uri {uri}",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    from segmentation.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
