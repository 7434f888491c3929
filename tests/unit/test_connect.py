"""The Spark Connect server's command line and the choice between a Connect and a classic
session, without starting either."""

from pathlib import Path

from segmentation.config import load_config
from segmentation.connect import PORT_SETTING, SERVER_CLASS, server_command
from segmentation import jvm, profiling
from segmentation.spark import DELTA_SQL, REMOTE_ENV, _submitted_conf, is_connect, remote_url
from tests.conftest import CONF_DIR


def _settings(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--conf")


def test_the_server_runs_spark_connect_with_delta_and_the_configured_settings():
    config = load_config("local", CONF_DIR, ["spark.conf.spark.sql.shuffle.partitions=3", "spark.log_level=ERROR"]).spark
    jars = [Path("/jars/delta-spark.jar"), Path("/jars/delta-storage.jar")]
    command = server_command(config, 15010, jars)
    assert Path(command[0]).name == "spark-submit"
    assert command[command.index("--class") + 1] == SERVER_CLASS
    assert command[command.index("--master") + 1] == "local[2]"
    assert command[command.index("--driver-memory") + 1] == "6g"  # local.yaml's, as the driver's JVM option
    assert command[command.index("--jars") + 1] == "/jars/delta-spark.jar,/jars/delta-storage.jar"
    settings = _settings(command)
    assert settings[PORT_SETTING] == "15010"
    assert settings["spark.sql.shuffle.partitions"] == "3" and settings["spark.log.level"] == "ERROR"
    assert {key: settings[key] for key in DELTA_SQL} == DELTA_SQL
    assert "spark.driver.memory" not in settings and settings["spark.ui.showConsoleProgress"] == "false"


def test_the_servers_jvm_maps_the_class_data_archive_when_setup_made_one(tmp_path, monkeypatch):
    archive = tmp_path / "spark-classes-x.jsa"
    monkeypatch.setattr(jvm, "archive_path", lambda settings, folder=jvm.ARCHIVE_DIR: archive)
    config = load_config("local", CONF_DIR, ["spark.conf.spark.driver.extraJavaOptions=-XX:+UseParallelGC"]).spark
    jars = [Path("/jars/delta-spark.jar")]
    assert _settings(server_command(config, 15010, jars))[jvm.DRIVER_OPTIONS] == "-XX:+UseParallelGC"  # none made yet
    archive.write_bytes(b"archive")
    options = _settings(server_command(config, 15010, jars))[jvm.DRIVER_OPTIONS].split()
    assert options[0] == "-XX:+UseParallelGC" and f"-XX:SharedArchiveFile={archive}" in options
    off = config.model_copy(update={"class_archive": False})
    assert _settings(server_command(off, 15010, jars))[jvm.DRIVER_OPTIONS] == "-XX:+UseParallelGC"


def test_a_remote_address_from_the_configuration_or_spark_remote_selects_connect(monkeypatch):
    monkeypatch.delenv(REMOTE_ENV, raising=False)
    assert remote_url(load_config("local", CONF_DIR).spark) is None  # the classic session by default
    monkeypatch.setenv(REMOTE_ENV, "sc://localhost:15002")
    assert remote_url(load_config("local", CONF_DIR).spark) == "sc://localhost:15002"
    configured = load_config("local", CONF_DIR, ["spark.remote=sc://connect.example:443"]).spark
    assert remote_url(configured) == "sc://connect.example:443"  # the configuration wins


def test_under_connect_nothing_asks_a_jvm_for_settings_or_a_spark_context(monkeypatch):
    """A gateway port in the environment (spark-submit's) is not followed under Connect,
    and a stage's job group needs no SparkContext: neither touches the session or a JVM."""
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # nothing listens there: a JVM call would fail
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")  # pyspark's mark of a Connect session
    assert is_connect() and _submitted_conf() == {}
    with profiling.grouped(object(), "features"):  # a classic session would have its SparkContext asked
        pass
    assert profiling.spark_jobs(object()) is None


def test_a_delta_commit_conflict_is_recognised_through_connect_by_its_condition():
    """Through Spark Connect a lost commit arrives as the server's error with Delta's
    condition, not as delta-spark's exception class: the retry still recognises it, and
    nothing else."""
    from delta.exceptions import ConcurrentAppendException
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException, UnknownException

    from segmentation.tables import commit_conflict

    def through_connect(condition: str) -> Exception:
        return UnknownException("Files were added to the root of the table by a concurrent update.",
                                errorClass=condition, messageParameters={})

    assert commit_conflict(through_connect("DELTA_CONCURRENT_APPEND.WITH_PARTITION_HINT")) == "DELTA_CONCURRENT_APPEND.WITH_PARTITION_HINT"
    assert commit_conflict(through_connect("DELTA_METADATA_CHANGED")) == "DELTA_METADATA_CHANGED"
    assert commit_conflict(through_connect("DELTA_TABLE_NOT_FOUND")) is None
    assert commit_conflict(SparkConnectGrpcException("the server went away")) is None
    assert commit_conflict(ValueError("DELTA_CONCURRENT_APPEND")) is None
    assert commit_conflict(ConcurrentAppendException("conflict", None)) == "ConcurrentAppendException"
