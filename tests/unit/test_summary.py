"""Shares in the public dataset's shape."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from resetwatch.classify import Category
from resetwatch.summary import Summary, percent_shares


def test_shares_sum_to_exactly_100() -> None:
    shares = percent_shares({"a": 1, "b": 1, "c": 1})
    assert shares == {"a": "33.34", "b": "33.33", "c": "33.33"}


def test_no_flows_gives_zero_shares() -> None:
    assert percent_shares({"a": 0, "b": 0}) == {"a": "0", "b": "0"}


@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=5, max_size=5))
def test_shares_always_sum_to_100(counts: list[int]) -> None:
    shares = percent_shares({str(i): c for i, c in enumerate(counts)})
    if sum(counts):
        assert sum(Decimal(v) for v in shares.values()) == 100
        for i, c in enumerate(counts):
            assert abs(Decimal(shares[str(i)]) - Decimal(100 * c) / sum(counts)) <= Decimal(
                "0.01"
            )


def test_radar_shape_has_the_five_published_fields() -> None:
    body = Summary().radar({"sampling_probability": 0.0001})
    assert body["success"] is True and body["errors"] == []
    assert list(body["result"]["summary_0"]) == [c.value for c in Category]
    assert body["result"]["meta"]["sampling_probability"] == 0.0001
