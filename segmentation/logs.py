"""Logging set-up and stage timing: every stage logs its start, end, row counts and seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("segmentation")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUIET = ("py4j", "mlflow", "alembic", "urllib3", "matplotlib")


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_segmentation", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._segmentation = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("segmentation").setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def stage(name: str) -> Iterator[dict[str, object]]:
    """Time a stage; what the stage puts in the yielded dict is logged at its end."""
    summary: dict[str, object] = {}
    started = time.perf_counter()
    log.info("stage %s: started", name)
    try:
        yield summary
    except Exception:
        log.error("stage %s: failed after %.1f s", name, time.perf_counter() - started)
        raise
    summary["seconds"] = round(time.perf_counter() - started, 2)
    details = ", ".join(f"{key}={value}" for key, value in summary.items())
    log.info("stage %s: finished (%s)", name, details)
