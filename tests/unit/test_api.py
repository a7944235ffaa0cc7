"""The local API (Radar's shape): every parameter, every refusal, shares, CSV, alignment."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resetwatch import api
from resetwatch.classify import Category, Tag
from resetwatch.flows import Exclusion
from resetwatch.history import History, Snapshot

from .history_data import epoch, exclude, judge

NOW = epoch("2026-11-22T10:07:30")  # a Sunday; the current bucket ends at 10:15
FIELDS = [c.value for c in Category]
P = 0.0001


def query(text: str) -> dict[str, list[str]]:
    from urllib.parse import parse_qs

    return parse_qs(text)


def call(render: Any, history: History, text: str) -> tuple[int, str, Any]:
    status, ctype, body = render(history.snapshot(), query(text), NOW, P)
    decoded = body.decode()
    return status, ctype, json.loads(decoded) if ctype == "application/json" else decoded


def sample() -> History:
    """Flows in the current bucket, an hour ago, a day ago and six days ago."""
    history = History()
    judge(history, NOW, Category.POST_ACK, 2, tags=(Tag.RESET, Tag.SINGLE_RST))
    judge(history, NOW - 60, Category.NO_MATCH, 5)
    judge(history, NOW - 3600, Category.POST_PSH, 1, tags=(Tag.TIMEOUT,))
    judge(history, NOW - 86400 + 600, Category.POST_SYN, 3, tags=(Tag.RESET, Tag.ZMAP))
    judge(history, NOW - 6 * 86400, Category.LATER_IN_FLOW, 4)
    exclude(history, NOW - 120, Exclusion.TRUNCATED, 2)
    return history


def iso(text: str) -> str:
    return text + "Z"


# ---- ranges -------------------------------------------------------------------------------

RANGES = [
    ("", [("2026-11-21T10:15:00", "2026-11-22T10:15:00")]),  # the default: 1d
    ("dateRange=15m", [("2026-11-22T10:00:00", "2026-11-22T10:15:00")]),
    ("dateRange=1h", [("2026-11-22T09:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=12h", [("2026-11-21T22:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=2d", [("2026-11-20T10:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=7d", [("2026-11-15T10:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=1w", [("2026-11-15T10:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=1D", [("2026-11-21T10:15:00", "2026-11-22T10:15:00")]),
    # Control: the same window shifted back by its length rounded up to whole weeks.
    ("dateRange=1dControl", [("2026-11-14T10:15:00", "2026-11-15T10:15:00")]),
    ("dateRange=7dControl", [("2026-11-08T10:15:00", "2026-11-15T10:15:00")]),
    ("dateRange=10dControl", [("2026-10-29T10:15:00", "2026-11-08T10:15:00")]),
    ("dateRange=28d", [("2026-10-25T10:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=4w", [("2026-10-25T10:15:00", "2026-11-22T10:15:00")]),
    ("dateRange=1h,1hControl", [("2026-11-22T09:15:00", "2026-11-22T10:15:00"),
                                ("2026-11-15T09:15:00", "2026-11-15T10:15:00")]),
    ("dateRange=1d&dateRange=1dControl", [("2026-11-21T10:15:00", "2026-11-22T10:15:00"),
                                          ("2026-11-14T10:15:00", "2026-11-15T10:15:00")]),
    ("dateStart=2026-11-22T08:05:00Z&dateEnd=2026-11-22T09:50:00Z",
     [("2026-11-22T08:00:00", "2026-11-22T09:45:00")]),  # both floored to 15 minutes
    ("dateStart=2026-11-22T09:00:00%2B01:00&dateEnd=2026-11-22T10:00:00%2B01:00",
     [("2026-11-22T08:00:00", "2026-11-22T09:00:00")]),
    ("dateStart=2026-11-22T09:00:00+01:00", [("2026-11-22T08:00:00", "2026-11-22T10:15:00")]),
    ("dateStart=2026-11-22T09:00:00", [("2026-11-22T09:00:00", "2026-11-22T10:15:00")]),
    ("dateStart=2026-11-22", [("2026-11-22T00:00:00", "2026-11-22T10:15:00")]),
    ("dateEnd=2026-11-22T06:00:00Z", [("2026-11-21T06:00:00", "2026-11-22T06:00:00")]),
    ("dateStart=2026-11-22T10:00:00Z&dateEnd=2030-01-01T00:00:00Z",
     [("2026-11-22T10:00:00", "2026-11-22T10:15:00")]),  # the end stops at now's bucket
    ("dateStart=2026-11-15T10:07:30Z", [("2026-11-15T10:00:00", "2026-11-22T10:15:00")]),
    ("dateStart=2026-11-22T08:00:00Z,2026-11-22T09:00:00Z"
     "&dateEnd=2026-11-22T08:30:00Z,2026-11-22T09:30:00Z",
     [("2026-11-22T08:00:00", "2026-11-22T08:30:00"),
      ("2026-11-22T09:00:00", "2026-11-22T09:30:00")]),
    ("dateRange=1h&foo=bar&aggInterval=1d", [("2026-11-22T09:15:00", "2026-11-22T10:15:00")]),
]  # fmt: skip


@pytest.mark.parametrize("text,want", RANGES, ids=[r[0] or "default" for r in RANGES])
def test_date_ranges(text: str, want: list[tuple[str, str]]) -> None:
    status, _, body = call(api.summary, History(), text)
    assert status == 200, body
    got = [(r["startTime"], r["endTime"]) for r in body["result"]["meta"]["dateRange"]]
    assert got == [(iso(a), iso(b)) for a, b in want]
    assert [k for k in body["result"] if k != "meta"] == [f"summary_{i}" for i in range(len(want))]


# ---- refusals -----------------------------------------------------------------------------

ERRORS = [
    ("dateRange=9x", "dateRange", "'9x' is not a range"),
    ("dateRange=29d", "dateRange", "beyond the 28 days"),
    ("dateRange=5w", "dateRange", "beyond the 28 days"),
    ("dateRange=15dControl", "dateRange", "reaches back 36 days, beyond the 28 days"),
    ("dateRange=1h,1d", "dateRange", "same duration as the first (1h)"),
    ("dateStart=2026-11-22T08:00:00Z,2026-11-22T09:00:00Z"
     "&dateEnd=2026-11-22T08:30:00Z,2026-11-22T10:00:00Z", "dateStart", "same duration"),
    ("dateEnd=0001-01-01", "dateEnd", "outside 1970 to 9998"),
    ("dateStart=9999-12-31T23:59:59-14:00", "dateStart", "outside 1970 to 9998"),
    ("dateStart=0001-01-01T00:00:00%2B14:00", "dateStart", "outside 1970 to 9998"),
    ("dateEnd=1969-12-31T23:00:00Z", "dateEnd", "outside 1970"),
    ("dateRange=10m", "dateRange", "multiple of 15m"),
    ("dateRange=0h", "dateRange", "multiple of 15m"),
    ("dateRange=1d&dateStart=2026-11-22T00:00:00Z", "dateRange", "not both"),
    ("dateRange=" + ",".join(["1h"] * 11), "dateRange", "at most 10"),
    ("dateStart=yesterday", "dateStart", "not an ISO 8601 time"),
    ("dateEnd=2026-13-01T00:00:00Z&dateStart=2026-11-22T00:00:00Z", "dateEnd", "ISO 8601"),
    ("dateStart=2026-11-22T09:00:00Z&dateEnd=2026-11-22T08:00:00Z", "dateStart", "not before"),
    ("dateStart=2026-11-22T09:00:00Z&dateEnd=2026-11-22T09:00:00Z", "dateStart", "not before"),
    ("dateStart=2026-10-20T00:00:00Z", "dateStart", "older than the 28 days"),
    ("dateEnd=2026-10-24T12:00:00Z", "dateEnd", "older than the 28 days"),
    ("dateStart=2026-11-23T00:00:00Z&dateEnd=2026-11-24T00:00:00Z", "dateStart", "future"),
    ("dateStart=2026-11-22T01:00:00Z,2026-11-22T02:00:00Z&dateEnd=2026-11-22T03:00:00Z",
     "dateEnd", "1 values for 2"),
    ("aggInterval=2h", "aggInterval", "not one of 15m, 1h, 1d, 1w"),
    ("aggInterval=1h&aggInterval=1d", "aggInterval", "give one value"),
    ("format=xml", "format", "not one of json, csv"),
    ("format=json&format=csv", "format", "give one value"),
    ("asn=cogent", "asn", "not an AS number"),
    ("asn=174,-x", "asn", "not an AS number"),
    ("location=USA", "location", "not an ISO 3166 alpha-2"),
    ("location=-1", "location", "not an ISO 3166 alpha-2"),
    ("continent=Europe", "continent", "not a continent code"),
    ("name=a,b", "name", "2 names for 1 series"),
    ("name=meta", "name", "cannot name a series"),
    ("name=" + "x" * 65, "name", "at most 64"),
    ("dateRange=1h,1hControl&name=x,x", "name", "names two series"),
]  # fmt: skip


@pytest.mark.parametrize("render", [api.summary, api.timeseries_groups, api.tags])
@pytest.mark.parametrize("text,parameter,words", ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_refusals_are_400_naming_the_parameter(
    render: Any, text: str, parameter: str, words: str
) -> None:
    status, ctype, body = call(render, sample(), text)
    assert (status, ctype) == (400, "application/json")
    assert body["success"] is False and body["result"] is None
    (error,) = body["errors"]
    assert error["code"] == 400
    assert error["message"].startswith(parameter + ": "), error["message"]
    assert words in error["message"], error["message"]


@pytest.mark.parametrize(
    "render,key", [(api.summary, "summary_1"), (api.timeseries_groups, "serie_1")]
)
def test_a_name_cannot_take_another_series_default_key(render: Any, key: str) -> None:
    status, _, body = call(render, sample(), f"dateRange=1h,1hControl&name={key}")
    assert status == 400
    assert body["errors"][0]["message"] == f"name: {key!r} names two series"


def test_tags_take_one_range() -> None:
    status, _, body = call(api.tags, sample(), "dateRange=1h,1d")
    assert status == 400 and body["errors"][0]["message"].startswith("dateRange: ")


def test_the_unknown_range_message_lists_what_is_allowed() -> None:
    _, _, body = call(api.summary, History(), "dateRange=9x")
    message = body["errors"][0]["message"]
    for example in ("15m", "1h", "12h", "1d", "7d", "1w", "Control"):
        assert example in message


# ---- summary -------------------------------------------------------------------------------


def test_summary_shares_and_counts() -> None:
    status, ctype, body = call(api.summary, sample(), "dateRange=1h")
    assert (status, ctype) == (200, "application/json")
    assert body["success"] is True and body["errors"] == []
    result = body["result"]
    meta = result["meta"]
    assert meta["normalization"] == "PERCENTAGE"
    assert meta["lastUpdated"] == "2026-11-22T10:07:30Z"
    assert meta["samplingProbability"] == P
    assert "aggInterval" not in meta
    counts = meta["counts"]["summary_0"]
    # 09:15 to 10:15: the current bucket and the flow an hour ago (09:07:30) is outside.
    assert counts["classified"] == 7
    assert counts["categories"] == {"post_syn": 0, "post_ack": 2, "post_psh": 0,
                                    "later_in_flow": 0, "no_match": 5}  # fmt: skip
    assert counts["outcomes"]["post_ack"] == {"reset": 2}
    assert counts["excluded"]["truncated"] == 2
    assert result["summary_0"] == {"post_syn": "0", "post_ack": "28.57", "post_psh": "0",
                                   "later_in_flow": "0", "no_match": "71.43"}  # fmt: skip
    assert list(result["summary_0"]) == FIELDS


def test_summary_over_seven_days_holds_everything() -> None:
    _, _, body = call(api.summary, sample(), "dateRange=7d")
    assert body["result"]["meta"]["counts"]["summary_0"]["classified"] == 15


def test_name_labels_the_series() -> None:
    _, _, body = call(api.summary, sample(), "dateRange=1d,1dControl&name=main")
    assert [k for k in body["result"] if k != "meta"] == ["main", "summary_1"]
    assert set(body["result"]["meta"]["counts"]) == {"main", "summary_1"}
    assert body["result"]["meta"]["counts"]["main"]["classified"] == 11
    assert body["result"]["meta"]["counts"]["summary_1"]["classified"] == 0


def test_no_flows_gives_zero_shares() -> None:
    _, _, body = call(api.summary, History(), "")
    assert body["result"]["summary_0"] == dict.fromkeys(FIELDS, "0")


@given(st.lists(st.integers(min_value=0, max_value=500), min_size=5, max_size=5))
def test_shares_sum_to_exactly_100(counts: list[int]) -> None:
    history = History()
    for category, n in zip(Category, counts):
        judge(history, NOW, category, n)
    _, _, body = call(api.summary, history, "dateRange=15m")
    total = sum(Decimal(v) for v in body["result"]["summary_0"].values())
    assert total == (100 if sum(counts) else 0)


def test_summary_csv_parses() -> None:
    history = sample()
    status, ctype, text = call(api.summary, history, "dateRange=1d,1dControl&format=CSV")
    assert (status, ctype) == (200, "text/csv; charset=utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    _, _, body = call(api.summary, history, "dateRange=1d,1dControl")
    assert [r["serie"] for r in rows] == ["summary_0", "summary_1"]
    for row, key in zip(rows, ["summary_0", "summary_1"]):
        assert {f: row[f] for f in FIELDS} == body["result"][key]
        assert int(row["classified"]) == body["result"]["meta"]["counts"][key]["classified"]
        span = body["result"]["meta"]["dateRange"][int(key[-1])]
        assert (row["startTime"], row["endTime"]) == (span["startTime"], span["endTime"])


# ---- time series ---------------------------------------------------------------------------

STEP = {"15m": 900, "1h": 3600, "1d": 86400, "1w": 7 * 86400}


def _epoch(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
               .timestamp())  # fmt: skip


@pytest.mark.parametrize("agg", list(STEP))
def test_timeseries_intervals_are_aligned(agg: str) -> None:
    history = sample()
    status, _, body = call(api.timeseries_groups, history, f"dateRange=7d&aggInterval={agg}")
    assert status == 200
    result = body["result"]
    serie = result["serie_0"]
    stamps = [_epoch(t) for t in serie["timestamps"]]
    step = STEP[agg]
    for stamp in stamps:
        when = datetime.fromtimestamp(stamp, timezone.utc)
        if agg == "1w":
            assert (when.weekday(), when.hour, when.minute) == (0, 0, 0), when  # Monday 00:00
        else:
            assert stamp % step == 0, when
    assert all(b - a == step for a, b in zip(stamps, stamps[1:]))
    span = result["meta"]["dateRange"][0]
    start, end = _epoch(span["startTime"]), _epoch(span["endTime"])
    assert stamps[0] <= start < stamps[0] + step and stamps[-1] < end <= stamps[-1] + step
    assert result["meta"]["aggInterval"] == api.AGG_INTERVALS[agg][1]
    # Every flow is in the interval holding its time, and nothing is lost or doubled.
    counts = result["meta"]["counts"]["serie_0"]
    assert sum(counts["classified"]) == 15
    index = max(i for i, s in enumerate(stamps) if s <= NOW - 3600)
    assert counts["categories"]["post_psh"][index] == 1
    for key in FIELDS:
        assert len(serie[key]) == len(stamps)
    for i, classified in enumerate(counts["classified"]):
        total = sum(Decimal(serie[k][i]) for k in FIELDS)
        assert total == (100 if classified else 0)


@pytest.mark.parametrize(
    "text,agg",
    [("dateRange=1h", "FIFTEEN_MINUTES"), ("dateRange=1d", "FIFTEEN_MINUTES"),
     ("dateRange=2d", "ONE_HOUR"), ("dateRange=7d", "ONE_HOUR"),
     ("dateRange=7d&aggInterval=1D", "ONE_DAY")],
)  # fmt: skip
def test_default_agg_interval_grows_with_the_range(text: str, agg: str) -> None:
    _, _, body = call(api.timeseries_groups, History(), text)
    assert body["result"]["meta"]["aggInterval"] == agg


def test_timeseries_of_one_hour_at_15_minutes() -> None:
    _, _, body = call(api.timeseries_groups, sample(), "dateRange=1h")
    serie = body["result"]["serie_0"]
    assert serie["timestamps"] == [iso(f"2026-11-22T{t}:00") for t in
                                   ("09:15", "09:30", "09:45", "10:00")]  # fmt: skip
    assert serie["post_ack"] == ["0", "0", "0", "28.57"]
    assert body["result"]["meta"]["counts"]["serie_0"]["excluded"] == [0, 0, 0, 2]


def test_timeseries_csv_parses_one_row_per_timestamp() -> None:
    history = sample()
    _, ctype, text = call(api.timeseries_groups, history, "dateRange=1d&aggInterval=1h&format=csv")
    assert ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    _, _, body = call(api.timeseries_groups, history, "dateRange=1d&aggInterval=1h")
    serie = body["result"]["serie_0"]
    assert [r["timestamp"] for r in rows] == serie["timestamps"]
    for i, row in enumerate(rows):
        assert {f: row[f] for f in FIELDS} == {f: serie[f][i] for f in FIELDS}
    assert sum(int(r["classified"]) for r in rows) == 11


# ---- tags ---------------------------------------------------------------------------------


def test_tags_counts_by_category_and_share_of_classified() -> None:
    status, _, body = call(api.tags, sample(), "dateRange=1d")
    assert status == 200
    result = body["result"]
    assert result["meta"]["counts"]["classified"] == 11
    rows = {r["tag"]: r for r in result["tags"]}
    assert list(rows) == [t.value for t in Tag]
    assert rows["reset"]["count"] == 5
    assert rows["reset"]["categories"]["post_syn"] == 3
    assert rows["reset"]["categories"]["post_ack"] == 2
    assert rows["reset"]["share"] == "45.45"
    assert rows["zmap"]["count"] == 3 and rows["zmap"]["share"] == "27.27"
    assert rows["acknumsame"]["count"] == 0 and rows["acknumsame"]["share"] == "0"
    assert rows["single_rst"]["parent"] == "reset"
    assert rows["ttl_mismatch"]["extension"] is True
    for tag in Tag:
        assert rows[tag.value]["description"] == tag.doc


def test_tags_csv_parses() -> None:
    _, _, text = call(api.tags, sample(), "dateRange=1d&format=csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["tag"] for r in rows] == [t.value for t in Tag]
    reset = rows[[t.value for t in Tag].index("reset")]
    assert (reset["count"], reset["share"], reset["post_syn"]) == ("5", "45.45", "3")
    assert all(r["description"] for r in rows)


# ---- routes ---------------------------------------------------------------------------------


def test_routes_read_the_live_history() -> None:
    history = sample()
    routes = api.routes(history, lambda: NOW, lambda: 0.5)
    radar = "/client/v4/radar/tcp_resets_timeouts"
    assert set(routes) == {api.SUMMARY, api.TIMESERIES, api.TAGS, api.SIGNATURES,
                           api.NETWORKS, api.TOP_ASES, api.TOP_LOCATIONS,
                           radar + "/summary", radar + "/timeseries_groups", radar + "/tags",
                           radar + "/signatures", radar + "/networks", radar + "/top/ases",
                           radar + "/top/locations"}
    _, _, twin = routes[radar + "/summary"](query("dateRange=1h"))
    assert json.loads(twin) == json.loads(routes[api.SUMMARY](query("dateRange=1h"))[2])
    status, _, body = routes[api.SUMMARY](query("dateRange=1h"))
    assert status == 200
    assert json.loads(body)["result"]["meta"]["samplingProbability"] == 0.5
    judge(history, NOW, Category.POST_SYN)
    _, _, body = routes[api.SUMMARY](query("dateRange=1h"))
    assert json.loads(body)["result"]["meta"]["counts"]["summary_0"]["classified"] == 8
    status, _, body = routes[api.TAGS](query("dateRange=9x"))
    assert status == 400


def test_renderers_need_only_a_snapshot() -> None:
    snap = Snapshot({})
    for render in (api.summary, api.timeseries_groups, api.tags):
        status, _, _ = render(snap, {}, NOW, P)
        assert status == 200
