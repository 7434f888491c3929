"""What the stages decide and summarise, as plain functions of plain values, without Spark:
the pipeline's resume check, the report's KPIs, the snapshot pairs whose movement the tiers
stage records, the erase outcome, the generate summary and the bench's stage rows."""

from __future__ import annotations

import datetime as dt

import pytest

from segmentation import bench
from segmentation.erase import Deletion, EraseResult, outcome
from segmentation.stages import pipeline
from segmentation.stages.generate import GenerateResult
from segmentation.stages.report import kpi_values
from segmentation.stages.tiers import Movement, movement_pairs, report

AS_OF, BEFORE, AFTER = dt.date(2025, 6, 30), dt.date(2025, 3, 31), dt.date(2025, 9, 30)


# The pipeline's resume check


def test_the_resume_filter_asks_for_a_finished_run_of_the_same_date_configuration_and_inputs():
    conditions = pipeline.resume_filter("tiers", AS_OF, "abc123", {"customer_features": 4, "customer_clv": 0})
    assert conditions == (
        "tags.stage = 'tiers' AND tags.as_of = '2025-06-30' AND tags.config_hash = 'abc123' AND attributes.status = 'FINISHED'"
        " AND tags.`input.customer_features.version` = '4' AND tags.`input.customer_clv.version` = '0'"
    )


def test_no_resume_when_an_input_table_does_not_exist_yet():
    assert pipeline.resume_filter("clv", AS_OF, "abc123", {"transactions": None}) is None


def test_a_stage_resumes_only_while_its_primary_output_exists():
    assert pipeline.resume_outputs("tiers") == ["customer_tiers"]  # not migrations and events: one snapshot has none
    assert pipeline.resume_outputs("churn.score") == ["customer_churn"]
    assert pipeline.resume_outputs("report") == []
    assert pipeline.resumed_from("run-1", {"customer_tiers": True}) == "run-1"
    assert pipeline.resumed_from("run-1", {"customer_tiers": False}) is None
    assert pipeline.resumed_from("run-1", {}) == "run-1"
    assert pipeline.resumed_from(None, {"customer_tiers": True}) is None


def test_scoring_resumes_only_when_todays_champion_scored_these_features():
    assert pipeline.champion_scored("run-1", "3", "3")
    assert not pipeline.champion_scored("run-1", "2", "3")  # a new champion since: score again
    assert not pipeline.champion_scored(None, "3", "3")
    assert not pipeline.champion_scored("run-1", None, None)  # nothing scores yet
    # Without a champion, the baseline scored them, calibrated by the same training run or not.
    assert pipeline.champion_scored("run-1", "baseline:recency rule@train-1", "baseline:recency rule@train-1")
    assert not pipeline.champion_scored("run-1", "baseline:recency rule@train-1", "baseline:recency rule@train-2")


def test_a_stage_timing_is_its_window():
    assert pipeline.Timing(started=10.0, ended=12.5).seconds == 2.5


# The report's KPIs

TOTALS = {"customers": 10, "active_customers": 4, "repeat_active": 1, "churned": 3,
          "mean_churn_probability": 0.2, "revenue_365d": 100.0, "total_clv": 50.0}


def test_kpis_are_the_totals_with_the_rates_over_their_bases():
    assert kpi_values(TOTALS) == {
        "customers": 10, "active_customers": 4, "repurchase_rate": 0.25, "churn_rate": 0.3,
        "mean_churn_probability": 0.2, "revenue_365d": 100.0, "total_clv": 50.0,
    }


def test_a_rate_over_nobody_is_none_not_zero():
    no_active = kpi_values({**TOTALS, "active_customers": 0, "repeat_active": 0})
    assert no_active["repurchase_rate"] is None and no_active["churn_rate"] == pytest.approx(0.3)
    empty = kpi_values({"customers": 0, "active_customers": 0, "repeat_active": 0, "churned": 0,
                        "mean_churn_probability": None, "revenue_365d": None, "total_clv": None})
    assert empty == {"customers": 0, "active_customers": 0, "repurchase_rate": None, "churn_rate": None,
                     "mean_churn_probability": None, "revenue_365d": None, "total_clv": None}


# The tiers stage's movement


def test_movement_is_recorded_from_the_snapshot_before_and_into_the_one_after_an_out_of_order_snapshot():
    assert movement_pairs(None, AS_OF, None) == []  # the first snapshot: no movement yet
    assert movement_pairs(BEFORE, AS_OF, None) == [(BEFORE, AS_OF)]
    assert movement_pairs(BEFORE, AS_OF, AFTER) == [(BEFORE, AS_OF), (AS_OF, AFTER)]
    assert movement_pairs(None, AS_OF, AFTER) == [(AS_OF, AFTER)]  # an earlier date arriving late


