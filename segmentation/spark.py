"""The Spark session factory and the local cache of Delta Lake's jars.

Delta's JVM side must match pyspark's Spark version. `segmentation setup` fetches it once
from Maven Central (with Maven) into a local folder, so sessions start with no network.
Where a session already exists (Databricks, a notebook, a test) it is used as it is.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

from segmentation.config import CACHE_DIR, SparkConfig
from segmentation.errors import SetupError
from segmentation.jvm import DRIVER_OPTIONS, usable_archive, with_archive

log = logging.getLogger(__name__)

JARS_DIR_ENV = "SEGMENTATION_JARS_DIR"
REMOTE_ENV = "SPARK_REMOTE"  # pyspark's own: sc://host:port of a Spark Connect server
# Spark's log level at start (SparkContext reads it), so no call into the JVM sets it.
LOG_LEVEL = "spark.log.level"
_MANIFEST = "jars.txt"
DELTA_SQL = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Settings an existing session (Databricks, notebook) is given; the rest of spark.conf
# only applies to sessions this factory builds.
_RUNTIME_CONF = ("spark.sql.session.timeZone",)
# The settings a Spark Connect client may give its session (Spark SQL's and Delta's).
_SESSION_CONF = ("spark.sql.", "spark.databricks.")


def delta_artifact() -> str:
    """The Maven coordinate of the Delta jar that matches the installed pyspark and delta-spark."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"


def default_jars_dir() -> Path:
    if os.environ.get(JARS_DIR_ENV):
        return Path(os.environ[JARS_DIR_ENV])
    import pyspark

    name = f"delta-{metadata.version('delta-spark')}-spark-{pyspark.__version__}"
    return CACHE_DIR / "jars" / name


def configured_jars_dir(config: SparkConfig) -> Path:
    """Where this configuration keeps Delta's jars: `spark.jars_dir`, else the default cache."""
    return Path(config.jars_dir) if config.jars_dir else default_jars_dir()


_JAVA_HINT = (
    "Java 17 is required: install it (Debian/Ubuntu: 'apt-get install openjdk-17-jdk-headless', "
    "macOS: 'brew install openjdk@17') and put it on PATH or set JAVA_HOME"
)


def java_binary() -> Path:
    """The `java` Spark will start (JAVA_HOME's, else the first on PATH), or a SetupError
    saying how to get Java 17."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise SetupError(f"no Java found (JAVA_HOME={java_home!r}, PATH has no 'java'). {_JAVA_HINT}")
    return Path(java)


@functools.lru_cache(maxsize=4)
def _version_text(java: Path) -> str:
    result = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)
    return result.stderr + result.stdout


def java_version_text() -> str:
    """What `java -version` says (asked once per Java)."""
    return _version_text(java_binary())


def java_major_version() -> int:
    """The major version of the `java` Spark will start, or a SetupError saying how to get Java 17."""
    java = java_binary()
    match = re.search(r'version "(\d+)(?:\.(\d+))?', java_version_text())
    if not match:
        raise SetupError(f"could not read the version of {java}. {_JAVA_HINT}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise SetupError(f"{java} is Java {major}. {_JAVA_HINT}")
    return major


def local_delta_jars(jars_dir: Path) -> list[Path] | None:
    """The jars listed in the folder's manifest, or None when the folder is not complete."""
    manifest = jars_dir / _MANIFEST
    if not manifest.is_file():
        return None
    jars = [jars_dir / line.strip() for line in manifest.read_text().splitlines() if line.strip()]
    if not jars or not all(jar.is_file() for jar in jars):
        return None
    return jars


def fetch_delta_jars(jars_dir: Path | None = None) -> list[Path]:
    """Fetch Delta's jars and their runtime dependencies with Maven into `jars_dir`.

    Dependencies pyspark already ships (Hadoop, Jackson, Parquet, Scala, ...) are left out,
    so the jars never shadow Spark's own versions of them.
    """
    jars_dir = jars_dir or default_jars_dir()
    existing = local_delta_jars(jars_dir)
    if existing:
        return existing
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SetupError(
            "Maven ('mvn') is not installed, so Delta's jars cannot be cached locally. Install Maven "
            "(Debian/Ubuntu: 'apt-get install maven'), or set spark.delta: packages to let Spark "
            f"download {delta_artifact()} at session start (needs network)"
        )
    group, artifact, version = delta_artifact().split(":")
    pom = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>segmentation.local</groupId><artifactId>delta-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies><dependency>
    <groupId>{group}</groupId><artifactId>{artifact}</artifactId><version>{version}</version>
  </dependency></dependencies>
