"""The model stages' decisions on plain values, without Spark: where the lifetime-value fit
runs and when it cannot, which churn champion is comparable, and when the label counts can
train or evaluate a classifier."""

from __future__ import annotations

import datetime as dt

import pytest

from segmentation.churn.labels import Cutoffs
from segmentation.registry import RegisteredVersion
from segmentation.stages.churn import (
    ChurnDecision,
    CustomerSample,
    LabelCounts,
    cutoffs_without_rows,
    horizon_mismatch,
    model_horizon,
    one_class_only,
)
from segmentation.stages.clv import fits_on_driver, too_few_to_fit

CUTOFFS = Cutoffs((dt.date(2025, 3, 31), dt.date(2025, 6, 30)), dt.date(2025, 9, 30), 90)


# ---------------------------------------------------------------------------- clv


@pytest.mark.parametrize(("rows", "limit", "on_driver"), [(2, 100, True), (100, 100, True), (101, 100, False), (2, 0, False)])
def test_the_fit_collects_the_rows_up_to_max_driver_rows_and_sums_in_spark_beyond(rows, limit, on_driver):
    assert fits_on_driver(rows, limit) is on_driver


def test_one_distinct_row_is_too_few_to_fit_and_the_message_says_why():
    assert too_few_to_fit("BG/NBD triples", ["x", "t_x", "T"], 1) == (
        "BG/NBD triples: 1 customer, too few to fit; the model needs customers whose (x, t_x, T) differ"
    )
    assert too_few_to_fit("Gamma-Gamma spend groups", ["x", "m"], 1200) == (
        "Gamma-Gamma spend groups: 1,200 customers all with the same (x, m), too few to fit; "
        "the model needs customers whose (x, m) differ"
    )


# -------------------------------------------------------------------------- churn


def version(tags: dict[str, str]) -> RegisteredVersion:
    return RegisteredVersion("churn_classifier", "1", "run-1", tags)


def test_a_model_predicts_the_horizon_its_run_was_tagged_with():
    assert model_horizon(version({"horizon_days": "60"})) == 60
    assert model_horizon(version({})) is None
    assert model_horizon(version({"horizon_days": ""})) is None


@pytest.mark.parametrize(("horizon", "mismatch"), [
    (90, None), (None, None),  # an untagged champion (trained before the tag existed) stays comparable
    (60, "predicts no purchase in 60 days, not the configured 90"),
])
def test_only_a_champion_for_another_horizon_is_not_comparable(horizon, mismatch):
    assert horizon_mismatch(horizon, 90) == mismatch


def test_training_cutoffs_without_rows_are_named_in_order():
    per_cutoff = {"2025-06-30": {"rows": 10, "churners": 3}}
    assert cutoffs_without_rows(CUTOFFS.training, per_cutoff) == [dt.date(2025, 3, 31)]
    assert cutoffs_without_rows(CUTOFFS.training, {c.isoformat(): {} for c in CUTOFFS.training}) == []


@pytest.mark.parametrize(("rows", "churners"), [(0, 0), (10, 0), (10, 10)])
def test_rows_of_one_class_cannot_train_or_evaluate(rows, churners):
    problem = one_class_only("evaluation", rows, churners, CUTOFFS)
    assert problem == (
        f"the evaluation rows need churners and stayers: {churners} churners among {rows} rows (cutoffs {CUTOFFS.as_dict()}); "
        "check churn.training_cutoffs, churn.evaluation_cutoff and the data's dates"
    )


def test_rows_of_both_classes_are_enough():
    assert one_class_only("training", 2, 1, CUTOFFS) is None


def test_the_logged_labels_and_decision_keep_their_json_shape():
    labels = LabelCounts({"2025-06-30": {"rows": 10, "churners": 3}}, 10, 3, 8, 2, CustomerSample(0.5, 4000, 2000))
    assert labels.as_dict() == {
        "per_cutoff": {"2025-06-30": {"rows": 10, "churners": 3}}, "training_rows": 10, "training_churners": 3,
        "evaluation_rows": 8, "evaluation_churners": 2, "sample": {"fraction": 0.5, "customers": 4000, "sample_customers": 2000},
    }
    decision = ChurnDecision("2", False, "why", "pr_auc", 0.4, "1", 0.5, "1")
    assert list(decision.as_dict()) == [
        "model_version", "promoted", "reason", "metric", "value", "previous_champion", "champion_value", "champion_version",
    ]
