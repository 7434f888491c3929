"""Feeds shaped like real exports, each through the real ingest job on real Delta tables:
quoted line breaks, legacy encodings, a Delta source that grows every day, files whose
columns come in another order, and `run` after a real feed was ingested.

Each feed is counted independently of the product (records written here, not read back
through Spark's CSV reader), and every outcome is checked in the Delta tables themselves.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.stages import ingest
from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation import tables
from segmentation.errors import DataQualityError
from segmentation.schema import RAW_COLUMNS
from tests.conftest import make_config
from tests.integration.test_bad_input import REFERENCE_TIME, csv_source, pseudonym, row

ONLY_INGEST = argparse.Namespace(generate=False, until="ingest")


def write_rows(path: Path, rows: list[dict[str, str]], header=RAW_COLUMNS, encoding="utf-8") -> Path:
    """A CSV export as Python's csv module writes it (RFC 4180: fields with a separator, a
    quote or a line break are quoted)."""
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows([[line.get(name, "") for name in header] for line in rows])
    return path


def context(spark, root: Path, mlflow_store, *settings: str) -> StageContext:
    return StageContext(make_config(root, REFERENCE_TIME, *settings, *mlflow_store), spark)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> list[str]:
    store = tmp_path_factory.mktemp("mlflow")
    return [f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_location={store}/artifacts"]


def read(ctx, key):
    return tables.read(ctx.spark, ctx.table(key))


# ------------------------------------------------------------ quoted line breaks

def multiline_feed(path: Path) -> tuple[Path, dict[str, str]]:
    """200 records; 4 of them hold a line break inside a quoted field (an address, a product
    name): the file has 204 lines of records."""
    broken = {7: "books\nand more", 50: "garden\r\ntools", 120: 'toys, "large"\nand small', 199: "\nfood"}
    rows = [row(f"L{i}", customer_id=f"C{i % 37}", product_category=broken.get(i, "books")) for i in range(200)]
    write_rows(path, rows)
    return path, {f"L{i}": text for i, text in broken.items()}


def test_a_quoted_line_break_never_splits_a_record(spark, tmp_path, mlflow_store):
    path, broken = multiline_feed(tmp_path / "export.csv")
    assert path.read_text(encoding="utf-8").count("\n") == 1 + 200 + 4
    ctx = context(spark, tmp_path / "data", mlflow_store, *csv_source(path))
    result = ingest.run(ctx)
    assert (result.rows_in, result.rows_clean, result.rows_quarantined) == (200, 200, 0)
    clean = {r.transaction_id: r.product_category for r in read(ctx, "transactions").collect()}
    assert len(clean) == 200
    # Line breaks stay inside the value; Spark's parser stores a CRLF there as LF.
    assert {tid: clean[tid] for tid in broken} == {tid: text.replace("\r\n", "\n") for tid, text in broken.items()}


def test_a_line_based_read_of_quoted_line_breaks_is_refused_naming_the_file_and_option(spark, tmp_path, mlflow_store):
    path, _ = multiline_feed(tmp_path / "export.csv")
    ctx = context(spark, tmp_path / "data", mlflow_store, *csv_source(path, "ingest.source.options.multiLine=false"))
    with pytest.raises(DataQualityError, match=(
        r"^.*export.csv: \d+ records are cut at a line break inside a quoted field; remove "
        r"ingest.source.options.multiLine=false .*; nothing was written$"
    )):
        ingest.run(ctx)
    for key in ("transactions", "transactions_quarantine", "ingest_log"):
        assert not tables.exists(spark, ctx.table(key))


# ------------------------------------------------------------ encodings

LATIN = [
    row("E1", customer_id="Müller-01", product_category="Café crème"),
    row("E2", customer_id="Mäller-01", product_category="Crème brûlée"),
    row("E3", customer_id="Øster-02", store_id="Zürich Hauptbahnhof"),
]


def test_bytes_that_are_not_utf8_refuse_the_batch_naming_the_file_and_option(spark, tmp_path):
    """The default store: a refused batch leaves no table and no MLflow store behind."""
    path = write_rows(tmp_path / "latin1.csv", LATIN * 50, encoding="latin-1")
    root = tmp_path / "data"
    ctx = StageContext(make_config(root, REFERENCE_TIME, *csv_source(path)), spark)
    with pytest.raises(DataQualityError, match=(
        r"^.*latin1.csv: 150 rows hold text that did not decode; the file is not valid UTF-8: set "
        r"ingest.source.options.encoding to its encoding \(e.g. ISO-8859-1, windows-1252, GB18030\); nothing was written$"
    )):
        ingest.run(ctx)
    assert not root.exists() or not any(root.iterdir())  # no tables, no mlflow.db


def test_a_header_only_file_is_refused_and_leaves_no_table_and_no_mlflow_store(spark, tmp_path):
    path = write_rows(tmp_path / "header_only.csv", [])
    root = tmp_path / "data"
    with pytest.raises(DataQualityError, match=r"header_only.csv: the source has no rows$"):
        ingest.run(StageContext(make_config(root, REFERENCE_TIME, *csv_source(path)), spark))
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize("encoding, spark_name", [("latin-1", "ISO-8859-1"), ("cp1252", "windows-1252"), ("gb18030", "GB18030")])
def test_the_configured_encoding_is_applied(spark, tmp_path, mlflow_store, encoding, spark_name):
    extra = {"cp1252": [row("E4", product_category="€uro “deal”")], "gb18030": [row("E5", customer_id="李小龙", store_id="上海")]}
    rows = LATIN + extra.get(encoding, [])
    path = write_rows(tmp_path / "export.csv", rows, encoding=encoding)
    ctx = context(spark, tmp_path / "data", mlflow_store, *csv_source(path, f"ingest.source.options.encoding={spark_name}"))
    result = ingest.run(ctx)
    assert (result.rows_in, result.rows_clean) == (len(rows), len(rows))
    clean = {r.transaction_id: r for r in read(ctx, "transactions").collect()}
    for line in rows:
        stored = clean[line["transaction_id"]]
        assert stored.customer_id == pseudonym(line["customer_id"])  # Müller-01 and Mäller-01 stay two customers
        assert (stored.product_category, stored.store_id) == (line["product_category"], line["store_id"])
    assert len({r.customer_id for r in clean.values()}) == len({line["customer_id"] for line in rows})


# ------------------------------------------------------------ a Delta source that grows

def append_rows(spark, path: Path, rows: list[dict[str, str]], mode="append") -> None:
    spark.createDataFrame([[line[c] for c in RAW_COLUMNS] for line in rows], ", ".join(f"{c} string" for c in RAW_COLUMNS)) \
        .write.format("delta").mode(mode).save(str(path))


def day(start: int, count: int) -> list[dict[str, str]]:
    return [row(f"D{i}", customer_id=f"C{i % 41}") for i in range(start, start + count)]


def test_a_growing_delta_source_is_read_incrementally(spark, tmp_path, mlflow_store, caplog):
    source = tmp_path / "landing"
    ctx = context(spark, tmp_path / "data", mlflow_store, "ingest.source.table=null", f"ingest.source.path={source}",
                  "ingest.source.format=delta", "ingest.max_rejected_share=0.5")

    def ingested() -> dict:
        result = ingest.run(ctx)
        assert result.status == "committed"
        return {k: getattr(result, k) for k in ("rows_in", "rows_clean", "rows_quarantined", "rows_already_loaded")}

    append_rows(spark, source, day(0, 250))
    assert ingested() == {"rows_in": 250, "rows_clean": 250, "rows_quarantined": 0, "rows_already_loaded": 0}
    for start, count in ((250, 50), (300, 30), (330, 1)):  # three daily appends
        append_rows(spark, source, day(start, count))
        assert ingested() == {"rows_in": count, "rows_clean": count, "rows_quarantined": 0, "rows_already_loaded": 0}
    assert ingest.run(ctx).status == "already_ingested"  # nothing new
    assert read(ctx, "transactions").count() == 331 and read(ctx, "transactions_quarantine").isEmpty()

    # The source is overwritten with everything plus 20 new rows, one of them defective: the
    # rows that come back are set aside and counted, never rejected.
    append_rows(spark, source, [*day(0, 351), row("BAD", net_amount="abc")], mode="overwrite")
    assert ingested() == {"rows_in": 352, "rows_clean": 20, "rows_quarantined": 1, "rows_already_loaded": 331}
    entry = read(ctx, "ingest_log").orderBy(F.desc("ingested_at")).first()
    assert (entry.rows_already_loaded, entry.rejected_share, entry.source_kind) == (331, round(1 / 21, 6), "feed")
    assert entry.rejections == {"bad_type:net_amount": 1}

    # Old data files vacuumed away: the Delta log still says which files are new.
    # Listed in 8 tasks, as `segmentation erase --vacuum` does, not in Spark's default 10,000
    # (28 s against 3 s for this table, alone on this machine).
    with tables.session_conf(spark, {"spark.databricks.delta.retentionDurationCheck.enabled": "false",
                                     "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8"}):
        spark.sql(f"VACUUM delta.`{source}` RETAIN 0 HOURS")
    append_rows(spark, source, day(351, 5))
    assert ingested() == {"rows_in": 5, "rows_clean": 5, "rows_quarantined": 0, "rows_already_loaded": 0}

    # The log entries of the last version ingested cleaned up (log retention): the whole
    # snapshot is read, with a warning; the rows loaded before are set aside, the defective
    # one is quarantined again.
    last = read(ctx, "ingest_log").agg(F.max("source_version")).first()[0]
    spark.sql(f"ALTER TABLE delta.`{source}` SET TBLPROPERTIES ('delta.checkpointInterval' = '1')")
    append_rows(spark, source, day(356, 4))
    for log_file in (source / "_delta_log").glob("*.json"):
        if int(log_file.stem) <= last:
            log_file.unlink()
    with caplog.at_level(logging.WARNING, logger="segmentation.sources"):
        assert ingested() == {"rows_in": 361, "rows_clean": 4, "rows_quarantined": 1, "rows_already_loaded": 356}
    assert "is no longer in the Delta log" in caplog.text
    assert read(ctx, "transactions").count() == 360


# ------------------------------------------------------------ columns in another order

def test_files_with_columns_in_another_order_are_matched_by_name(spark, tmp_path, mlflow_store):
    folder = tmp_path / "daily"
    folder.mkdir()
    reordered = [c for c in RAW_COLUMNS if c not in ("net_amount", "discount_amount")]
    reordered[2:2] = ["discount_amount", "net_amount"]  # swapped, and moved
    first = [row(f"A{i}", net_amount="10.00", discount_amount="1.50") for i in range(60)]
    second = [row(f"B{i}", net_amount="20.00", discount_amount="2.50", quantity="2") for i in range(85)]
    write_rows(folder / "day1.csv", first)
    write_rows(folder / "day2.csv", second, header=list(reversed(reordered)))
    ctx = context(spark, tmp_path / "data", mlflow_store, *csv_source(folder))
    result = ingest.run(ctx)
    assert (result.rows_in, result.rows_clean) == (145, 145)
    clean = read(ctx, "transactions").groupBy("net_amount", "discount_amount", "quantity").count().collect()
    assert {(r.net_amount, r.discount_amount, r.quantity): r["count"] for r in clean} == {(10.0, 1.5, 1): 60, (20.0, 2.5, 2): 85}


def test_a_file_whose_header_lacks_a_column_fails_naming_that_file(spark, tmp_path, mlflow_store):
    folder = tmp_path / "daily"
    folder.mkdir()
    write_rows(folder / "day1.csv", [row("A1")])
    write_rows(folder / "day2.csv", [row("B1")], header=[c for c in RAW_COLUMNS if c != "channel"])
    ctx = context(spark, tmp_path / "data", mlflow_store, *csv_source(folder))
    with pytest.raises(DataQualityError, match=r"^.*daily/day2.csv: missing required column\(s\) channel"):
        ingest.run(ctx)
    assert not tables.exists(spark, ctx.table("transactions"))


# ------------------------------------------------------------ run after a real feed

def test_run_never_mixes_generated_rows_into_a_real_feed(spark, tmp_path, mlflow_store, caplog):
    path = write_rows(tmp_path / "feed.csv", [row(f"F{i}", customer_id=f"C{i % 7}") for i in range(40)])
    root = tmp_path / "data"
    ingest.run(context(spark, root, mlflow_store, *csv_source(path, "ingest.source.options.nullValue=NA")))

    ctx = context(spark, root, mlflow_store)  # the default source: the generated raw table
    with caplog.at_level(logging.INFO, logger="segmentation"):
        results = pipeline.run(ctx, ONLY_INGEST)
    assert results.generate is None and not tables.exists(spark, ctx.table("raw_transactions"))
    assert results.ingest.status == "already_ingested"
    assert f"ingesting the feed ingested last: --source {path} --format csv --set ingest.source.options.nullValue=NA" in caplog.text
    assert read(ctx, "transactions").count() == 40

    with pytest.raises(DataQualityError, match=(
        rf"^--generate: transactions already holds batches ingested from {path}; generated rows are never mixed"
    )):
        pipeline.run(ctx, argparse.Namespace(generate=True, until="ingest"))
    assert not tables.exists(spark, ctx.table("raw_transactions")) and read(ctx, "transactions").count() == 40

    # A generated table ingested by hand is refused too.
    generated = context(spark, root, mlflow_store, "generate.customers=20")
    from segmentation.stages import generate

    generate.run(generated)
    with pytest.raises(DataQualityError, match=r"holds generated rows \(generated:synthetic\) but .* already holds batches ingested from"):
        ingest.run(generated)
    assert read(ctx, "transactions").count() == 40
    shutil.rmtree(ctx.table("raw_transactions").location)
