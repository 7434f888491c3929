import base64
import datetime as dt
import hashlib
import hmac

import pytest
from pyspark.sql import functions as F

from segmentation.errors import ConfigError
from segmentation.privacy import (
    DEMO_KEY,
    erasure_condition,
    erasure_ids,
    hmac_pads,
    hmac_sha256_hex,
    key_fingerprint,
    load_key,
    raw_table_keys,
)
from segmentation.quality.validation import (
    CORRUPT_RECORD,
    SOURCE_FILE,
    quarantined_transactions,
    validate_transactions,
)
from segmentation.schema import RAW_COLUMNS, RAW_SCHEMA
from tests.conftest import base_section

KEY = b"a-test-key-of-sufficient-length"


def test_hmac_matches_python_hmac(spark):
    ids = ["C000000001", "  spaced ", "Łódź-客户-é", "", None, "x" * 200]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    for key in (KEY, b"k" * 64, b"k" * 65):  # shorter than SHA-256's block, one block, hashed first
        got = [row.h for row in df.select(hmac_sha256_hex(F.col("id"), key, spark).alias("h")).collect()]
        expected = [None if i is None else hmac.new(key, i.encode("utf-8"), hashlib.sha256).hexdigest() for i in ids]
        assert got == expected, key
    assert all(len(h) == 64 for h in got if h is not None)


