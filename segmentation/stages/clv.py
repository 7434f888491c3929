"""clv: fit BG/NBD and Gamma-Gamma on the transactions up to a date, score every customer
into `customer_clv`, and record the fit in MLflow.

The fit sees only the distinct (x, t_x, T) triples and (x, m) spend groups with their
customer counts; beyond `clv.max_driver_rows` of them, each optimiser step sums the
likelihood in Spark instead. Scores (probability alive, expected purchases over
`clv.horizon_days`, expected spend per purchase, discounted CLV over `clv.months`) are
computed in Spark, with the expected next purchase date. With `clv.holdout_days`, the models
are fitted on the transactions up to as_of minus the holdout, the predictions (and the next
purchase dates) are compared with what customers bought in it, and the fit is graded.
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
from segmentation.clv.holdout import NextPurchaseCheck, holdout_by_frequency, next_purchase_check, plot_holdout
from segmentation.clv.model import INPUT_COLUMNS, ClvModel
from segmentation.clv.next_purchase import NextPurchaseSettings, next_purchase_date
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
from segmentation.grades import GRADE_TAG, Grade, clv_grade
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
    holdout_correlation: float | None  # of predicted and actual holdout purchases over customers
    customers_with_next_purchase_date: int
    next_purchase_checked: int | None  # the next purchase date check on the holdout (NextPurchaseCheck)
    next_purchase_bought_share: float | None
    next_purchase_expected_share: float | None

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
    grade: Grade | None  # from the holdout check; None without one

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
        next_purchase = NextPurchaseSettings(UNIT_DAYS[settings.time_unit], settings.next_purchase_min_alive, settings.next_purchase_horizon_days)
        summary_log.update(as_of=as_of.isoformat(), calibration_end=calibration_end.isoformat(), transactions_version=version)
        _record_inputs(source, version, as_of, calibration_end, settings)

        customers = clv_summary(transactions, calibration_end, settings.time_unit).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            _check_sufficiency(customers, calibration_end, source, settings)
            fit = _compute(customers, transactions, settings, scoring, next_purchase, calibration_end, as_of)
            written, totals, by_frequency = _write(ctx, fit, transactions, target, calibration_end, as_of, settings)
        finally:
            customers.unpersist()

        result = ClvResult(as_of, calibration_end, version, fit.bgnbd, fit.spend, fit.correlation, totals, written, target.location,
                           holdout_grade(totals))
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


def _compute(customers: DataFrame, transactions: DataFrame, settings, scoring: ScoringSettings,
             next_purchase: NextPurchaseSettings, calibration_end, as_of) -> _Fit:
    """Fit both models on the customers' summary and score them (lazily) into customer_clv's rows."""
    bgnbd = fit_purchases(customers, settings)
    spend = _fit_spend(customers, settings)
    correlation = frequency_spend_correlation(customers)
    scored = with_clv_scores(customers, bgnbd.params, spend.params if spend else None, scoring)
    scored = scored.select("*", next_purchase_date(
        bgnbd.params, next_purchase, F.col("x"), F.col("T"), F.col("probability_alive"), F.lit(calibration_end),
    ).alias("next_purchase_date"))
    scored = _with_holdout(scored, transactions, settings, calibration_end, as_of, bgnbd, UNIT_DAYS[settings.time_unit])
    snapshot = scored.select(*[F.col(c) for c in CLV_COLUMNS if c != "as_of_date"], F.lit(calibration_end).alias("as_of_date"))
    return _Fit(bgnbd, spend, correlation, snapshot.select(*CLV_COLUMNS))


def _write(ctx: StageContext, fit: _Fit, transactions: DataFrame, target, calibration_end, as_of,
           settings) -> tuple[int | None, ClvTotals, list[dict]]:
    """Replace the calibration end's snapshot; the totals and the holdout checks of what was written."""
    # A table written before a column was added (next_purchase_date) gains it.
    result = tables.write_snapshot(fit.snapshot, target, calibration_end, run_id=ctx.pipeline_run_id, merge_schema=True)
    tracking.log_delta_output(target, result.version)
    written = tables.read(ctx.spark, target, result.version).where(F.col("as_of_date") == F.lit(calibration_end))
    check = NextPurchaseCheck(None, None, None)
    by_frequency = []
    if settings.holdout_days:
        by_frequency = [r.asDict() for r in holdout_by_frequency(written).collect()]
        holdout = holdout_purchases(transactions, calibration_end, as_of)
        check = next_purchase_check(written, holdout, fit.bgnbd.params, UNIT_DAYS[settings.time_unit], as_of)
    return result.version, _totals(written, check), by_frequency


