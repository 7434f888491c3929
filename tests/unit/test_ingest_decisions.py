"""The ingest stage's decisions on plain counts, without Spark."""

from __future__ import annotations

from segmentation.quality.validation import CLEAN, QUARANTINED, SET_ASIDE, UNBALANCED_QUOTE, UNDECODABLE
from segmentation.stages.ingest import BatchCounts, batch_counts, last_versions, real_batches, refusing_rule


def test_counts_split_clean_quarantined_set_aside_and_rules_most_first():
    counts = batch_counts({CLEAN: 90, QUARANTINED: 4, SET_ASIDE: 6, "bad_type:quantity": 1, "unknown_channel": 3, "a_rule": 1})
    assert (counts.rows_clean, counts.rows_quarantined, counts.rows_already_loaded, counts.rows_in) == (90, 4, 6, 100)
    assert list(counts.rejections.items()) == [("unknown_channel", 3), ("a_rule", 1), ("bad_type:quantity", 1)]
    assert counts.rejected_share == round(4 / 94, 6)  # rows set aside are no rejections


def test_an_empty_check_rejects_nothing():
    assert BatchCounts(0, 0, 5, {}).rejected_share == 0.0


def test_undecodable_text_always_refuses_a_cut_record_only_in_a_line_based_read():
    assert refusing_rule(BatchCounts(9, 1, 0, {UNDECODABLE: 1}), multiline=True) == UNDECODABLE
    assert refusing_rule(BatchCounts(9, 1, 0, {UNBALANCED_QUOTE: 1}), multiline=False) == UNBALANCED_QUOTE
    assert refusing_rule(BatchCounts(9, 1, 0, {UNBALANCED_QUOTE: 1}), multiline=True) is None
    assert refusing_rule(BatchCounts(9, 1, 0, {"malformed_record": 1}), multiline=False) is None


def test_the_last_version_ingested_of_each_delta_source():
    history = [
        {"source": "/a", "source_version": 3}, {"source": "/b", "source_version": None},
        {"source": "/a", "source_version": 7}, {"source": "/c", "source_version": 0},
    ]
    assert last_versions(history) == {"/a": 7, "/c": 0}


def test_real_batches_are_feeds_and_older_entries_not_from_the_generated_table():
    history = [
        {"source": "raw", "source_kind": "generated:synthetic"}, {"source": "raw", "source_kind": None},
        {"source": "/feed.csv", "source_kind": None}, {"source": "/x", "source_kind": "feed"},
    ]
    assert [e["source"] for e in real_batches(history, "raw")] == ["/feed.csv", "/x"]