def test_movement_is_logged_with_dates_as_text_and_printed_only_after_a_previous_snapshot():
    movement = Movement(BEFORE, None, 1234)
    assert movement.as_dict() == {"previous_as_of": "2025-03-31", "next_as_of": None, "events": 1234}
    counts = {"value_tier": {"gold": 1, "bronze": 3}}
    assert report(AS_OF, counts, movement).splitlines()[-1] == "Movement since 2025-03-31: 1,234 events in tier_events"
    first = report(AS_OF, counts, Movement(None, None, 0))
    assert "Movement" not in first and "  value_tier: bronze 3 (75.0%), gold 1 (25.0%)" in first


# The erase outcome


def erase_result(**values) -> EraseResult:
    base = dict(erase_id="e1", key_fingerprint="f1", retention_hours=None, customers=2,
                deleted={"transactions": Deletion(5, 7), "customer_clv": Deletion(0, None)}, vacuumed=[],
                without_customer_column=["ingest_log"], other_key_fingerprints=[])
    return EraseResult(**{**base, **values})


def test_an_erase_logs_counts_only():
    assert erase_result().rows_deleted == 5
    assert erase_result().summary() == {"erase_id": "e1", "key_fingerprint": "f1", "customers": 2, "rows_deleted": 5}
    vacuum_only = erase_result(customers=None, deleted={})
    assert vacuum_only.rows_deleted is None and vacuum_only.summary() == {"erase_id": "e1", "key_fingerprint": "f1"}


def test_the_outcome_lists_each_table_and_what_is_left_to_do():
    text = outcome(erase_result(other_key_fingerprints=["f0"]), "/landing/feed.csv")
    assert "Erase of 2 customer id(s), rows deleted:" in text
    assert f"  {'transactions':<24} {5:>9}  (Delta version 7)" in text.splitlines()
    assert f"  {'customer_clv':<24} {0:>9}" in text.splitlines()  # nothing matched: no version
    assert "no customer column, nothing to erase (aggregates): ingest_log" in text
    assert "fingerprints f0, see ingest_log" in text and "the ingest source /landing/feed.csv" in text
    assert "older versions (Delta time travel)" in text and "Vacuumed" not in text


def test_a_vacuum_alone_says_what_it_deleted_and_names_no_customers():
    text = outcome(erase_result(customers=None, deleted={}, vacuumed=["transactions", "customer_tiers"], retention_hours=0.0), None)
    assert "Erase of" not in text and "ingest source" not in text
    assert "Vacuumed transactions, customer_tiers: files removed longer ago than 0 hours are deleted." in text


# The generate summary and the bench's stage rows


def test_generate_logs_where_the_rows_came_from_then_the_write():
    synthetic = GenerateResult("synthetic", 100, "/t/raw", 0, customers=10, seed=7)
    assert list(synthetic.summary().items()) == [
        ("dataset", "synthetic"), ("customers", 10), ("seed", 7), ("rows", 100), ("table", "/t/raw"), ("version", 0)]
    cdnow = GenerateResult("cdnow_sample", 6919, "/t/raw", 1, file="CDNOW_sample.txt")
    assert list(cdnow.summary()) == ["dataset", "file", "rows", "table", "version"]


def test_bench_rows_are_lines_for_the_stages_that_grow_with_them_and_customers_for_the_others():
    timings = {"generate": pipeline.Timing(0.0, 2.0), "ingest": pipeline.Timing(2.0, 6.0),
               "tiers": pipeline.Timing(6.0, 8.0), "report": pipeline.Timing(8.0, 8.0)}
    rows = bench.stage_rows(timings, lines=1600, customers=100, peak_mb=lambda started, ended: ended * 100)
    assert rows == [
        {"stage": "generate", "seconds": 2.0, "rows": 1600, "rows_per_second": 800, "peak_memory_mb": 200},
        {"stage": "ingest", "seconds": 4.0, "rows": 1600, "rows_per_second": 400, "peak_memory_mb": 600},
        {"stage": "tiers", "seconds": 2.0, "rows": 100, "rows_per_second": 50, "peak_memory_mb": 800},
        {"stage": "report", "seconds": 0.0, "rows": 100, "rows_per_second": None, "peak_memory_mb": 800},
    ]
