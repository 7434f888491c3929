import datetime as dt
import hashlib
import hmac

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from segmentation.config import load_config
from segmentation.errors import DataQualityError
from segmentation.quality.validation import (
    CLEAN,
    QUARANTINED,
    checked_transactions,
    repeated_ids,
    with_repeats_marked,
    clean_transactions,
    conform_source,
    quarantined_transactions,
    row_counts,
    validate_transactions,
)
from segmentation.schema import QUARANTINE_SCHEMA, RAW_COLUMNS, RAW_SCHEMA, TRANSACTIONS_SCHEMA
from tests.conftest import CONF_DIR

RULES = load_config("local", CONF_DIR).ingest
NOW = dt.datetime(2025, 6, 30, 12, 0, 0)
KEY = b"unit-test-key-0123456789"


def row(tid, **values):
    base = {
        "transaction_id": tid, "order_id": "O1", "customer_id": "C1", "transaction_ts": "2025-06-01 10:00:00",
        "channel": "web", "store_id": "WEB", "region": "north", "product_category": "books",
        "quantity": "1", "net_amount": "10.50", "discount_amount": "0", "gross_margin": "2.5", "is_return": "false",
    }
    base.update(values)
    return tuple(base[c] for c in RAW_COLUMNS)


# transaction id -> the reasons it must get
CASES = {
    "ok": ({}, []),
    "ok_return": ({"quantity": "-1", "net_amount": "-10.50", "is_return": "true"}, []),
    "ok_return_flag_absent": ({"quantity": "-1", "net_amount": "-3", "is_return": None}, []),
    "ok_upper_channel": ({"channel": " WEB "}, []),
    "ok_zero_amount": ({"net_amount": "0"}, []),
    "no_customer": ({"customer_id": "  "}, ["missing:customer_id"]),
    "no_amount": ({"net_amount": None}, ["missing:net_amount"]),
    "no_ts": ({"transaction_ts": ""}, ["missing:transaction_ts"]),
    "text_amount": ({"net_amount": "12,50 EUR"}, ["bad_type:net_amount"]),
    "bad_ts": ({"transaction_ts": "31/02/2024 25:61"}, ["bad_type:transaction_ts"]),
    "bad_qty": ({"quantity": "two"}, ["bad_type:quantity"]),
    "bad_flag": ({"is_return": "maybe"}, ["bad_type:is_return"]),
    "fax": ({"channel": "fax"}, ["unknown_channel"]),
    "huge": ({"net_amount": "9999999.99"}, ["amount_out_of_range"]),
    "nan": ({"net_amount": "NaN"}, ["amount_out_of_range"]),
    "inf": ({"net_amount": "Infinity", "is_return": None}, ["amount_out_of_range"]),
    "zero_qty": ({"quantity": "0"}, ["quantity_out_of_range"]),
    "neg_discount": ({"discount_amount": "-1"}, ["discount_out_of_range"]),
    "future": ({"transaction_ts": "2025-07-05 00:00:00"}, ["timestamp_in_future"]),
    "tomorrow": ({"transaction_ts": "2025-07-01 11:00:00"}, []),  # within the one-day tolerance
    "old": ({"transaction_ts": "1970-01-01 00:00:00"}, ["timestamp_too_old"]),
    "sign": ({"net_amount": "10", "is_return": "true"}, ["return_sign_mismatch"]),
    "two_faults": ({"channel": "fax", "customer_id": None}, ["missing:customer_id", "unknown_channel"]),
}


@pytest.fixture(scope="module")
def validated(spark):
    rows = [row(tid, **values) for tid, (values, _) in CASES.items()]
    rows.append(row(None, order_id="O2"))  # no transaction id at all
    raw = spark.createDataFrame(rows, RAW_SCHEMA)
    conformed, _ = conform_source(raw, "test")
    return validate_transactions(conformed, RULES, NOW, KEY).cache()


def test_each_rule_flags_exactly_its_rows(validated):
    got = {r.transaction_id: r.reasons for r in validated.where(F.col("transaction_id").isNotNull()).collect()}
    assert got == {tid: reasons for tid, (_, reasons) in CASES.items()}
    no_id = validated.where(F.col("transaction_id").isNull()).first()
    assert no_id.reasons == ["missing:transaction_id"]


