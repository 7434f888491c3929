import textwrap

import pytest

from segmentation.config import load_config
from segmentation.errors import ConfigError
from tests.conftest import CONF_DIR


def _conf_dir(tmp_path, **files):
    (tmp_path / "base.yaml").write_text((CONF_DIR / "base.yaml").read_text())
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def test_shipped_environments_load():
    for env in ("local", "cluster", "databricks", "base"):
        config = load_config(env, CONF_DIR)
        assert config.ingest.channels == ["store", "web", "app", "marketplace", "call_centre"]
    assert load_config("databricks", CONF_DIR).storage.tables.transactions == "main.segmentation.transactions"
    assert load_config("local", CONF_DIR).privacy.allow_demo_key is True
    assert load_config("cluster", CONF_DIR).privacy.allow_demo_key is False


def test_overlay_then_overrides_win(tmp_path):
    conf = _conf_dir(tmp_path, dev="ingest:\n  max_rejected_share: 0.2\nspark:\n  conf:\n    spark.x: 1\n")
    config = load_config("dev", conf, ["generate.customers=123"])
    assert config.ingest.max_rejected_share == 0.2
    assert config.generate.customers == 123
    # dicts merge key by key: the base's Spark settings stay
    assert config.spark.conf["spark.x"] == 1
    assert config.spark.conf["spark.sql.session.timeZone"] == "UTC"
    assert config.environment == "dev"


def test_unknown_key_names_file_and_key(tmp_path):
    conf = _conf_dir(tmp_path, dev="ingest:\n  max_rejected_shar: 0.2\n")
    with pytest.raises(ConfigError) as error:
        load_config("dev", conf)
    message = str(error.value)
    assert f"{conf / 'dev.yaml'}: ingest.max_rejected_shar: unknown key" in message


def test_wrong_type_and_range_name_file_key_and_reason(tmp_path):
    conf = _conf_dir(tmp_path, dev="generate:\n  customers: many\ningest:\n  max_rejected_share: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config("dev", conf)
    message = str(error.value)
    assert f"{conf / 'dev.yaml'}: generate.customers: Input should be a valid integer" in message
    assert f"{conf / 'dev.yaml'}: ingest.max_rejected_share: Input should be less than or equal to 1" in message


def test_bad_override_is_named():
    with pytest.raises(ConfigError, match=r"--set generate.customers=-5: generate.customers: Input should be greater than 0"):
        load_config("local", CONF_DIR, ["generate.customers=-5"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config("local", CONF_DIR, ["generate.customers"])


def test_missing_environment_file_lists_available():
    with pytest.raises(ConfigError, match=r"no such environment file.*available: cluster, databricks, local"):
        load_config("staging", CONF_DIR)


def test_missing_base_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="base.yaml: configuration file not found"):
        load_config("local", tmp_path)
    conf = _conf_dir(tmp_path, dev="ingest: [unclosed\n")
    with pytest.raises(ConfigError, match="dev.yaml: not valid YAML"):
        load_config("dev", conf)


def test_metastore_catalog_requires_table_names():
    with pytest.raises(ConfigError) as error:
        load_config("local", CONF_DIR, ["storage.catalog=metastore"])
    message = str(error.value)
    assert "--set storage.catalog=metastore" in message
    assert "storage: tables.raw_transactions: 'raw/transactions' is not a 'catalog.schema.table'" in message


def test_source_must_name_a_known_table_or_a_path():
    with pytest.raises(ConfigError, match="--set ingest.source.table=nope: ingest.source.table: 'nope' is not a key of storage.tables"):
        load_config("local", CONF_DIR, ["ingest.source.table=nope"])
    with pytest.raises(ConfigError, match="set exactly one of 'table'"):
        load_config("local", CONF_DIR, ["ingest.source.path=/tmp/x"])


def test_relative_root_is_resolved_and_fingerprint_tracks_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("local", CONF_DIR)
    assert config.storage.root == str(tmp_path / "segmentation-data")
    assert config.fingerprint() == load_config("local", CONF_DIR).fingerprint()
    assert config.fingerprint() != load_config("local", CONF_DIR, ["generate.seed=7"]).fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        ("features.rfm.segments=[{name: Best, r: 6}]", r"features.rfm.segments.0.r: '6' is not a score range"),
        ("features.rfm.segments=[{name: Best, f: 5-3}]", r"features.rfm.segments.0.f: '5-3' is not a score range"),
        ("features.rfm.segments=[{name: A}, {name: A}]", r"features.rfm.segments: segment name\(s\) used twice: A"),
        (
            "features.value_pyramid.tiers=[{name: a, share: 0.6}, {name: b, share: 0.5}, {name: c}]",
            r"features.value_pyramid.tiers: the shares add up to 1.1",
        ),
        ("features.value_pyramid.tiers=[{name: a, share: 0.5}, {name: b, share: 0.2}]", r"the last takes the rest"),
        ("features.lifecycle=[{name: x, when: ''}]", r"features.lifecycle.0.when: String should have at least 1 character"),
        ("as_of=2025-02-30", r"--set as_of=2025-02-30: value is not valid YAML: day is out of range"),
        ("ingest.channels=[store, 'web shop']", r"channel 'web shop' must be letters, digits and underscores"),
        ("generate.dropout_log_odds.return_rate=.nan", r"generate.dropout_log_odds.return_rate: Input should be a finite number"),
    ],
)
def test_tiering_settings_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", CONF_DIR, [override])


