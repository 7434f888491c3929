"""The generate and ingest jobs on real Delta tables and a real MLflow store. Defective feeds,
one kind at a time: tests/integration/test_bad_input.py."""

from __future__ import annotations

import argparse
import csv

import mlflow
import pytest
from pyspark.sql import functions as F

from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation import tables, tracking
from segmentation.errors import DataQualityError
from segmentation.schema import RAW_COLUMNS
from tests.conftest import make_config

NO_ARGS = argparse.Namespace(generate=False, until="ingest")


def context(spark, root, *overrides):
    return StageContext(make_config(root, "generate.customers=300", *overrides), spark)


def count(ctx, key, version=None):
    return tables.read(ctx.spark, ctx.table(key), version).count()


def write_csv(path, rows, header=RAW_COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def csv_row(tid, customer="C1", amount="10.00", **values):
    base = {
        "transaction_id": tid, "order_id": f"O-{tid}", "customer_id": customer, "transaction_ts": "2025-03-01 10:00:00",
        "channel": "store", "store_id": "S1", "region": "north", "product_category": "books", "quantity": "1",
        "net_amount": amount, "discount_amount": "0", "gross_margin": "1", "is_return": "false",
    }
    base.update(values)
    return [base[c] for c in RAW_COLUMNS]


@pytest.fixture(scope="module")
def pipeline_run(spark, tmp_path_factory):
    """The pipeline on a small generated feed, run once for the tests that only read."""
    ctx = context(spark, tmp_path_factory.mktemp("pipeline"))
    results = pipeline.run(ctx, NO_ARGS)
    return ctx, results


def test_every_raw_row_is_clean_or_quarantined(pipeline_run):
    ctx, results = pipeline_run
    raw, clean, quarantined = count(ctx, "raw_transactions"), count(ctx, "transactions"), count(ctx, "transactions_quarantine")
    assert raw == results.ingest.rows_in > 3000
    assert clean + quarantined == raw
    assert 0 < quarantined < 0.02 * raw
    assert results.ingest.status == "committed"


def test_clean_table_keeps_the_contract(pipeline_run):
    ctx, _ = pipeline_run
    clean = tables.read(ctx.spark, ctx.table("transactions"))
    assert clean.select("transaction_id").distinct().count() == clean.count()
    assert clean.where(F.length("customer_id") != 64).count() == 0  # pseudonymised everywhere
    assert clean.where(F.col("customer_id").startswith("C0")).count() == 0
    assert clean.where(F.col("is_return") != (F.col("net_amount") < 0)).where(F.col("net_amount") != 0).count() == 0
    quarantined = tables.read(ctx.spark, ctx.table("transactions_quarantine"))
    assert quarantined.where(F.size("reasons") == 0).count() == 0
    assert quarantined.where(F.col("customer_id").startswith("C0")).count() == 0


def test_ingest_log_and_mlflow_record_the_batch(pipeline_run):
    ctx, results = pipeline_run
    entry = tables.read(ctx.spark, ctx.table("ingest_log")).collect()
    assert len(entry) == 1 and entry[0].status == "committed"
    assert entry[0].rows_in == entry[0].rows_clean + entry[0].rows_quarantined
    assert sum(entry[0].rejections.values()) >= entry[0].rows_quarantined
    assert entry[0].transactions_version == tables.current_version(ctx.spark, ctx.table("transactions"))

    mlflow.set_tracking_uri(tracking.tracking_uri(ctx.config))
    runs = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'ingest'", output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["rows_in"] == results.ingest.rows_in
    assert run.data.tags["pipeline_run_id"] == ctx.pipeline_run_id
    assert run.data.tags["config_hash"] == ctx.config.fingerprint()
    raw_version = tables.current_version(ctx.spark, ctx.table("raw_transactions"))  # the write, then the generated mark
    assert raw_version == 1 and run.data.tags["input.raw_transactions.version"] == "1"
    [dataset] = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest, dataset.dataset.source_type) == ("raw_transactions", "v1", "delta_table")
    assert ctx.table("raw_transactions").location in dataset.dataset.source
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["stage"] == "pipeline"


def test_same_batch_twice_adds_nothing(pipeline_run):
    ctx, _ = pipeline_run
    versions = {key: tables.current_version(ctx.spark, ctx.table(key)) for key in ("transactions", "transactions_quarantine")}
    again = ingest.run(ctx)
    assert again.status == "already_ingested"
    for key, version in versions.items():
        assert tables.current_version(ctx.spark, ctx.table(key)) == version


