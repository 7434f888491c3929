"""One row per customer and snapshot with every tier dimension, the recommended treatment
and the lineage of the run that produced it.

The customers are those of the `customer_features` snapshot. Lifetime value, cluster and
churn columns are joined by customer id (left joins: a customer the churn model does not
score, because they have not bought within its look-back, keeps a null churn probability
and risk tier). The value pyramid is re-ranked by `tiers.value_rank_by` (predicted CLV by
default) with the pyramid's shares; stickiness and the treatment come from first-match
rule tables in configuration; each treated customer's `treatment_group` (treated, or control
in the treatment's holdout) comes from `segmentation.treatments.holdout`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.config import FeaturesConfig, TiersConfig
from segmentation.features.quantiles import quantile_cuts
from segmentation.features.rules import Rule, with_first_match
from segmentation.features.tiers import TierCuts, expression_rules, value_tier_probabilities, with_value_tier
from segmentation.schema import CHURN_COLUMNS, CLUSTER_COLUMNS, CLV_COLUMNS, columns_of, require_numeric_columns
from segmentation.treatments.holdout import with_treatment_group

FEATURE_COLUMNS = [
    "r_score", "f_score", "m_score", "rfm_segment", "lifecycle_stage", "business_tier",
    "recency_days", "frequency_orders", "monetary", "revenue_365d", "preferred_channel",
]
# What a tier row takes from each scored table, named against the table's contract.
CLV_TIER_COLUMNS = columns_of(CLV_COLUMNS, "clv", "probability_alive", "next_purchase_date", "expected_purchases")
CLUSTER_TIER_COLUMNS = columns_of(CLUSTER_COLUMNS, "cluster_id", "cluster_name")
CHURN_TIER_COLUMNS = columns_of(CHURN_COLUMNS, "churn_probability", "churn_risk_tier", "churn_drivers")


@dataclass(frozen=True)
class Lineage:
    """Where a snapshot came from: constant over its rows."""

    pipeline_run_id: str
    features_version: int
    clv_version: int
    clusters_version: int
    churn_version: int
    clv_run_id: str | None
    cluster_model_version: int | None
    churn_model_version: int | None
    value_rank_by: str
    cluster_run_id: str | None = None  # the MLflow runs that logged the cluster and churn models
    churn_run_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def column(self) -> Column:
        """The lineage as a struct literal, typed even where a value is missing."""
        types = {f.name: ("bigint" if "version" in f.name else "string") for f in fields(self)}
        return F.struct(*[F.lit(value).cast(types[key]).alias(key) for key, value in self.as_dict().items()])


TIER_COLUMNS = [
    "customer_id", "as_of_date", "value_tier", "value_rank", *FEATURE_COLUMNS[:6], *CLUSTER_TIER_COLUMNS, *CLV_TIER_COLUMNS,
    *CHURN_TIER_COLUMNS, "stickiness", "treatment", "treatment_group", "treatment_action", "treatment_channel", "treatment_priority",
    "revenue_365d", "monetary", "recency_days", "frequency_orders", "lineage",
]


def joined_inputs(features: DataFrame, clv: DataFrame, clusters: DataFrame, churn: DataFrame) -> DataFrame:
    """The features snapshot with the CLV, cluster and churn columns of the same customers."""
    # Every feature column stays available to the stickiness and playbook rules; the features'
    # own value tier gives way to the one ranked by tiers.value_rank_by.
    return (
        features.drop("as_of_date", "value_tier")
        .join(clv.select("customer_id", *CLV_TIER_COLUMNS), on="customer_id", how="left")
        .join(clusters.select("customer_id", *CLUSTER_TIER_COLUMNS), on="customer_id", how="left")
        .join(churn.select("customer_id", *CHURN_TIER_COLUMNS), on="customer_id", how="left")
    )


def value_cuts(joined: DataFrame, tiers: TiersConfig, features: FeaturesConfig) -> TierCuts:
    """The pyramid's cut points over `tiers.value_rank_by` (one approximate-quantile pass)."""
    require_numeric_columns(joined, {"tiers.value_rank_by": [tiers.value_rank_by]}, "the joined tier inputs")
    pyramid = features.value_pyramid
    cuts = quantile_cuts(
        joined, {"value": (F.col(tiers.value_rank_by), value_tier_probabilities(pyramid))}, features.quantile_relative_error
    )
    return TierCuts(value=cuts["value"])


def customer_tiers(joined: DataFrame, cuts: TierCuts, tiers: TiersConfig, features: FeaturesConfig, as_of, lineage: Lineage) -> DataFrame:
    """The tier table's rows for one snapshot (columns `TIER_COLUMNS`)."""
    pyramid = features.value_pyramid.model_copy(update={"rank_by": tiers.value_rank_by})
    ranked = joined.transform(with_value_tier, cuts, pyramid)
    rank = {tier.name: position for position, tier in enumerate(pyramid.tiers, start=1)}
    sticky = ranked.transform(with_first_match, expression_rules(tiers.stickiness), "stickiness", "tiers.stickiness")
    treated = sticky.transform(
        with_first_match, [Rule(p.name, p.when) for p in tiers.playbook], "treatment", "tiers.playbook"
    ).transform(with_treatment_group, tiers)
    action = F.create_map(*[v for p in tiers.playbook for v in (F.lit(p.name), F.lit(p.action))])
    channel = F.create_map(*[v for p in tiers.playbook for v in (F.lit(p.name), F.lit(p.channel))])
    priority = F.create_map(*[v for p in tiers.playbook for v in (F.lit(p.name), F.lit(p.priority))])
    configured_channel = F.element_at(channel, F.col("treatment"))
    return treated.select(
        "customer_id",
        F.lit(as_of).alias("as_of_date"),
        "value_tier",
        F.element_at(F.create_map(*[v for name, r in rank.items() for v in (F.lit(name), F.lit(r))]), F.col("value_tier")).alias("value_rank"),
        *FEATURE_COLUMNS[:6], *CLUSTER_TIER_COLUMNS, *CLV_TIER_COLUMNS, *CHURN_TIER_COLUMNS, "stickiness", "treatment", "treatment_group",
        F.element_at(action, F.col("treatment")).alias("treatment_action"),
        F.when(configured_channel == "preferred", F.coalesce("preferred_channel", F.lit(tiers.default_channel)))
        .otherwise(configured_channel).alias("treatment_channel"),
        F.element_at(priority, F.col("treatment")).alias("treatment_priority"),
        "revenue_365d", "monetary", "recency_days", "frequency_orders",
        lineage.column().alias("lineage"),
    ).select(*TIER_COLUMNS)
