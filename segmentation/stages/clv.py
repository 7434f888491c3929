"""clv: fit BG/NBD and Gamma-Gamma on the transactions up to a date, score every customer
into `customer_clv`, and record the fit in MLflow.

The fit sees only the distinct (x, t_x, T) triples and (x, m) spend groups with their
customer counts; beyond `clv.max_driver_rows` of them, each optimiser step sums the
likelihood in Spark instead. Scores (probability alive, expected purchases over
`clv.horizon_days`, expected spend per purchase, discounted CLV over `clv.months`) are
computed in Spark. With `clv.holdout_days`, the models are fitted on the transactions up to
as_of minus the holdout, and the predictions are compared with what customers bought in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from segmentation.stages.context import StageContext
from segmentation.arguments import add_as_of_argument, as_of_overrides, positive_int, option_overrides
from segmentation import tables, tracking
from segmentation.clv.bgnbd import BgNbdFit, fit_bgnbd, fit_bgnbd_rows
from segmentation.clv.distributed import SparkRows
from segmentation.clv.gamma_gamma import GammaGammaFit, fit_gamma_gamma, fit_gamma_gamma_rows
from segmentation.clv.holdout import holdout_by_frequency, plot_holdout
from segmentation.clv.model import INPUT_COLUMNS, ClvModel
from segmentation.clv.scoring import SCORE_FIELDS, ScoringSettings, expected_purchases_over, with_clv_scores
from segmentation.clv.summary import (
    UNIT_DAYS,
    bgnbd_triples,
    clv_summary,
    frequency_spend_correlation,
    holdout_purchases,
    spend_groups,
)
from segmentation.errors import DataQualityError, InsufficientDataError
from segmentation.sufficiency import clv_shortfall
from segmentation.logs import stage
from segmentation.schema import CLV_COLUMNS

log = logging.getLogger(__name__)

HELP = "fit BG/NBD + Gamma-Gamma lifetime value models and score every customer into customer_clv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_as_of_argument(parser)
    add_holdout_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the fitted parameters as JSON on stdout")


def add_holdout_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--holdout-days", type=lambda text: positive_int(text, least=0), metavar="N", help="fit up to as-of minus N days and check the predictions on them"
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    return as_of_overrides(args) + option_overrides(args, {"holdout_days": "clv.holdout_days"})


@dataclass(frozen=True)
class ClvTotals:
    """Aggregates of the written snapshot (the holdout ones are None without a holdout)."""

    customers: int
    mean_probability_alive: float | None
    expected_purchases: float | None
    total_clv: float | None
    customers_without_clv: int
    holdout_expected_purchases: float | None
    holdout_purchases: int | None
    holdout_mae: float | None
    holdout_rmse: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClvResult:
    as_of: dt.date
    calibration_end: dt.date  # the snapshot date of customer_clv: as_of minus clv.holdout_days
    transactions_version: int
    bgnbd: BgNbdFit
    gamma_gamma: GammaGammaFit | None  # None when no customer has a repeat purchase of positive value
    frequency_spend_correlation: float | None
    totals: ClvTotals
    version: int | None  # the customer_clv version written
    table: str

    def fitted(self) -> dict[str, object]:
        """The fitted models as `clv/fit.json` and `--json` show them."""
        return fitted_summary(self.bgnbd, self.gamma_gamma, self.frequency_spend_correlation)


@dataclass(frozen=True)
class _Fit:
    bgnbd: BgNbdFit
    spend: GammaGammaFit | None
    correlation: float | None
    snapshot: DataFrame  # the rows of customer_clv, not computed yet


def run(ctx: StageContext, args: argparse.Namespace | None = None) -> ClvResult:
    config, settings = ctx.config, ctx.config.clv
    target = ctx.table("customer_clv")
    with tracking.stage_run(config, "clv", ctx.pipeline_run_id), stage("clv") as summary_log:
        source, version, transactions = ctx.read_transactions()
        as_of = ctx.as_of(transactions, source)
        calibration_end = as_of - dt.timedelta(days=settings.holdout_days)
        scoring = ScoringSettings.from_days(settings.horizon_days, settings.months, settings.monthly_discount_rate, UNIT_DAYS[settings.time_unit])
        summary_log.update(as_of=as_of.isoformat(), calibration_end=calibration_end.isoformat(), transactions_version=version)
        _record_inputs(source, version, as_of, calibration_end, settings)

        customers = clv_summary(transactions, calibration_end, settings.time_unit).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            _check_sufficiency(customers, calibration_end, source, settings)
            fit = _compute(customers, transactions, settings, scoring, calibration_end, as_of)
            written, totals, by_frequency = _write(ctx, fit.snapshot, target, calibration_end, settings)
        finally:
            customers.unpersist()

        result = ClvResult(as_of, calibration_end, version, fit.bgnbd, fit.spend, fit.correlation, totals, written, target.location)
        summary_log.update(customers=totals.customers, triples=fit.bgnbd.triples, version=written, table=target.location)
        _record(result, scoring, by_frequency, settings, getattr(args, "json", False))
    return result


def _check_sufficiency(customers: DataFrame, calibration_end: dt.date, source, settings) -> None:
    """A DataQualityError without customers; an InsufficientDataError when too few bought
    again or the calibration period is too short for the time unit (one small aggregate)."""
    totals = customers.agg(F.count(F.lit(1)).alias("customers"), F.count(F.when(F.col("x") > 0, True)).alias("repeat"),
                           F.min("first_purchase_date").alias("first")).first()
    if totals.customers == 0:
        raise DataQualityError(f"no customer has a purchase on or before {calibration_end} in {source}")
    shortfall = clv_shortfall(int(totals.repeat), (calibration_end - totals.first).days, UNIT_DAYS[settings.time_unit],
                              settings.time_unit, settings.min_repeat_customers, settings.min_calibration_units)
    if shortfall:
        raise InsufficientDataError("clv", shortfall)


def _record_inputs(source, version: int, as_of: dt.date, calibration_end: dt.date, settings) -> None:
    tracking.log_delta_input(source, version, context="transactions")
    mlflow.set_tags({"as_of": as_of.isoformat(), "calibration_end": calibration_end.isoformat()})
    mlflow.log_params({
        "as_of": as_of.isoformat(), "calibration_end": calibration_end.isoformat(), **settings.model_dump(),
    })


def _compute(customers: DataFrame, transactions: DataFrame, settings, scoring: ScoringSettings, calibration_end, as_of) -> _Fit:
    """Fit both models on the customers' summary and score them (lazily) into customer_clv's rows."""
    bgnbd = fit_purchases(customers, settings)
    spend = _fit_spend(customers, settings)
    correlation = frequency_spend_correlation(customers)
    scored = with_clv_scores(customers, bgnbd.params, spend.params if spend else None, scoring)
    scored = _with_holdout(scored, transactions, settings, calibration_end, as_of, bgnbd, UNIT_DAYS[settings.time_unit])
    snapshot = scored.select(*[F.col(c) for c in CLV_COLUMNS if c != "as_of_date"], F.lit(calibration_end).alias("as_of_date"))
    return _Fit(bgnbd, spend, correlation, snapshot.select(*CLV_COLUMNS))


def _write(ctx: StageContext, snapshot: DataFrame, target, calibration_end, settings) -> tuple[int | None, ClvTotals, list[dict]]:
    """Replace the calibration end's snapshot; the totals and the holdout check of what was written."""
    result = tables.write_snapshot(snapshot, target, calibration_end, run_id=ctx.pipeline_run_id)
    tracking.log_delta_output(target, result.version)
    written = tables.read(ctx.spark, target, result.version).where(F.col("as_of_date") == F.lit(calibration_end))
    by_frequency = [r.asDict() for r in holdout_by_frequency(written).collect()] if settings.holdout_days else []
    return result.version, _totals(written), by_frequency


