"""Customer samples whose size does not grow with the customer count: whole customers, the
same ones in every frame, stable for a seed, about the asked share."""

from __future__ import annotations

import pytest

from segmentation.sampling import customer_sample, sample_fraction


def test_the_fraction_caps_the_sample_and_none_means_everyone():
    assert sample_fraction(1_000_000, 100_000) == pytest.approx(0.1)
    assert sample_fraction(50_000, 100_000) == 1.0
    assert sample_fraction(100_000, 100_000) == 1.0
    assert sample_fraction(1_000_000, None) == 1.0


@pytest.fixture(scope="module")
def lines(spark):
    # 4,000 customers with three lines each.
    rows = [(f"c{i}", line) for i in range(4000) for line in range(3)]
    return spark.createDataFrame(rows, "customer_id string, line int")


def _customers(df) -> set[str]:
    return {r.customer_id for r in df.select("customer_id").distinct().collect()}


def test_a_sample_keeps_whole_customers_and_about_the_share(lines):
    sampled = customer_sample(lines, 0.25, seed=42)
    per_customer = {r.customer_id: r["count"] for r in sampled.groupBy("customer_id").count().collect()}
    assert set(per_customer.values()) == {3}  # every line of a sampled customer, none of the others
    assert 900 <= len(per_customer) <= 1100  # 1,000 expected; the binomial sd is 27


def test_the_same_seed_picks_the_same_customers_in_every_frame(lines):
    one_line_each = lines.where("line = 0").select("customer_id")
    first = _customers(customer_sample(lines, 0.1, seed=7))
    assert _customers(customer_sample(one_line_each, 0.1, seed=7)) == first
    assert _customers(customer_sample(lines, 0.1, seed=8)) != first
    # A larger share of the same seed contains the smaller one (a customer's hash bucket is fixed).
    assert first <= _customers(customer_sample(lines, 0.3, seed=7))


def test_a_whole_share_returns_the_frame_itself(lines):
    assert customer_sample(lines, 1.0, seed=1) is lines
