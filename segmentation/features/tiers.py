"""Rule-based tiers on top of the customer features, written side by side:

- RFM: r/f/m scores 1-5 by quintile, the R-F-M cell and a named segment (first-match map);
- value pyramid: tiers by value rank (default: trailing 12-month revenue), with its Pareto summary;
- lifecycle stage and the business's threshold rules (first-match rule tables).

The only driver-side numbers are the quantile cut points (`TierCuts`), four per score.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation.config import FeaturesConfig, RfmConfig, ValuePyramidConfig
from segmentation.features.quantiles import even_probabilities, quantile_cuts, score_by_cuts
from segmentation.features.rules import Rule, with_first_match
from segmentation.schema import require_numeric_columns

RFM_BUCKETS = 5
TIER_COLUMNS = [
    "r_score", "f_score", "m_score", "rfm_cell", "rfm_segment", "value_tier", "lifecycle_stage", "business_tier",
]
# The Pareto summary always reports actual trailing revenue, whatever the tiers rank by.
PARETO_REVENUE = "revenue_365d"


@dataclass(frozen=True)
class TierCuts:
    """Quantile cut points, ascending. Recency cuts are on negated days (recent = high)."""

    recency: list[float] = field(default_factory=list)
    frequency: list[float] = field(default_factory=list)
    monetary: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return {"recency": self.recency, "frequency": self.frequency, "monetary": self.monetary, "value": self.value}


def value_tier_probabilities(pyramid: ValuePyramidConfig) -> list[float]:
    """Cut probabilities, bottom up: shares 5% / 15% / 30% / rest -> [0.5, 0.8, 0.95]."""
    cumulative, cuts = 0.0, []
    for tier in pyramid.tiers[:-1]:
        cumulative += tier.share  # type: ignore[operator]
        cuts.append(round(1.0 - cumulative, 10))
    return sorted(cuts)


def tier_cuts(features: DataFrame, config: FeaturesConfig) -> TierCuts:
    """The RFM and value-pyramid cut points, in one pass of approximate quantiles."""
    rfm, pyramid = config.rfm, config.value_pyramid
    _check_score_columns(features, config)
    quintiles = even_probabilities(RFM_BUCKETS)
    cuts = quantile_cuts(
        features,
        {
            "recency": (-F.col(rfm.recency), quintiles),
            "frequency": (F.col(rfm.frequency), quintiles),
            "monetary": (F.col(rfm.monetary), quintiles),
            "value": (F.col(pyramid.rank_by), value_tier_probabilities(pyramid)),
        },
        config.quantile_relative_error,
    )
    return TierCuts(**cuts)


def with_rfm_scores(df: DataFrame, cuts: TierCuts, rfm: RfmConfig) -> DataFrame:
    """r_score, f_score, m_score (1-5, a missing value scores 1) and the rfm_cell, e.g. "545"."""
    scores = {
        "r_score": score_by_cuts(-F.col(rfm.recency), cuts.recency),
        "f_score": score_by_cuts(F.col(rfm.frequency), cuts.frequency),
        "m_score": score_by_cuts(F.col(rfm.monetary), cuts.monetary),
    }
    scored = df.select("*", *[F.coalesce(score, F.lit(1)).alias(name) for name, score in scores.items()])
    return scored.select("*", F.concat(*[F.col(name).cast("string") for name in scores]).alias("rfm_cell"))


def with_value_tier(df: DataFrame, cuts: TierCuts, pyramid: ValuePyramidConfig) -> DataFrame:
    """value_tier: the pyramid tier by `rank_by` (equal values share a tier; missing = bottom tier)."""
    bottom_up = F.array(*[F.lit(tier.name) for tier in reversed(pyramid.tiers)])
    position = F.coalesce(score_by_cuts(F.col(pyramid.rank_by), cuts.value), F.lit(1))
    return df.select("*", F.element_at(bottom_up, position).alias("value_tier"))


def segment_rules(rfm: RfmConfig) -> list[Rule]:
    return [Rule(segment.name, segment.condition()) for segment in rfm.segments]


def expression_rules(rules) -> list[Rule]:
    return [Rule(rule.name, rule.when) for rule in rules]


def with_rule_tiers(features: DataFrame, cuts: TierCuts, config: FeaturesConfig) -> DataFrame:
    """The features plus every rule-based tier column (`TIER_COLUMNS`).

    Rules are checked against the columns available at their step (lifecycle rules may use
    the RFM scores and value tier; business rules also the lifecycle stage), so calling this
    with empty `TierCuts()` validates the whole configuration without running a job.
    """
    _check_score_columns(features, config)
    return (
        features.transform(with_rfm_scores, cuts, config.rfm)
        .transform(with_first_match, segment_rules(config.rfm), "rfm_segment", "features.rfm.segments")
        .transform(with_value_tier, cuts, config.value_pyramid)
        .transform(with_first_match, expression_rules(config.lifecycle), "lifecycle_stage", "features.lifecycle")
        .transform(
            with_first_match, expression_rules(config.business_rules), "business_tier", "features.business_rules"
        )
    )


def value_pyramid_summary(tiered: DataFrame, pyramid: ValuePyramidConfig) -> DataFrame:
    """The Pareto table: per value tier (top first) its customers and trailing revenue, each
    as a share of the total and cumulated from the top. Empty tiers are listed with zeros."""
    spark = tiered.sparkSession
    names = spark.createDataFrame(
        [(rank, tier.name) for rank, tier in enumerate(pyramid.tiers, start=1)],
        T.StructType([T.StructField("tier_rank", T.IntegerType(), False), T.StructField("value_tier", T.StringType(), False)]),
    )
    per_tier = tiered.groupBy("value_tier").agg(
        F.count(F.lit(1)).alias("customers"), F.coalesce(F.sum(PARETO_REVENUE), F.lit(0.0)).alias("revenue")
    )
    totals = tiered.agg(
        F.count(F.lit(1)).alias("all_customers"), F.coalesce(F.sum(PARETO_REVENUE), F.lit(0.0)).alias("all_revenue")
    )
    from_top = Window.partitionBy(F.lit(1)).orderBy("tier_rank").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    joined = (
        names.join(per_tier, on="value_tier", how="left")
        .join(totals, how="cross")
        .select(
            "tier_rank", "value_tier",
            F.coalesce("customers", F.lit(0)).alias("customers"),
            F.coalesce("revenue", F.lit(0.0)).alias("revenue"),
            "all_customers", "all_revenue",
        )
    )
    customer_share = F.when(F.col("all_customers") > 0, F.col("customers") / F.col("all_customers"))
    revenue_share = F.when(F.col("all_revenue") != 0, F.col("revenue") / F.col("all_revenue"))
    return joined.select(
        "tier_rank",
        "value_tier",
        "customers",
        customer_share.alias("customer_share"),
        F.round("revenue", 2).alias("revenue"),
        revenue_share.alias("revenue_share"),
        F.sum(customer_share).over(from_top).alias("cumulative_customer_share"),
        F.sum(revenue_share).over(from_top).alias("cumulative_revenue_share"),
    ).orderBy("tier_rank")


def tier_counts(tiered: DataFrame) -> DataFrame:
    """Customers per (scheme, tier) for the run's metrics: one small row per tier name."""
    schemes = ["rfm_segment", "value_tier", "lifecycle_stage", "business_tier"]
    stacked = tiered.select(
        F.explode(F.array(*[F.struct(F.lit(s).alias("scheme"), F.col(s).alias("tier")) for s in schemes])).alias("t")
    )
    return stacked.groupBy("t.scheme", "t.tier").agg(F.count(F.lit(1)).alias("customers")).orderBy("scheme", "tier")


def _check_score_columns(features: DataFrame, config: FeaturesConfig) -> None:
    require_numeric_columns(features, {
        "features.rfm.recency": [config.rfm.recency],
        "features.rfm.frequency": [config.rfm.frequency],
        "features.rfm.monetary": [config.rfm.monetary],
        "features.value_pyramid.rank_by": [config.value_pyramid.rank_by],
    }, "customer_features")