def _record(result: ClvResult, scoring: ScoringSettings, by_frequency: list[dict], settings, as_json: bool) -> None:
    fitted = result.fitted()
    model_id = _log_run(fitted, result.totals, result.bgnbd, result.gamma_gamma, scoring, result.calibration_end)
    if result.grade is not None:
        mlflow.set_tags(result.grade.tags())
        mlflow.set_logged_model_tags(model_id, result.grade.tags())
    if by_frequency:
        mlflow.log_dict({"by_calibration_frequency": by_frequency}, "clv/holdout.json")
        mlflow.log_figure(plot_holdout(by_frequency, 7, settings.time_unit, settings.holdout_days), "clv/holdout.png")
    if as_json:
        print(json.dumps({"as_of": result.as_of.isoformat(), "calibration_end": result.calibration_end.isoformat(),
                          **fitted, **result.totals.as_dict(), GRADE_TAG: result.grade.grade if result.grade else None},
                         indent=2), flush=True)
    else:
        print(report(fitted, result.totals, settings.time_unit, result.grade), flush=True)


def holdout_grade(totals: ClvTotals) -> Grade | None:
    """The model's quality grade from the holdout check; None without a holdout."""
    if totals.holdout_purchases is None:
        return None
    return clv_grade(totals.holdout_expected_purchases, totals.holdout_purchases, totals.holdout_correlation)


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


def _totals(snapshot: DataFrame, check: NextPurchaseCheck) -> ClvTotals:
    """Aggregates of the written snapshot (and of the holdout checks, when there is one)."""
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
        F.corr("holdout_expected_purchases", "holdout_purchases").alias("holdout_correlation"),
        F.count("next_purchase_date").alias("customers_with_next_purchase_date"),
    ).first()
    return ClvTotals(**row.asDict(), **check.as_dict())


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


def report(fitted: dict, totals: ClvTotals, time_unit: str, grade: Grade | None = None) -> str:
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
    lines.append(f"Next purchase date for {totals.customers_with_next_purchase_date:,} customers")
    if totals.next_purchase_checked:
        lines.append(
            f"  of {totals.next_purchase_checked:,} whose date fell in the holdout, {totals.next_purchase_bought_share:.1%} "
            f"bought by it; the model expected {totals.next_purchase_expected_share:.1%}"
        )
    if grade is not None:
        lines.append(f"Quality grade: {grade.grade} ({grade.reason})")
    return "\n".join(lines) + "\n"


def _log_run(fitted, totals: ClvTotals, bgnbd: BgNbdFit, spend: GammaGammaFit | None, scoring: ScoringSettings, calibration_end) -> str:
    """Log the metrics, the fit and the pyfunc model; the logged model's id."""
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
    info = mlflow.pyfunc.log_model(
        name="clv_model", python_model=model, pip_requirements=["numpy", "scipy", "pandas", "mlflow"],
        signature=SIGNATURE, input_example=_example(), metadata={"calibration_end": calibration_end.isoformat()},
    )
    return info.model_id


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "x"), ColSpec("double", "t_x"), ColSpec("double", "T"), ColSpec("double", "m", required=False)]),
    outputs=Schema([ColSpec("double", name) for name in SCORE_FIELDS]),
)


def _example() -> pd.DataFrame:
    return pd.DataFrame({"x": [0, 2], "t_x": [0.0, 10.5], "T": [20.0, 30.0], "m": [None, 25.0]})[INPUT_COLUMNS]