def test_every_row_lands_once_clean_or_quarantined(validated):
    clean = clean_transactions(validated, "b1", NOW)
    quarantined = quarantined_transactions(validated, "b1", NOW)
    assert clean.count() + quarantined.count() == validated.count() == len(CASES) + 1
    assert clean.count() == sum(1 for _, reasons in CASES.values() if not reasons)
    # names and types are the contract; NOT NULL is enforced by the Delta table on write
    assert [(f.name, f.dataType) for f in clean.schema] == [(f.name, f.dataType) for f in TRANSACTIONS_SCHEMA]
    assert [(f.name, f.dataType) for f in quarantined.schema] == [(f.name, f.dataType) for f in QUARANTINE_SCHEMA]


def test_clean_rows_are_typed_and_pseudonymised(validated):
    clean = {r.transaction_id: r for r in clean_transactions(validated, "b1", NOW).collect()}
    expected_id = hmac.new(KEY, b"C1", hashlib.sha256).hexdigest()
    assert {r.customer_id for r in clean.values()} == {expected_id}
    assert clean["ok"].net_amount == 10.5 and clean["ok"].transaction_ts == dt.datetime(2025, 6, 1, 10)
    assert clean["ok_return_flag_absent"].is_return is True  # derived from the negative amount
    assert clean["ok_upper_channel"].channel == "web"
    assert clean["ok"].ingest_batch_id == "b1"


def test_quarantine_keeps_raw_text_but_not_raw_customer_ids(validated):
    quarantined = {r.transaction_id: r for r in quarantined_transactions(validated, "b1", NOW).collect()}
    assert quarantined["text_amount"].net_amount == "12,50 EUR"
    assert quarantined["bad_ts"].transaction_ts == "31/02/2024 25:61"
    assert quarantined["fax"].customer_id == hmac.new(KEY, b"C1", hashlib.sha256).hexdigest()
    assert quarantined["no_customer"].customer_id is None


def test_row_counts_per_rule_and_in_total(validated):
    counts = {r.rule: r["count"] for r in row_counts(validated).collect()}
    clean, quarantined = counts.pop(CLEAN), counts.pop(QUARANTINED)
    assert clean == sum(1 for _, reasons in CASES.values() if not reasons)
    assert clean + quarantined == validated.count() == len(CASES) + 1
    assert counts["amount_out_of_range"] == 3
    assert counts["unknown_channel"] == 2
    assert counts["missing:customer_id"] == 2
    assert sum(counts.values()) == sum(len(reasons) for _, reasons in CASES.values()) + 1


@pytest.mark.parametrize("broadcast", [False, True], ids=["shuffled", "broadcast ids"])
def test_duplicates_keep_the_valid_copy_deterministically(spark, broadcast):
    raw = spark.createDataFrame(
        [row("T1", net_amount="oops"), row("T1"), row("T1"), row("T2"), row("T3"), row(None)], RAW_SCHEMA
    )
    conformed, _ = conform_source(raw, "test")
    loaded = spark.createDataFrame([("T3",), ("T9",)], "transaction_id string")
    checked = checked_transactions(conformed, RULES, NOW, None, loaded)
    repeated = repeated_ids(checked)
    assert [r.transaction_id for r in repeated.collect()] == ["T1"]  # a missing id is no repeat
    validated = with_repeats_marked(checked, repeated, broadcast=broadcast)
    assert validated.columns == checked.columns
    assert validated.where(F.col("transaction_id").isNull()).first().reasons == ["missing:transaction_id"]
    validated = validated.where(F.col("transaction_id").isNotNull())
    got = sorted((r.transaction_id, r.raw_net_amount, tuple(r.reasons)) for r in validated.collect())
    assert got == [
        ("T1", "10.50", ()),
        ("T1", "10.50", ("duplicate_in_batch",)),
        ("T1", "oops", ("bad_type:net_amount", "duplicate_in_batch")),
        ("T2", "10.50", ()),
        ("T3", "10.50", ("already_loaded",)),
    ]


def test_padded_ids_are_one_id_and_missing_value_words_are_missing(spark):
    raw = spark.createDataFrame([
        row("P1", customer_id="C1"), row("P2", customer_id="C1\t"), row("P3", customer_id="\u00a0C1\u3000"),
        row("P4", customer_id="\ufeffC1 ", order_id="\u2007O1"), row("P5", customer_id=" n/a "),
        row("P6", product_category="NULL", store_id="none"), row("P7", customer_id="C\u00a01"),
    ], RAW_SCHEMA)
    rows = {r.transaction_id: r for r in validate_transactions(conform_source(raw, "test")[0], RULES, NOW, None).collect()}
    assert {t: r.customer_id for t, r in rows.items()} == {
        "P1": "C1", "P2": "C1", "P3": "C1", "P4": "C1", "P5": None, "P6": "C1", "P7": "C\u00a01",  # inner spaces stay
    }
    assert rows["P4"].order_id == "O1" and rows["P5"].reasons == ["missing:customer_id"]
    assert (rows["P6"].product_category, rows["P6"].store_id, rows["P6"].reasons) == (None, None, [])


