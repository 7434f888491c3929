"""A local Spark Connect server with Delta Lake, for clients that set SPARK_REMOTE.

pyspark's pip package ships the Spark Connect server jar but not `start-connect-server`:
`spark-submit --class org.apache.spark.sql.connect.service.SparkConnectServer` starts it,
with the Delta jars `segmentation setup` cached (no network), Delta's SQL extension and
catalog, and the configured Spark settings. Its Python workers run the project's pandas
UDFs, so PYSPARK_PYTHON is this interpreter (the project's environment).

    python -m segmentation.connect serve [--port 15002] [--env local] [--set KEY=VALUE ...]
    SPARK_REMOTE=sc://localhost:15002 segmentation run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from segmentation.config import SparkConfig
from segmentation.errors import SetupError

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_PORT = 15002
PORT_SETTING = "spark.connect.grpc.binding.port"
# Settings of the server's driver JVM (a client cannot change them).
_SERVER_ONLY = ("spark.driver.memory", "spark.driver.extraJavaOptions")


def server_command(config: SparkConfig, port: int, jars: list[Path]) -> list[str]:
    """The spark-submit command line of a Spark Connect server on `port` with Delta's `jars`,
    `config`'s master, log level and settings."""
    from segmentation.jvm import DRIVER_OPTIONS, archive_options
    from segmentation.spark import DELTA_SQL, conf_value

    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    settings = {
        **{key: conf_value(value) for key, value in config.conf.items()},
        **DELTA_SQL,
        "spark.log.level": config.log_level,
        PORT_SETTING: str(port),
    }
    command = [str(spark_submit), "--class", SERVER_CLASS, "--name", f"{config.app_name}-connect"]
    if config.master:
        command += ["--master", config.master]
    options = archive_options(config, settings.get(DRIVER_OPTIONS))  # spark-submit starts the server's JVM from pyspark's jars
    if options:
        settings[DRIVER_OPTIONS] = options
    if "spark.driver.memory" in settings:
        command += ["--driver-memory", settings.pop("spark.driver.memory")]
    command += ["--jars", ",".join(str(jar) for jar in jars)]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return command


def server_environment(python: str = sys.executable) -> dict[str, str]:
    """The server's environment: its Python workers run `python` (this project's)."""
    return {**os.environ, "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}


def delta_jars(config: SparkConfig) -> list[Path]:
    from segmentation.spark import configured_jars_dir, local_delta_jars

    jars = local_delta_jars(configured_jars_dir(config))
    if jars is None:
        raise SetupError(f"Delta jars not found in {configured_jars_dir(config)}: run 'segmentation setup' once (needs Maven)")
    return jars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmentation.connect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["serve", "command"], help="serve: start the server; command: print its command line")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CONNECT_PORT") or DEFAULT_PORT))
    parser.add_argument("--env", default="local", help="configuration environment of the server's Spark settings")
    parser.add_argument("--conf-dir", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from segmentation.config import load_config
    from segmentation.spark import java_major_version

    config = load_config(args.env, args.conf_dir, args.overrides).spark
    try:
        java_major_version()
        command = server_command(config, args.port, delta_jars(config))
    except SetupError as exc:
        print(f"segmentation.connect: error: {exc}", file=sys.stderr)
        return 1
    if args.command == "command":
        print(" ".join(command))
        return 0
    print(f"Spark Connect server with Delta on port {args.port}: SPARK_REMOTE=sc://localhost:{args.port}", file=sys.stderr)
    os.execve(command[0], command, server_environment())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
