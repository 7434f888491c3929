"""Fixtures shared by the integration modules."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from segmentation.stages import churn
from segmentation.stages import cluster
from segmentation.stages import clv
from segmentation.stages import features
from segmentation.stages import pipeline
from segmentation.stages.context import StageContext
from tests.conftest import PLANTED_DROPOUT, SMALL_FEED, make_config

# Small and quick settings for the distributed and fault tests.
SETTINGS = ["generate.customers=300", "cluster.k=3", "cluster.restarts=1", "churn.model=logistic_regression", *SMALL_FEED,
            *PLANTED_DROPOUT]
FIRST, SECOND, THIRD = dt.date(2025, 10, 15), dt.date(2025, 11, 15), dt.date(2025, 12, 15)


def context(spark, root: Path, as_of: dt.date) -> StageContext:
    return StageContext(make_config(root, *SETTINGS, f"as_of={as_of}"), spark)


@pytest.fixture(scope="session")
def three_dates(spark, tmp_path_factory) -> Path:
    """Generated customers through the whole local pipeline as of FIRST (as `segmentation
    run --as-of FIRST` does it), then every input of the tier tables as of SECOND and THIRD;
    the storage root."""
    root = tmp_path_factory.mktemp("three_dates")
    pipeline.run(context(spark, root, FIRST), argparse.Namespace(generate=False, train_churn=False, until="report"))
    for as_of in (SECOND, THIRD):
        ctx = context(spark, root, as_of)
        features.run(ctx)
        clv.run(ctx)
        cluster.run(ctx)
        churn.score(ctx)
    return root