def _record(result: ClvResult, scoring: ScoringSettings, by_frequency: list[dict], settings, as_json: bool) -> None:
    fitted = result.fitted()
    _log_run(fitted, result.totals, result.bgnbd, result.gamma_gamma, scoring, result.calibration_end)
    if by_frequency:
        mlflow.log_dict({"by_calibration_frequency": by_frequency}, "clv/holdout.json")
        mlflow.log_figure(plot_holdout(by_frequency, 7, settings.time_unit, settings.holdout_days), "clv/holdout.png")
    if as_json:
        print(json.dumps({"as_of": result.as_of.isoformat(), "calibration_end": result.calibration_end.isoformat(),
                          **fitted, **result.totals.as_dict()}, indent=2), flush=True)
    else:
        print(report(fitted, result.totals, settings.time_unit), flush=True)


def fit_purchases(customers: DataFrame, settings) -> BgNbdFit:
    triples = bgnbd_triples(customers)
    return _fit_weighted(triples, ["x", "t_x", "T"], settings.max_driver_rows, fit_bgnbd, fit_bgnbd_rows, settings.penalizer, "BG/NBD triples")


def _fit_spend(customers: DataFrame, settings) -> GammaGammaFit | None:
    groups = spend_groups(customers)
    if groups.isEmpty():
        log.warning("no customer has a repeat purchase of positive value: no spend model, value and CLV stay empty")
        return None
    return _fit_weighted(groups, ["x", "m"], settings.max_driver_rows, fit_gamma_gamma, fit_gamma_gamma_rows, settings.spend_penalizer, "Gamma-Gamma spend groups")


