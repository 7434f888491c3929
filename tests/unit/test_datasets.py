import pytest
from pyspark.sql import functions as F

from segmentation.datasets import cdnow_path, cdnow_transactions
from segmentation.errors import ConfigError
from segmentation.schema import RAW_SCHEMA
from tests.conftest import columns


def test_cdnow_sample_has_all_transactions_and_customers(spark):
    raw = cdnow_transactions(spark, cdnow_path("cdnow_sample"), "cdnow_sample")
    assert columns(raw.schema) == columns(RAW_SCHEMA)
    assert raw.count() == 6919
    assert raw.select("customer_id").distinct().count() == 2357
    assert raw.select("transaction_id").distinct().count() == 6919
    first = raw.where(F.col("customer_id") == "00004").orderBy("transaction_ts").first()
    assert (first.transaction_ts, first.quantity, first.net_amount, first.channel) == ("1997-01-01 00:00:00", "2", "29.33", "web")


def test_cdnow_master_skips_its_header(spark):
    raw = cdnow_transactions(spark, cdnow_path("cdnow_master"), "cdnow_master")
    assert raw.count() == 69659
    assert raw.where(F.col("customer_id") == "customer_id").count() == 0


def test_unknown_dataset_or_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown CDNOW dataset 'cdnow_x'"):
        cdnow_path("cdnow_x")
    with pytest.raises(ConfigError, match="absent.txt does not exist"):
        cdnow_path("cdnow_sample", str(tmp_path / "absent.txt"))
