"""Privacy end to end, with a real key and the demo key refused.

Known raw customer ids and e-mail addresses are planted in the input: in raw_transactions
(the landing table, which holds raw ids by design: it is the feed as it arrived) with an
extra `email` column, and in a CSV batch with malformed lines. After the whole pipeline
none of them appears in any other Delta table (any version), in MLflow (runs, artifacts,
registered models) or in the logs; MLflow and the logs hold not even the pseudonyms.
`segmentation erase` then removes two customers from the current version of every table,
leaves every other row alone, and `--vacuum` removes them from the old files.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import hmac
import json
import logging
from pathlib import Path

import mlflow
import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation.stages import generate
from segmentation.stages import ingest
from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation import cli, tables, tracking
from segmentation.privacy import key_fingerprint
from segmentation.schema import RAW_COLUMNS
from tests.conftest import CONF_DIR, SMALL_FEED, TEST_SPARK_SETTINGS, make_config

pytestmark = pytest.mark.slow

KEY = "privacy-test-key-not-the-demo-key-0123456789"
# raw customer id -> the e-mail address the feed carries for it
PLANTED = {
    "planted-customer-0001": "jane.doe@example.com",
    "planted-customer-0002": "john.smith@example.org",
    "max.mustermann@example.de": "max.mustermann@example.de",  # an e-mail address used as the customer id
    "planted-customer-0003": "erika.musterfrau@example.net",
}
ERASED = ["planted-customer-0001", "max.mustermann@example.de"]
KEPT = ["planted-customer-0002", "planted-customer-0003"]
RAW_STRINGS = sorted({*PLANTED, *PLANTED.values()})
SETTINGS = [
    "generate.customers=150", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression",
    "churn.training_cutoffs=2", *SMALL_FEED,
    "privacy.allow_demo_key=false",
]
ARGS = argparse.Namespace(generate=False, train_churn=False, until="report")


def pseudonym(raw_id: str) -> str:
    """Computed here, independently of the code under test."""
    return hmac.new(KEY.encode(), raw_id.encode(), hashlib.sha256).hexdigest()


PSEUDONYMS = sorted(pseudonym(raw_id) for raw_id in PLANTED)


def planted_rows() -> list[dict[str, str]]:
    """Eight orders per planted customer over two years (so they are scored by every model),
    one with the id padded by spaces, and one rejected row (unknown channel) for quarantine."""
    rows = []
    for c, (customer, email) in enumerate(PLANTED.items()):
        for n in range(8):
            month = 1 + (3 * n + c) % 12
            rows.append({
                "transaction_id": f"P{c}-{n}", "order_id": f"PO{c}-{n}", "customer_id": customer,
                "transaction_ts": f"{2024 + n // 4}-{month:02d}-{10 + c:02d} 12:00:00", "channel": "web",
                "store_id": "S1", "region": "north", "product_category": "books", "quantity": "1",
                "net_amount": f"{40 + 10 * c + n}.50", "discount_amount": "0", "gross_margin": "9", "is_return": "false",
                "email": email,
            })
    rows[0]["customer_id"] = f"  {rows[0]['customer_id']} "  # ingest trims: the same customer
    rows.append({**rows[1], "transaction_id": "P0-fax", "channel": "fax"})  # quarantined, of an erased customer
    return rows


def write_csv_batch(path: Path) -> Path:
    """A well-formed line and two lines that do not fit the header, all with planted values."""
    good = {**planted_rows()[8], "transaction_id": "PC-1", "transaction_ts": "2025-06-01 09:00:00"}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*RAW_COLUMNS, "email"])
        writer.writerow([good[c] for c in [*RAW_COLUMNS, "email"]])
        writer.writerow(["PC-2", "PO-2", "planted-customer-0001", "jane.doe@example.com"])  # too few fields
        writer.writerow(["PC-3", "max.mustermann@example.de", "2025-06-01 09:00:00", "web"])  # the id one column early
    return path


def delta_tables(root: Path) -> dict[str, Path]:
    """Every Delta table under the storage root (found on disk, not from the configuration)."""
    return {str(log.parent.relative_to(root)): log.parent for log in root.rglob("_delta_log")}


def rows_containing(spark, location: Path, needles: list[str], all_versions: bool) -> int:
    """Rows of a Delta table (every version, or the current one) whose values, all columns
    as JSON text, contain any needle: a Spark filter, nothing collected."""
    history = DeltaTable.forPath(spark, str(location)).history().select("version").collect()
    versions = sorted(row.version for row in history) if all_versions else [None]
    texts = []
    for version in versions:
        df = tables.read(spark, tables.TableRef("scan", str(location), True), version)
        texts.append(df.select(F.lower(F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))).alias("row")))
    union = functools.reduce(lambda a, b: a.unionByName(b), texts)
    hit = functools.reduce(lambda a, b: a | b, [F.col("row").contains(needle.lower()) for needle in needles])
    return union.where(hit).count()


def files_containing(folder: Path, needles: list[str], skip: list[Path] = ()) -> dict[str, list[str]]:
    """Files under `folder` but not under `skip` (bytes, case-insensitive) that contain a needle."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not any(folder_skipped in path.parents for folder_skipped in skip):
            data = path.read_bytes().lower()
            hits = [needle for needle in needles if needle.lower().encode() in data]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


