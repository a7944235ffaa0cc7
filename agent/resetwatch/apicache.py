"""A cache and a size limit in front of the API's routes (api.py stays a pure renderer).

The API renders in the agent's own interpreter, beside the packet loop, so every answer it
computes is time the loop does not run (issue 12). Two limits keep that small:

- Answers are cached by path, normalised query and the current 15-minute bucket. A new bucket
  drops every entry. Within a bucket an answer is reused for at most `max_age` seconds when
  its range reaches the buckets that still change (the current one, and those a flow being
  judged late can still land in: `settle` seconds back); an answer over settled buckets only
  lives until the bucket ends. Six scripts polling the same 7-day series cost one render per
  `max_age`, not one per request.
- A time series may hold at most `max_points` points (series times intervals): beyond that the
  query is refused with a 413 naming what to narrow, before anything is rendered. Any answer
  over `max_bytes` is refused the same way (a backstop for the other routes).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

from . import api
from .history import BUCKET_SECONDS, RETENTION_SECONDS, bucket_start
from .server import Query, Response, Route

MAX_AGE = 10.0
"""Seconds an answer reaching the still-changing buckets is reused."""
MAX_POINTS = 2016
"""Points (series x intervals) one time series answer may hold: three 7-day series at 15m."""
MAX_BYTES = 8 << 20
CACHE_BYTES = 32 << 20
"""Bytes of answers kept; the least recently used go first."""

_Key = tuple[str, tuple[tuple[str, tuple[str, ...]], ...], int]


def _key(path: str, query: Query, now: float) -> _Key:
    """Parameter order does not matter; value order does (it orders the series)."""
    normalised = tuple(sorted((name, tuple(values)) for name, values in query.items()))
    return path, normalised, bucket_start(now)


def refusal(message: str) -> Response:
    """A 413 in the API's envelope; the message starts with the parameter to change."""
    body = {"success": False, "errors": [{"code": 413, "message": message}], "result": None}
    return 413, "application/json", (json.dumps(body, indent=2) + "\n").encode()


def points(
    query: Query, now: float, retention: int = RETENTION_SECONDS
) -> Optional[tuple[int, int]]:
    """(series, intervals of the longest) of a time series query; None when it is refused
    anyway (the route answers the 400)."""
    try:
        request = api.parse(query, now, "serie", retention)
    except api.ApiError:
        return None
    step = api.AGG_INTERVALS[request.agg][0]
    longest = max(
        len(range(api.agg_start(span.start, request.agg), span.end, step))
        for span in request.spans
    )
    return len(request.spans), longest


class AnswerCache:
    """Answers by key, each with the monotonic time it expires; bounded in bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, tuple[Response, float]] = OrderedDict()
        self._bytes = 0
        self._bucket: Optional[int] = None
        self._lock = threading.Lock()

    def get(self, key: _Key, now: float) -> Optional[Response]:
        with self._lock:
            if key[2] != self._bucket:
                self._entries.clear()  # a new bucket: every range moved on
                self._bytes = 0
                self._bucket = key[2]
            entry = self._entries.get(key)
            if entry is None or now >= entry[1]:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: _Key, response: Response, expires: float) -> None:
        size = len(response[2])
        with self._lock:
            if key[2] != self._bucket or size > self.max_bytes:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0][2])
            self._entries[key] = (response, expires)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (dropped, _) = self._entries.popitem(last=False)
                self._bytes -= len(dropped[2])


def guard(
    routes: dict[str, Route],
    wall: Callable[[], float],
    *,
    settle: float = 0.0,
    cache: Optional[AnswerCache] = None,
    max_age: float = MAX_AGE,
    max_points: int = MAX_POINTS,
    max_bytes: int = MAX_BYTES,
    clock: Callable[[], float] = time.monotonic,
    retention: Callable[[], int] = lambda: RETENTION_SECONDS,
) -> dict[str, Route]:
    """`routes` (api.routes) behind one cache and the size limits. `wall` is the clock the
    history's buckets use; `settle` how long after its end a bucket can still change
    (idle_timeout + close_linger)."""
    answers = cache if cache is not None else AnswerCache()
    endpoints = api.paths()  # both path families: path -> (renderer, series prefix)

    def limited(path: str, route: Route, query: Query, now: float) -> Response:
        if path in endpoints and endpoints[path][0] is api.timeseries_groups:
            shape = points(query, now, retention())
            if shape is not None and shape[0] * shape[1] > max_points:
                series, intervals = shape
                return refusal(
                    f"dateRange: {series} series of up to {intervals} intervals is "
                    f"{series * intervals} points, more than the {max_points} one answer may "
                    f"hold; ask a shorter dateRange, a wider aggInterval or fewer series"
                )
        response = route(query)
        if len(response[2]) > max_bytes:
            return refusal(
                f"dateRange: the answer is {len(response[2]):,} bytes, more than the "
                f"{max_bytes:,} one answer may hold; ask a shorter dateRange or fewer series"
            )
        return response

    def lifetime(path: str, query: Query, now: float) -> float:
        """Seconds an answer stays good (within its bucket)."""
        prefix = endpoints[path][1] if path in endpoints else "serie"
        try:
            end = api.parse(query, now, prefix, retention()).bounds[1]
        except api.ApiError:
            return max_age
        settled = end <= bucket_start(now) - settle
        return BUCKET_SECONDS if settled else max_age

    def wrap(path: str, route: Route) -> Route:
        def handle(query: Query) -> Response:
            now = wall()
            key = _key(path, query, now)
            tick = clock()
            hit = answers.get(key, tick)
            if hit is not None:
                return hit
            response = limited(path, route, query, now)
            if response[0] < 500:
                answers.put(key, response, tick + lifetime(path, query, now))
            return response

        return handle

    return {path: wrap(path, route) for path, route in routes.items()}
