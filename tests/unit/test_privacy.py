import hashlib
import hmac

import pytest
from pyspark.sql import functions as F

from segmentation.config import PrivacyConfig
from segmentation.errors import ConfigError
from segmentation.privacy import DEMO_KEY, hmac_sha256_hex, key_fingerprint, load_key

KEY = b"a-test-key-of-sufficient-length"


def test_hmac_matches_python_hmac(spark):
    ids = ["C000000001", "  spaced ", "Łódź-客户-é", "", None]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    got = [row.h for row in df.select(hmac_sha256_hex(F.col("id"), KEY).alias("h")).collect()]
    expected = [None if i is None else hmac.new(KEY, i.encode("utf-8"), hashlib.sha256).hexdigest() for i in ids]
    assert got == expected
    assert all(len(h) == 64 for h in got if h is not None)


def test_hash_depends_on_key(spark):
    df = spark.createDataFrame([("C1",)], "id string")
    a = df.select(hmac_sha256_hex(F.col("id"), KEY)).first()[0]
    b = df.select(hmac_sha256_hex(F.col("id"), KEY + b"x")).first()[0]
    assert a != b


def test_key_never_appears_in_query_plan(spark):
    df = spark.createDataFrame([("C1",)], "id string").select(hmac_sha256_hex(F.col("id"), KEY).alias("h"))
    plan = df._jdf.queryExecution().toString()
    assert KEY.hex() not in plan.lower() and KEY.decode() not in plan


def test_key_from_environment_file_or_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "k" * 20)
    assert load_key(PrivacyConfig(key_env="MY_KEY")) == b"k" * 20
    monkeypatch.delenv("MY_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("f" * 32 + "\n")
    assert load_key(PrivacyConfig(key_env="MY_KEY", key_file=str(key_file))) == b"f" * 32
    assert load_key(PrivacyConfig(key_env="MY_KEY", allow_demo_key=True)) == DEMO_KEY


def test_missing_or_short_key_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="no pseudonymisation key. Set the environment variable MY_KEY"):
        load_key(PrivacyConfig(key_env="MY_KEY"))
    monkeypatch.setenv("MY_KEY", "short")
    with pytest.raises(ConfigError, match="shorter than 16 bytes"):
        load_key(PrivacyConfig(key_env="MY_KEY"))
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(PrivacyConfig(key_env="MY_KEY", key_file=str(tmp_path / "absent")))


def test_fingerprint_is_stable_and_not_the_key():
    assert key_fingerprint(KEY) == key_fingerprint(KEY)
    assert KEY.hex()[:12] != key_fingerprint(KEY)