def mlflow_texts(config) -> list[str]:
    """Every parameter, tag, metric name, dataset input, registered model and version text."""
    mlflow.set_tracking_uri(tracking.tracking_uri(config))
    client = MlflowClient()
    texts = []
    for experiment in client.search_experiments():
        texts += [experiment.name, json.dumps(experiment.tags)]
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            texts += [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(list(run.data.metrics))]
            texts += [f"{d.dataset.name} {d.dataset.source} {d.dataset.digest}" for d in run.inputs.dataset_inputs]
    for model in client.search_registered_models():
        texts += [model.name, model.description or "", json.dumps(model.tags), json.dumps(model.aliases)]
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts += [version.description or "", json.dumps(version.tags), version.source or ""]
    return texts


def erase(config_root: Path, *args: str) -> int:
    settings = [f"storage.root={config_root}", *TEST_SPARK_SETTINGS, *SETTINGS]
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    return cli.main(["erase", "--conf-dir", str(CONF_DIR), *overrides, "--log-level", "DEBUG", *args])


def ids_of(key: str) -> list[str]:
    """The erased customers as the table stores them: raw in the landing table, else pseudonyms."""
    return ERASED if key == "raw_transactions" else [pseudonym(i) for i in ERASED]


def kept_of(key: str) -> list[str]:
    return KEPT if key == "raw_transactions" else [pseudonym(i) for i in KEPT]


def customer_counts(spark, config, ids_by_table) -> dict[str, tuple[int, int]]:
    """Per table with a customer column: (all rows, rows of the given customers)."""
    counts = {}
    for key in config.storage.tables.model_dump():
        ref = tables.table_ref(config, key)
        if not tables.exists(spark, ref):
            continue
        df = tables.read(spark, ref)
        if "customer_id" not in df.columns:
            continue
        ids = ids_by_table(key)
        column = F.trim("customer_id") if key == "raw_transactions" else F.col("customer_id")
        row = df.agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(column.isin(ids), 1)).alias("ids")).first()
        counts[key] = (row.rows, row.ids)
    return counts


