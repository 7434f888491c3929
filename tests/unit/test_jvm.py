"""The class-data archive's decisions, without a JVM: what it is keyed by, the options a
session's driver gets, when a session maps it, and which archives setup removes."""

from __future__ import annotations

import json
import os
import time

import pytest

from segmentation import jvm
from tests.conftest import make_config

KEY = dict(java="/usr/bin/java", java_version='openjdk version "17.0.15"', spark_home="/venv/pyspark",
           spark_version="4.2.0", jars=["/jars/delta-spark.jar", "/jars/delta-storage.jar"])


def test_the_archive_is_keyed_by_the_java_the_installation_and_the_jars():
    key = jvm.archive_key(**KEY)
    assert jvm.archive_key(**{**KEY, "jars": list(reversed(KEY["jars"]))}) == key  # the jars' order aside
    for field, other in [("java", "/opt/jdk/bin/java"), ("java_version", 'openjdk version "17.0.16"'),
                         ("spark_home", "/other-venv/pyspark"), ("spark_version", "4.2.1"), ("jars", KEY["jars"][:1])]:
        assert jvm.archive_key(**{**KEY, field: other}) != key, field


def test_the_driver_keeps_its_options_and_maps_the_archive_quietly(tmp_path):
    archive = tmp_path / "spark-classes-x.jsa"
    options = jvm.with_archive("-XX:+UseParallelGC  -Xss4m", archive).split()
    assert options[:2] == ["-XX:+UseParallelGC", "-Xss4m"]
    assert f"-XX:SharedArchiveFile={archive}" in options
    # a JVM the archive does not fit starts without it, and says nothing
    assert {"-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"} <= set(options)
    assert jvm.with_archive(None, archive).split()[0] == f"-XX:SharedArchiveFile={archive}"
    written = jvm.with_archive_written("-XX:+UseParallelGC", archive).split()
    assert written[0] == "-XX:+UseParallelGC" and f"-XX:ArchiveClassesAtExit={archive}" in written
    assert not any(option.startswith("-XX:SharedArchiveFile") for option in written)


def test_a_session_maps_the_archive_only_when_it_starts_the_jvm_and_setup_made_one(tmp_path, monkeypatch):
    config = make_config(tmp_path).spark
    archive = tmp_path / "spark-classes-x.jsa"
    monkeypatch.setattr(jvm, "archive_path", lambda settings, folder=jvm.ARCHIVE_DIR: archive)
    assert jvm.usable_archive(config, starts_jvm=True) is None  # setup made none
    archive.write_bytes(b"archive")
    assert jvm.usable_archive(config, starts_jvm=True) == archive
    assert jvm.usable_archive(config, starts_jvm=False) is None  # spark-submit started the JVM
    assert jvm.usable_archive(config.model_copy(update={"class_archive": False}), starts_jvm=True) is None
    # what the Connect server, setup and the cluster test ask: the driver's options, with the archive when there is one
    assert jvm.archive_options(config, "-Xss4m") == jvm.with_archive("-Xss4m", archive)
    assert jvm.archive_options(config, "-Xss4m", starts_jvm=False) == "-Xss4m"
    archive.unlink()
    assert jvm.archive_options(config, "-Xss4m") == "-Xss4m" and jvm.archive_options(config, None) == ""


def test_setup_removes_the_archives_of_installations_that_are_gone_and_stale_partial_ones(tmp_path):
    live_home = tmp_path / "venv" / "pyspark"
    live_home.mkdir(parents=True)

    def archive(name: str, home: str | None) -> None:
        (tmp_path / f"spark-classes-{name}.jsa").write_bytes(b"archive")
        if home is not None:
            (tmp_path / f"spark-classes-{name}.json").write_text(json.dumps({"spark_home": home}))

    archive("live", str(live_home))
    archive("gone", str(tmp_path / "deleted-venv" / "pyspark"))
    archive("unrecorded", None)
    stale, fresh = tmp_path / "spark-classes-a.jsa.1.partial", tmp_path / "spark-classes-b.jsa.2.partial"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))

    removed = jvm.remove_stale_archives(tmp_path)

    assert sorted(path.name for path in removed) == [
        "spark-classes-a.jsa.1.partial", "spark-classes-gone.jsa", "spark-classes-unrecorded.jsa"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "spark-classes-b.jsa.2.partial", "spark-classes-live.jsa", "spark-classes-live.json", "venv"]


@pytest.mark.parametrize("value", [True, False])
def test_the_setting_is_read_from_the_configuration(tmp_path, value):
    assert make_config(tmp_path, f"spark.class_archive={str(value).lower()}").spark.class_archive is value
