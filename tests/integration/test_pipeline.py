"""`segmentation run` end to end on a small generated feed: every stage for one as-of date,
then a failure in the tiers stage and a re-run that resumes past the committed stages."""

from __future__ import annotations

import argparse
import re

import pytest

from segmentation.stages import pipeline
from segmentation.stages import tiers
from segmentation.stages.context import StageContext
from segmentation import tables
from tests.conftest import PLANTED_DROPOUT, SMALL_FEED, make_config

SETTINGS = ["generate.customers=400", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression", *SMALL_FEED,
            *PLANTED_DROPOUT]
ARGS = argparse.Namespace(generate=False, train_churn=False, until="report")
RESULT_LINE = re.compile(r"^  (\w+) +(\S+)  \(Delta version (\d+)\)$", re.M)


def assert_results_show_current_versions(spark, config, out: str) -> None:
    """The run's summary ("Results:") names each table with its newest Delta version, whether
    the run committed it (known without asking Delta) or resumed past the stage that did."""
    shown = {key: (location, int(version)) for key, location, version in RESULT_LINE.findall(out.split("Results:")[-1])}
    assert {"transactions", "customer_features", "customer_clv", "customer_tiers"} <= set(shown)
    for key, (location, version) in shown.items():
        ref = tables.table_ref(config, key)
        assert (location, version) == (ref.location, tables.current_version(spark, ref)), key


def test_a_rerun_after_a_failure_resumes_past_committed_stages(spark, tmp_path, monkeypatch, capsys):
    config = make_config(tmp_path / "data", *SETTINGS)

    def broken(*_):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(tiers, "run", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            pipeline.run(StageContext(config, spark), ARGS)
    versions = {key: tables.current_version(spark, tables.table_ref(config, key))
                for key in ("transactions", "customer_features", "customer_clv", "customer_clusters", "customer_churn")}
    assert not tables.exists(spark, tables.table_ref(config, "customer_tiers"))

    results = pipeline.run(StageContext(config, spark), ARGS)
    for stage in ("features", "clv", "cluster"):
        assert isinstance(getattr(results, stage), pipeline.Resumed), stage
    assert isinstance(results.churn.score, pipeline.Resumed) and results.churn.train is None
    for key, version in versions.items():  # nothing committed again
        assert tables.current_version(spark, tables.table_ref(config, key)) == version, key
    assert results.tiers.customers == results.report.data["kpis"]["customers"] > 0
    out = capsys.readouterr().out
    assert "customer_tiers" in out and "tier_migrations" not in out.split("Results:")[-1]  # one snapshot: no movement yet
    assert str(results.report.path) in out
    assert_results_show_current_versions(spark, config, out)  # tiers committed by this run, features resumed

    again = pipeline.run(StageContext(config, spark), ARGS)  # nothing new: every stage resumes
    for stage in ("features", "clv", "cluster", "tiers", "report"):
        assert isinstance(getattr(again, stage), pipeline.Resumed), stage
    out = capsys.readouterr().out
    assert str(results.report.path) in out
    assert_results_show_current_versions(spark, config, out)
