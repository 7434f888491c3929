"""Churn-risk tiers: configurable probability cut-offs, highest tier first."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from segmentation.config import RiskTier


def risk_tier(probability: Column, tiers: list[RiskTier]) -> Column:
    """The first tier whose min_probability the probability reaches; the last tier otherwise
    (null stays null)."""
    tier: Column = F.lit(tiers[-1].name)
    for t in reversed(tiers[:-1]):
        tier = F.when(probability >= F.lit(t.min_probability), F.lit(t.name)).otherwise(tier)
    return F.when(probability.isNotNull(), tier)
