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

from dataclasses import asdict, dataclass, field, fields

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.churn.drivers import DRIVERS, DRIVERS_TYPE
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
# What a tier row takes from each scored table, with its type (null when a pipeline run
# skipped the model for too few data), named against the table's contract.
PREDICTED_COLUMNS = {
    "customer_clv": {"clv": "double", "probability_alive": "double", "next_purchase_date": "date", "expected_purchases": "double"},
    "customer_clusters": {"cluster_id": "int", "cluster_name": "string"},
    "customer_churn": {"churn_probability": "double", "churn_risk_tier": "string", "churn_score_source": "string",
                       DRIVERS: DRIVERS_TYPE},
}
CLV_TIER_COLUMNS = columns_of(CLV_COLUMNS, *PREDICTED_COLUMNS["customer_clv"])
CLUSTER_TIER_COLUMNS = columns_of(CLUSTER_COLUMNS, *PREDICTED_COLUMNS["customer_clusters"])
CHURN_TIER_COLUMNS = columns_of(CHURN_COLUMNS, *PREDICTED_COLUMNS["customer_churn"])


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
    # Tier columns left null because a model stage was skipped for too few data: column -> why.
    missing_predictions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def column(self) -> Column:
        """The lineage as a struct literal, typed even where a value is missing."""
        types = {f.name: ("bigint" if "version" in f.name else "string") for f in fields(self)}
        types["missing_predictions"] = "map<string,string>"
        return F.struct(*[_literal(value).cast(types[key]).alias(key) for key, value in self.as_dict().items()])


def _literal(value) -> Column:
    if isinstance(value, dict):
        return F.create_map(*[F.lit(v) for item in value.items() for v in item])
    return F.lit(value)


TIER_COLUMNS = [
    "customer_id", "as_of_date", "value_tier", "value_rank", *FEATURE_COLUMNS[:6], *CLUSTER_TIER_COLUMNS, *CLV_TIER_COLUMNS,
    *CHURN_TIER_COLUMNS, "stickiness", "treatment", "treatment_group", "treatment_action", "treatment_channel", "treatment_priority",
    "revenue_365d", "monetary", "recency_days", "frequency_orders", "lineage",
]


def joined_inputs(features: DataFrame, clv: DataFrame | None, clusters: DataFrame | None, churn: DataFrame | None) -> DataFrame:
    """The features snapshot with the CLV, cluster and churn columns of the same customers
    (typed nulls for a model table that is None: skipped for too few data)."""
    # Every feature column stays available to the stickiness and playbook rules; the features'
    # own value tier gives way to the one ranked by tiers.value_rank_by.
    joined = features.drop("as_of_date", "value_tier")
    for key, snapshot in zip(PREDICTED_COLUMNS, (clv, clusters, churn)):
        columns = PREDICTED_COLUMNS[key]
        if snapshot is None:
            joined = joined.select("*", *[F.lit(None).cast(kind).alias(name) for name, kind in columns.items()])
        else:
            joined = joined.join(snapshot.select("customer_id", *columns), on="customer_id", how="left")
    return joined


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
