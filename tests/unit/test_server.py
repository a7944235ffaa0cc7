"""The HTTP listener against real sockets: timeouts, the connection cap, the backlog, the API
worker's queue, and the cache and size limit in front of the API (issue 12).

Waits are generous limits polled for a condition; nothing asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Callable

import pytest

from resetwatch import api, apicache
from resetwatch.classify import Category
from resetwatch.history import History
from resetwatch.metrics import AgentHealth, FlowCounts, build_registry
from resetwatch.server import BACKLOG, HttpServer, Query, Response

from .history_data import epoch, judge

NOW = epoch("2026-11-22T10:07:30")
LIMIT_S = 20.0


def make_server(**kw: object) -> HttpServer:
    health = AgentHealth(probability=0.5)
    health.rules.present = True
    server = HttpServer(("127.0.0.1", 0), build_registry(FlowCounts(), health),
                        lambda: (True, "ok"), **kw)  # type: ignore[arg-type]
    health.http_refused = server.refused
    health.http_open = lambda: server.open_connections
    return server


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = make_server()
    srv.start()
    yield srv
    srv.stop()


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {LIMIT_S} s"
        time.sleep(0.02)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=LIMIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=LIMIT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ---- timeouts and bad requests ------------------------------------------------------------


@pytest.mark.parametrize(
    "start", [b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"GET /metrics\r\n"],
    ids=["headers-never-end", "http-0.9-style"],
)
def test_a_request_that_never_ends_its_headers_is_closed(start: bytes) -> None:
    srv = make_server(header_timeout=0.5)
    srv.start()
    try:
        sock = connect(srv.port)
        sock.sendall(start)
        # A slowloris: one more header byte now and then, never the blank line.
        for _ in range(3):
            time.sleep(0.2)
            try:
                sock.sendall(b"X")
            except OSError:
                break
        assert read_all(sock) == b""  # closed without an answer
        sock.close()
        assert srv.refused["header_timeout"] == 1
        assert srv.open_connections == 0
    finally:
        srv.stop()


def test_client_errors_are_counted_not_logged(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET\r\n\r\n",
                 b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4000):
        sock = connect(server.port)
        with contextlib.suppress(OSError):  # refused before it was all sent
            sock.sendall(junk)
        answer = read_all(sock)
        sock.close()
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.0 431")), answer[:40]
    sock = connect(server.port)
    sock.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.0 405")
    sock.close()
    assert server.refused["bad_request"] == 3
    assert caplog.records == []
    assert get(server.port, "/healthz") == (200, b"ok\n")


def test_a_failing_route_is_a_500_and_one_log_line(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_query: Query) -> Response:
        raise RuntimeError("boom")

    server.routes["/api/v1/broken"] = broken
    for _ in range(3):
        status, body = get(server.port, "/api/v1/broken")
        assert (status, body) == (500, b"internal error: boom\n")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["http /api/v1/broken: RuntimeError: boom"], lines
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


# ---- the connection cap and the backlog ---------------------------------------------------


def test_the_cap_refuses_the_65th_connection() -> None:
    srv = make_server(evict_after=3600.0)  # nothing is old enough to give way
    srv.start()
    held = []
    try:
        for _ in range(64):
            held.append(connect(srv.port))
        wait_for(lambda: srv.open_connections == 64, "64 connections accepted")
        extra = connect(srv.port)
        extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        answer = read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.0 503"), answer
        assert b"http_max_connections" in answer
        assert srv.refused["full"] == 1
        assert srv.open_connections == 64
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_idle_connections_give_way_to_a_scrape() -> None:
    srv = make_server(evict_after=0.0)
    srv.start()
    held = [connect(srv.port) for _ in range(64)]
    try:
        wait_for(lambda: srv.open_connections == 64, "64 connections accepted")
        status, body = get(srv.port, "/metrics")
        assert status == 200
        assert b'resetwatch_http_connections_refused_total{reason="evicted"} 1.0' in body
        assert b"resetwatch_http_connections_open 64.0" in body
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_clients_not_reading_their_answers_give_way_to_a_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resetwatch import server as server_module

    monkeypatch.setattr(server_module, "API_BYTES_PER_SECOND", 1 << 40)
    srv = make_server(max_connections=4, evict_after=0.0)
    big = b"x" * (64 << 20)  # far more than the socket buffers hold
    srv.routes["/api/v1/big"] = lambda _q: (200, "text/plain", big)
    srv.start()
    stalled = []
    try:
        for _ in range(4):
            sock = connect(srv.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /api/v1/big HTTP/1.1\r\n\r\n")  # and never read
            stalled.append(sock)
        wait_for(lambda: sum(c.state == 2 for c in list(srv._conns.values())) == 4,
                 "four answers stuck in the send buffers")
        assert get(srv.port, "/healthz") == (200, b"ok\n")
        assert srv.refused["evicted"] == 1
    finally:
        for sock in stalled:
            sock.close()
        srv.stop()


@pytest.mark.skipif(shutil.which("ss") is None, reason="no ss (iproute2)")
def test_the_listen_backlog(server: HttpServer) -> None:
    # For a listening socket, ss shows the backlog as Send-Q.
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert int(out[2]) == BACKLOG >= 128, out


# ---- the API worker -----------------------------------------------------------------------


def test_metrics_answer_while_the_api_is_busy(server: HttpServer) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(_query: Query) -> Response:
        started.set()
        release.wait(LIMIT_S)
        return 200, "text/plain", b"slow\n"

    server.routes["/api/v1/slow"] = slow
    waiting = []
    try:
        first = connect(server.port)
        first.sendall(b"GET /api/v1/slow HTTP/1.1\r\n\r\n")
        assert started.wait(LIMIT_S)
        for _ in range(8):  # the queue's length
            sock = connect(server.port)
            sock.sendall(b"GET /api/v1/slow HTTP/1.1\r\n\r\n")
            waiting.append(sock)
        wait_for(lambda: server._jobs.full(), "the API queue full")
        status, body = get(server.port, "/api/v1/slow")
        assert status == 503 and b"busy" in body
        assert server.refused["busy"] == 1
        assert get(server.port, "/healthz") == (200, b"ok\n")
        status, body = get(server.port, "/metrics")
        assert status == 200 and b'reason="busy"} 1.0' in body
    finally:
        release.set()
    assert read_all(first).endswith(b"slow\n")
    for sock in waiting:
        assert read_all(sock).endswith(b"slow\n")
        sock.close()
    first.close()


# ---- the cache and the size limit in front of the API -------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counted(routes: dict[str, api.Route]) -> tuple[dict[str, api.Route], dict[str, int]]:
    calls = dict.fromkeys(routes, 0)

    def wrap(path: str, route: api.Route) -> api.Route:
        def handle(query: Query) -> Response:
            calls[path] += 1
            return route(query)

        return handle

    return {p: wrap(p, r) for p, r in routes.items()}, calls


def guarded(wall: Clock, mono: Clock) -> tuple[dict[str, api.Route], dict[str, int]]:
    history = History()
    judge(history, NOW - 7200, Category.POST_ACK, 3)
    judge(history, NOW, Category.NO_MATCH, 2)
    routes, calls = counted(api.routes(history, wall, lambda: 0.5))
    return apicache.guard(routes, wall, settle=310.0, clock=mono), calls


def test_answers_for_closed_buckets_are_cached_until_a_new_bucket() -> None:
    wall, mono = Clock(NOW), Clock(0.0)
    routes, calls = guarded(wall, mono)
    summary = routes[api.SUMMARY]
    closed = {"dateStart": ["2026-11-22T07:00:00Z"], "dateEnd": ["2026-11-22T09:00:00Z"]}
    first = summary(closed)
    assert first[0] == 200 and b'"post_ack": "100"' in first[2]
    mono.now += 300  # long past max_age: closed buckets do not change any more
    wall.now += 300  # 10:12:30, the same bucket
    reordered = {"dateEnd": closed["dateEnd"], "dateStart": closed["dateStart"]}
    assert summary(reordered) is first
    assert calls[api.SUMMARY] == 1
    wall.now = NOW + 900  # the next bucket: everything is computed afresh
    again = summary(closed)
    shares = [json.loads(answer[2])["result"]["summary_0"] for answer in (first, again)]
    assert shares[0] == shares[1]
    assert again is not first
    assert calls[api.SUMMARY] == 2


def test_answers_reaching_the_current_bucket_live_max_age() -> None:
    wall, mono = Clock(NOW), Clock(0.0)
    routes, calls = guarded(wall, mono)
    series = routes[api.TIMESERIES]
    query = {"dateRange": ["7d"], "aggInterval": ["15m"]}
    first = series(query)
    assert first[0] == 200
    mono.now += apicache.MAX_AGE / 2
    assert series(query) is first
    assert series({"dateRange": ["1d"]}) is not first  # another query, its own entry
    mono.now += apicache.MAX_AGE
    assert series(query)[0] == 200
    assert calls[api.TIMESERIES] == 3


def test_a_time_series_too_big_is_refused_naming_what_to_narrow(server: HttpServer) -> None:
    routes, calls = guarded(Clock(NOW), Clock(0.0))
    server.routes.update(routes)
    path = api.TIMESERIES + "?dateRange=7d,7d,7d,7d&aggInterval=15m"
    status, body = get(server.port, path)
    assert status == 413
    doc = json.loads(body)
    message = doc["errors"][0]["message"]
    assert doc["success"] is False and doc["errors"][0]["code"] == 413
    assert message.startswith("dateRange: 4 series of up to 672 intervals is 2688 points"), message
    assert "aggInterval" in message
    assert calls[api.TIMESERIES] == 0  # refused before anything was rendered
    status, _ = get(server.port, api.TIMESERIES + "?dateRange=7d,7d,7d,7d&aggInterval=1h")
    assert status == 200


def test_an_answer_over_max_bytes_is_refused() -> None:
    routes, _ = counted({api.TAGS: lambda _q: (200, "application/json", b"x" * 2000)})
    guarded_routes = apicache.guard(routes, Clock(NOW), max_bytes=1000)
    status, _, body = guarded_routes[api.TAGS]({})
    assert status == 413 and b"2,000 bytes" in body
