"""Where a stage's time goes (segmentation.profiling), from job lists made by hand."""

from __future__ import annotations

from dataclasses import asdict

from segmentation.profiling import SparkJob, grouped, parse_jobs, profile_markdown, stage_group, stage_profiles


def job(job_id: int, stage: str, start: int, end: int | None, name: str = "count at x.py:1") -> SparkJob:
    return SparkJob(job_id, name, stage_group(stage), start, end)


def test_spark_seconds_are_the_union_of_the_stage_jobs_and_the_rest_is_outside_spark():
    jobs = [
        job(1, "features", 1_000, 3_000),  # 2 s
        job(2, "features", 2_000, 4_000),  # overlaps the first by 1 s: 1 more second
        job(3, "features", 10_000, 10_500, name="save at y.py:9"),  # 0.5 s
        job(4, "clv", 20_000, 21_000),
        job(5, "features", 30_000, None),  # still running: not counted
    ]
    [features, clv, report] = stage_profiles(jobs, {"features": 10.0, "clv": 0.5, "report": 2.0})
    assert (features.jobs, features.spark_seconds, features.outside_spark_seconds) == (3, 3.5, 6.5)
    assert [(s.name, s.jobs, s.seconds) for s in features.top_call_sites] == [("count at x.py:1", 2, 4.0), ("save at y.py:9", 1, 0.5)]
    # A job longer than the stage's own clock (rounding) never gives negative time outside Spark.
    assert (clv.jobs, clv.spark_seconds, clv.outside_spark_seconds) == (1, 1.0, 0.0)
    assert (report.jobs, report.spark_seconds, report.outside_spark_seconds, report.top_call_sites) == (0, 0.0, 2.0, [])


def test_the_rest_api_payload_is_read_with_its_tags_and_gmt_times():
    payload = [
        {"jobId": 7, "name": "collect at a.py:3", "submissionTime": "2026-12-05T19:01:04.123GMT",
         "completionTime": "2026-12-05T19:01:05.623GMT", "jobGroup": stage_group("cluster"), "status": "SUCCEEDED"},
        {"jobId": 8, "name": "count at a.py:4", "submissionTime": "2026-12-05T19:01:06.000GMT", "status": "RUNNING"},
        {"jobId": 9, "name": "never submitted", "status": "UNKNOWN"},
    ]
    [done, running] = parse_jobs(payload)
    assert (done.job_id, done.group, done.seconds) == (7, stage_group("cluster"), 1.5)
    assert (running.job_id, running.completed_ms, running.group) == (8, None, None)


def test_the_markdown_table_has_a_row_per_stage():
    profiles = [asdict(p) for p in stage_profiles([job(1, "ingest", 0, 1_500)], {"ingest": 4.0, "features": 1.0})]
    table = profile_markdown(profiles).splitlines()
    assert len(table) == 4
    assert table[2] == "| ingest | 4.0 | 1 | 1.5 | 2.5 | `count at x.py:1` (1, 1.5) |"


def test_a_stage_group_gives_the_callers_own_group_back(spark):
    context = spark.sparkContext
    context.setJobGroup("cell-7", "a notebook cell")
    try:
        with grouped(spark, "tiers"):
            assert context.getLocalProperty("spark.jobGroup.id") == stage_group("tiers")
        assert context.getLocalProperty("spark.jobGroup.id") == "cell-7"
        assert context.getLocalProperty("spark.job.description") == "a notebook cell"
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
        context.setLocalProperty("spark.job.description", None)
    with grouped(spark, "tiers"):
        pass
    assert context.getLocalProperty("spark.jobGroup.id") is None and context.getLocalProperty("spark.job.description") is None
