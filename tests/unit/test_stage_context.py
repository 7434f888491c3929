"""The as-of resolution every stage shares: a plain decision, tested without Spark."""

from __future__ import annotations

import datetime as dt

import pytest

from segmentation.errors import DataQualityError
from segmentation.stages.context import resolve_as_of


def test_a_configured_date_wins_and_the_latest_is_not_even_asked():
    def latest():
        raise AssertionError("a Spark job that must not run")

    assert resolve_as_of(dt.date(2025, 3, 1), latest, "unused") == dt.date(2025, 3, 1)


def test_without_a_configured_date_the_latest_one_is_used():
    assert resolve_as_of(None, lambda: dt.date(2025, 6, 30), "unused") == dt.date(2025, 6, 30)


def test_with_neither_the_error_says_what_is_missing():
    with pytest.raises(DataQualityError, match="^customer_features has no snapshots: run 'segmentation features' first$"):
        resolve_as_of(None, lambda: None, "customer_features has no snapshots: run 'segmentation features' first")


def test_customers_no_rule_row_matched_are_counted_per_rule_table():
    from segmentation.features.rules import UNMATCHED
    from segmentation.stages.features import unmatched_customers

    counts = [
        {"scheme": "value_tier", "tier": "gold", "customers": 9}, {"scheme": "rfm_segment", "tier": UNMATCHED, "customers": 2},
        {"scheme": "rfm_segment", "tier": "Loyal", "customers": 7}, {"scheme": "business_tier", "tier": UNMATCHED, "customers": 5},
    ]
    assert unmatched_customers(counts) == {"rfm_segment": 2, "lifecycle_stage": 0, "business_tier": 5}
