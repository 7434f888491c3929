"""Where `segmentation run` takes its rows from: a plain decision, tested without Spark."""

from __future__ import annotations

import pytest

from segmentation.errors import DataQualityError
from segmentation.sources import run_source

RAW = "raw_transactions (/data/raw/transactions)"
FEED = {"source": "/landing/feed.csv", "source_format": "csv", "source_options": {"header": "true", "multiLine": "true", "sep": ";", "nullValue": ","}}


def test_an_empty_storage_root_gets_a_demo_feed():
    plan = run_source(asked_to_generate=False, raw_table=RAW, raw_exists=False, real=[], batches=0)
    assert plan.generate and plan.source is None


def test_an_existing_raw_table_is_ingested_as_it_is():
    plan = run_source(asked_to_generate=False, raw_table=RAW, raw_exists=True, real=[], batches=3)
    assert not plan.generate and plan.source is None


def test_after_a_real_feed_run_ingests_that_feed_and_says_how():
    plan = run_source(asked_to_generate=False, raw_table=RAW, raw_exists=False, real=[FEED], batches=1)
    assert not plan.generate
    assert (plan.source.path, plan.source.format, plan.source.table) == ("/landing/feed.csv", "csv", None)
    assert plan.source.options == FEED["source_options"]
    assert plan.reason == (
        'the feed ingested last: --source /landing/feed.csv --format csv --set ingest.source.options.nullValue="," '
        "--set ingest.source.options.sep=;"
    )


def test_generate_is_refused_where_real_batches_exist():
    with pytest.raises(DataQualityError, match=r"^--generate: transactions already holds batches ingested from /landing/feed.csv"):
        run_source(asked_to_generate=True, raw_table=RAW, raw_exists=True, real=[FEED], batches=2)
    assert run_source(asked_to_generate=True, raw_table=RAW, raw_exists=True, real=[], batches=2).generate


def test_without_a_source_to_reuse_run_says_what_to_pass():
    with pytest.raises(DataQualityError, match=r"is gone and no real feed was ingested: pass --generate"):
        run_source(asked_to_generate=False, raw_table=RAW, raw_exists=False, real=[], batches=1)
    own_table = {"source": RAW, "source_format": "delta", "source_options": {}}
    with pytest.raises(DataQualityError, match=r"pass --source PATH --format FORMAT"):
        run_source(asked_to_generate=False, raw_table=RAW, raw_exists=False, real=[own_table], batches=1)


def test_reader_options_match_in_any_case_as_spark_reads_them():
    from segmentation.sources import CSV_DEFAULTS, option, with_defaults

    given = {"multiline": "false", "Encoding": "windows-1252"}
    merged = with_defaults(given, CSV_DEFAULTS)
    assert merged == {"header": "true", "escape": '"', "multiline": "false", "Encoding": "windows-1252"}
    assert (option(merged, "multiLine"), option(merged, "encoding"), option(merged, "sep")) == ("false", "windows-1252", None)
