"""Where a stage's time goes: its Spark jobs, their seconds, and the time outside Spark.

Every stage of `segmentation run` puts the Spark jobs it starts in a job group named after
it (`stage_group`). Spark's own status API (the REST API of the driver's UI,
`/api/v1/applications/<id>/jobs`) lists the jobs with their groups, call sites and times; `stage_profiles` turns them into one profile per
stage. Spark seconds are the union of the stage's job intervals (jobs of one thread do not
overlap, but a job started in another thread could), so outside-Spark seconds (planning,
the Delta log, MLflow, Python) are the rest of the stage's wall-clock time.

The REST API needs the UI (`spark.ui.enabled`, on by default) and keeps the last
`spark.ui.retainedJobs` jobs (1000 by default); `segmentation bench` raises that limit.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger(__name__)

GROUP_PREFIX = "segmentation-stage-"
TOP_CALL_SITES = 5


@dataclass(frozen=True)
class SparkJob:
    job_id: int
    name: str  # Spark's call site, e.g. "count at /path/module.py:123"
    group: str | None  # the job group, `stage_group(stage)` for a stage's jobs
    submitted_ms: int
    completed_ms: int | None  # None: still running

    @property
    def seconds(self) -> float:
        return 0.0 if self.completed_ms is None else (self.completed_ms - self.submitted_ms) / 1000


@dataclass(frozen=True)
class CallSite:
    name: str
    jobs: int
    seconds: float


@dataclass(frozen=True)
class StageProfile:
    stage: str
    seconds: float  # the stage's wall-clock time
    jobs: int
    spark_seconds: float
    outside_spark_seconds: float
    top_call_sites: list[CallSite]  # the call sites with the most Spark seconds


def stage_group(stage: str) -> str:
    return f"{GROUP_PREFIX}{stage}"


def _spark_context(spark):
    """The session's SparkContext; None where the client has none (Spark Connect) or may not
    reach it (Databricks standard access mode): asking such a session raises, with no JVM call."""
    try:
        return spark.sparkContext
    except Exception:
        return None


@contextmanager
def grouped(spark, stage: str) -> Iterator[None]:
    """Put every Spark job this thread starts inside the block in the stage's job group.
    (A job group rather than a session tag: Spark 4.2 then fails to serialise the tasks of
    some ML summaries, which hold the session.) A Spark Connect session has no job groups
    and no status API here: nothing is grouped."""
    context = _spark_context(spark)
    if context is None:
        yield
        return
    # setJobGroup sets these; the caller's own (a notebook cell's group, say) come back after.
    keys = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")
    previous = {key: context.getLocalProperty(key) for key in keys}
    context.setJobGroup(stage_group(stage), f"segmentation stage {stage}")
    try:
        yield
    finally:
        for key, value in previous.items():
            context.setLocalProperty(key, value)  # None removes it


def _epoch_ms(stamp: str | None) -> int | None:
    """Spark's REST time stamps, e.g. 2026-12-05T19:01:04.123GMT."""
    if not stamp:
        return None
    return int(datetime.strptime(stamp.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)


def parse_jobs(payload: list[dict]) -> list[SparkJob]:
    """The jobs of a `/applications/<id>/jobs` response."""
    return [
        SparkJob(int(j["jobId"]), j.get("name", ""), j.get("jobGroup"), _epoch_ms(j.get("submissionTime")) or 0,
                 _epoch_ms(j.get("completionTime")))
        for j in payload
        if j.get("submissionTime")
    ]


def spark_jobs(spark) -> list[SparkJob] | None:
    """Every job the driver's UI still holds, or None when there is no UI to ask (disabled,
    or a Spark Connect session, whose server's UI this client cannot tell apart)."""
    context = _spark_context(spark)
    url = context.uiWebUrl if context is not None else None
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/api/v1/applications/{context.applicationId}/jobs", timeout=30) as response:
            return parse_jobs(json.load(response))
    except OSError as error:
        log.warning("profile: the Spark UI at %s did not answer (%s); no per-job profile", url, error)
        return None


def _union_seconds(intervals: list[tuple[int, int]]) -> float:
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1000


def stage_profiles(jobs: list[SparkJob], stage_seconds: dict[str, float]) -> list[StageProfile]:
    """One profile per stage of `stage_seconds` (stage -> wall-clock seconds), from the jobs
    in its job group."""
    profiles = []
    for stage, seconds in stage_seconds.items():
        group = stage_group(stage)
        mine = [j for j in jobs if j.group == group and j.completed_ms is not None]
        spark_seconds = _union_seconds([(j.submitted_ms, j.completed_ms) for j in mine])
        sites: dict[str, list[SparkJob]] = {}
        for job in mine:
            sites.setdefault(job.name, []).append(job)
        top = sorted((CallSite(name, len(js), round(sum(j.seconds for j in js), 2)) for name, js in sites.items()),
                     key=lambda site: -site.seconds)[:TOP_CALL_SITES]
        profiles.append(StageProfile(stage, round(seconds, 2), len(mine), round(spark_seconds, 2),
                                     round(max(seconds - spark_seconds, 0.0), 2), top))
    return profiles


def profile_markdown(profiles: list[dict]) -> str:
    """The profiles (as `dataclasses.asdict` gives them, as the bench's JSON holds them) as a table."""
    lines = ["| stage | seconds | Spark jobs | in Spark jobs (s) | outside Spark (s) | costliest call sites (jobs, s) |",
             "|---|---:|---:|---:|---:|---|"]
    for p in profiles:
        sites = "; ".join(f"`{s['name']}` ({s['jobs']}, {s['seconds']:.1f})" for s in p["top_call_sites"][:3])
        lines.append(f"| {p['stage']} | {p['seconds']:.1f} | {p['jobs']} | {p['spark_seconds']:.1f} | "
                     f"{p['outside_spark_seconds']:.1f} | {sites} |")
    return "\n".join(lines)
