"""Delta writes on real tables: the version each write, MERGE and delete reports is the one it
committed (from the session's last commit, no history query), None when it committed
nothing, and its rows come from that commit's metrics when asked for."""

from __future__ import annotations

from pyspark.sql import functions as F

from segmentation import tables
from segmentation.tables import TableRef


def _ref(tmp_path, name: str) -> TableRef:
    return TableRef(name, str(tmp_path / name), is_path=True)


def _rows(spark, ids: range, value: int = 0):
    return spark.range(ids.start, ids.stop).select("id", F.lit(value).alias("v"))


def test_each_write_reports_its_own_commit_and_rows(spark, tmp_path):
    ref, other = _ref(tmp_path, "t"), _ref(tmp_path, "other")
    first = tables.write(_rows(spark, range(5)), ref, run_id="r1")
    assert (first.version, first.skipped) == (0, False)
    tables.write(_rows(spark, range(7)), other, run_id="r1")  # the session's newest commit is now another table's
    second = tables.write(_rows(spark, range(5, 8)), ref, mode="append", run_id="r2")
    assert second.version == 1
    assert (first.rows, second.rows) == (5, 3)  # each from its own commit, read when asked

    # An idempotent write: applied once, then skipped (nothing committed) when retried, even
    # after another run's commit to the same table.
    batch = _rows(spark, range(100, 104))
    applied = tables.write(batch, ref, mode="append", run_id="r3", idempotency_key=("app", 1))
    tables.write(_rows(spark, range(200, 201)), ref, mode="append", run_id="r4")
    retried = tables.write(batch, ref, mode="append", run_id="r3", idempotency_key=("app", 1))
    assert (applied.version, applied.rows) == (2, 4)
    assert (retried.version, retried.skipped, retried.rows) == (None, True, None)
    assert tables.read(spark, ref).count() == 5 + 3 + 4 + 1
    assert [(r.version, r.userMetadata) for r in tables.newest_commits(spark, ref, 10)] == [
        (3, "r4"), (2, "r3"), (1, "r2"), (0, "r1")]


def test_merge_and_delete_report_a_commit_only_when_they_made_one(spark, tmp_path):
    ref = _ref(tmp_path, "t")
    results = {
        "r1": tables.merge(_rows(spark, range(4)), ref, on=["id"], compare=["v"], run_id="r1"),  # no table yet: written
        "r2": tables.merge(_rows(spark, range(4)), ref, on=["id"], compare=["v"], run_id="r2"),  # Delta commits it all the same
        "r3": tables.merge(_rows(spark, range(2, 6), value=1), ref, on=["id"], compare=["v"], run_id="r3"),
        "r4": tables.delete_matching(spark.createDataFrame([(10,)], "id long"), ref, "t.id = s.id", run_id="r4"),
        "r5": tables.delete_matching(spark.createDataFrame([(0,), (3,)], "id long"), ref, "t.id = s.id", run_id="r5"),
    }
    committed = {r.userMetadata: r.version for r in tables.newest_commits(spark, ref, 10)}
    assert {run: result.version for run, result in results.items()} == {run: committed.get(run) for run in results}
    assert [results[run].version for run in ("r1", "r5")] == [0, max(committed.values())]
    assert (results["r4"].rows, results["r5"].rows) == (0, 2)
    assert sorted(tuple(r) for r in tables.read(spark, ref).collect()) == [(1, 0), (2, 1), (4, 1), (5, 1)]


def test_rows_of_a_commit_older_than_the_newest_twenty(spark, tmp_path):
    ref = _ref(tmp_path, "t")
    early = tables.write(_rows(spark, range(3)), ref, run_id="early")
    for i in range(21):
        tables.write(_rows(spark, range(10 + i, 11 + i)), ref, mode="append", run_id=f"later-{i}")
    assert (early.version, early.rows) == (0, 3)
