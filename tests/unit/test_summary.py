"""Shares in the public dataset's shape."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resetwatch import envelope
from resetwatch.classify import Category, Outcome, Stage, Tag, Verdict
from resetwatch.event import excluded_event, judged_event
from resetwatch.flows import Exclusion, Flow
from resetwatch.summary import Summary, percent_shares, share_cell
from resetwatch.tally import Tally

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


def test_the_envelope_has_the_five_published_fields_and_the_counts() -> None:
    body = envelope.summary({"samplingProbability": 0.0001}, {"summary_0": Tally()})
    assert body["success"] is True and body["errors"] == []
    assert list(body["result"]["summary_0"]) == [c.value for c in Category]
    meta = body["result"]["meta"]
    assert meta["samplingProbability"] == 0.0001 and meta["normalization"] == "PERCENTAGE"
    assert set(meta["counts"]["summary_0"]) == {
        "classified", "categories", "outcomes", "tags", "excluded"
    }


def test_summary_counts_every_event_and_the_span_of_its_flows() -> None:
    s, o, c, t = Stage, Outcome, Category, Tag
    reset = Verdict(s.POST_ACK, o.RESET, c.POST_ACK, (t.RESET, t.SINGLE_RSTACK))
    timeout = Verdict(s.POST_SYN, o.TIMEOUT, c.POST_SYN, (t.TIMEOUT,))
    summary = Summary()
    for ts, verdict in ((3.0, reset), (1.0, timeout), (2.0, reset)):
        summary.write(judged_event(Flow(pkt("S", ts)), verdict))
    summary.write(excluded_event(Flow(pkt("S", 5.0)), Exclusion.TRUNCATED))
    tally = summary.tally
    assert tally.classified == 3 and tally.excluded_total == 1
    assert tally.categories()[c.POST_ACK] == 2 and tally.categories()[c.POST_SYN] == 1
    assert tally.tag_totals()[t.RESET] == 2 and tally.tag_totals()[t.TIMEOUT] == 1
    assert (summary.first_ts, summary.last_ts) == (1.0, 5.0)


@pytest.mark.parametrize(
    "share,cell", [("3.7", "3.70%"), ("8.89", "8.89%"), ("100", "100.00%"), ("0", "0.00%"),
                   ("0.05", "0.05%")],
)
def test_share_cells_keep_the_number_with_two_decimals(share: str, cell: str) -> None:
    assert share_cell(share) == cell
    assert Decimal(cell[:-1]) == Decimal(share)
