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
    with pytest.raises(ConfigError, match="ingest.source.table 'nope' is not a key of storage.tables"):
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
