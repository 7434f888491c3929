"""Defective feeds, each through the real ingest job on real Delta tables: how every kind of
bad input is handled, in one place.

A feed either fails with one clear error that names the file and the column, and nothing is
written; or every row lands once in `transactions` or in `transactions_quarantine` with the
rules it failed, and rows in = clean + quarantined, counted in the tables themselves. Then
the feeds that pass ingest but leave little to model (one customer, only returns, customers
that cannot be told apart, no clean row) go through the later stages: each stage completes,
or fails with one line saying what is wrong.

Elsewhere: every rule on hand-made rows and duplicates (tests/unit/test_validation.py), the
reject limit (tests/integration/test_ingest_job.py), configuration errors
(tests/unit/test_config.py, tests/unit/test_rule_errors.py).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field

import mlflow
import pytest
from pyspark.sql import functions as F

from segmentation.stages import churn
from segmentation.stages import cluster
from segmentation.stages import clv
from segmentation.stages import ingest
from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from segmentation import tables
from segmentation.errors import DataQualityError
from segmentation.features.customer import customer_features
from segmentation.features.tiers import tier_cuts, with_rule_tiers
from segmentation.privacy import DEMO_KEY
from segmentation.schema import RAW_COLUMNS, REQUIRED_COLUMNS, TRANSACTIONS_SCHEMA
from tests.conftest import make_config

# The future check compares with this time, not with the clock.
REFERENCE_TIME = "ingest.reference_time=2025-06-30T12:00:00"
OPTIONAL_COLUMNS = [c for c in RAW_COLUMNS if c not in REQUIRED_COLUMNS]


def row(label: str, **values: str) -> dict[str, str]:
    """A valid transaction line; `label` is its transaction id (order id O-<label>)."""
    line = {
        "transaction_id": label, "order_id": f"O-{label}", "customer_id": "C1", "transaction_ts": "2025-03-01 10:00:00",
        "channel": "store", "store_id": "S1", "region": "north", "product_category": "books", "quantity": "1",
        "net_amount": "10.00", "discount_amount": "0", "gross_margin": "1", "is_return": "false",
    }
    line.update(values)
    return line


def write_feed(path, lines, header=RAW_COLUMNS):
    """A CSV file: the header, then each line (a dict is written as a quoted CSV row, a
    string exactly as it is)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for line in lines:
            if isinstance(line, str):
                handle.write(line + "\n")
            else:
                writer.writerow([line.get(name, "") for name in header])
    return path


def csv_source(path, *settings: str) -> list[str]:
    return ["ingest.source.table=null", f"ingest.source.path={path}", "ingest.source.format=csv", *settings]


