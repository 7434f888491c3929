"""A bad option value fails with one line naming the option as the user typed it, before
any configuration is loaded or session started; a given option becomes its configuration
override, and one left out overrides nothing."""

from __future__ import annotations

import importlib

import pytest

from segmentation.cli import STAGES, build_parser, main


@pytest.mark.parametrize("argv, message", [
    (["ingest", "--max-rejected-share", "1.5"], "argument --max-rejected-share: '1.5' is not a share from 0 to 1"),
    (["ingest", "--max-rejected-share", "lots"], "argument --max-rejected-share: 'lots' is not a share from 0 to 1"),
    (["run", "--max-rejected-share", "nan"], "argument --max-rejected-share: 'nan' is not a share from 0 to 1"),
    (["generate", "--customers", "-5"], "argument --customers: '-5' is not a whole number of at least 1"),
    (["generate", "--defect-share", "0.7"], "argument --defect-share: '0.7' is not a share from 0 to 0.5"),
    (["generate", "--treatment-response", "win_back=1.5"], "argument --treatment-response: 'win_back=1.5' is not a list of TREATMENT=SHARE"),
    (["outcomes", "--as-of", "31/12/2025"], "argument --as-of: '31/12/2025' is not a date"),
    (["clv", "--holdout-days", "-1"], "argument --holdout-days: '-1' is not a whole number of at least 0"),
    (["churn", "train", "--horizon-days", "0"], "argument --horizon-days: '0' is not a whole number of at least 1"),
])
def test_a_bad_option_value_fails_with_one_line_naming_the_option(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "--set" not in err


@pytest.mark.parametrize("argv, overrides", [
    (["cluster", "--k", "5", "--as-of", "2025-06-30"], ["as_of=2025-06-30", "cluster.k=5"]),
    (["cluster"], []),
    (["clv", "--holdout-days", "0"], ["clv.holdout_days=0"]),  # 0 is a value, not "not given"
    (["churn", "train", "--model", "logistic_regression", "--horizon-days", "60"],
     ["churn.model=logistic_regression", "churn.horizon_days=60"]),
    (["ingest", "--source", "/data/feed", "--max-rejected-share", "0.2"],
     ["ingest.source.table=null", "ingest.source.path=/data/feed", "ingest.max_rejected_share=0.2"]),
])
def test_options_become_configuration_overrides_only_when_given(argv, overrides):
    args = build_parser().parse_args(argv)
    assert importlib.import_module(STAGES[args.command]).config_overrides(args) == overrides
