"""The scored tables' column contracts: the stages write them, the tiers stage takes its
columns from them by name."""

from __future__ import annotations

import pytest

from segmentation.clv.scoring import SCORE_FIELDS
from segmentation.schema import CHURN_COLUMNS, CLUSTER_COLUMNS, CLV_COLUMNS, columns_of
from segmentation.tiers.snapshot import CHURN_TIER_COLUMNS, CLUSTER_TIER_COLUMNS, CLV_TIER_COLUMNS


def test_the_tiers_take_columns_the_scored_tables_have():
    assert set(CLV_TIER_COLUMNS) <= set(CLV_COLUMNS)
    assert set(CLUSTER_TIER_COLUMNS) <= set(CLUSTER_COLUMNS)
    assert set(CHURN_TIER_COLUMNS) <= set(CHURN_COLUMNS)
    assert set(SCORE_FIELDS) <= set(CLV_COLUMNS)  # every score the CLV model computes is stored


def test_a_column_missing_from_the_contract_fails_by_name():
    assert columns_of(CLV_COLUMNS, "clv", "x") == ["clv", "x"]
    with pytest.raises(ValueError, match="lifetime_value not in the table contract"):
        columns_of(CLV_COLUMNS, "clv", "lifetime_value")


def test_the_treatment_outcomes_contract_has_the_issue_columns():
    from segmentation.schema import TREATMENT_OUTCOMES_SCHEMA

    required = ["as_of_date", "measured_as_of", "treatment", "metric", "treated_customers", "control_customers",
                "treated_value", "control_value", "uplift", "ci_low", "ci_high", "significant", "too_small"]
    assert set(required) <= set(TREATMENT_OUTCOMES_SCHEMA.fieldNames())
