"""The export's argument decisions, without Spark: each bad argument fails with one line
that says what is wrong and what would do."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from chispa import assert_df_equality

from segmentation.cli import main
from segmentation.errors import ConfigError
from segmentation.privacy import DEMO_KEY, key_fingerprint
from segmentation.stages.export import (
    check_changes_since, check_key_was_used, check_output, check_snapshot, chosen_treatments, file_name,
    nearest_snapshots, output_folder, reidentification_key,
)
from tests.conftest import base_section

PLAYBOOK = ["vip_care", "win_back", "newsletter"]
D = dt.date


def test_treatments_default_to_the_playbook_ones_present_in_playbook_order():
    assert chosen_treatments([], PLAYBOOK, {"newsletter", "vip_care", "(unmatched)"}) == ["vip_care", "newsletter"]
    assert chosen_treatments([], PLAYBOOK, set()) == []


def test_named_treatments_are_kept_once_in_the_order_given_even_when_absent():
    assert chosen_treatments(["newsletter", "win_back", "newsletter"], PLAYBOOK, {"vip_care"}) == ["newsletter", "win_back"]


def test_an_unknown_treatment_names_the_known_ones():
    with pytest.raises(ConfigError) as error:
        chosen_treatments(["win_back", "vip", "vip"], PLAYBOOK, set(PLAYBOOK))
    assert str(error.value) == "export: unknown treatment 'vip' (known: vip_care, win_back, newsletter)"


@pytest.mark.parametrize("date, nearest", [
    (D(2025, 10, 20), [D(2025, 10, 15), D(2025, 11, 15)]),
    (D(2025, 1, 1), [D(2025, 10, 15)]),
    (D(2026, 1, 1), [D(2025, 12, 15)]),
    (D(2025, 11, 15), [D(2025, 10, 15), D(2025, 11, 15)]),
])
def test_nearest_snapshots_are_the_one_before_and_the_one_after(date, nearest):
    available = [D(2025, 12, 15), D(2025, 10, 15), D(2025, 11, 15), D(2025, 10, 15)]
    assert nearest_snapshots(date, available) == nearest


def test_a_date_without_snapshot_names_the_nearest():
    available = [D(2025, 10, 15), D(2025, 11, 15)]
    check_snapshot(D(2025, 11, 15), available, "--as-of")
    with pytest.raises(ConfigError) as error:
        check_snapshot(D(2025, 10, 20), available, "--changes-since")
    assert str(error.value) == (
        "export: customer_tiers has no snapshot as of 2025-10-20 (--changes-since); nearest: 2025-10-15, 2025-11-15"
    )
    with pytest.raises(ConfigError, match="nearest: none, run 'segmentation tiers' first$"):
        check_snapshot(D(2025, 10, 20), [], "--as-of")


def test_changes_since_must_come_before_the_export_date():
    check_changes_since(None, D(2025, 11, 15))
    check_changes_since(D(2025, 10, 15), D(2025, 11, 15))
    for since in (D(2025, 11, 15), D(2025, 12, 15)):
        with pytest.raises(ConfigError, match=f"--changes-since {since} is not before the export's date 2025-11-15"):
            check_changes_since(since, D(2025, 11, 15))


@pytest.mark.parametrize("entries, overwrite, fails", [
    (None, False, False), ([], False, False), (["a.csv"], False, True), (["a.csv"], True, False), (None, True, False),
])
def test_an_output_folder_that_is_not_empty_needs_overwrite(entries, overwrite, fails):
    if fails:
        with pytest.raises(ConfigError, match="--output out exists and is not empty; add --overwrite"):
            check_output("out", entries, overwrite)
    else:
        check_output("out", entries, overwrite)


def test_output_is_a_folder_of_the_driver(tmp_path):
    assert output_folder(str(tmp_path / "a")) == tmp_path / "a"
    assert output_folder(f"file://{tmp_path}/a") == tmp_path / "a"
    assert output_folder("relative/a") == Path.cwd() / "relative" / "a"
    for uri in ("s3://bucket/audiences", "dbfs:/exports", "abfss://c@a.dfs.core.windows.net/x"):
        with pytest.raises(ConfigError, match="is not a folder of the driver's file system"):
            output_folder(uri)


def test_reidentify_needs_the_key(monkeypatch):
    privacy = base_section("privacy")
    monkeypatch.delenv(privacy.key_env, raising=False)
    assert reidentification_key(privacy, reidentify=False) is None
    with pytest.raises(ConfigError) as error:
        reidentification_key(privacy, reidentify=True)
    assert str(error.value).startswith("export: --reidentify needs the pseudonymisation key: privacy: no pseudonymisation key")
    monkeypatch.setenv(privacy.key_env, "a-real-key-of-enough-bytes")
    assert reidentification_key(privacy, reidentify=True) == b"a-real-key-of-enough-bytes"
    demo = base_section("privacy", allow_demo_key=True)
    monkeypatch.delenv(privacy.key_env)
    assert reidentification_key(demo, reidentify=True) == DEMO_KEY
    with pytest.raises(ConfigError, match="pseudonymisation is off"):
        reidentification_key(base_section("privacy", pseudonymise=False), reidentify=True)


def test_the_key_must_be_one_ingest_hashed_with():
    demo = key_fingerprint(DEMO_KEY)
    check_key_was_used(demo, {demo, "abc"})
    check_key_was_used(demo, set())  # no ingest_log to tell
    with pytest.raises(ConfigError, match=f"the key \\(fingerprint {demo}\\) is not one ingest hashed with \\(fingerprints abc, def\\)"):
        check_key_was_used(demo, {"def", "abc"})


def test_file_names_are_safe_for_any_treatment_name():
    assert file_name("win_back", "csv") == "win_back.csv"
    assert file_name("VIP care/retention", "parquet") == "VIP_care_retention.parquet"
    assert file_name("../x", "csv") == "___x.csv"


@pytest.mark.parametrize("argv, message", [
    (["export", "--as-of", "2025-06-30"], "the following arguments are required: --output"),
    (["export", "--output", "o", "--format", "xlsx"], "argument --format: invalid choice: 'xlsx'"),
    (["export", "--output", "o", "--changes-since", "15/10/2025"], "argument --changes-since: '15/10/2025' is not a date"),
])
def test_bad_export_options_fail_with_one_line_before_any_session(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# The transformations on hand-made tier rows.

TIER_SCHEMA = (
    "customer_id string, treatment string, treatment_group string, treatment_action string, treatment_channel string, "
    "treatment_priority int, value_tier string, clv double, churn_probability double, churn_risk_tier string"
)


def tier_rows(spark, *rows):
    return spark.createDataFrame(list(rows), TIER_SCHEMA)


def test_the_audience_holds_the_treated_customers_of_the_treatments_only(spark):
    from segmentation.stages.export import treated_audiences

    snapshot = tier_rows(
        spark,
        ("a", "win_back", "treated", "offer", "web", 2, "gold", 1234.5678, 0.00001234, "high"),
        ("b", "win_back", "control", "offer", "web", 2, "gold", 10.0, 0.5, "high"),
        ("c", "win_back", None, "offer", "app", 2, "silver", 0.0, None, None),  # written before holdouts: treated
        ("d", "newsletter", "treated", "news", "web", 4, "bronze", None, 0.2, "low"),
        ("e", None, None, None, None, None, "bronze", 1.0, 0.1, "low"),
    )
    rows = treated_audiences(snapshot, ["win_back"], D(2025, 11, 15))
    assert rows.columns == ["customer_id", "as_of_date", "treatment", "action", "channel", "priority", "value_tier", "clv",
                            "churn_probability", "churn_risk_tier"]
    got = sorted((r.customer_id, r.as_of_date, r.channel, r.clv, r.churn_probability) for r in rows.collect())
    from decimal import Decimal

    assert got == [("a", D(2025, 11, 15), "web", Decimal("1234.57"), Decimal("0.0000")),
                   ("c", D(2025, 11, 15), "app", Decimal("0.00"), None)]


def test_changes_are_who_entered_with_the_new_values_and_who_left_with_the_old(spark):
    from segmentation.stages.export import audience_changes, treated_audiences

    before = treated_audiences(tier_rows(
        spark,
        ("stays", "win_back", "treated", "offer", "web", 2, "gold", 1.0, 0.1, "low"),
        ("leaves", "win_back", "treated", "offer", "web", 2, "gold", 2.0, 0.2, "low"),
        ("moves", "win_back", "treated", "offer", "web", 2, "gold", 3.0, 0.3, "low"),
        ("held_out", "win_back", "control", "offer", "web", 2, "gold", 4.0, 0.4, "low"),
    ), ["win_back", "loyalty"], D(2025, 11, 15))
    after = treated_audiences(tier_rows(
        spark,
        ("stays", "win_back", "treated", "offer", "app", 1, "gold", 9.0, 0.9, "high"),  # other values: no change
        ("moves", "loyalty", "treated", "points", "web", 2, "gold", 3.0, 0.3, "low"),
        ("new", "win_back", "treated", "offer", "web", 2, "silver", 5.0, 0.5, "low"),
        ("held_out", "win_back", "control", "offer", "web", 2, "gold", 4.0, 0.4, "low"),
    ), ["win_back", "loyalty"], D(2025, 11, 15))
    changes = audience_changes(before, after)
    assert changes.columns == [*after.columns, "change"]
    got = sorted((r.customer_id, r.treatment, r.change, r.action, float(r.clv)) for r in changes.collect())
    assert got == [("leaves", "win_back", "left", "offer", 2.0), ("moves", "loyalty", "entered", "points", 3.0),
                   ("moves", "win_back", "left", "offer", 3.0), ("new", "win_back", "entered", "offer", 5.0)]


def test_raw_ids_replace_the_pseudonyms_and_an_unknown_one_becomes_null(spark):
    from segmentation.stages.export import with_raw_ids

    rows = spark.createDataFrame([("p1", "win_back"), ("p2", "win_back"), ("p9", "loyalty")], "customer_id string, treatment string")
    ids = spark.createDataFrame([("C1", "p1"), ("C2", "p2"), ("C3", "p3")], "raw_id string, pseudonym string")
    expected = spark.createDataFrame([("C1", "win_back"), ("C2", "win_back"), (None, "loyalty")], "customer_id string, treatment string")
    assert_df_equality(with_raw_ids(rows, ids), expected, ignore_row_order=True, ignore_nullable=True)
