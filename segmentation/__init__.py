"""Distributed customer tiering on Apache Spark, Delta Lake and MLflow."""

__version__ = "0.1.0"
