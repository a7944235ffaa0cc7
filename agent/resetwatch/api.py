"""The agent's local API, in the shape of Cloudflare Radar's TCP resets and timeouts dataset.

Scripts written for Radar's `/radar/tcp_resets_timeouts/{summary,timeseries_groups}` work
against `/api/v1/tcp_resets_timeouts/...` here: the same query parameters, the same envelope
(`success`, `errors`, `result`), the same five fields as percent strings summing to 100.
Radar's network filters (`asn`, `location`, `continent`, with `-` to exclude) narrow every
answer to the per-network history (netquery.py): a filter on a network that has no label of
its own gives an empty sample with a note, never the whole server. Top lists rank networks and
countries by a category's share (`/tcp_resets_timeouts/top/ases`, `.../top/locations`).
Unknown parameters are ignored. Our own additions live in `meta` (the counts behind the
shares, the sampling probability, `networks`: what a filter kept) and in `/api/v1/tags`,
`/api/v1/signatures` and `/api/v1/networks` (the per-network table of `status --by`).

The renderers are pure functions of (history snapshot, query, now, sampling probability);
`routes` binds them to a live `History` for the HTTP server. docs/operations.md describes
the parameters, defaults and errors for users.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from . import envelope, netquery
from .classify import Category, Tag
from .history import BUCKET_SECONDS, RETENTION_SECONDS, History, Snapshot
from .netquery import NO_FILTER, TOP_CSV, FilterError, NetFilter
from .server import Response, Route
from .signature import Signature
from .summary import percent_shares
from .tally import Tally

Query = dict[str, list[str]]

PREFIX = "/api/v1"
SUMMARY = PREFIX + "/tcp_resets_timeouts/summary"
TIMESERIES = PREFIX + "/tcp_resets_timeouts/timeseries_groups"
TAGS = PREFIX + "/tags"
SIGNATURES = PREFIX + "/signatures"
NETWORKS = PREFIX + "/networks"
TOP_ASES = PREFIX + "/tcp_resets_timeouts/top/ases"
TOP_LOCATIONS = PREFIX + "/tcp_resets_timeouts/top/locations"

DEFAULT_RANGE = "1d"
"""The range when the query names none (our choice; Radar's own default is not documented)."""
MAX_SERIES = 10

AGG_INTERVALS: dict[str, tuple[int, str]] = {
    "15m": (900, "FIFTEEN_MINUTES"),
    "1h": (3600, "ONE_HOUR"),
    "1d": (86400, "ONE_DAY"),
    "1w": (7 * 86400, "ONE_WEEK"),
}
WEEK_START = 4 * 86400
"""Weeks start on Monday 00:00 UTC; the epoch (1970-01-01) was a Thursday."""

_DURATION = re.compile(r"^(\d{1,6})([mhdw])(control)?$", re.IGNORECASE)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WEEK = 7 * 86400
_ALLOWED_RANGES = (
    "1d, 7d, 28d, 1w, 4w (Radar's days and weeks) or 15m, 1h, 12h (ours): a multiple of 15m "
    "within the retention; a Control suffix (1dControl) gives the same window whole weeks "
    "earlier"
)
EARLIEST_YEAR = 1970
LATEST_YEAR = 9999
_JSON = "application/json"
_CSV = "text/csv; charset=utf-8"


class ApiError(ValueError):
    """A query the API refuses: HTTP 400, with a message that starts with the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Span:
    """One series' range: bucket-aligned epoch seconds, `end` exclusive."""

    start: int
    end: int


@dataclass(frozen=True)
class Request:
    spans: list[Span]
    keys: list[str]
    """The result key of each series: `summary_0`, `serie_0`, ... or the `name` given."""
    agg: str
    csv: bool
    network: NetFilter = NO_FILTER
    """The asn/location/continent filters (netquery.py)."""

    @property
    def bounds(self) -> tuple[int, int]:
        return min(s.start for s in self.spans), max(s.end for s in self.spans)


# ---- time -------------------------------------------------------------------------------------


_LATEST = datetime(LATEST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _floor(t: float, step: int = BUCKET_SECONDS, offset: int = 0) -> int:
    return int((t - offset) // step) * step + offset


def _ceil(t: float, step: int = BUCKET_SECONDS) -> int:
    return math.ceil(t / step) * step


def agg_start(t: int, agg: str) -> int:
    """The start of the aggregation interval holding epoch second `t`."""
    step = AGG_INTERVALS[agg][0]
    return _floor(t, step, WEEK_START if agg == "1w" else 0)


def _instant(text: str, parameter: str) -> float:
    value = text.strip()
    if "T" in value:
        value = value.replace(" ", "+")  # an unescaped "+01:00" arrives as " 01:00"
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            parameter, f"{text!r} is not an ISO 8601 time such as 2026-11-22T10:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        epoch = when.timestamp()
    except (OverflowError, OSError, ValueError):
        epoch = -1.0
    # A time whose UTC form leaves the years datetime can hold (0001-01-01, or 9999-12-31
    # at -14:00) is no time this agent could have counted anything at.
    if epoch < 0 or epoch >= _LATEST:
        raise ApiError(parameter, f"{text!r} is outside {EARLIEST_YEAR} to {LATEST_YEAR - 1}")
    return epoch


# ---- the query --------------------------------------------------------------------------------


def _values(query: Query, name: str) -> list[str]:
    """Every value of a parameter, repeated (`a=1&a=2`) or comma-separated (`a=1,2`)."""
    return [v.strip() for raw in query.get(name, []) for v in raw.split(",") if v.strip()]


def _one(query: Query, name: str) -> Optional[str]:
    values = _values(query, name)
    if len(values) > 1:
        raise ApiError(name, f"give one value, not {len(values)}")
    return values[0] if values else None


def _days(seconds: int) -> str:
    return f"{seconds // 86400} days" if seconds % 86400 == 0 else f"{seconds // 3600}h"


def _range_span(text: str, now_end: int, retention: int) -> Span:
    """A relative range ending at the current bucket's end. A Control range is the same
    window shifted back by its length rounded up to whole weeks, as Radar does, so it keeps
    the weekday alignment and never overlaps the window (`1dControl`: days -8 to -7)."""
    match = _DURATION.match(text)
    if not match:
        raise ApiError("dateRange", f"{text!r} is not a range such as {_ALLOWED_RANGES}")
    seconds = int(match[1]) * _UNIT_SECONDS[match[2].lower()]
    if seconds <= 0 or seconds % BUCKET_SECONDS:
        raise ApiError(
            "dateRange", f"{text!r} is not a positive multiple of 15m ({_ALLOWED_RANGES})"
        )
    shift = math.ceil(seconds / WEEK) * WEEK if match[3] else 0
    if seconds + shift > retention:
        raise ApiError(
            "dateRange",
            f"{text!r} reaches back {_days(seconds + shift)}, beyond the {_days(retention)} "
            "this agent keeps",
        )
    end = now_end - shift
    return Span(end - seconds, end)


def _explicit_spans(
    starts: list[str], ends: list[str], now: float, retention: int
) -> list[Span]:
    """Spans from dateStart/dateEnd, each floored to 15 minutes (as Radar does); an end not
    given is now (the current bucket included)."""
    now_end = _ceil(now)
    earliest = now_end - retention
    if ends and starts and len(ends) != len(starts):
        raise ApiError("dateEnd", f"{len(ends)} values for {len(starts)} dateStart values")
    default_seconds = _UNIT_SECONDS["d"]
    spans: list[Span] = []
    durations: list[int] = []
    for index in range(max(len(starts), len(ends))):
        end = _floor(_instant(ends[index], "dateEnd")) if ends else now_end
        given = starts[index] if starts else None
        start = _floor(_instant(given, "dateStart")) if given else end - default_seconds
        if start >= end:
            raise ApiError(
                "dateStart", f"{iso(start)} is not before dateEnd {iso(end)} (both floored "
                "to 15 minutes)"
            )
        if start < earliest:
            raise ApiError(
                "dateStart" if starts else "dateEnd",
                f"{iso(start)} is older than the {_days(retention)} this agent keeps "
                f"(earliest: {iso(earliest)})",
            )
        if start >= now_end:
            raise ApiError("dateStart", f"{iso(start)} is in the future (now: {iso(now)})")
        spans.append(Span(start, min(end, now_end)))
        durations.append(end - start)
    _same_duration("dateStart", durations)
    return spans


def _same_duration(parameter: str, durations: list[int]) -> None:
    """Radar compares series of one duration only (before a window is cut at now)."""
    if any(d != durations[0] for d in durations):
        raise ApiError(
            parameter,
            f"every series must span the same duration as the first ({_days(durations[0])})",
        )


def parse(
    query: Query, now: float, prefix: str, retention: int = RETENTION_SECONDS
) -> Request:
    """Check every parameter; `ApiError` names the first one refused."""
    try:
        network = NetFilter.of(lambda name: _values(query, name))
    except FilterError as err:
        raise ApiError(err.parameter, str(err).split(": ", 1)[1]) from None
    fmt = (_one(query, "format") or "json").lower()
    if fmt not in ("json", "csv"):
        raise ApiError("format", f"{fmt!r} is not one of json, csv")
    ranges, starts, ends = (_values(query, n) for n in ("dateRange", "dateStart", "dateEnd"))
    if ranges and (starts or ends):
        raise ApiError("dateRange", "give either dateRange or dateStart/dateEnd, not both")
    if starts or ends:
        spans = _explicit_spans(starts, ends, now, retention)
    else:
        spans = [_range_span(text, _ceil(now), retention) for text in ranges or [DEFAULT_RANGE]]
    if len(spans) > MAX_SERIES:
        raise ApiError("dateRange", f"{len(spans)} series asked, at most {MAX_SERIES}")
    if not (starts or ends):
        _same_duration("dateRange", [span.end - span.start for span in spans])
    names = _values(query, "name")
    if len(names) > len(spans):
        raise ApiError("name", f"{len(names)} names for {len(spans)} series")
    keys = names + [f"{prefix}_{i}" for i in range(len(names), len(spans))]
    for key in keys:
        if len(key) > 64 or key == "meta":
            raise ApiError("name", f"{key!r} cannot name a series (at most 64 characters)")
        if keys.count(key) > 1:
            raise ApiError("name", f"{key!r} names two series")
    agg_text = _one(query, "aggInterval")
    if agg_text is None:
        longest = max(s.end - s.start for s in spans)
        agg = "15m" if longest <= 86400 else "1h"  # Radar's habit: longer range, wider step
    else:
        agg = agg_text.lower()
        if agg not in AGG_INTERVALS:
            raise ApiError(
                "aggInterval", f"{agg_text!r} is not one of {', '.join(AGG_INTERVALS)}"
            )
    return Request(spans, keys, agg, fmt == "csv", network)


# ---- responses --------------------------------------------------------------------------------


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return status, _JSON, (json.dumps(body, indent=2) + "\n").encode()


def error(err: ApiError) -> Response:
    return _json(envelope.failure(400, str(err)), 400)


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return 200, _CSV, out.getvalue().encode()


def _meta(request: Request, now: float, probability: float, main: Tally) -> dict[str, Any]:
    """`meta` as Radar fills it, the confidence judged on the main (first) series."""
    return {
        "dateRange": [{"startTime": iso(s.start), "endTime": iso(s.end)} for s in request.spans],
        "lastUpdated": iso(now),
        **envelope.radar_meta(main.classified),
        "samplingProbability": probability,
    }


def _narrow(request: Request, snapshot: Snapshot) -> tuple[Snapshot, Optional[dict[str, Any]]]:
    """The snapshot the filters keep, and `meta.networks` saying what they kept (None when
    the query has no network filter)."""
    filtered = request.network.apply(snapshot)
    return filtered, request.network.meta(snapshot, filtered)


def _with(meta: dict[str, Any], networks: Optional[dict[str, Any]]) -> dict[str, Any]:
    if networks is not None:
        meta["networks"] = networks
    return meta


def summary(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    """`/tcp_resets_timeouts/summary`: each range's category shares."""
    try:
        request = parse(query, now, "summary", retention)
    except ApiError as err:
        return error(err)
    snapshot, networks = _narrow(request, snapshot)
    totals = [snapshot.total(s.start, s.end) for s in request.spans]
    if request.csv:
        header = ["serie", "startTime", "endTime", *(c.value for c in Category),
                  "classified", "excluded"]
        rows = [
            [key, iso(span.start), iso(span.end), *envelope.shares(total).values(),
             total.classified, total.excluded_total]
            for key, span, total in zip(request.keys, request.spans, totals)
        ]
        return _csv(header, rows)
    meta = _with(_meta(request, now, probability, totals[0]), networks)
    return _json(envelope.summary(meta, dict(zip(request.keys, totals))))


def _series(snapshot: Snapshot, span: Span, agg: str) -> tuple[list[int], list[Tally]]:
    """The interval starts covering `span` and the sum of the buckets in each (inside span)."""
    step = AGG_INTERVALS[agg][0]
    first = agg_start(span.start, agg)
    starts = list(range(first, span.end, step))
    sums = [Tally() for _ in starts]
    for begin, bucket in snapshot.buckets.items():
        if span.start <= begin < span.end:
            # A 15-minute bucket never straddles an interval: every step is a multiple of it.
            sums[(agg_start(begin, agg) - first) // step].merge(bucket)
    return starts, sums


def timeseries_groups(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    """`/tcp_resets_timeouts/timeseries_groups`: shares per `aggInterval` for each range."""
    try:
        request = parse(query, now, "serie", retention)
    except ApiError as err:
        return error(err)
    snapshot, networks = _narrow(request, snapshot)
    series = [_series(snapshot, span, request.agg) for span in request.spans]
    if request.csv:
        header = ["serie", "timestamp", *(c.value for c in Category), "classified", "excluded"]
        rows = [
            [key, iso(start), *envelope.shares(bucket).values(), bucket.classified,
             bucket.excluded_total]
            for key, (starts, sums) in zip(request.keys, series)
            for start, bucket in zip(starts, sums)
        ]
        return _csv(header, rows)
    main = Tally.sum(series[0][1])
    meta = {"normalization": envelope.NORMALIZATION, **_meta(request, now, probability, main)}
    _with(meta, networks)
    meta["aggInterval"] = AGG_INTERVALS[request.agg][1]
    counts: dict[str, Any] = {}
    result: dict[str, Any] = {"meta": meta}
    for key, (starts, sums) in zip(request.keys, series):
        shares = [envelope.shares(bucket) for bucket in sums]
        categories = [bucket.categories() for bucket in sums]
        serie: dict[str, list[str]] = {"timestamps": [iso(s) for s in starts]}
        for category in Category:
            serie[category.value] = [share[category.value] for share in shares]
        result[key] = serie
        counts[key] = {
            "classified": [bucket.classified for bucket in sums],
            "categories": {c.value: [cs[c] for cs in categories] for c in Category},
            "excluded": [bucket.excluded_total for bucket in sums],
        }
    meta["counts"] = counts
    return _json(envelope.success(result))


def _one_range(
    snapshot: Snapshot, query: Query, now: float, prefix: str, retention: int, path: str
) -> tuple[Request, Tally, Optional[dict[str, Any]]]:
    """The request of an endpoint that answers for one range, the range's total (filtered)
    and `meta.networks`."""
    request = parse(query, now, prefix, retention)
    if len(request.spans) > 1:
        raise ApiError("dateRange", f"{path} takes one range, not {len(request.spans)}")
    span = request.spans[0]
    snapshot, networks = _narrow(request, snapshot)
    return request, snapshot.total(span.start, span.end), networks


def tag_share(count: int, classified: int) -> str:
    """`count` as a percent of `classified`, written like the category shares."""
    return percent_shares({"tag": count, "rest": max(0, classified - count)})["tag"]


def tags(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    """`/tags`: each tag's count in one range, by category, and its share of the classified
    connections (a connection carries several tags, so the shares do not sum to 100)."""
    try:
        request, total, networks = _one_range(snapshot, query, now, "tags", retention, TAGS)
    except ApiError as err:
        return error(err)
    classified = total.classified
    tag_counts = total.tags()
    rows = []
    for tag in Tag:
        by_category = {c.value: tag_counts[c, tag] for c in Category}
        count = sum(by_category.values())
        rows.append(
            {
                "tag": tag.value,
                "count": count,
                "share": tag_share(count, classified),
                "categories": by_category,
                "parent": tag.parent.value if tag.parent else None,
                "extension": tag.extension,
                "description": tag.doc,
            }
        )
    if request.csv:
        header = ["tag", "count", "share", *(c.value for c in Category), "parent",
                  "extension", "description"]
        return _csv(
            header,
            [
                [r["tag"], r["count"], r["share"], *r["categories"].values(), r["parent"] or "",
                 str(r["extension"]).lower(), r["description"]]
                for r in rows
            ],
        )
    meta = {"normalization": envelope.NORMALIZATION, **_meta(request, now, probability, total)}
    meta["counts"] = envelope.counts(total)
    return _json(envelope.success({"meta": _with(meta, networks), "tags": rows}))


def signature_rows(total: Tally) -> list[dict[str, Any]]:
    """Each signature's count and its share of all judged flows and of the anomalous ones
    (the paper's two views), in the enum's order."""
    classified, anomalous = total.classified, total.anomalous
    return [
        {
            "signature": signature.value,
            "notation": signature.doc,
            "count": count,
            "share": tag_share(count, classified),
            "anomalousShare": tag_share(count, anomalous) if signature is not Signature.NONE
            else None,
        }
        for signature, count in total.signatures().items()
    ]


def signatures(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    """`/signatures`: each of the paper's 19 tampering signatures (and `none`) in one range:
    count, share of the judged connections, share of the anomalous ones."""
    try:
        request, total, networks = _one_range(
            snapshot, query, now, "signatures", retention, SIGNATURES
        )
    except ApiError as err:
        return error(err)
    rows = signature_rows(total)
    if request.csv:
        header = ["signature", "notation", "count", "share", "anomalousShare"]
        return _csv(header, [[r[h] if r[h] is not None else "" for h in header] for r in rows])
    meta = {"normalization": envelope.NORMALIZATION, **_meta(request, now, probability, total)}
    meta["counts"] = envelope.counts(total)
    meta["anomalous"] = total.anomalous
    return _json(envelope.success({"meta": _with(meta, networks), "signatures": rows}))


def _top(
    by: str, snapshot: Snapshot, query: Query, now: float, probability: float, retention: int
) -> Response:
    """`/tcp_resets_timeouts/top/{ases,locations}`: networks or countries ranked by the share
    of `category` (required), Radar's shape: `result.top_0`, a list of rows."""
    path = TOP_ASES if by == "asn" else TOP_LOCATIONS
    try:
        category = netquery.category_of(_values(query, "category"))
        limit = netquery.limit_of(_values(query, "limit"))
        request, total, networks = _one_range(snapshot, query, now, "top", retention, path)
    except FilterError as err:
        return error(ApiError(err.parameter, str(err).split(": ", 1)[1]))
    except ApiError as err:
        return error(err)
    rows, other = netquery.top_rows(total, by, category, limit, snapshot.names)
    if request.csv:
        return _csv(TOP_CSV[by], netquery.csv_rows(rows, TOP_CSV[by]))
    meta = {"normalization": envelope.NORMALIZATION,
            **_with(_meta(request, now, probability, total), networks)}
    meta.update({"category": category.value, "limit": limit, "classified": total.classified,
                 "other": other, "tracked": snapshot.top})
    return _json(envelope.success({"meta": meta, "top_0": rows}))


def top_ases(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    return _top("asn", snapshot, query, now, probability, retention)


def top_locations(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    return _top("country", snapshot, query, now, probability, retention)


def per_network(
    snapshot: Snapshot, query: Query, now: float, probability: float,
    retention: int = RETENTION_SECONDS,
) -> Response:
    """`/networks?by=asn|country`: replay's per-network rows (shares, sample size, the
    too-small marker, AS names) over one range, for `resetwatch status --by`."""
    try:
        by = netquery.by_of(_values(query, "by"))
        request, total, filters = _one_range(snapshot, query, now, "networks", retention,
                                             NETWORKS)
    except FilterError as err:
        return error(ApiError(err.parameter, str(err).split(": ", 1)[1]))
    except ApiError as err:
        return error(err)
    meta = _with(_meta(request, now, probability, total), filters)
    meta["tracked"] = snapshot.top
    rows = netquery.networks_rows(total, by, snapshot.names)
    return _json(envelope.success({"meta": meta, f"by_{by}": rows}))


Renderer = Callable[[Snapshot, Query, float, float, int], Response]

RADAR_PREFIX = "/client/v4/radar"
"""Where Radar serves the dataset under its API base: the official client appends
`/radar/tcp_resets_timeouts/...` to its `base_url`, so `http://AGENT/client/v4` reaches here."""

ENDPOINTS: dict[str, tuple[Renderer, str]] = {
    "/tcp_resets_timeouts/summary": (summary, "summary"),
    "/tcp_resets_timeouts/timeseries_groups": (timeseries_groups, "serie"),
    # Not in Radar's dataset, but shaped like its other top endpoints (result.top_0).
    "/tcp_resets_timeouts/top/ases": (top_ases, "top"),
    "/tcp_resets_timeouts/top/locations": (top_locations, "top"),
}
"""Radar's endpoints, served under both path families."""
EXTENSIONS: dict[str, tuple[Renderer, str]] = {
    "/tags": (tags, "tags"),
    "/signatures": (signatures, "signatures"),
    "/networks": (per_network, "networks"),
}
"""Ours: under /api/v1, and beside Radar's under /client/v4/radar/tcp_resets_timeouts."""


def paths() -> dict[str, tuple[Renderer, str]]:
    """Every API path with its renderer and series prefix, both families."""
    out = {PREFIX + path: item for path, item in ENDPOINTS.items()}
    out.update({RADAR_PREFIX + path: item for path, item in ENDPOINTS.items()})
    out.update({PREFIX + path: item for path, item in EXTENSIONS.items()})
    out.update(
        {RADAR_PREFIX + "/tcp_resets_timeouts" + path: item for path, item in EXTENSIONS.items()}
    )
    return out


API_ROOTS = (PREFIX + "/", RADAR_PREFIX + "/")
"""Paths under these answer unknown endpoints with a 404 in the envelope, not plain text."""


def not_found(path: str) -> Response:
    known = ", ".join(sorted(paths()))
    return _json(envelope.failure(404, f"{path}: no such endpoint (known: {known})"), 404)


def routes(
    history: History, now: Callable[[], float], probability: Callable[[], float]
) -> dict[str, Route]:
    """The API's routes for `HttpServer.routes`, reading a consistent copy of `history`."""

    def bind(render: Renderer, prefix: str) -> Route:
        def handle(query: Query) -> Response:
            moment = now()
            retention = history.retention
            try:
                start, end = parse(query, moment, prefix, retention).bounds
            except ApiError as err:
                return error(err)
            return render(history.snapshot(start, end), query, moment, probability(), retention)

        return handle

    return {path: bind(render, prefix) for path, (render, prefix) in paths().items()}