def test_planted_ids_appear_only_in_the_raw_table_and_erase_removes_customers(spark, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("SEGMENTATION_PSEUDONYMISATION_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    for name in ("segmentation", "mlflow"):
        caplog.set_level(logging.DEBUG, logger=name)
    root = tmp_path / "data"
    config = make_config(root, *SETTINGS)
    ctx = StageContext(config, spark)

    # The input: the generated feed plus the planted rows (and their e-mail column), and a CSV batch.
    generate.run(ctx)
    raw_ref = ctx.table("raw_transactions")
    planted = spark.createDataFrame(planted_rows(), ", ".join(f"{c} string" for c in [*RAW_COLUMNS, "email"]))
    planted.write.format("delta").mode("append").option("mergeSchema", "true").save(raw_ref.location)
    # The generated table first: generated rows never go where a real feed's batches are.
    ingest.run(ctx)
    feed = write_csv_batch(tmp_path / "landing.csv")
    csv_settings = ["ingest.source.table=null", f"ingest.source.path={feed}", "ingest.source.format=csv", "ingest.max_rejected_share=0.9"]
    batch = ingest.run(StageContext(make_config(root, *SETTINGS, *csv_settings), spark))
    assert (batch.rows_clean, batch.rows_quarantined) == (1, 2)

    results = pipeline.run(StageContext(config, spark), ARGS)
    assert results.tiers.customers > 150
    assert tables.read(spark, ctx.table("ingest_log")).where(F.col("key_fingerprint") != key_fingerprint(KEY.encode())).count() == 0
    assert "column(s) not in the transaction schema, ignored: email" in caplog.text

    # Scan every Delta table under the storage root, every version, all columns as text.
    found = delta_tables(root)
    raw_dir = Path(raw_ref.location)
    assert {"raw/transactions", "transactions", "transactions_quarantine", "customer_features", "customer_clv",
            "customer_clusters", "customer_churn", "customer_tiers", "customer_tier_history", "ingest_log"} <= set(found)
    for name, location in found.items():
        if location == raw_dir:  # the landing table: the feed as it arrived, raw ids by design
            assert rows_containing(spark, location, RAW_STRINGS, all_versions=False) == len(planted_rows())
        else:
            assert rows_containing(spark, location, RAW_STRINGS, all_versions=True) == 0, name
    assert files_containing(root, RAW_STRINGS, skip=[raw_dir]) == {}  # data files, Delta logs, MLflow store, report
    # MLflow (store, artifacts, registry) and the report hold no per-customer data: not even pseudonyms.
    assert files_containing(root, RAW_STRINGS + PSEUDONYMS, skip=list(found.values())) == {}
    assert not [text for text in mlflow_texts(config) for s in RAW_STRINGS + PSEUDONYMS if s in text.lower()]

    # Before erasing: the customers to erase are in every table with customer rows.
    before = customer_counts(spark, config, ids_of)
    kept_before = customer_counts(spark, config, kept_of)
    assert {key for key, (_, ids) in before.items() if ids > 0} >= {
        "raw_transactions", "transactions", "transactions_quarantine", "customer_features", "customer_clv",
        "customer_clusters", "customer_churn", "customer_tiers", "customer_tier_history",
    }
    versions_before = {key: tables.current_version(spark, ctx.table(key)) for key in before}

    console = [capfd.readouterr()]
    ids_file = tmp_path / "erase.txt"
    ids_file.write_text(f"{ERASED[1]}\n\n  {ERASED[0]} \n", encoding="utf-8")
    assert erase(root, "--customer", ERASED[0], "--customers-file", str(ids_file)) == 0
    console.append(capfd.readouterr())
    out = console[-1].out
    assert "Erase of 2 customer id(s)" in out and "older versions (Delta time travel)" in out
    assert "no customer column, nothing to erase (aggregates): ingest_log" in out

    after = customer_counts(spark, config, ids_of)
    mlflow.set_tracking_uri(tracking.tracking_uri(config))
    [record] = mlflow.search_runs(experiment_names=["segmentation"], filter_string="tags.stage = 'erase'", output_format="list")
    for key, (rows, erased) in before.items():
        assert after[key] == (rows - erased, 0), key  # gone from the current version, nothing else deleted
        assert record.data.metrics[f"rows_deleted.{key}"] == erased, key
        ref = ctx.table(key)
        if erased:  # still in the version before the erase (time travel) until a vacuum
            old = tables.read(spark, ref, versions_before[key])
            column = F.trim("customer_id") if key == "raw_transactions" else F.col("customer_id")
            assert old.where(column.isin(ids_of(key))).count() == erased, key
    kept_after = customer_counts(spark, config, kept_of)
    assert {key: ids for key, (_, ids) in kept_after.items()} == {key: ids for key, (_, ids) in kept_before.items()}
    assert record.data.params["customers"] == "2" and record.data.tags["key_fingerprint"] == key_fingerprint(KEY.encode())
    erase_commits = [
        line for location in found.values() for log_file in (location / "_delta_log").glob("*.json")
        for line in log_file.read_text().splitlines() if "segmentation-erase-" in line
    ]
    assert erase_commits and not [line for line in erase_commits for s in RAW_STRINGS + PSEUDONYMS if s in line]

    # A short retention needs its own flag; with it, the old files go and time travel cannot return them.
    assert erase(root) == 1 and erase(root, "--vacuum", "--retention-hours", "0") == 1
    console.append(capfd.readouterr())
    assert "name the customers with --customer ID" in console[-1].err and "--allow-short-retention" in console[-1].err
    assert erase(root, "--vacuum", "--retention-hours", "0", "--allow-short-retention") == 0
    console.append(capfd.readouterr())
    assert "Vacuumed" in console[-1].out
    assert spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled", "true") == "true"
    old = tables.read(spark, ctx.table("transactions"), versions_before["transactions"])
    with pytest.raises(Exception, match="(?i)file|path"):
        old.where(F.col("customer_id").isin(ids_of("transactions"))).count()

    # Nothing in the logs or the console output, of the pipeline or of erase: no raw id, no pseudonym.
    console.append(capfd.readouterr())
    logs = (caplog.text + "".join(c.out + c.err for c in console)).lower()
    assert "stage ingest: finished" in logs and "rows deleted" in logs
    assert not [s for s in RAW_STRINGS + PSEUDONYMS if s in logs]
