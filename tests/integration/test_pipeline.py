"""`segmentation run` end to end on a small generated feed: every stage for one as-of date,
then a failure in the tiers stage and a re-run that resumes past the committed stages."""

from __future__ import annotations

import argparse

import pytest

from segmentation.stages import pipeline
from segmentation.stages import tiers
from segmentation.stages.context import StageContext
from segmentation import tables
from tests.conftest import PLANTED_DROPOUT, SMALL_FEED, make_config

SETTINGS = ["generate.customers=400", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression", *SMALL_FEED,
            *PLANTED_DROPOUT]
ARGS = argparse.Namespace(generate=False, train_churn=False, until="report")


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

    again = pipeline.run(StageContext(config, spark), ARGS)  # nothing new: every stage resumes
    for stage in ("features", "clv", "cluster", "tiers", "report"):
        assert isinstance(getattr(again, stage), pipeline.Resumed), stage
    assert str(results.report.path) in capsys.readouterr().out
