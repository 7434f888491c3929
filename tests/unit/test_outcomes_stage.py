"""The outcomes stage's decisions without Spark: which snapshots are measured, the rows
written, the planted-response arguments."""

from __future__ import annotations

import argparse
import datetime as dt
import math

import numpy as np
import pytest

from segmentation.arguments import treatment_shares
from segmentation.errors import ConfigError
from segmentation.schema import TREATMENT_OUTCOME_FIELDS
from segmentation.stages.generate import check_response
from segmentation.stages.outcomes import OutcomesResult, SnapshotOutcomes, measurable_snapshots, outcome_records, report
from segmentation.treatments.uplift import Uplift
from tests.conftest import CONF_DIR

D = dt.date(2025, 12, 31)


def test_only_snapshots_whose_window_ended_by_the_date_are_measured():
    snapshots = [dt.date(2025, 10, 2), dt.date(2025, 10, 1), dt.date(2025, 9, 1), dt.date(2025, 9, 1), D, dt.date(2026, 1, 5)]
    # 2025-10-02 + 90 days = 2025-12-31: its window ends on the date itself
    assert measurable_snapshots(snapshots, D, 90) == [dt.date(2025, 9, 1), dt.date(2025, 10, 1), dt.date(2025, 10, 2)]
    assert measurable_snapshots(snapshots, D, 91) == [dt.date(2025, 9, 1), dt.date(2025, 10, 1)]
    assert measurable_snapshots(snapshots, D, 92) == [dt.date(2025, 9, 1)]
    assert measurable_snapshots([D], D, 1) == [] and measurable_snapshots([], D, 90) == []


def _settings():
    from segmentation.config import load_config

    return load_config("local", CONF_DIR).outcomes


def test_rows_follow_the_contract_with_nan_as_null():
    small = Uplift("repurchase_rate", 1, 0, 1.0, math.nan, math.nan, math.nan, math.nan, False, True)
    # numpy's booleans and integers, as scipy-based estimates give them, become Python's (Spark takes no numpy)
    fine = Uplift("orders_per_customer", np.int64(500), 400, 1.5, 1.2, 0.3, 0.1, 0.5, np.bool_(True), np.bool_(False))
    snapshot = SnapshotOutcomes(dt.date(2025, 9, 1), {"win_back": (small, fine)})
    result = OutcomesResult(D, 90, (snapshot,), 3, 2, "t", "r")
    rows = outcome_records(result, _settings(), "run-1")
    assert [list(r) for r in rows] == [list(TREATMENT_OUTCOME_FIELDS)] * 2
    assert rows[0]["control_value"] is None and rows[0]["ci_low"] is None and rows[0]["too_small"] is True
    assert rows[1] == {
        "as_of_date": dt.date(2025, 9, 1), "measured_as_of": D, "window_days": 90, "treatment": "win_back",
        "metric": "orders_per_customer", "treated_customers": 500, "control_customers": 400, "treated_value": 1.5,
        "control_value": 1.2, "uplift": 0.3, "ci_low": 0.1, "ci_high": 0.5, "confidence": 0.95, "significant": True,
        "too_small": False, "pipeline_run_id": "run-1",
    }
    assert {type(rows[1][c]) for c in ("significant", "too_small", "treated_customers")} == {bool, int}
    assert "win_back" in report(result) and "too small to tell" in report(result)
    assert "nothing measured" in report(OutcomesResult(D, 90, (), None, 0, "t", "r"))


def test_treatment_response_argument():
    assert treatment_shares("win_back=0.25,onboarding=0.10") == {"win_back": 0.25, "onboarding": 0.1}
    for bad in ("win_back", "win_back=2", "=0.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            treatment_shares(bad)


def test_a_response_names_playbook_treatments_inside_the_feed():
    after, end = dt.date(2025, 6, 30), dt.date(2025, 12, 31)
    check_response({"win_back": 0.2}, ["win_back", "onboarding"], after, 90, end)
    with pytest.raises(ConfigError, match="needs --treatment-response"):
        check_response({}, ["win_back"], after, 90, end)
    with pytest.raises(ConfigError, match="vip not a tiers.playbook treatment"):
        check_response({"vip": 0.2}, ["win_back"], after, 90, end)
    with pytest.raises(ConfigError, match="does not end before generate.end_date"):
        check_response({"win_back": 0.2}, ["win_back"], dt.date(2025, 10, 2), 90, end)