def test_retry_after_a_crash_does_not_apply_writes_twice(spark, tmp_path, monkeypatch):
    """The process dies after the data writes, before the ingest log entry: the retry
    re-validates, Delta skips the already committed writes (txnAppId), the entry is written."""
    ctx = context(spark, tmp_path)
    generate.run(ctx)

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the ingest log write")

    with monkeypatch.context() as patch:
        patch.setattr(ingest, "_record", crash)
        with pytest.raises(RuntimeError):
            ingest.run(ctx)
    versions = {key: tables.current_version(spark, ctx.table(key)) for key in ("transactions", "transactions_quarantine")}
    rows = {key: count(ctx, key) for key in versions}
    assert rows["transactions"] > 0 and count(ctx, "ingest_log") == 0

    retry = ingest.run(ctx)
    assert retry.status == "committed"
    assert retry.transactions_version is None and retry.quarantine_version is None  # skipped: already applied
    for key, version in versions.items():
        assert tables.current_version(spark, ctx.table(key)) == version
        assert count(ctx, key) == rows[key]
    assert tables.read(spark, ctx.table("ingest_log")).where("status = 'committed'").count() == 1
    assert ingest.run(ctx).status == "already_ingested"


def test_new_batch_appends_and_time_travel_reads_the_previous_version(spark, tmp_path):
    ctx = context(spark, tmp_path)
    first = pipeline.run(ctx, NO_ARGS).ingest
    before = tables.current_version(spark, ctx.table("transactions"))
    loaded_id = tables.read(spark, ctx.table("transactions")).select("transaction_id").first()[0]
    late = write_csv(tmp_path / "late.csv", [csv_row("NEW-1"), csv_row("NEW-2", amount="-5", quantity="-1", is_return="true"), csv_row(loaded_id)])
    settings = ["ingest.source.table=null", f"ingest.source.path={late}", "ingest.source.format=csv", "ingest.max_rejected_share=0.5"]
    batch = ingest.run(StageContext(make_config(tmp_path, *settings), spark))
    # The row repeating a loaded transaction id is set aside and counted: neither loaded again nor a rejection.
    assert (batch.rows_in, batch.rows_clean, batch.rows_quarantined, batch.rows_already_loaded) == (3, 2, 0, 1)
    assert batch.rejected_share == 0
    assert tables.current_version(spark, ctx.table("transactions")) == before + 1
    assert count(ctx, "transactions") == first.rows_clean + 2
    assert count(ctx, "transactions", version=before) == first.rows_clean
    assert tables.read(spark, ctx.table("transactions")).where(F.col("transaction_id") == loaded_id).count() == 1
    assert tables.read(spark, ctx.table("transactions_quarantine")).where(F.col("transaction_id") == loaded_id).isEmpty()
    entry = tables.read(spark, ctx.table("ingest_log")).where(F.col("source") == str(late)).first()
    assert (entry.rows_in, entry.rows_clean, entry.rows_quarantined, entry.rows_already_loaded) == (3, 2, 0, 1)


def test_too_many_rejections_fail_and_add_nothing_then_pass_with_a_higher_limit(spark, tmp_path):
    path = write_csv(tmp_path / "bad.csv", [csv_row("B1"), csv_row("B2", channel="fax"), csv_row("B3", customer="")])
    settings = ["ingest.source.table=null", f"ingest.source.path={path}", "ingest.source.format=csv"]
    ctx = StageContext(make_config(tmp_path / "d", *settings), spark)
    with pytest.raises(DataQualityError, match=r"bad.csv: 2 of 3 rows rejected \(66.7%\), above ingest.max_rejected_share=5.0%; nothing was added"):
        ingest.run(ctx)
    assert count(ctx, "transactions") == 0
    assert count(ctx, "transactions_quarantine") == 2
    assert tables.read(spark, ctx.table("ingest_log")).first().status == "rejected"

    relaxed = StageContext(make_config(tmp_path / "d", *settings, "ingest.max_rejected_share=0.9"), spark)
    result = ingest.run(relaxed)
    assert result.status == "committed"
    assert count(ctx, "transactions") == 1
    assert count(ctx, "transactions_quarantine") == 2  # the quarantine write was not applied twice


def test_cdnow_sample_ingests_completely(spark, tmp_path):
    ctx = context(spark, tmp_path, "generate.dataset=cdnow_sample")
    results = pipeline.run(ctx, NO_ARGS)
    assert results.generate.rows == 6919
    assert (results.ingest.rows_clean, results.ingest.rows_quarantined) == (6919, 0)
    clean = tables.read(spark, ctx.table("transactions"))
    assert clean.select("customer_id").distinct().count() == 2357