def pseudonym(raw_id: str) -> str:
    """What ingest stores for a customer id (the tests run with the demo key)."""
    return hmac.new(DEMO_KEY, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()


def micros(*moment: int) -> int:
    """A UTC instant as microseconds since the epoch, the way Spark stores a timestamp."""
    instant = dt.datetime(*moment, tzinfo=dt.timezone.utc)
    return int(instant.timestamp()) * 1_000_000 + instant.microsecond


# transaction_ts as a feed sends it -> the instant stored, in UTC, or the reasons the row is quarantined for
TIMESTAMPS = {
    "2025-03-01T10:00:00": micros(2025, 3, 1, 10),
    "2025-03-01T10:00:00Z": micros(2025, 3, 1, 10),
    "2025-03-01T10:00:00+02:00": micros(2025, 3, 1, 8),
    "2025-03-01T10:00:00-05:00": micros(2025, 3, 1, 15),
    "2025-03-01T10:00:00+05:30": micros(2025, 3, 1, 4, 30),
    "2025-03-01": micros(2025, 3, 1),
    "2025-03-01 10:00:00.123456": micros(2025, 3, 1, 10, 0, 0, 123456),
    "2025-03-01T10:00:00.5+02:00": micros(2025, 3, 1, 8, 0, 0, 500000),
    "2025-03-01 10:00:00 Europe/Paris": micros(2025, 3, 1, 9),  # winter time, UTC+1
    "2025-06-01 10:00:00 Europe/Paris": micros(2025, 6, 1, 8),  # summer time, UTC+2
    "03/04/2025": ["bad_type:transaction_ts"],
    "1740823200": ["bad_type:transaction_ts"],  # epoch seconds
    "1740823200000": ["bad_type:transaction_ts"],  # epoch milliseconds
    "2025": ["bad_type:transaction_ts"],  # Spark alone would read 2025-01-01
    "10:00:00": ["bad_type:transaction_ts"],  # Spark alone would read today at ten
    "2025-02-29": ["bad_type:transaction_ts"],
    "2025-03-01 25:00:00": ["bad_type:transaction_ts"],
    "1970-01-01 00:00:00": ["timestamp_too_old"],
    "2025-07-05 00:00:00": ["timestamp_in_future"],
}
STAMPED = {f"Z{position}": text for position, text in enumerate(TIMESTAMPS, start=1)}


@dataclass(frozen=True)
class Feed:
    """A defective CSV feed and what ingest must make of it: for each row, by its
    transaction id (or order id, when the row has none), the reasons it is quarantined
    for, [] for clean; `unlabelled`: the reasons of the rows left without an id, a line
    with every field empty, or a line that does not parse (it keeps no value at all, since
    it may hold a raw customer id in any field)."""

    lines: list
    outcome: dict[str, list[str]]
    unlabelled: list[list[str]] = field(default_factory=list)
    header: list[str] = field(default_factory=lambda: RAW_COLUMNS)


FEEDS = {
    "malformed lines": Feed(
        lines=[
            row("M1"),
            "M2,too,few",
            ",".join(row("M3").values()) + ",one,too many",
            row("M5", region='north, "east"'),  # a quoted separator and quotes are fine
            row("M6", product_category="books\nand more"),  # a quoted line break stays inside its record
            'M4,"O-M4,C1,2025-03-01 10:00:00,store,S1,north,books,1,10.00,0,1,false',  # the quote never closes:
            row("M7"),  # it runs on to the end of the file, taking this line with it
        ],
        outcome={"M1": [], "M5": [], "M6": []},
        unlabelled=[
            ["malformed_record", "missing:transaction_ts", "missing:channel", "missing:quantity", "missing:net_amount"],
            ["malformed_record"],
            ["malformed_record", "unbalanced_quote", "missing:customer_id", "missing:transaction_ts", "missing:channel",
             "missing:quantity", "missing:net_amount"],
        ],
    ),
    "wrong types": Feed(
        lines=[
            row("T1", transaction_ts="yesterday"),
            row("T2", quantity="two"),
            row("T3", quantity="1.5"),
            row("T4", quantity="99999999999"),  # beyond an int
            row("T5", net_amount="12,50 EUR"),
            row("T6", net_amount="abc"),
            row("T7", discount_amount="free"),
            row("T8", gross_margin="high"),
            row("T9", is_return="maybe"),
            row("T10", quantity="x", net_amount="y"),
            row("T11", quantity=" 2 "),
            row("T12", net_amount="1e3"),
            row("T13", quantity="-1", net_amount="-5", is_return="Y"),
            row("T14", is_return="0"),
            row("T15", gross_margin="n/a"),  # ingest.missing_values: no margin, not a wrong type
        ],
        outcome={
            "T1": ["bad_type:transaction_ts"], "T2": ["bad_type:quantity"], "T3": ["bad_type:quantity"],
            "T4": ["bad_type:quantity"], "T5": ["bad_type:net_amount"], "T6": ["bad_type:net_amount"],
            "T7": ["bad_type:discount_amount"], "T8": ["bad_type:gross_margin"], "T9": ["bad_type:is_return"],
            "T10": ["bad_type:quantity", "bad_type:net_amount"], "T11": [], "T12": [], "T13": [], "T14": [], "T15": [],
        },
    ),
    "extra and missing columns": Feed(
        # Names match trimmed and in any case; the optional columns are absent; two extra ones.
        header=["transaction_id", "order_id", "Customer_ID", " transaction_ts ", "CHANNEL", "quantity", "net_amount",
                "loyalty_tier", "email"],
        lines=[
            {**row("X1"), "Customer_ID": "C1", " transaction_ts ": "2025-03-01", "CHANNEL": "Web", "loyalty_tier": "gold",
             "email": "jane@example.com"},
            {**row("X2", quantity="-1", net_amount="-4.5"), "Customer_ID": "C2", " transaction_ts ": "2025-03-02",
             "CHANNEL": "app", "loyalty_tier": "silver", "email": "joe@example.com"},
            {**row("X3", net_amount="abc"), "Customer_ID": "C3", " transaction_ts ": "2025-03-03", "CHANNEL": "store",
             "loyalty_tier": "", "email": "ann@example.com"},
        ],
        outcome={"X1": [], "X2": [], "X3": ["bad_type:net_amount"]},
    ),
    "extreme amounts": Feed(
        lines=[
            row("A1", net_amount="1e308", is_return=""),
            row("A2", net_amount="-1e308", quantity="-1", is_return=""),
            row("A3", net_amount="1e309", is_return=""),  # parses as infinity
            row("A4", net_amount="NaN", is_return=""),
            row("A5", net_amount="Infinity", is_return=""),
            row("A6", net_amount="-Infinity", quantity="-1", is_return=""),
            row("A7", net_amount="-0", is_return=""),
            row("A8", net_amount="50000", is_return=""),  # ingest.max_abs_amount exactly
            row("A9", net_amount="50000.01", is_return=""),
            row("A10", net_amount="-50000.01", quantity="-1", is_return=""),
            row("A11", net_amount="-50000", quantity="-1", is_return=""),
            row("A12", discount_amount="1e308"),
            row("A13", gross_margin="NaN"),
            row("A14", quantity="1001"),
            row("A15", quantity="0"),
        ],
        outcome={
            **{f"A{i}": ["amount_out_of_range"] for i in (1, 2, 3, 4, 5, 6, 9, 10)},
            "A7": [], "A8": [], "A11": [], "A12": ["discount_out_of_range"], "A13": ["margin_out_of_range"],
            "A14": ["quantity_out_of_range"], "A15": ["quantity_out_of_range"],
        },
    ),
    "non-ASCII ids": Feed(
        lines=[
            row("U1", customer_id="Zoë"),
            row("U2", customer_id="Zoe"),
            row("U3", customer_id="李小龙"),
            row("U4", customer_id="😀👍"),
            row("U5", customer_id="مرحبا"),  # right to left
            row("U6", customer_id="שלום"),
            row("U7", customer_id="C1"),
            row("U8", customer_id=" C1 "),  # the same customer as U7
            row("U11", customer_id="C1\t"),  # padded with a tab, a no-break space, a byte-order mark:
            row("U12", customer_id="\u00a0C1\u00a0"),  # the same customer again
            row("U13", customer_id="\ufeffC1"),
            row("交易-9", order_id="заказ-9", customer_id="Ærøskøbing-ÅÄÖ", store_id="Café Zürich", product_category="書籍"),
            row("U10", customer_id="李小龙", net_amount="abc"),
        ],
        outcome={**{f"U{i}": [] for i in (*range(1, 9), 11, 12, 13)}, "交易-9": [], "U10": ["bad_type:net_amount"]},
    ),
    "nulls in every column": Feed(
        lines=[
            "," * (len(RAW_COLUMNS) - 1),  # every field empty
            row("", order_id="O-no-id"),
            row("N2", order_id=""),
            row("N3", customer_id="   "),
            row("N4", transaction_ts=""),
            row("N5", channel=""),
            row("N6", quantity=""),
            row("N7", net_amount=""),
            row("N8", **{column: "" for column in OPTIONAL_COLUMNS}),
            '"N9","""","C1","","store","","","","1","","","",""',  # quoted empty fields; order id a lone quote
            row("N10", net_amount="NULL"),  # ingest.missing_values: the text NULL means no value
            row("N11", customer_id="n/a"),  # in any case
            row("N12", product_category="None"),  # an optional column: missing, not a defect
        ],
        outcome={
            "O-no-id": ["missing:transaction_id"], "N2": ["missing:order_id"], "N3": ["missing:customer_id"],
            "N4": ["missing:transaction_ts"], "N5": ["missing:channel"], "N6": ["missing:quantity"],
            "N7": ["missing:net_amount"], "N8": [], "N9": ["missing:transaction_ts", "missing:net_amount"],
            "N10": ["missing:net_amount"], "N11": ["missing:customer_id"], "N12": [],
        },
        unlabelled=[[f"missing:{c}" for c in REQUIRED_COLUMNS]],
    ),
    "quantity signs": Feed(
        lines=[
            row("Q1", quantity="-2"),  # a sale of minus two
            row("Q2", quantity="2", net_amount="-10", is_return="true"),  # a return of plus two
            row("Q3", quantity="-2", net_amount="-10", is_return="true"),
            row("Q4", quantity="2", net_amount="0"),  # free: no sign to contradict
            row("Q5", quantity="-2", net_amount="-0", is_return=""),
            row("Q6", quantity="-1", net_amount="10", is_return="true"),
        ],
        outcome={
            "Q1": ["quantity_sign_mismatch"], "Q2": ["quantity_sign_mismatch"], "Q3": [], "Q4": [], "Q5": [],
            "Q6": ["return_sign_mismatch", "quantity_sign_mismatch"],
        },
    ),
    "timestamps in several formats and time zones": Feed(
        lines=[row(label, transaction_ts=text) for label, text in STAMPED.items()],
        outcome={label: [] if isinstance(TIMESTAMPS[text], int) else TIMESTAMPS[text] for label, text in STAMPED.items()},
    ),
}
@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> list[str]:
    """One MLflow store for the module (a new SQLite store per feed costs seconds); every
    feed has its own tables."""
    store = tmp_path_factory.mktemp("mlflow")
    return [f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_location={store}/artifacts"]


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory, mlflow_store):
    """Each feed through the ingest job once (on first use): its context, the job's result
    and what the job logged."""
    done = {}

    def ingest_once(name):
        if name not in done:
            feed = FEEDS[name]
            folder = tmp_path_factory.mktemp("feed")
            path = write_feed(folder / "feed.csv", feed.lines, feed.header)
            config = make_config(folder / "data", *csv_source(path, "ingest.max_rejected_share=1", REFERENCE_TIME), *mlflow_store)
            ctx = StageContext(config, spark)
            handler = _Records()
            logging.getLogger("segmentation").addHandler(handler)
            try:
                result = ingest.run(ctx)
            finally:
                logging.getLogger("segmentation").removeHandler(handler)
            done[name] = ctx, result, handler.messages
        return done[name]

    return ingest_once


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def read(ctx, key):
    return tables.read(ctx.spark, ctx.table(key))


@pytest.mark.parametrize("name", list(FEEDS))
def test_every_row_is_clean_or_quarantined_with_its_reasons(ingested, name):
    feed = FEEDS[name]
    ctx, result, _ = ingested(name)
    clean, quarantined = read(ctx, "transactions").collect(), read(ctx, "transactions_quarantine").collect()
    rows_in = len(feed.outcome) + len(feed.unlabelled)
    rows_clean = sum(not reasons for reasons in feed.outcome.values())
    assert result.status == "committed"
    assert (result.rows_in, result.rows_clean, result.rows_quarantined) == (rows_in, rows_clean, rows_in - rows_clean)
    assert (len(clean), len(quarantined)) == (rows_clean, rows_in - rows_clean)  # what the Delta tables hold

    got = {r.transaction_id: [] for r in clean}
    got.update({r.transaction_id or r.order_id: r.reasons for r in quarantined if r.transaction_id or r.order_id})
    assert got == feed.outcome
    unlabelled = [r for r in quarantined if not (r.transaction_id or r.order_id)]
    assert sorted(r.reasons for r in unlabelled) == sorted(feed.unlabelled)
    assert all(r.source_file.endswith("feed.csv") for r in quarantined)


def test_a_line_that_does_not_parse_keeps_no_value(ingested):
    ctx, _, _ = ingested("malformed lines")
    malformed = read(ctx, "transactions_quarantine").where(F.array_contains("reasons", "malformed_record")).collect()
    assert len(malformed) == 3
    for r in malformed:  # pseudonymised: not even the id of a line that may hold a raw customer id anywhere
        assert r.raw_record is None and r.customer_id is None and r.transaction_id is None
    kept = {r.transaction_id: r for r in read(ctx, "transactions").collect()}
    assert kept["M5"].region == 'north, "east"'
    assert kept["M6"].product_category == "books\nand more"


def test_values_of_the_wrong_type_are_quarantined_as_text_and_the_rest_typed(ingested):
    ctx, _, _ = ingested("wrong types")
    quarantined = {r.transaction_id: r for r in read(ctx, "transactions_quarantine").collect()}
    assert (quarantined["T1"].transaction_ts, quarantined["T3"].quantity, quarantined["T5"].net_amount) == ("yesterday", "1.5", "12,50 EUR")
    assert (quarantined["T6"].net_amount, quarantined["T9"].is_return) == ("abc", "maybe")
    clean = {r.transaction_id: r for r in read(ctx, "transactions").collect()}
    assert (clean["T11"].quantity, clean["T12"].net_amount, clean["T13"].is_return, clean["T14"].is_return) == (2, 1000.0, True, False)


def test_extra_columns_are_reported_and_dropped_and_missing_optional_ones_are_null(ingested):
    ctx, _, messages = ingested("extra and missing columns")
    source = ctx.config.ingest.source.path
    assert f"{source}: column(s) not in the transaction schema, ignored: loyalty_tier, email" in messages
    assert f"{source}: optional column(s) absent, loaded as null: {', '.join(OPTIONAL_COLUMNS)}" in messages
    clean = {r.transaction_id: r.asDict() for r in read(ctx, "transactions").collect()}
    assert {key: clean["X2"][key] for key in OPTIONAL_COLUMNS} == {
        "store_id": None, "region": None, "product_category": None, "discount_amount": None, "gross_margin": None,
        "is_return": True,  # derived from the negative amount
    }
    assert (clean["X1"]["customer_id"], clean["X1"]["channel"], clean["X1"]["is_return"]) == (pseudonym("C1"), "web", False)
    for key in ("transactions", "transactions_quarantine"):
        table = read(ctx, key)
        assert not {"loyalty_tier", "email"} & set(table.columns)
        assert "example.com" not in str(table.collect())


def test_extreme_amounts_never_reach_the_clean_table(ingested):
    ctx, _, _ = ingested("extreme amounts")
    clean = {r.transaction_id: (r.net_amount, r.is_return) for r in read(ctx, "transactions").collect()}
    assert clean == {"A7": (0.0, False), "A8": (50000.0, False), "A11": (-50000.0, True)}


def test_non_ascii_ids_are_kept_and_pseudonymised_one_to_one(ingested):
    ctx, _, _ = ingested("non-ASCII ids")
    feed = {line["transaction_id"]: line for line in FEEDS["non-ASCII ids"].lines}
    clean = read(ctx, "transactions").collect()
    for r in clean:
        assert r.customer_id == pseudonym(feed[r.transaction_id]["customer_id"].strip("\ufeff \t\u00a0"))
    raw_ids = {line["customer_id"].strip("\ufeff \t\u00a0") for line in feed.values() if line["transaction_id"] != "U10"}
    assert len({r.customer_id for r in clean}) == len(raw_ids) == 8  # distinct ids stay distinct; " C1 " and the rest are C1
    other = next(r for r in clean if r.transaction_id == "交易-9")
    assert (other.order_id, other.store_id, other.product_category) == ("заказ-9", "Café Zürich", "書籍")
    rejected = read(ctx, "transactions_quarantine").first()
    assert (rejected.transaction_id, rejected.customer_id) == ("U10", pseudonym("李小龙"))


def test_time_zones_are_stored_as_the_instant_in_utc(spark, ingested):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    ctx, _, _ = ingested("timestamps in several formats and time zones")
    clean = read(ctx, "transactions").select(
        "transaction_id", F.unix_micros("transaction_ts").alias("instant"),
        F.date_format("transaction_ts", "yyyy-MM-dd HH:mm:ss").alias("utc"),
    ).collect()
    assert {STAMPED[r.transaction_id]: r.instant for r in clean} == {
        text: instant for text, instant in TIMESTAMPS.items() if isinstance(instant, int)
    }
    assert {STAMPED[r.transaction_id]: r.utc for r in clean}["2025-06-01 10:00:00 Europe/Paris"] == "2025-06-01 08:00:00"
    quarantined = read(ctx, "transactions_quarantine").collect()
    assert {r.transaction_ts for r in quarantined} == {text for text, instant in TIMESTAMPS.items() if not isinstance(instant, int)}


NOCHANNEL_HEADER = ",".join(c for c in RAW_COLUMNS if c != "channel")
UNUSABLE = {
    "nochannel.csv": (
        NOCHANNEL_HEADER + "\nT1,O1,C1,2025-01-01,S1,north,books,1,5,0,1,false\n",
        r"nochannel.csv: missing required column\(s\) channel \(found: 'transaction_id', 'order_id', 'customer_id', "
        r"'transaction_ts', 'store_id',",
    ),
    "empty.csv": ("", r"empty.csv: empty CSV input \(no header line\)"),
    "blank_lines.csv": ("\n\n\n", r"blank_lines.csv: empty CSV input \(no header line\)"),
    "header_only.csv": (",".join(RAW_COLUMNS) + "\n", r"header_only.csv: the source has no rows"),
    "repeated_column.csv": (
        ",".join(RAW_COLUMNS) + ",Net_Amount\n" + ",".join(row("R1").values()) + ",11\n",
        r"repeated_column.csv: column\(s\) named more than once in the header: net_amount",
    ),
    "semicolons.csv": (
        ";".join(RAW_COLUMNS) + "\n" + ";".join(row("S1").values()) + "\n",
        r"semicolons.csv: the header is one column, 'transaction_id;order_id;.*': the file is not separated by ','; "
        r"set ingest.source.options.sep",
    ),
    "nope.csv": (None, r"nope.csv: no such file or directory"),
}


@pytest.mark.parametrize("file_name", list(UNUSABLE))
def test_an_unusable_feed_fails_naming_the_file_and_writes_nothing(spark, tmp_path, mlflow_store, file_name):
    content, message = UNUSABLE[file_name]
    path = tmp_path / file_name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    ctx = StageContext(make_config(tmp_path / "data", *csv_source(path), *mlflow_store), spark)
    with pytest.raises(DataQualityError, match=message):
        ingest.run(ctx)
    for key in ("transactions", "transactions_quarantine", "ingest_log"):
        assert not tables.exists(spark, ctx.table(key))  # a refused batch creates nothing


def test_a_missing_source_table_says_to_generate_first(spark, tmp_path, mlflow_store):
    ctx = StageContext(make_config(tmp_path / "data", *mlflow_store), spark)
    with pytest.raises(DataQualityError, match="source table raw_transactions .* does not exist: run 'segmentation generate' first"):
        ingest.run(ctx)


@pytest.mark.parametrize("folder", ["missing", "plain"])
def test_a_delta_source_path_that_holds_no_delta_table_is_named(spark, tmp_path, mlflow_store, folder):
    path = tmp_path / folder
    if folder == "plain":  # a folder of files, but no Delta log
        path.mkdir()
        write_feed(path / "day1.csv", [row("T1")])
    source = ["ingest.source.table=null", f"ingest.source.path={path}", "ingest.source.format=delta"]
    ctx = StageContext(make_config(tmp_path / "data", *source, *mlflow_store), spark)
    with pytest.raises(DataQualityError, match=f"^{re.escape(str(path))}: not a Delta table$"):
        ingest.run(ctx)
    assert not tables.exists(spark, ctx.table("transactions"))


# ------------------------------------------------------------- the stages after ingest

UNTIL_THE_END = argparse.Namespace(generate=False, train_churn=False, until="report")


def edge_feed(spark, folder, mlflow_store, lines, *settings):
    """A CSV feed in `folder`, with its tables next to it."""
    folder.mkdir(exist_ok=True)
    path = write_feed(folder / "feed.csv", lines)
    return StageContext(make_config(folder / "data", *csv_source(path, REFERENCE_TIME, *settings), *mlflow_store), spark)


def test_one_customer_gets_features_and_clear_errors_from_the_models(spark, tmp_path, mlflow_store):
    dates = ["2025-01-05", "2025-02-03", "2025-03-09", "2025-05-02", "2025-06-01"]
    ctx = edge_feed(spark, tmp_path, mlflow_store, [row(f"O{i}", transaction_ts=f"{day} 10:00:00") for i, day in enumerate(dates)])
    # The pipeline skips the model stages with their sufficiency messages (standalone, they fail with them).
    results = pipeline.run(ctx, UNTIL_THE_END)
    assert results.clv == pipeline.Skipped(
        "1 customer bought more than once by the calibration end, fewer than clv.min_repeat_customers=30; "
        "BG/NBD learns from repeat customers: collect more history or more customers"
    )
    assert results.churn.reason.startswith("147 days of history (2025-01-05 to 2025-06-01)")
    with pytest.raises(DataQualityError, match=r"^1 customer bought more than once by the calibration end"):
        clv.run(ctx)
    assert read(ctx, "transactions").count() == 5
    [customer] = read(ctx, "customer_features").collect()
    assert (customer.customer_id, customer.as_of_date, customer.recency_days) == (pseudonym("C1"), dt.date(2025, 6, 1), 0)
    assert (customer.frequency_orders, customer.monetary, customer.value_tier) == (5, 50.0, "bronze")  # one customer: the last tier
    assert not tables.exists(spark, ctx.table("customer_clv"))

    with pytest.raises(DataQualityError, match=r"customer_features .* as of 2025-06-01: 1 customer, too few for k from 3 to 8 \(K-means needs more customers than clusters\)$"):
        cluster.run(ctx)
    with pytest.raises(DataQualityError, match=(
        r"^147 days of history \(2025-01-05 to 2025-06-01\), 0 of 4 training cutoffs have a full look-back; the churn model "
        r"needs churn.lookback_days 365 \+ churn.horizon_days 90 x \(1 cutoffs \+ 1\) = 545 days"
    )):
        churn.train(ctx)
    assert not tables.exists(spark, ctx.table("customer_clusters")) and not tables.exists(spark, ctx.table("customer_churn"))


def test_a_tiny_feed_gets_rule_tiers_and_the_model_stages_say_why_they_were_skipped(spark, tmp_path, mlflow_store, capsys):
    """50 customers over two months: too few for every model; `segmentation run` still writes
    the rule tiers, and the tier table says which predictive columns are missing and why."""
    lines = [
        row(f"T{c}-{n}", customer_id=f"C{c}", transaction_ts=f"{dt.date(2025, 5, 1) + dt.timedelta(days=(c * 7 + n * 19) % 60)} 10:00:00",
            net_amount=f"{10 + c % 13}.50", channel=("store", "web")[(c + n) % 2])
        for c in range(50) for n in range(1 + c % 3)
    ]
    ctx = edge_feed(spark, tmp_path, mlflow_store, lines)
    results = pipeline.run(ctx, UNTIL_THE_END)
    out = capsys.readouterr().out
    assert results.clv.reason.startswith("the calibration period spans ") and "shorter than clv.min_calibration_units=12 weeks" in results.clv.reason
    assert "customers with distinct cluster.features, fewer than 80 (k up to 8 x cluster.min_customers_per_cluster=10)" in results.cluster.reason
    assert results.churn.reason.startswith("59 days of history (2025-05-01 to 2025-06-29), 0 of 4 training cutoffs have a full look-back")
    for name in ("clv", "cluster", "churn"):
        assert f"{name} skipped, too few data: {getattr(results, name).reason}" in out
    assert "Traceback" not in out
    for key in ("customer_clv", "customer_clusters", "customer_churn"):
        assert not tables.exists(spark, ctx.table(key))

    tiers = read(ctx, "customer_tiers")
    assert tiers.count() == 50 and results.tiers.customers == 50
    assert tiers.where(F.col("clv").isNotNull() | F.col("cluster_id").isNotNull() | F.col("churn_probability").isNotNull()).isEmpty()
    assert tiers.where(F.col("value_tier").isNull() | F.col("rfm_segment").isNull() | F.col("stickiness").isNull()).isEmpty()
    lineage = tiers.select("lineage.*").first()
    assert lineage.value_rank_by == "revenue_365d"  # the features' own ranking, without a CLV
    missing = lineage.missing_predictions
    assert set(missing) == {"clv", "probability_alive", "next_purchase_date", "expected_purchases", "cluster_id", "cluster_name",
                            "churn_probability", "churn_risk_tier", "churn_score_source", "churn_drivers"}
    assert missing["churn_probability"] == f"customer_churn not written: {results.churn.reason}"
    assert missing["cluster_name"] == f"customer_clusters not written: {results.cluster.reason}"
    report = results.report.path.read_text(encoding="utf-8")
    assert "Not predicted: clv, probability_alive, next_purchase_date, expected_purchases (customer_clv not written: the calibration period spans" in report


def test_only_returns_get_features_and_clear_errors_from_the_models(spark, tmp_path, mlflow_store):
    returns = [
        row(f"R{i}", customer_id=f"C{i}", transaction_ts=f"2025-0{i}-01 10:00:00", quantity="-1", net_amount=f"-{10 * i}", is_return="true")
        for i in range(1, 6)
    ]
    flag_absent = row("R6", customer_id="C1", quantity="-2", net_amount="-7.5", is_return="")
    mismatch = [row("R7", net_amount="-3", is_return="false"), row("R8", net_amount="3", is_return="true")]
    ctx = edge_feed(spark, tmp_path, mlflow_store, [*returns, flag_absent, *mismatch], "ingest.max_rejected_share=0.3")
    with pytest.raises(DataQualityError, match=r"^no customer has a purchase on or before 2025-05-01 in transactions"):
        pipeline.run(ctx, UNTIL_THE_END)
    assert read(ctx, "transactions").where(~F.col("is_return")).isEmpty()
    assert {r.transaction_id: r.reasons for r in read(ctx, "transactions_quarantine").collect()} == {
        "R7": ["return_sign_mismatch", "quantity_sign_mismatch"], "R8": ["return_sign_mismatch"],
    }
    features = read(ctx, "customer_features").collect()
    assert len(features) == 5
    assert {(r.lifecycle_stage, r.last_purchase_date, r.frequency_orders) for r in features} == {("churned", None, 0)}
    assert sum(r.monetary for r in features) == -157.5

    with pytest.raises(DataQualityError, match=(
        r"customer_features .* as of 2025-05-01: cluster.features recency_days, average_order_value, tenure_days, "
        r"order_trend, discount_share, return_rate have no value for any of the 5 customers; leave them out of cluster.features$"
    )):
        cluster.run(ctx)
    assert not tables.exists(spark, ctx.table("customer_clusters"))


def test_customers_k_means_cannot_tell_apart_are_too_few(spark, tmp_path, mlflow_store):
    """Six customers with the same one purchase: Spark's K-means fails deep in the JVM (an
    index out of bounds) when it finds fewer distinct points than k. The features snapshot
    is written directly, to spare an ingest and a features run."""
    ctx = StageContext(make_config(tmp_path / "data", *mlflow_store), spark)
    bought = dt.datetime(2025, 3, 1, 10)
    transactions = spark.createDataFrame(
        [(f"P{i}", f"O{i}", f"C{i}", bought, "store", "S1", "north", "books", 1, 10.0, 0.0, 1.0, False, "b", bought) for i in range(6)],
        TRANSACTIONS_SCHEMA,
    )
    settings = ctx.config.features
    snapshot = customer_features(transactions, bought.date(), ctx.config.ingest.channels)
    tables.write(with_rule_tiers(snapshot, tier_cuts(snapshot, settings), settings), ctx.table("customer_features"),
                 run_id=ctx.pipeline_run_id, partition_by=["as_of_date"])
    with pytest.raises(DataQualityError, match=(
        r"as of 2025-03-01: 6 customers but only 1 with distinct cluster.features, too few for k from 3 to 8 "
        r"\(K-means needs more distinct customers than clusters\)$"
    )):
        cluster.run(ctx)


def test_a_single_channel_feed_clusters_without_its_constant_features(spark, tmp_path, mlflow_store, caplog):
    """On a single-channel feed (CDNOW has one), channels_used is 1 for every customer and
    cannot separate clusters: it is left out with a warning, and K-means runs on the
    features that vary."""
    ctx = StageContext(make_config(tmp_path / "data", *mlflow_store, "cluster.k=3"), spark)
    start = dt.datetime(2024, 3, 1, 10)
    lines = []
    for i in range(60):
        for j in range(1 + i % 6):  # 1 to 6 orders, spaced by the customer, of varying value
            bought = start + dt.timedelta(days=(i * 7 + j * (5 + i % 11)) % 360)
            lines.append((f"P{i}-{j}", f"O{i}-{j}", f"C{i}", bought, "store", "S1", "north", "books", 1,
                          10.0 + (i * 13 + j * 7) % 90, 0.0, 1.0, False, "b", bought))
    transactions = spark.createDataFrame(lines, TRANSACTIONS_SCHEMA)
    as_of = dt.date(2025, 3, 1)
    settings = ctx.config.features
    snapshot = customer_features(transactions, as_of, ctx.config.ingest.channels)
    tables.write(with_rule_tiers(snapshot, tier_cuts(snapshot, settings), settings), ctx.table("customer_features"),
                 run_id=ctx.pipeline_run_id, partition_by=["as_of_date"])
    with caplog.at_level(logging.WARNING, logger="segmentation.stages.cluster"):
        result = cluster.run(ctx)
    assert result.k == 3 and result.customers == 60
    left_out = next(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert left_out.startswith("cluster.features channels_used") and "the same value for all 60 customers" in left_out
    clusters = read(ctx, "customer_clusters")
    assert clusters.count() == 60 and clusters.select("cluster_id").distinct().count() == 3
    features = mlflow.get_run(result.mlflow_run_id).data.params["features"]
    assert "channels_used" not in features and "recency_days" in features


def test_a_feed_with_no_clean_row_stops_the_pipeline_with_one_line(spark, tmp_path, mlflow_store):
    bad = [row(f"B{i}", customer_id=f"C{i}", net_amount="abc") for i in range(4)]
    ctx = edge_feed(spark, tmp_path, mlflow_store, bad)
    with pytest.raises(DataQualityError, match=r"feed.csv: 4 of 4 rows rejected \(100.0%\), above ingest.max_rejected_share=5.0%; nothing was added"):
        pipeline.run(ctx, UNTIL_THE_END)

    accepted = edge_feed(spark, tmp_path / "accepted", mlflow_store, bad, "ingest.max_rejected_share=1")  # the same feed, every row allowed to fail
    with pytest.raises(DataQualityError, match=r"^transactions .* has no rows: nothing to compute from$"):
        pipeline.run(accepted, UNTIL_THE_END)
    assert (read(accepted, "transactions").count(), read(accepted, "transactions_quarantine").count()) == (0, 4)
    assert not tables.exists(spark, accepted.table("customer_features"))
