"""Treatments: holdout groups per treatment, and the uplift of treated over control customers."""

# The values of customer_tiers.treatment_group.
TREATED = "treated"
CONTROL = "control"