def too_few_to_fit(what: str, columns: list[str], customers: int) -> str:
    """Why one distinct row cannot be fitted: no penalizer helps, the models describe how customers differ."""
    values = f"({', '.join(columns)})"
    who = "1 customer" if customers == 1 else f"{customers:,} customers all with the same {values}"
    return f"{what}: {who}, too few to fit; the model needs customers whose {values} differ"


def fits_on_driver(rows: int, max_driver_rows: int) -> bool:
    """Whether `rows` distinct weighted rows are few enough to collect (else the likelihood is summed in Spark)."""
    return rows <= max_driver_rows


def _fit_weighted(rows: DataFrame, columns, limit: int, fit_local, fit_rows, penalizer: float, what: str):
    """Fit on the driver when the distinct rows are few enough to collect, else in Spark."""
    count = rows.count()
    if count == 1:
        raise DataQualityError(too_few_to_fit(what, columns, int(rows.first()["weight"])))
    if fits_on_driver(count, limit):
        log.info("fitting on %d %s collected to the driver", count, what)
        return fit_local(rows.select(*columns, "weight").toPandas(), penalizer=penalizer)
    log.info("fitting on %d %s summed in Spark (more than clv.max_driver_rows=%d)", count, what, limit)
    spark_rows = SparkRows(rows, columns)
    try:
        return fit_rows(spark_rows, penalizer=penalizer)
    finally:
        spark_rows.release()


def _with_holdout(scored: DataFrame, transactions, settings, calibration_end, as_of, bgnbd: BgNbdFit, unit_days) -> DataFrame:
    """Add what the model expected in the holdout and what each customer bought (null without one)."""
    if settings.holdout_days == 0:
        return scored.select("*", *[F.lit(None).cast(t).alias(c) for c, t in (("holdout_expected_purchases", "double"), ("holdout_purchases", "long"))])
    expected = expected_purchases_over(bgnbd.params, settings.holdout_days / unit_days)
    actual = holdout_purchases(transactions, calibration_end, as_of)
    return scored.join(actual, on="customer_id", how="left").select(
        *scored.columns,
        expected.alias("holdout_expected_purchases"),
        F.coalesce("holdout_purchases", F.lit(0)).cast("long").alias("holdout_purchases"),
    )


def _totals(snapshot: DataFrame) -> ClvTotals:
    """Aggregates of the written snapshot (and of the holdout check, when there is one)."""
    error = F.col("holdout_expected_purchases") - F.col("holdout_purchases")
    row = snapshot.agg(
        F.count(F.lit(1)).alias("customers"),
        F.avg("probability_alive").alias("mean_probability_alive"),
        F.sum("expected_purchases").alias("expected_purchases"),
        F.sum("clv").alias("total_clv"),
        F.count(F.when(F.col("clv").isNull(), 1)).alias("customers_without_clv"),
        F.sum("holdout_expected_purchases").alias("holdout_expected_purchases"),
        F.sum("holdout_purchases").alias("holdout_purchases"),
        F.avg(F.abs(error)).alias("holdout_mae"),
        F.sqrt(F.avg(error * error)).alias("holdout_rmse"),
    ).first()
    return ClvTotals(**row.asDict())


