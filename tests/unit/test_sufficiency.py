"""The data-sufficiency decisions of the model stages, without Spark: each names the
shortfall and what to do, and passes data that suffice."""

import datetime as dt

import pytest

from segmentation.stages.pipeline import Skipped, skipped_inputs
from segmentation.stages.tiers import missing_predictions, value_rank_by
from segmentation.sufficiency import (
    churn_history_needed, churn_history_shortfall, clv_shortfall, cluster_shortfall, varying_features,
    label_shortfall,
)


def test_clv_needs_a_calibration_period_of_enough_time_units():
    assert clv_shortfall(500, 60, 7, "week", 30, 12) == (
        "the calibration period spans 60 days (8.6 weeks), shorter than clv.min_calibration_units=12 weeks; "
        "collect more history or use clv.time_unit=day"
    )
    assert clv_shortfall(500, 84, 7, "week", 30, 12) is None  # exactly 12 weeks
    assert clv_shortfall(500, 11, 1, "day", 30, 12).endswith("shorter than clv.min_calibration_units=12 days; collect more history")


def test_clv_needs_enough_repeat_customers():
    assert clv_shortfall(29, 400, 7, "week", 30, 12) == (
        "29 customers bought more than once by the calibration end, fewer than clv.min_repeat_customers=30; "
        "BG/NBD learns from repeat customers: collect more history or more customers"
    )
    assert clv_shortfall(30, 400, 7, "week", 30, 12) is None


def test_k_means_needs_distinct_customers_for_the_largest_k():
    assert cluster_shortfall(79, 8, 10) == (
        "79 customers with distinct cluster.features, fewer than 80 (k up to 8 x cluster.min_customers_per_cluster=10); "
        "lower cluster.k_max (or cluster.k), or collect more customers"
    )
    assert cluster_shortfall(80, 8, 10) is None


def test_constant_features_are_left_out_and_fewer_than_two_varying_fail():
    features = ["recency_days", "channels_used", "monetary", "return_rate"]
    # A single-channel feed: channels_used is 1 for all, the rest still cluster.
    assert varying_features(features, ["channels_used"], 1200) == (["recency_days", "monetary", "return_rate"], None)
    assert varying_features(features, [], 1200) == (features, None)
    assert varying_features(features, ["channels_used", "monetary", "return_rate"], 1200) == (["recency_days"], (
        "of cluster.features, only recency_days varies across the 1,200 customers (the same value for all: channels_used, "
        "monetary, return_rate); K-means needs at least 2 features that vary: add some to cluster.features"
    ))
    assert varying_features(["a", "b"], ["a", "b"], 5)[0] == []


def test_churn_history_counts_only_the_kept_cutoffs():
    assert churn_history_needed(365, 90, 4) == 815
    first, as_of = dt.date(2024, 1, 1), dt.date(2025, 12, 31)
    # 730 days hold 365 + 90 x (3 + 1) = 725: three kept cutoffs are enough, four would need 815.
    assert churn_history_shortfall(first, as_of, 365, 90, cutoffs_kept=3, cutoffs_configured=4) is None
    assert churn_history_shortfall(first, as_of, 365, 90, cutoffs_kept=4, cutoffs_configured=4) == (
        "730 days of history (2024-01-01 to 2025-12-31), 4 training cutoffs; the churn model needs churn.lookback_days 365 + "
        "churn.horizon_days 90 x (4 cutoffs + 1) = 815 days: collect more history, or shorten churn.lookback_days or churn.horizon_days"
    )


@pytest.mark.parametrize(("kept", "configured", "detail"), [
    (0, 4, "0 of 4 training cutoffs have a full look-back; the churn model needs churn.lookback_days 365 + "
           "churn.horizon_days 90 x (1 cutoffs + 1) = 545 days"),
])
def test_too_short_a_history_says_how_much_is_needed(kept, configured, detail):
    message = churn_history_shortfall(dt.date(2025, 4, 1), dt.date(2025, 6, 1), 365, 90, kept, configured)
    assert message == f"61 days of history (2025-04-01 to 2025-06-01), {detail}: collect more history, or shorten churn.lookback_days or churn.horizon_days"


@pytest.mark.parametrize(("rows", "churners", "enough"), [(250, 100, True), (250, 99, False), (250, 151, False), (0, 0, False)])
def test_churn_needs_enough_churners_and_stayers(rows, churners, enough):
    message = label_shortfall("evaluation", rows, churners, 100, 100)
    assert (message is None) == enough
    if not enough:
        assert message.startswith(f"the evaluation rows hold {churners:,} churners and {rows - churners:,} stayers, fewer than "
                                  "churn.min_positives=100 churners and churn.min_negatives=100 stayers")


def test_a_skipped_model_stage_leaves_its_tier_columns_null_and_says_why():
    skipped = skipped_inputs({"features": object(), "clv": Skipped("too few repeat customers"), "churn": Skipped("60 days of history")})
    assert skipped == {"customer_clv": "too few repeat customers", "customer_churn": "60 days of history"}
    missing = missing_predictions(skipped)
    assert missing == {
        "clv": "customer_clv not written: too few repeat customers",
        "probability_alive": "customer_clv not written: too few repeat customers",
        "next_purchase_date": "customer_clv not written: too few repeat customers",
        "expected_purchases": "customer_clv not written: too few repeat customers",
        "churn_probability": "customer_churn not written: 60 days of history",
        "churn_risk_tier": "customer_churn not written: 60 days of history",
        "churn_score_source": "customer_churn not written: 60 days of history",
        "churn_drivers": "customer_churn not written: 60 days of history",
    }
    # Without a CLV, the value pyramid ranks by the features' own column.
    assert value_rank_by("clv", "revenue_365d", missing) == "revenue_365d"
    assert value_rank_by("clv", "revenue_365d", {}) == "clv"


def test_the_report_names_the_missing_columns_once_per_reason():
    from segmentation.report import missing_sentences

    missing = {"clv": "customer_clv not written: short", "probability_alive": "customer_clv not written: short",
               "cluster_id": "customer_clusters not written: few"}
    assert missing_sentences(missing) == ["clv, probability_alive (customer_clv not written: short)",
                                          "cluster_id (customer_clusters not written: few)"]
    assert missing_sentences({}) == []