</project>
"""
    with tempfile.TemporaryDirectory(prefix="segmentation-jars-") as work:
        (Path(work) / "pom.xml").write_text(pom)
        staging = Path(work) / "jars"
        log.info("fetching %s and its dependencies with Maven", delta_artifact())
        result = subprocess.run(
            [mvn, "-B", "-q", "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            cwd=work, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise SetupError(f"Maven could not fetch {delta_artifact()}:\n{tail}")
        shipped = _spark_shipped_artifacts()
        keep = sorted(j for j in staging.glob("*.jar") if _artifact_name(j.name) not in shipped)
        jars_dir.mkdir(parents=True, exist_ok=True)
        for jar in keep:
            shutil.copy2(jar, jars_dir / jar.name)
    (jars_dir / _MANIFEST).write_text("".join(f"{jar.name}\n" for jar in keep))
    log.info("Delta jars cached in %s (%d jars)", jars_dir, len(keep))
    return [jars_dir / jar.name for jar in keep]


def _artifact_name(jar_name: str) -> str:
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar_name)


def _spark_shipped_artifacts() -> set[str]:
    import pyspark

    return {_artifact_name(j.name) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}


def running_on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def remote_url(config: SparkConfig) -> str | None:
    """The Spark Connect server to use: `spark.remote`, else pyspark's SPARK_REMOTE; None: a classic session."""
    return config.remote or os.environ.get(REMOTE_ENV) or None


def get_spark(config: SparkConfig):
    """The one SparkSession of a job: the active one if there is one, else a new one (a
    Spark Connect session when `remote_url` names a server, else a classic one)."""
    from pyspark.sql import SparkSession

    remote = remote_url(config)
    active = SparkSession.getActiveSession()
    if active is None and remote:
        return _connect_session(config, remote)
    if active is None and running_on_databricks():
        # A job's Python process (script or wheel task) need not have made the cluster's
        # session active yet; the builder hands back that session as the cluster configured it.
        active = SparkSession.builder.getOrCreate()
    if active is not None:
        for key in _RUNTIME_CONF:
            if key in config.conf:
                active.conf.set(key, str(config.conf[key]))
        log.info("using the existing Spark session (Spark %s)", active.version)
        return active
    java_major_version()
    if (config.master or "").startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # Python workers must run this interpreter (its packages), not whatever `python3` is first on PATH.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.appName(config.app_name)
    if config.master:
        builder = builder.master(config.master)
    for key, value in config.conf.items():
        builder = builder.config(key, conf_value(value))
    archive = usable_archive(config, starts_jvm="PYSPARK_GATEWAY_PORT" not in os.environ)
    if archive is not None:
        builder = builder.config(DRIVER_OPTIONS, with_archive(conf_value(config.conf.get(DRIVER_OPTIONS, "")), archive))
    mode = _delta_mode(config)
    # provided: the cluster (or spark-submit --jars / --packages) supplies Delta's jars; its
    # SQL extension and catalog are still needed, unless the cluster configured its own.
    configured = _submitted_conf() if mode == "provided" else {}
    for key, value in DELTA_SQL.items():
        if key not in configured:
            builder = builder.config(key, value)
    if mode == "local-jars":
        jars = local_delta_jars(configured_jars_dir(config))
        if jars is None:
            raise SetupError(f"Delta jars not found in {configured_jars_dir(config)}: run 'segmentation setup' once (needs Maven)")
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    elif mode == "packages":
        log.warning("Delta jars are not cached locally: Spark will download %s (needs network)", delta_artifact())
        builder = builder.config("spark.jars.packages", delta_artifact())
    spark = builder.config(LOG_LEVEL, config.log_level).getOrCreate()
    _quiet_query_context_loggers(config)
    _check_delta_loaded(spark, mode)
    log.info("Spark %s session started (master %s, Delta jars: %s, class-data archive: %s)", spark.version,
             spark.conf.get("spark.master"), mode, archive or "none")
    return spark


