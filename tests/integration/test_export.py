"""`segmentation export` on a small generated pipeline with two tier snapshots: files a CRM
imports (one header row, UTF-8), treated customers only, changes only, the --reidentify
round trip, and bad arguments that fail with one line and write nothing."""

from __future__ import annotations

import csv
import hmac
import io
import shutil

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from segmentation import tables, tracking
from segmentation.cli import main
from segmentation.privacy import DEMO_KEY
from segmentation.stages import tiers
from segmentation.stages.export import CHANGE, EXPORT_COLUMNS, file_name
from segmentation.treatments import CONTROL, TREATED
from tests.conftest import CONF_DIR, TEST_SPARK_SETTINGS, make_config
from tests.integration.conftest import FIRST, SECOND, SETTINGS, context

HEADER = ["customer_id", "as_of_date", *EXPORT_COLUMNS]


@pytest.fixture(scope="module")
def root(spark, three_dates, tmp_path_factory):
    """A copy of `three_dates` (other modules change it) with tier snapshots as of FIRST and SECOND."""
    copy = tmp_path_factory.mktemp("export") / "data"
    shutil.copytree(three_dates, copy)
    tiers.run(context(spark, copy, SECOND))
    return copy


def export(root, *args: str) -> int:
    settings = [f"storage.root={root}", *TEST_SPARK_SETTINGS, *SETTINGS]
    return main(["export", "--conf-dir", str(CONF_DIR), *[a for s in settings for a in ("--set", s)], *args])


def snapshot(spark, root, as_of):
    ref = context(spark, root, as_of).table("customer_tiers")
    return tables.read(spark, ref).where(F.col("as_of_date") == F.lit(as_of))


def audience(spark, root, as_of, group=TREATED) -> dict[str, set[str]]:
    """Customer ids per treatment of one group of a snapshot."""
    rows = snapshot(spark, root, as_of).where(F.col("treatment_group") == group).select("treatment", "customer_id").collect()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row.treatment, set()).add(row.customer_id)
    return found


def read_csv(path) -> tuple[str, list[dict[str, str]]]:
    """The file's first line and its rows; decoding fails on anything but UTF-8."""
    text = path.read_bytes().decode("utf-8", errors="strict")
    return text.splitlines()[0], list(csv.DictReader(io.StringIO(text)))


def last_export_run(root):
    config = make_config(root, *SETTINGS)
    tracking.configure_mlflow(config)
    experiment = MlflowClient().get_experiment_by_name(config.mlflow.experiment)
    (run,) = MlflowClient().search_runs([experiment.experiment_id], "tags.stage = 'export'", order_by=["attributes.start_time DESC"], max_results=1)
    return run


def test_one_csv_per_treatment_with_its_treated_customers_and_no_control(spark, root, tmp_path, capsys):
    output = tmp_path / "audiences"
    assert export(root, "--as-of", str(SECOND), "--output", str(output)) == 0
    treated, control = audience(spark, root, SECOND), audience(spark, root, SECOND, CONTROL)
    assert sum(map(len, control.values())) > 0, "the holdout must hold someone for the test to mean anything"
    assert sorted(p.name for p in output.iterdir()) == sorted(file_name(t, "csv") for t in treated.keys() | control.keys())
    run = last_export_run(root)
    for treatment in treated.keys() | control.keys():
        header, rows = read_csv(output / file_name(treatment, "csv"))
        assert header == ",".join(HEADER)
        ids = [r["customer_id"] for r in rows]
        assert len(ids) == len(set(ids)) and set(ids) == treated.get(treatment, set()), treatment
        assert not set(ids) & control.get(treatment, set())
        assert {r["treatment"] for r in rows} <= {treatment} and {r["as_of_date"] for r in rows} <= {str(SECOND)}
        assert all(r["action"] and r["priority"] and r["value_tier"] for r in rows)
        assert all("E" not in r["clv"] and "E" not in r["churn_probability"] for r in rows)  # no scientific notation
        assert run.data.metrics[f"customers.{treatment}"] == len(rows)
    printed = capsys.readouterr().out
    assert not any(customer in printed for ids in treated.values() for customer in ids)


