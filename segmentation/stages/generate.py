"""generate: write a raw transaction feed (synthetic, or the real CDNOW logs) to a Delta table.

With --treatment-response and --response-after S, it plants a response to treatment into
the generated feed instead: the treated customers of the tiers snapshot S buy more often in
the outcome window after S (see `segmentation.generate.treatment_response`); then ingest the
feed again and measure with `segmentation outcomes`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import iso_date, positive_int, share, treatment_shares
from segmentation import tables
from segmentation.datasets import cdnow_path, cdnow_transactions
from segmentation.generate import generate_customers, generate_transactions, treatment_response
from segmentation.errors import ConfigError, DataQualityError
from segmentation.privacy import erasure_ids, load_key
from segmentation.schema import RAW_COLUMNS
from segmentation.treatments import TREATED
from segmentation.logs import stage
from segmentation.sources import GENERATED_PROPERTY

log = logging.getLogger(__name__)

HELP = "write a raw transaction feed (synthetic or CDNOW) to the raw_transactions table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_feed_arguments(parser)
    parser.add_argument(
        "--treatment-response", type=treatment_shares, metavar="TREATMENT=SHARE,...",
        help="with --response-after: the share by which each treatment's treated customers buy more often, "
        "e.g. win_back=0.25,onboarding=0.10",
    )
    parser.add_argument(
        "--response-after", type=iso_date, metavar="YYYY-MM-DD",
        help="plant the response into the generated feed after this tiers snapshot, instead of generating the feed",
    )


def add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the feed itself (`segmentation run` takes them too)."""
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
        "generate.response_after": getattr(args, "response_after", None),
    }
    shares = getattr(args, "treatment_response", None)
    response = [f"generate.treatment_response.{name}={value}" for name, value in (shares or {}).items()]
    return [f"{key}={value}" for key, value in pairs.items() if value is not None] + response


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


@dataclass(frozen=True)
class ResponseResult:
    """A planted response to treatment: the purchases added after the snapshot `after`."""

    after: dt.date
    window_days: int
    shares: dict[str, float]  # treatment -> share
    treated_customers: dict[str, int]  # treatment -> treated customers of the snapshot
    orders: dict[str, int]  # treatment -> orders added
    rows: int | None  # raw lines appended
    table: str
    version: int | None  # None: nothing new to append (already planted)


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> GenerateResult | ResponseResult:
    config = ctx.config.generate
    if config.response_after is not None:
        return plant_response(ctx)
    if config.treatment_response:
        log.info("generate.treatment_response is planted only with --response-after (generate.response_after)")
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


def check_response(shares: dict[str, float], treatments: list[str], after: dt.date, window_days: int, end_date: dt.date) -> None:
    """A response names playbook treatments, and its window (after, after + window_days] lies
    inside the generated feed (which ends the day before generate.end_date)."""
    if not shares:
        raise ConfigError("--response-after needs --treatment-response (generate.treatment_response), e.g. win_back=0.25")
    unknown = sorted(set(shares) - set(treatments))
    if unknown:
        raise ConfigError(f"generate.treatment_response: {', '.join(unknown)} not a tiers.playbook treatment "
                          f"({', '.join(treatments)})")
    if after + dt.timedelta(days=window_days) >= end_date:
        raise ConfigError(f"generate.response_after: the window ({after}, {after + dt.timedelta(days=window_days)}] "
                          f"(outcomes.window_days {window_days}) does not end before generate.end_date {end_date}")


def plant_response(ctx: StageContext) -> ResponseResult:
    """Append `treatment_response`'s lines to the generated raw table; lines already there
    (a repeated call) are not appended again."""
    config = ctx.config
    settings, window_days = config.generate, config.outcomes.window_days
    after, shares = settings.response_after, settings.treatment_response
    target = ctx.table("raw_transactions")
    with stage("generate.response") as summary:
        check_response(shares, [rule.name for rule in config.tiers.playbook], after, window_days, settings.end_date)
        if not tables.exists(ctx.spark, target) or GENERATED_PROPERTY not in tables.properties(ctx.spark, target):
            raise DataQualityError(f"{target}: a response is planted only into a feed 'segmentation generate' wrote")
        tiers_ref, _, tiers = ctx.read_input("customer_tiers", "does not exist yet; run 'segmentation tiers' first")
        snapshot = tiers.where((F.col("as_of_date") == F.lit(after)) & (F.col("treatment_group") == TREATED))
        counts = {r.treatment: int(r["count"]) for r in snapshot.groupBy("treatment").count().collect()}
        if not counts:
            raise DataQualityError(f"{tiers_ref} has no treated customers as of {after}; run 'segmentation tiers --as-of {after}' first")
        raw = tables.read(ctx.spark, target)
        key = load_key(config.privacy) if config.privacy.pseudonymise else None
        pseudonyms = erasure_ids(raw.select("customer_id"), key)
        treated = pseudonyms.join(snapshot.select(F.col("customer_id").alias("pseudonym"), "treatment"), on="pseudonym", how="inner")
        lines = treatment_response(raw, treated.select(F.col("raw_id").alias("customer_id"), "treatment"),
                                   after, window_days, shares, settings.seed)
        new = lines.join(raw.select("transaction_id"), on="transaction_id", how="left_anti").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            orders = {r.treatment: int(r.orders) for r in new.groupBy("treatment").agg(F.count_distinct("order_id").alias("orders")).collect()}
            written = tables.write(new.select(*RAW_COLUMNS), target, mode="append", run_id=ctx.pipeline_run_id) if orders else None
        finally:
            new.unpersist()
        result = ResponseResult(
            after, window_days, dict(shares), {t: counts.get(t, 0) for t in shares}, {t: orders.get(t, 0) for t in shares},
            written.rows if written else 0, target.location, written.version if written else None,
        )
        if written is None:
            log.info("no new response lines for %s: already planted (or no treated customer bought in the window)", after)
        summary.update(after=after.isoformat(), shares=result.shares, orders=result.orders, rows=result.rows, version=result.version)
        print(f"\nResponse planted after {after} in {target.location}: "
              + ", ".join(f"{t} +{n:,} orders ({result.treated_customers[t]:,} treated customers, share {shares[t]:g})"
                          for t, n in result.orders.items()) + "\n", flush=True)
    return result