def test_without_key_ids_stay_as_given(spark):
    raw = spark.createDataFrame([row("T1", customer_id=" C7 ")], RAW_SCHEMA)
    validated = validate_transactions(conform_source(raw, "test")[0], RULES, NOW, None)
    assert clean_transactions(validated, "b", NOW).first().customer_id == "C7"


def test_missing_required_column_fails_with_source_and_column(spark):
    raw = spark.createDataFrame([("T1", "C1")], "transaction_id string, customer_id string")
    with pytest.raises(DataQualityError, match=r"feed.csv: missing required column\(s\) order_id, transaction_ts, channel, quantity, net_amount"):
        conform_source(raw, "feed.csv")


def test_optional_columns_may_be_absent_and_extra_ones_are_reported(spark):
    required = ["transaction_id", "order_id", "customer_id", "transaction_ts", "channel", "quantity", "net_amount"]
    raw = spark.createDataFrame([("T1", "O1", "C1", "2025-01-01", "store", "1", "5", "x")], [*required, "loyalty_card"])
    conformed, columns = conform_source(raw, "feed")
    assert columns.extra == ["loyalty_card"]
    assert columns.missing_optional == ["store_id", "region", "product_category", "discount_amount", "gross_margin", "is_return"]
    clean = clean_transactions(validate_transactions(conformed, RULES, NOW, None), "b", NOW)
    expected = spark.createDataFrame(
        [("T1", "O1", "C1", dt.datetime(2025, 1, 1), "store", None, None, None, 1, 5.0, None, None, False, "b", NOW)],
        TRANSACTIONS_SCHEMA,
    )
    assert_df_equality(clean, expected, ignore_nullable=True)


def test_typed_sources_pass_through(spark):
    typed = spark.createDataFrame(
        [("T1", "O1", "C1", dt.datetime(2025, 1, 1, 9), "app", 2, 19.99, True)],
        "transaction_id string, order_id string, customer_id string, transaction_ts timestamp, channel string, quantity int, net_amount double, is_return boolean",
    )
    validated = validate_transactions(conform_source(typed, "t")[0], RULES, NOW, None)
    assert validated.first().reasons == ["return_sign_mismatch"]


def test_quantity_sign_mismatch_is_a_rule_that_can_be_turned_off(spark):
    raw = spark.createDataFrame([row("S1", quantity="-2"), row("S2", quantity="2", net_amount="-3", is_return="true")], RAW_SCHEMA)
    conformed = conform_source(raw, "test")[0]
    on = {r.transaction_id: r.reasons for r in validate_transactions(conformed, RULES, NOW, None).collect()}
    assert on == {"S1": ["quantity_sign_mismatch"], "S2": ["quantity_sign_mismatch"]}
    off = RULES.model_copy(update={"quantity_sign_mismatch": False})
    assert {r.reasons == [] for r in validate_transactions(conformed, off, NOW, None).collect()} == {True}


def test_text_that_did_not_decode_is_marked_and_its_id_never_hashed(spark):
    raw = spark.createDataFrame([row("D1", customer_id="M\ufffdller-01"), row("D2", product_category="Caf\ufffd"), row("D3")], RAW_SCHEMA)
    rows = {r.transaction_id: r for r in validate_transactions(conform_source(raw, "test")[0], RULES, NOW, KEY).collect()}
    assert (rows["D1"].reasons, rows["D1"].customer_id) == (["undecodable_text"], None)
    assert rows["D2"].reasons == ["undecodable_text"] and rows["D2"].customer_id == hmac.new(KEY, b"C1", hashlib.sha256).hexdigest()
    assert rows["D3"].reasons == []


def test_rows_already_loaded_are_set_aside_not_quarantined(spark):
    from segmentation.quality.validation import SET_ASIDE

    raw = spark.createDataFrame([row("T1"), row("T2"), row("T3", net_amount="oops")], RAW_SCHEMA)
    loaded = spark.createDataFrame([("T2",), ("T3",)], "transaction_id string")
    validated = validate_transactions(conform_source(raw, "test")[0], RULES, NOW, None, loaded)
    assert {r["rule"]: r["count"] for r in row_counts(validated).collect()} == {CLEAN: 1, SET_ASIDE: 2}
    assert [r.transaction_id for r in clean_transactions(validated, "b", NOW).collect()] == ["T1"]
    assert quarantined_transactions(validated, "b", NOW).isEmpty()