def test_parquet_holds_the_same_rows(spark, root, tmp_path):
    treatment = max(audience(spark, root, SECOND).items(), key=lambda item: len(item[1]))[0]
    for format in ("csv", "parquet"):
        assert export(root, "--as-of", str(SECOND), "--treatment", treatment, "--format", format, "--output", str(tmp_path / format)) == 0
    (written,) = (tmp_path / "parquet").iterdir()
    assert written.name == file_name(treatment, "parquet")
    rows = spark.read.parquet(str(written))
    assert rows.columns == HEADER
    _, from_csv = read_csv(tmp_path / "csv" / file_name(treatment, "csv"))
    assert sorted(r.customer_id for r in rows.select("customer_id").collect()) == sorted(r["customer_id"] for r in from_csv)


def test_changes_since_lists_only_who_entered_or_left(spark, root, tmp_path):
    output = tmp_path / "changes"
    assert export(root, "--as-of", str(SECOND), "--changes-since", str(FIRST), "--output", str(output)) == 0
    before, after = audience(spark, root, FIRST), audience(spark, root, SECOND)
    found = {"entered": 0, "left": 0}
    for path in output.iterdir():
        header, rows = read_csv(path)
        assert header == ",".join([*HEADER, CHANGE])
        treatment = rows[0]["treatment"] if rows else None
        if treatment is None:
            continue
        assert path.name == file_name(treatment, "csv")
        changes = {(r["customer_id"], r[CHANGE]) for r in rows}
        expected = {(c, "entered") for c in after.get(treatment, set()) - before.get(treatment, set())}
        expected |= {(c, "left") for c in before.get(treatment, set()) - after.get(treatment, set())}
        assert changes == expected and len(rows) == len(changes), treatment
        for _, change in changes:
            found[change] += 1
    assert found["entered"] > 0 and found["left"] > 0


def test_reidentify_gives_back_exactly_the_raw_ids_of_the_audience(spark, root, tmp_path, capsys):
    treated = audience(spark, root, SECOND)
    treatment = max(treated, key=lambda t: len(treated[t]))
    output = tmp_path / "raw"
    assert export(root, "--as-of", str(SECOND), "--treatment", treatment, "--reidentify", "--output", str(output)) == 0
    _, rows = read_csv(output / file_name(treatment, "csv"))
    raw = tables.read(spark, context(spark, root, SECOND).table("raw_transactions"))
    raw_ids = {r.customer_id.strip() for r in raw.select("customer_id").distinct().collect() if r.customer_id and r.customer_id.strip()}
    by_pseudonym = {hmac.digest(DEMO_KEY, r.encode("utf-8"), "sha256").hex(): r for r in raw_ids}
    expected = {by_pseudonym[p] for p in treated[treatment]}
    assert len(expected) == len(treated[treatment])
    assert [r["customer_id"] for r in rows if r["customer_id"] in expected] == [r["customer_id"] for r in rows]
    assert {r["customer_id"] for r in rows} == expected and len(rows) == len(expected)
    printed = capsys.readouterr()
    assert not any(customer in printed.out + printed.err for customer in expected)


@pytest.mark.parametrize("args, message", [
    (["--treatment", "win_back", "--treatment", "vip"], "unknown treatment 'vip' (known: vip_retention, vip_care, onboarding, "),
    (["--as-of", "2025-10-20"], "no snapshot as of 2025-10-20 (--as-of); nearest: 2025-10-15, 2025-11-15"),
    (["--as-of", str(SECOND), "--changes-since", "2025-12-15"], "is not before the export's date 2025-11-15"),
    (["--as-of", str(SECOND), "--changes-since", "2025-09-01"], "no snapshot as of 2025-09-01 (--changes-since); nearest: 2025-10-15"),
    (["--reidentify", "--set", "privacy.allow_demo_key=false"], "--reidentify needs the pseudonymisation key"),
])
def test_bad_arguments_fail_with_one_line_and_write_nothing(root, tmp_path, capsys, args, message):
    output = tmp_path / "out"
    assert export(root, *args, "--output", str(output)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_empty_needs_overwrite(spark, root, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.csv").write_text("kept\n")
    assert export(root, "--as-of", str(SECOND), "--output", str(output)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty; add --overwrite" in err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in output.iterdir()] == ["old.csv"]
    treatment = next(iter(audience(spark, root, SECOND)))
    assert export(root, "--as-of", str(SECOND), "--treatment", treatment, "--output", str(output), "--overwrite") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in output.iterdir()] == [file_name(treatment, "csv")]
