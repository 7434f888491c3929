"""The `segmentation` command: one subcommand per stage, plus `run` for the whole pipeline."""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
import time

from segmentation.errors import SegmentationError

log = logging.getLogger("segmentation.cli")

# subcommand -> module of the library with HELP, add_arguments, config_overrides and run
STAGES = {
    "generate": "segmentation.stages.generate",
    "ingest": "segmentation.stages.ingest",
    "features": "segmentation.stages.features",
    "clv": "segmentation.stages.clv",
    "cluster": "segmentation.stages.cluster",
    "churn": "segmentation.stages.churn",
    "tiers": "segmentation.stages.tiers",
    "outcomes": "segmentation.stages.outcomes",
    "report": "segmentation.stages.report",
    "run": "segmentation.stages.pipeline",
    "export": "segmentation.stages.export",
    "erase": "segmentation.erase",
    "bench": "segmentation.bench",
}

DESCRIPTION = """Customer tiering on Spark, Delta Lake and MLflow.

Stages read and write Delta tables whose locations come from the configuration (base.yaml,
then the --env overlay, then --set overrides; the package ships its own). Typical first run:

  segmentation setup          check Java, cache Delta's jars (once per machine)
  segmentation run            generate a demo feed if none exists, then run every stage
"""


class _Parser(argparse.ArgumentParser):
    """Bad arguments exit with status 2 and one line saying why."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", default="local", help="configuration overlay: <conf-dir>/<env>.yaml (default: local)")
    common.add_argument(
        "--conf-dir",
        help="configuration folder with base.yaml and the overlays (default: $SEGMENTATION_CONF_DIR, else ./conf, "
        "else the package's own)",
    )
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one configuration value, e.g. --set ingest.max_rejected_share=0.1 (repeatable)",
    )
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default: from conf)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segmentation", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    common = _common_options()
    setup = commands.add_parser("setup", parents=[common], help="check Java, cache Delta Lake's jars for offline sessions and make the class-data archive")
    setup.add_argument("--print-jars", action="store_true", help="print the cached jars comma-separated, for spark-submit --jars")
    setup.add_argument("--print-java-options", action="store_true",
                       help="print the Java options that map the class-data archive, for spark-submit --driver-java-options")
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, parents=[common], help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segmentation.config import load_config
    from segmentation.logs import configure_logging

    try:
        if args.command == "setup":
            configure_logging(args.log_level or "INFO")
            return _setup(args)
        module = importlib.import_module(STAGES[args.command])
        config = load_config(args.env, args.conf_dir, [*args.overrides, *module.config_overrides(args)])
        configure_logging(args.log_level or config.logging.level)
        started = time.perf_counter()
        from segmentation.stages.context import StageContext
        from segmentation.spark import get_spark

        context = StageContext(config, get_spark(config.spark))
        log.info("%s: pipeline run %s, environment %s, configuration %s", args.command, context.pipeline_run_id, config.environment, config.fingerprint())
        module.run(context, args)
        log.info("%s: done in %.1f s", args.command, time.perf_counter() - started)
        return 0
    except SegmentationError as exc:
        print(f"segmentation {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _setup(args: argparse.Namespace) -> int:
    from segmentation.config import load_config
    from segmentation.spark import delta_artifact, configured_jars_dir, fetch_delta_jars, java_major_version, remote_url

    config = load_config(args.env, args.conf_dir, args.overrides)
    folder = configured_jars_dir(config.spark)
    if args.print_jars:
        print(",".join(str(jar) for jar in fetch_delta_jars(folder)))
        return 0
    if args.print_java_options:  # nothing when setup made no archive (or spark.class_archive is false)
        from segmentation.jvm import archive_options

        print(archive_options(config.spark, None))
        return 0
    if remote_url(config.spark):
        print(f"sessions go to the Spark Connect server {remote_url(config.spark)}: no Java and no Delta jars needed here")
        return 0
    print(f"Java {java_major_version()} found")
    if config.spark.delta in ("provided", "packages"):
        print(f"spark.delta is '{config.spark.delta}' in environment '{config.environment}': no local jars needed")
        return 0
    jars = fetch_delta_jars(folder)
    print(f"{delta_artifact()} ready in {folder} ({len(jars)} jars): Spark sessions start without network")
    if config.spark.class_archive:
        from segmentation.jvm import build_archive

        try:
            archive, made = build_archive(config.spark)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:  # sessions still start, only more slowly
            print(f"warning: {exc}; Spark sessions start without the class-data archive", file=sys.stderr)
        else:
            print(f"class-data archive {'made' if made else 'ready'} in {archive}: Spark's classes are mapped when a session starts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