def test_segment_map_rows_read_as_conditions():
    segments = load_config("local", CONF_DIR).features.rfm.segments
    assert segments[0].name == "Champions"
    assert segments[0].condition() == "r_score = 5 AND f_score BETWEEN 4 AND 5 AND m_score BETWEEN 4 AND 5"
    assert [s.name for s in segments][-1] == "Lost"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["cluster.k_min=5", "cluster.k_max=4"],
         r"--set cluster.k_min=5 \+ --set cluster.k_max=4: cluster.k_min, cluster.k_max: k_max 4 is below k_min 5"),
        (["cluster.k=1"], r"--set cluster.k=1: cluster.k: Input should be greater than or equal to 2"),
        (["as_of=1985-06-30"],
         r"--set as_of=1985-06-30 \+ \S+base.yaml: as_of, ingest.min_timestamp: as_of 1985-06-30 is before "
         r"ingest.min_timestamp 1990-01-01: ingest rejects every transaction that old"),
        (["as_of=2025-06-30", "ingest.min_timestamp=2026-01-01"],
         r"--set as_of=2025-06-30 \+ --set ingest.min_timestamp=2026-01-01: as_of, ingest.min_timestamp: as_of 2025-06-30 is before"),
        (["ingest.reference_time=1989-12-30T00:00:00"],
         r"--set ingest.reference_time=1989-12-30T00:00:00 \+ \S+base.yaml: ingest.reference_time, ingest.min_timestamp: "
         r"reference_time 1989-12-30 00:00:00 \(plus future_tolerance_days\) is before min_timestamp 1990-01-01"),
        (["ingest.future_tolerance_days=-1"],
         r"--set ingest.future_tolerance_days=-1: ingest.future_tolerance_days: Input should be greater than or equal to 0"),
        (["ingest.max_abs_amount=0"], r"ingest.max_abs_amount: Input should be greater than 0"),
        (["generate.start_date=2025-01-01", "generate.end_date=2024-12-31"],
         r"generate.start_date, generate.end_date: end_date 2024-12-31 must be after start_date 2025-01-01"),
        (["features.quantile_relative_error=0.5"], r"features.quantile_relative_error: Input should be less than 0.5"),
        (["features.value_pyramid.tiers=[{name: a, share: 0}, {name: b}]"],
         r"features.value_pyramid.tiers.0.share: Input should be greater than 0"),
        (["churn.risk_tiers=[{name: low, min_probability: 0.2}, {name: high, min_probability: 0.7}, {name: rest}]"],
         r"churn.risk_tiers: min_probability must fall strictly from the first tier to the last: \[0.2, 0.7\]"),
        (["churn.risk_tiers=[{name: high, min_probability: 1.2}, {name: rest}]"],
         r"churn.risk_tiers.0.min_probability: Input should be less than 1"),
        (["churn.contact_budget=0"], r"churn.contact_budget: Input should be greater than 0"),
        (["churn.training_cutoffs=0"], r"churn: training_cutoffs must be at least 1"),
        (["tiers.tracked=[value_tier, value_tier]"], r"tiers.tracked: must be a non-empty list without repeats"),
    ],
)
def test_impossible_cut_offs_name_their_keys_and_where_they_were_set(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("local", CONF_DIR, overrides)


def test_no_configuration_key_has_a_default_in_code():
    """base.yaml is the one place a default is written: a default in a model would be a
    second copy that can drift from it. Only rows of lists (rules, tiers, events) keep the
    defaults of their optional fields, since base.yaml sets whole lists, not rows."""
    import inspect
    import types
    import typing

    from pydantic import BaseModel

    from segmentation import config as module

    sections = [
        cls for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, module._Section) and cls not in (module._Section, module._Row)
    ]
    with_default = [
        f"{cls.__name__}.{name}"
        for cls in sections if not issubclass(cls, module._Row)
        for name, field in cls.model_fields.items() if not field.is_required()
    ]
    assert with_default == [], f"set these in segmentation/conf/base.yaml, not in the model: {with_default}"

    def rows_outside_lists(model: type[BaseModel], path: str) -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
            for candidate in typing.get_args(annotation) if is_union else (annotation,):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    if issubclass(candidate, module._Row):
                        found.append(f"{path}{name}")
                    found.extend(rows_outside_lists(candidate, f"{path}{name}."))
        return found

    # a row's defaults are allowed only because a list holds it; a row as a section would hide one
    assert rows_outside_lists(module.Config, "") == []