# RFC 4231's HMAC-SHA256 test cases whose data is text: 2 (a short key), 6 and 7 (a key
# longer than a block, hashed first; 7 with data longer than a block).
RFC_4231 = [
    (b"Jefe", "what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 131, "Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, "This is a test using a larger than block-size key and a larger than block-size data. The key needs "
     "to be hashed before being used by the HMAC algorithm.", "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("key, data, expected", RFC_4231)
def test_hmac_gives_rfc_4231_s_test_vectors(spark, key, data, expected):
    df = spark.createDataFrame([(data,)], "id string")
    assert df.select(hmac_sha256_hex(F.col("id"), key, spark)).first()[0] == expected


def test_hash_depends_on_key(spark):
    df = spark.createDataFrame([("C1",)], "id string")
    a = df.select(hmac_sha256_hex(F.col("id"), KEY, spark)).first()[0]
    b = df.select(hmac_sha256_hex(F.col("id"), KEY + b"x", spark)).first()[0]
    assert a != b


def _spellings(secret: bytes) -> list[str]:
    """How a plan could print bytes: hex either case, bytes apart (Spark's binary values), base64, text."""
    hexed = secret.hex()
    spaced = " ".join(f"{b:02X}" for b in secret)
    return [hexed, hexed.upper(), spaced, spaced.lower(), base64.b64encode(secret).decode(), secret.decode("latin-1")]


def test_no_plan_holds_the_key_or_its_pads(spark):
    """Not the key, nor the padded keys the hash is built from, in any form a plan prints: the
    plans before and after running, as explain and Spark's UI show them."""
    df = spark.createDataFrame([("C1",)], "id string").select(hmac_sha256_hex(F.col("id"), KEY, spark).alias("h"))
    df.collect()
    execution = df._jdf.queryExecution()
    explained = [spark._jvm.PythonSQLUtils.explainString(execution, mode) for mode in ("extended", "formatted", "cost")]
    plans = [execution.toString(), execution.executedPlan().toString(), *explained]
    for secret in (KEY, *hmac_pads(KEY)):
        for spelling in _spellings(secret):
            assert not any(spelling in plan for plan in plans), spelling


def test_key_from_environment_file_or_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "k" * 20)
    assert load_key(base_section("privacy", key_env="MY_KEY")) == b"k" * 20
    monkeypatch.delenv("MY_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("f" * 32 + "\n")
    assert load_key(base_section("privacy", key_env="MY_KEY", key_file=str(key_file))) == b"f" * 32
    assert load_key(base_section("privacy", key_env="MY_KEY", allow_demo_key=True)) == DEMO_KEY


def test_missing_or_short_key_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="no pseudonymisation key. Set the environment variable MY_KEY"):
        load_key(base_section("privacy", key_env="MY_KEY"))
    monkeypatch.setenv("MY_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        load_key(base_section("privacy", key_env="MY_KEY"))
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(base_section("privacy", key_env="MY_KEY", key_file=str(tmp_path / "absent")))


def test_fingerprint_is_stable_and_not_the_key():
    assert key_fingerprint(KEY) == key_fingerprint(KEY)
    assert KEY.hex()[:12] != key_fingerprint(KEY)


def csv_like(tid, customer):
    """A raw feed row (all text) with the required fields filled."""
    values = {"transaction_id": tid, "order_id": f"O-{tid}", "customer_id": customer, "transaction_ts": "2025-03-01 10:00:00",
              "channel": "store", "quantity": "1", "net_amount": "10.0", "is_return": "false"}
    return tuple(values.get(c) for c in RAW_COLUMNS)


def _join_matches(spark, target_rows, target_schema, condition, key=KEY, ids=("C1", "jane.doe@example.com")):
    """Which target rows an erasure condition matches (the MERGE's join, without the MERGE)."""
    target = spark.createDataFrame(target_rows, target_schema)
    source = erasure_ids(spark.createDataFrame([(i,) for i in ids], "id string"), key)
    matched = target.alias("t").join(source.alias("s"), F.expr(condition), how="left_semi")
    return sorted(row.n for row in matched.select("n").collect())


def test_erasure_ids_hash_exactly_as_ingest(spark, config):
    """An id typed with stray spaces, or a duplicate, erases the same customer ingest stored."""
    rows = [csv_like(tid, customer) for tid, customer in [("T1", "C1"), ("T2", "  jane.doe@example.com "), ("T3", "C2")]]
    raw = spark.createDataFrame(rows, RAW_SCHEMA).withColumn(CORRUPT_RECORD, F.lit(None).cast("string"))
    raw = raw.withColumn(SOURCE_FILE, F.lit("feed.csv"))
    stored = {r.transaction_id: r.customer_id for r in validate_transactions(raw, config.ingest, dt.datetime(2026, 1, 1), KEY).collect()}
    given = spark.createDataFrame([(" C1",), ("jane.doe@example.com",), ("C1",), ("   ",), (None,)], "id string")
    ids = {r.raw_id: r.pseudonym for r in erasure_ids(given, KEY).collect()}
    assert ids == {"C1": stored["T1"], "jane.doe@example.com": stored["T2"]}
    assert {r.raw_id: r.pseudonym for r in erasure_ids(given, None).collect()} == {"C1": "C1", "jane.doe@example.com": "jane.doe@example.com"}


def test_erasure_condition_matches_pseudonyms_raw_ids_and_raw_records(spark):
    assert erasure_condition(["as_of_date", "value_tier", "customers"], holds_raw_ids=False) is None  # tier_migrations
    pseudonym = hmac.new(KEY, b"C1", hashlib.sha256).hexdigest()
    rows = [(1, pseudonym), (2, "C1"), (3, hmac.new(KEY, b"C10", hashlib.sha256).hexdigest()), (4, None)]
    hashed = erasure_condition(["customer_id", "as_of_date"], holds_raw_ids=False)
    assert _join_matches(spark, rows, "n int, customer_id string", hashed) == [1]
    raw = erasure_condition(["customer_id", "net_amount"], holds_raw_ids=True)
    raw_rows = [(1, "C1"), (2, " C1 "), (3, "C10"), (4, pseudonym), (5, "jane.doe@example.com")]
    assert _join_matches(spark, raw_rows, "n int, customer_id string", raw) == [1, 2, 5]
    quarantine = erasure_condition(["customer_id", "raw_record", "reasons"], holds_raw_ids=False)
    records = [(1, None, 'T9,O9,"C1",2025-01-01'), (2, None, "T9\tC1\t2025"), (3, None, "T9;C10;x"),
               (4, None, None), (5, pseudonym, None), (6, None, "T9|jane.doe@example.com")]
    assert _join_matches(spark, records, "n int, customer_id string, raw_record string", quarantine) == [1, 2, 5, 6]


def test_a_malformed_line_keeps_no_value_when_pseudonymised(spark, config):
    """A line that does not fit the header can carry the raw id in any column: nothing of it stays."""
    rows = [csv_like("T1", "C1"), csv_like("T2", "C2")]
    line = "T2,O-T2,jane.doe@example.com,C2"
    raw = spark.createDataFrame(rows, RAW_SCHEMA).select(
        "*", F.when(F.col("transaction_id") == "T2", F.lit(line)).alias(CORRUPT_RECORD), F.lit("feed.csv").alias(SOURCE_FILE)
    )
    reference = dt.datetime(2026, 1, 1)
    hidden = quarantined_transactions(validate_transactions(raw, config.ingest, reference, KEY), "b1", reference).collect()
    assert len(hidden) == 1 and "malformed_record" in hidden[0].reasons and hidden[0].source_file == "feed.csv"
    assert all(hidden[0][c] is None for c in [*RAW_COLUMNS, "raw_record"])
    shown = quarantined_transactions(validate_transactions(raw, config.ingest, reference, None), "b1", reference).first()
    assert shown.raw_record == line and shown.customer_id == "C2"


def test_raw_tables_are_the_landing_table_and_the_ingest_source(config):
    assert raw_table_keys(config) == {"raw_transactions"}
    from_path = config.model_copy(update={"ingest": config.ingest.model_copy(
        update={"source": config.ingest.source.model_copy(update={"table": None, "path": "/feed"})})})
    assert raw_table_keys(from_path) == {"raw_transactions"}
