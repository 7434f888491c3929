"""Matplotlib for the jobs' MLflow figures: the non-interactive backend, chosen once before
pyplot is imported, since jobs run without a display."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