def _connect_session(config: SparkConfig, remote: str):
    """A Spark Connect session on `remote`: no JVM here, so no Java and no Delta jars; the
    server has Delta. Settings a client cannot change (the driver's memory, the UI) are the
    server's (`python -m segmentation.connect serve` starts it with them) and left out here."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote).appName(config.app_name)
    for key, value in config.conf.items():
        if key.startswith(_SESSION_CONF):
            builder = builder.config(key, conf_value(value))
    server_side = sorted(key for key in config.conf if not key.startswith(_SESSION_CONF))
    if server_side:
        log.info("Spark Connect: settings left to the server (a client cannot change them): %s", ", ".join(server_side))
    spark = builder.getOrCreate()
    # Stop the session before the interpreter tears down: Spark ML models fitted through it
    # release their server-side copies when they are garbage-collected, and at shutdown that
    # call waits forever on the closing gRPC channel (the process would never exit). Once
    # the session is stopped, they skip the call.
    atexit.register(_stop_quietly, spark)
    # Registers Delta's commit conflicts in pyspark's Connect error conversion, so they are
    # raised as delta.exceptions classes (tables retries them) as on a classic session.
    importlib.import_module("delta.connect.exceptions")
    _quiet_query_context_loggers(config)
    _check_delta_loaded(spark, "server")
    if not running_on_databricks():
        _check_shared_files(spark, remote)
    log.info("Spark Connect session on %s (Spark %s)", remote, spark.version)
    return spark


def _stop_quietly(spark) -> None:
    try:
        spark.stop()
    except Exception as error:  # the server may be gone already; the process is ending anyway
        log.debug("Spark Connect session stop at exit: %s", error)


def _check_shared_files(spark, remote: str) -> None:
    """Fail at start unless the Connect server sees this machine's files: the Spark ML models
    go to and come from MLflow through them (mlflow.spark's own way needs a local JVM)."""
    from pyspark.errors import AnalysisException

    with tempfile.TemporaryDirectory(prefix="segmentation-connect-") as folder:
        (Path(folder) / "probe").write_text("probe")
        try:
            seen = spark.read.format("binaryFile").load(folder).inputFiles()
        except AnalysisException:
            seen = []
    if not seen:
        raise SetupError(
            f"the Spark Connect server {remote} does not see this machine's files, through which Spark ML models are "
            "logged to and loaded from MLflow (mlflow.spark otherwise needs a local JVM): run the server on this "
            "machine ('make connect-server')"
        )


def _submitted_conf() -> dict[str, str]:
    """The Spark settings of a JVM started before this code: under spark-submit, those of
    spark-defaults.conf and --conf. Empty when this process will start the JVM itself, and
    under Spark Connect, which has no JVM here to ask.

    No session exists yet to read them through spark.conf: whether to add Delta's SQL
    extension must be known before the session starts (a static setting). So they are read
    from the JVM spark-submit started, through its gateway: a classic session's path only."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ or is_connect():
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; no new one
    return dict(SparkConf().getAll())  # loadDefaults: the JVM's spark.* system properties


def is_connect() -> bool:
    """Whether this process's sessions are Spark Connect sessions: no SparkContext, no JVM
    gateway and no RDDs on this side. pyspark sets it when a session goes to a server
    (SPARK_REMOTE, spark.remote, Databricks Connect, serverless)."""
    from pyspark.sql.utils import is_remote

    return is_remote()


# PySpark logs every analysis error a second time, as a multi-line JSON record, through
# these loggers; the product reports those errors itself (a rule naming an unknown column).
_QUERY_CONTEXT_LOGGERS = ("DataFrameQueryContextLogger", "SQLQueryContextLogger")


def _quiet_query_context_loggers(config: SparkConfig) -> None:
    if config.log_level == "DEBUG":
        return
    from pyspark.logger import PySparkLogger

    for name in _QUERY_CONTEXT_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def delta_loaded(spark) -> bool:
    """Whether the session reads the delta format. Asked through Spark itself (the analysis of
    a read of a path that is not there), so it works on a classic and a Connect session."""
    try:
        spark.read.format("delta").load(f"/nonexistent-{uuid.uuid4().hex}").schema
    except Exception as exc:  # a PySparkException, or on a classic session a Py4JJavaError (SparkClassNotFoundException)
        text = str(exc)
        return "DATA_SOURCE_NOT_FOUND" not in text and "delta.DefaultSource" not in text
    return True


def _check_delta_loaded(spark, mode: str) -> None:
    """Fail at start, with what to do, when the session has no Delta Lake."""
    if not delta_loaded(spark):
        if mode == "server":
            advice = "the Spark Connect server has no Delta Lake: start it with 'make connect-server' (python -m segmentation.connect serve)"
        elif "PYSPARK_GATEWAY_PORT" in os.environ:
            advice = (
                "under spark-submit the JVM starts before this code runs: pass the jars on the command line, "
                "spark-submit --jars \"$(segmentation setup --print-jars)\" ... (or --packages " + delta_artifact() + ")"
            )
        elif mode == "provided":
            advice = "spark.delta is 'provided' but the cluster has no Delta Lake: install it there or use spark.delta: auto"
        else:
            advice = "run 'segmentation setup' to cache the jars (or spark.delta: packages with network access)"
        raise SetupError(f"Delta Lake is not on Spark's classpath ({delta_artifact()}): {advice}") from None


def _delta_mode(config: SparkConfig) -> str:
    if config.delta != "auto":
        return config.delta
    return "local-jars" if local_delta_jars(configured_jars_dir(config)) else "packages"


def conf_value(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
