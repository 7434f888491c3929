"""Churn: out-of-time labels, the Spark ML classifier, its evaluation against baselines, risk tiers."""
