"""Shares in the public dataset's shape."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resetwatch.classify import Category, Outcome, Stage, Tag, Verdict
from resetwatch.event import judged_event
from resetwatch.flows import Flow
from resetwatch.summary import Summary, percent_shares, share_cell

from .factory import pkt


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


def test_counts_read_mid_way_and_written_directly_add_up() -> None:
    # Judged flows are counted per verdict and folded into the counters when they are read;
    # the counters must look as if every flow had been counted as it came, keys in the order
    # of their first flows, and writes to them (the demo adds records' counts) must stay.
    s, o, c, t = Stage, Outcome, Category, Tag
    reset = Verdict(s.POST_ACK, o.RESET, c.POST_ACK, (t.RESET, t.SINGLE_RSTACK))
    timeout = Verdict(s.POST_SYN, o.TIMEOUT, c.POST_SYN, (t.TIMEOUT,))
    closed = Verdict(s.LATER, o.CLOSED, c.NO_MATCH, ())
    flow = Flow(pkt("S", 1.0))
    summary = Summary()
    for verdict in (closed, reset, timeout, reset):
        summary.write(judged_event(flow, verdict))
    assert list(summary.outcomes) == [(s.LATER, o.CLOSED), (s.POST_ACK, o.RESET),
                                      (s.POST_SYN, o.TIMEOUT)]
    summary.write(judged_event(flow, timeout))
    summary.categories[c.POST_SYN] += 10
    psh_reset = Verdict(s.POST_PSH, o.RESET, c.POST_PSH, (t.RESET, t.SINGLE_RST))
    summary.write(judged_event(flow, psh_reset))
    assert summary.categories == {c.POST_SYN: 12, c.POST_ACK: 2, c.POST_PSH: 1,
                                  c.LATER_IN_FLOW: 0, c.NO_MATCH: 1}
    assert list(summary.tags.items()) == [(t.RESET, 3), (t.SINGLE_RSTACK, 2), (t.TIMEOUT, 2),
                                          (t.SINGLE_RST, 1)]
    assert summary.outcomes[s.POST_SYN, o.TIMEOUT] == 2
    assert summary.classified == 16
    assert (summary.first_ts, summary.last_ts) == (1.0, 1.0)


@pytest.mark.parametrize(
    "share,cell", [("3.7", "3.70%"), ("8.89", "8.89%"), ("100", "100.00%"), ("0", "0.00%"),
                   ("0.05", "0.05%")],
)
def test_share_cells_keep_the_number_with_two_decimals(share: str, cell: str) -> None:
    assert share_cell(share) == cell
    assert Decimal(cell[:-1]) == Decimal(share)