def test_the_package_configuration_is_the_fallback_and_the_only_copy(tmp_path, monkeypatch):
    """An installed wheel runs in an empty folder: with no --conf-dir, no $SEGMENTATION_CONF_DIR
    and no ./conf/base.yaml, the package's own folder is used. It is the repository's only
    copy of the YAML files, and the wheel ships all of them."""
    import tomllib

    from segmentation.config import CONF_DIR_ENV, PACKAGE_CONF_DIR, default_conf_dir
    from tests.conftest import REPO

    monkeypatch.delenv(CONF_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_conf_dir() == PACKAGE_CONF_DIR == CONF_DIR
    assert load_config("local").storage.root == str(tmp_path / "segmentation-data")
    (tmp_path / "conf").mkdir()  # a conf/ without base.yaml (the repository's, say) is not a configuration
    assert default_conf_dir() == PACKAGE_CONF_DIR
    own = _conf_dir(tmp_path / "conf")
    assert default_conf_dir() == own
    monkeypatch.setenv(CONF_DIR_ENV, str(tmp_path / "elsewhere"))
    assert default_conf_dir() == tmp_path / "elsewhere"

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in package_data["segmentation"] for p in (REPO / "segmentation").glob(pattern)}
    assert shipped == set(PACKAGE_CONF_DIR.glob("*.yaml")) and {p.name for p in shipped} >= {
        "base.yaml", "local.yaml", "cluster.yaml", "databricks.yaml"
    }
    names = {p.name for p in shipped}
    found = [*REPO.glob("*.yaml"), *(p for top in ("conf", "jobs", "notebooks", "segmentation", "tests")
                                     for p in (REPO / top).glob("**/*.yaml"))]
    copies = [p for p in found if p.name in names and p.parent != PACKAGE_CONF_DIR]
    assert copies == [], "a second copy of a configuration file can drift from the package's"


def test_a_relative_key_file_is_read_from_the_configuration_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deployment").mkdir()
    conf = _conf_dir(tmp_path / "deployment", local="privacy:\n  key_file: secrets/key\n")
    assert load_config("local", conf).privacy.key_file == str(conf / "secrets" / "key")
    # the package's own folder is no place for a key: the current directory instead
    assert load_config("local", CONF_DIR, ["privacy.key_file=key"]).privacy.key_file == str(tmp_path / "key")


def test_notebooks_resolve_relative_paths_against_the_project_folder(tmp_path, monkeypatch):
    """A notebook opened from notebooks/ sees the tables of `segmentation run` started in the
    project folder: the folder above a configuration folder, or the checkout of the package's."""
    import segmentation.spark
    from segmentation.config import CONF_DIR_ENV
    from segmentation.stages.context import notebook_context
    from tests.conftest import REPO

    monkeypatch.setattr(segmentation.spark, "get_spark", lambda settings: None)
    for name in (CONF_DIR_ENV, "SEGMENTATION_ENV", "SEGMENTATION_SET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(REPO / "notebooks")
    assert notebook_context("local").config.storage.root == str(REPO / "segmentation-data")
    (tmp_path / "project" / "conf").mkdir(parents=True)
    monkeypatch.setenv(CONF_DIR_ENV, str(_conf_dir(tmp_path / "project" / "conf", local="")))
    assert notebook_context("local").config.storage.root == str(tmp_path / "project" / "segmentation-data")