def fitted_summary(bgnbd: BgNbdFit, spend: GammaGammaFit | None, correlation: float | None) -> dict[str, object]:
    fitted: dict[str, object] = {
        "bgnbd": {**bgnbd.params.as_dict(), "log_likelihood": bgnbd.log_likelihood,
                  "standard_errors": bgnbd.standard_errors.as_dict(), "triples": bgnbd.triples, "customers": bgnbd.customers},
        "gamma_gamma": None,
        "frequency_spend_correlation": correlation,
    }
    if spend is not None:
        fitted["gamma_gamma"] = {**spend.params.as_dict(), "log_likelihood": spend.log_likelihood,
                                 "standard_errors": spend.standard_errors.as_dict(), "groups": spend.groups, "customers": spend.customers}
    return fitted


def report(fitted: dict, totals: ClvTotals, time_unit: str) -> str:
    b, g = fitted["bgnbd"], fitted["gamma_gamma"]
    se = b["standard_errors"]
    lines = [
        "",
        f"BG/NBD on {b['customers']:,.0f} customers ({b['triples']:,} distinct triples), time in {time_unit}s:",
        "  " + "  ".join(f"{k} = {b[k]:.4f} (se {se[k]:.4f})" for k in ("r", "alpha", "a", "b")),
        f"  log-likelihood {b['log_likelihood']:,.1f}",
    ]
    if g is None:
        lines.append("Gamma-Gamma: not fitted (no repeat purchases of positive value)")
    else:
        lines += [
            f"Gamma-Gamma on {g['customers']:,.0f} repeat customers ({g['groups']:,} groups):",
            "  " + "  ".join(f"{k} = {g[k]:.4f} (se {g['standard_errors'][k]:.4f})" for k in ("p", "q", "v")),
            f"  correlation of frequency and spend: {fitted['frequency_spend_correlation']:.3f} (the model assumes none)",
        ]
    lines.append(
        f"Scored {totals.customers:,} customers: mean P(alive) {totals.mean_probability_alive:.3f}, "
        f"expected purchases {totals.expected_purchases:,.1f}, total CLV {totals.total_clv or 0:,.2f}"
    )
    if totals.holdout_purchases is not None:
        lines.append(
            f"Holdout: predicted {totals.holdout_expected_purchases:,.1f} repeat purchases, actual "
            f"{totals.holdout_purchases:,}; per customer MAE {totals.holdout_mae:.3f}, RMSE {totals.holdout_rmse:.3f}"
        )
    return "\n".join(lines) + "\n"


def _log_run(fitted, totals: ClvTotals, bgnbd: BgNbdFit, spend: GammaGammaFit | None, scoring: ScoringSettings, calibration_end) -> None:
    metrics = {f"bgnbd.{k}": v for k, v in bgnbd.params.as_dict().items()}
    metrics.update({f"bgnbd.se.{k}": v for k, v in bgnbd.standard_errors.as_dict().items()})
    metrics.update({"bgnbd.log_likelihood": bgnbd.log_likelihood, "bgnbd.triples": bgnbd.triples, "bgnbd.iterations": bgnbd.iterations})
    if spend is not None:
        metrics.update({f"gamma_gamma.{k}": v for k, v in spend.params.as_dict().items()})
        metrics.update({f"gamma_gamma.se.{k}": v for k, v in spend.standard_errors.as_dict().items()})
        metrics.update({"gamma_gamma.log_likelihood": spend.log_likelihood, "gamma_gamma.groups": spend.groups})
    if fitted["frequency_spend_correlation"] is not None:
        metrics["frequency_spend_correlation"] = fitted["frequency_spend_correlation"]
    metrics.update({k: float(v) for k, v in totals.as_dict().items() if v is not None})
    mlflow.log_metrics(metrics)
    mlflow.log_dict(fitted, "clv/fit.json")
    model = ClvModel(bgnbd.params, spend.params if spend else None, scoring)
    mlflow.pyfunc.log_model(
        name="clv_model", python_model=model, pip_requirements=["numpy", "scipy", "pandas", "mlflow"],
        signature=SIGNATURE, input_example=_example(), metadata={"calibration_end": calibration_end.isoformat()},
    )


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "x"), ColSpec("double", "t_x"), ColSpec("double", "T"), ColSpec("double", "m", required=False)]),
    outputs=Schema([ColSpec("double", name) for name in SCORE_FIELDS]),
)


def _example() -> pd.DataFrame:
    return pd.DataFrame({"x": [0, 2], "t_x": [0.0, 10.5], "T": [20.0, 30.0], "m": [None, 25.0]})[INPUT_COLUMNS]
