"""The uplift of a treatment: treated minus control customers, with a confidence interval.

Plain functions of a few numbers per group (no Spark): the Spark side reduces a snapshot's
customers to one `GroupOutcome` per treatment and group (`segmentation.treatments.outcomes`).

- A share (repurchase rate, churn rate): the difference of the two proportions with the
  unpooled normal (Wald) interval, d ± z · sqrt(p1(1-p1)/n1 + p0(1-p0)/n0).
- A mean per customer (orders, net revenue): Welch's interval, d ± t · sqrt(v1/n1 + v0/n0),
  with t the quantile of Student's t at the Welch–Satterthwaite degrees of freedom.

An uplift is `significant` when its interval excludes 0, and `too_small` when either group
has fewer than `min_group_customers` customers or, for a share, fewer than 5 customers
with or without the outcome (n·p or n·(1-p) below 5), where the normal interval is not to
be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from segmentation.config import OutcomesConfig
from segmentation.treatments import CONTROL, TREATED

# Below this many successes (or failures) in a group the normal approximation is poor.
MIN_EXPECTED_COUNT = 5
METRICS = ("repurchase_rate", "churn_rate", "orders_per_customer", "net_revenue_per_customer")


@dataclass(frozen=True)
class Proportion:
    """A group's count of customers and of those with the outcome."""

    customers: int
    successes: int

    @property
    def value(self) -> float:
        return self.successes / self.customers if self.customers else math.nan


@dataclass(frozen=True)
class Mean:
    """A group's count of customers, mean and sample variance (n - 1) of a per-customer value."""

    customers: int
    mean: float
    variance: float


@dataclass(frozen=True)
class Uplift:
    """One metric of one treatment: treated against control."""

    metric: str
    treated_customers: int
    control_customers: int
    treated_value: float
    control_value: float
    uplift: float
    ci_low: float
    ci_high: float
    significant: bool
    too_small: bool


@dataclass(frozen=True)
class GroupOutcome:
    """What a group of a treatment did over the outcome window (one row of `outcome_groups`)."""

    customers: int
    repurchasers: int
    orders_mean: float
    orders_variance: float
    net_revenue_mean: float
    net_revenue_variance: float


def _uplift(metric: str, n1: int, n0: int, v1: float, v0: float, half_width: float, too_small: bool) -> Uplift:
    difference = v1 - v0
    low, high = difference - half_width, difference + half_width
    significant = not math.isnan(half_width) and (low > 0 or high < 0)
    return Uplift(metric, n1, n0, v1, v0, difference, low, high, significant, too_small)


def _quantile(confidence: float) -> float:
    """The two-sided quantile level of a `confidence` interval."""
    return 1 - (1 - confidence) / 2


def proportion_uplift(metric: str, treated: Proportion, control: Proportion, min_group_customers: int, confidence: float) -> Uplift:
    """Difference of two shares with the unpooled normal (Wald) interval."""
    n1, n0, p1, p0 = treated.customers, control.customers, treated.value, control.value
    if min(n1, n0) == 0:
        return _uplift(metric, n1, n0, p1, p0, math.nan, True)
    standard_error = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    half_width = stats.norm.ppf(_quantile(confidence)) * standard_error
    sparse = any(
        min(group.successes, group.customers - group.successes) < MIN_EXPECTED_COUNT for group in (treated, control)
    )
    return _uplift(metric, n1, n0, p1, p0, half_width, sparse or min(n1, n0) < min_group_customers)


def welch_degrees_of_freedom(treated: Mean, control: Mean) -> float:
    """Welch–Satterthwaite: (s1 + s0)^2 / (s1^2/(n1-1) + s0^2/(n0-1)), s = variance / n;
    infinite when both variances are 0 (the interval then has no width)."""
    s1, s0 = treated.variance / treated.customers, control.variance / control.customers
    denominator = s1**2 / (treated.customers - 1) + s0**2 / (control.customers - 1)
    return (s1 + s0) ** 2 / denominator if denominator > 0 else math.inf


def mean_uplift(metric: str, treated: Mean, control: Mean, min_group_customers: int, confidence: float) -> Uplift:
    """Difference of two means with Welch's interval (unequal variances)."""
    n1, n0 = treated.customers, control.customers
    if min(n1, n0) < 2:
        values = (treated.mean if n1 else math.nan, control.mean if n0 else math.nan)
        return _uplift(metric, n1, n0, *values, math.nan, True)
    standard_error = math.sqrt(treated.variance / n1 + control.variance / n0)
    t = stats.t.ppf(_quantile(confidence), welch_degrees_of_freedom(treated, control))
    return _uplift(metric, n1, n0, treated.mean, control.mean, t * standard_error, min(n1, n0) < min_group_customers)


def treatment_uplifts(treated: GroupOutcome, control: GroupOutcome, settings: OutcomesConfig) -> tuple[Uplift, ...]:
    """The four metrics of a treatment, in `METRICS` order."""
    limits = (settings.min_group_customers, settings.confidence)
    bought = [Proportion(g.customers, g.repurchasers) for g in (treated, control)]
    churned = [Proportion(g.customers, g.customers - g.repurchasers) for g in (treated, control)]
    orders = [Mean(g.customers, g.orders_mean, g.orders_variance) for g in (treated, control)]
    revenue = [Mean(g.customers, g.net_revenue_mean, g.net_revenue_variance) for g in (treated, control)]
    return (
        proportion_uplift("repurchase_rate", *bought, *limits),
        proportion_uplift("churn_rate", *churned, *limits),
        mean_uplift("orders_per_customer", *orders, *limits),
        mean_uplift("net_revenue_per_customer", *revenue, *limits),
    )


def uplifts_by_treatment(groups: dict[tuple[str, str], GroupOutcome], settings: OutcomesConfig) -> dict[str, tuple[Uplift, ...]]:
    """Every treatment with both a treated and a control group (keys: (treatment, group));
    a treatment without a control group (holdout share 0) has nothing to compare with."""
    treatments = sorted({treatment for treatment, _ in groups})
    return {
        treatment: treatment_uplifts(groups[(treatment, TREATED)], groups[(treatment, CONTROL)], settings)
        for treatment in treatments
        if (treatment, TREATED) in groups and (treatment, CONTROL) in groups
    }
