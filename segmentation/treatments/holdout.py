"""Holdout groups: per treatment, a seeded share of its customers gets no action.

A customer's group for a treatment comes from a uniform number in [0, 1) drawn from
SHA-256 of "<seed>|<treatment>|<customer_id>": below the treatment's holdout share the
customer is `control`, otherwise `treated`. The draw depends on nothing else, so the same
customer keeps the same group for that treatment in every snapshot, whatever their tiers or
scores, and groups of different treatments are independent. SHA-256 rather than Spark's
own hashes so that anyone can recompute a group outside Spark (`holdout_draw`).
"""

from __future__ import annotations

import hashlib

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.config import TiersConfig
from segmentation.treatments import CONTROL, TREATED
# The first 13 hex digits of the hash (52 bits) are exact in a double: Spark and Python agree.
_DRAW_HEX_DIGITS = 13
_DRAW_SCALE = float(16**_DRAW_HEX_DIGITS)


def holdout_draw(seed: int, treatment: str, customer_id: str) -> float:
    """The uniform draw in [0, 1) behind a customer's group for a treatment (as `treatment_group`)."""
    digest = hashlib.sha256(f"{seed}|{treatment}|{customer_id}".encode()).hexdigest()
    return int(digest[:_DRAW_HEX_DIGITS], 16) / _DRAW_SCALE


def _draw(customer_id: Column, treatment: Column, seed: int) -> Column:
    digest = F.sha2(F.concat_ws("|", F.lit(str(seed)), treatment, customer_id), 256)
    hex_digits = F.substring(digest, 1, _DRAW_HEX_DIGITS)
    return F.conv(hex_digits, 16, 10).cast("bigint") / F.lit(_DRAW_SCALE)


def treatment_group(customer_id: Column | str, treatment: Column | str, share: Column | float, seed: int) -> Column:
    """'control' for the customers whose draw falls below `share`, else 'treated'; null when
    the treatment (or the customer id) is null. A share of 0 treats everyone."""
    customer = F.col(customer_id) if isinstance(customer_id, str) else customer_id
    treatment = F.col(treatment) if isinstance(treatment, str) else treatment
    share_column = share if isinstance(share, Column) else F.lit(float(share))
    return (
        F.when(customer.isNull() | treatment.isNull(), F.lit(None).cast("string"))
        .when(_draw(customer, treatment, seed) < share_column, F.lit(CONTROL))
        .otherwise(F.lit(TREATED))
    )


def holdout_shares(tiers: TiersConfig) -> dict[str, float]:
    """Each playbook treatment's holdout share: its own `holdout_share`, else `tiers.holdout_share`."""
    return {rule.name: tiers.holdout_share if rule.holdout_share is None else rule.holdout_share for rule in tiers.playbook}


def with_treatment_group(df: DataFrame, tiers: TiersConfig) -> DataFrame:
    """`df` (customer_id, treatment, ...) with `treatment_group` by the playbook's holdout shares."""
    shares = F.create_map(*[v for name, share in holdout_shares(tiers).items() for v in (F.lit(name), F.lit(share))])
    share = F.coalesce(F.element_at(shares, F.col("treatment")), F.lit(tiers.holdout_share))
    return df.withColumn("treatment_group", treatment_group("customer_id", "treatment", share, tiers.holdout_seed))
