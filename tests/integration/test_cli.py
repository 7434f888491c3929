"""The `segmentation` command and the jobs/ scripts as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CONF_DIR, REPO

BIN = Path(sys.executable).parent


def run(*args, cwd=REPO, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_help_lists_every_stage():
    result = run(str(BIN / "segmentation"), "--help")
    assert result.returncode == 0
    for command in ("setup", "generate", "ingest", "features", "clv", "cluster", "churn", "run"):
        assert command in result.stdout
    ingest_help = run(str(BIN / "segmentation"), "ingest", "--help")
    assert "--source PATH" in ingest_help.stdout and "--set KEY=VALUE" in ingest_help.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["generate", "--customers", "many"], "argument --customers: 'many' is not a whole number of at least 1"),
        (["generate", "--customers", "0"], "argument --customers: '0' is not a whole number of at least 1"),
        (["ingest", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run(str(BIN / "segmentation"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_bad_configuration_exits_1_naming_the_source_and_key(tmp_path):
    result = run(str(BIN / "segmentation"), "generate", "--set", "generate.customers=0", cwd=tmp_path)
    assert result.returncode == 1
    assert "--set generate.customers=0: generate.customers: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr
    result = run(str(BIN / "segmentation"), "run", "--env", "staging", cwd=tmp_path)
    assert result.returncode == 1 and "no such environment file" in result.stderr


def test_spark_submit_without_delta_jars_says_what_to_pass(tmp_path):
    result = run(
        str(BIN / "spark-submit"), "--master", "local[1]", str(REPO / "jobs" / "ingest.py"), "--conf-dir", str(CONF_DIR),
        "--set", f"storage.root={tmp_path}", cwd=tmp_path, env={"PYSPARK_PYTHON": sys.executable},
    )
    assert result.returncode == 1
    assert 'spark-submit --jars "$(segmentation setup --print-jars)"' in result.stdout + result.stderr


def test_the_sessions_map_the_class_data_archive_setup_made(spark, tmp_path):
    """`make test` runs `segmentation setup` first, which makes the archive; the test session's
    JVM was started with it, and a JVM on that session's classpath maps it (with -Xshare:on a
    JVM the archive does not fit fails to start: checked with another classpath)."""
    from segmentation.jvm import archive_path
    from segmentation.spark import java_binary
    from tests.conftest import make_config

    archive = archive_path(make_config(tmp_path).spark)
    assert archive.is_file(), f"segmentation setup made no class-data archive ({archive})"
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    assert f"-XX:SharedArchiveFile={archive}" in list(runtime.getInputArguments())
    classpath = spark.sparkContext._jvm.java.lang.System.getProperty("java.class.path")
    strict = [str(java_binary()), "-Xshare:on", f"-XX:SharedArchiveFile={archive}"]
    fits = run(*strict, "-cp", classpath, "-version")
    assert fits.returncode == 0, fits.stderr
    other = run(*strict, "-cp", str(tmp_path), "-version")
    assert other.returncode != 0 and "shared class paths mismatch" in other.stderr
    # what spark-submit's driver is given (--driver-java-options), from the same archive
    printed = run(str(BIN / "segmentation"), "setup", "--print-java-options")
    assert printed.returncode == 0 and f"-XX:SharedArchiveFile={archive}" in printed.stdout.split()
