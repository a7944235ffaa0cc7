"""The agent's HTTP listener: /metrics, /healthz, and whatever routes the daemon adds (the API).

Built so that no local client can blind the agent (issue 12):

- One thread does every socket operation through a selector, never blocking: a connection costs
  a file descriptor and a small buffer, never a thread.
- At most `max_connections` connections at once. A new one beyond that takes the place of the
  connection quiet the longest (no complete request yet, or not taking its answer), once quiet
  for `evict_after` seconds, so held connections cannot lock a scrape out; when there is none
  it gets a short 503 and is closed.
- A request's headers must be complete within `header_timeout` seconds of the connect; an answer
  must keep moving (some bytes accepted by the client) every `write_timeout` seconds.
- `/metrics` and `/healthz` are answered on the I/O thread as soon as their headers are in:
  they never wait behind the API. Every other route runs on one worker thread with a short
  queue (beyond it: 503), and after each answer the worker rests in proportion to the CPU the
  answer took, so the API holds the interpreter (and its lock) for at most `API_CPU_SHARE` of
  the time the packet loop could use, and to its size, so answers (cached ones too) leave at
  most `API_BYTES_PER_SECOND` and `API_ANSWERS_PER_SECOND`.
- Client mistakes and misbehaviour are counted by reason (`refused`), never logged: no log line
  ever carries a client address. A route that raises gets a 500 and one log line per route
  and error type.
- One request per connection (HTTP/1.0, `Connection: close`), as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("resetwatch")

Response = tuple[int, str, bytes]
"""(status, content type, body)"""
Route = Callable[[dict[str, list[str]]], Response]

DEFAULT_MAX_CONNECTIONS = 64
BACKLOG = 1024
"""Listen backlog (the kernel caps it at net.core.somaxconn): bursts wait there, not refused."""
HEADER_TIMEOUT = 10.0
"""Seconds from the connect to the end of the request's headers."""
WRITE_TIMEOUT = 10.0
"""Seconds an answer may go without the client taking any of it."""
EVICT_AFTER = 1.0
"""Age after which a connection with no complete request yields its place to a new one."""
MAX_HEADER_BYTES = 16 << 10
API_QUEUE = 8
"""API requests waiting for the worker; more get a 503 at once."""
API_CPU_SHARE = 0.1
"""Largest share of the time the API worker may compute (it rests for the remainder)."""
API_BYTES_PER_SECOND = 16 << 20
"""Pace of API answers, in bytes: even answers from the cache cost the agent's CPU to send."""
API_ANSWERS_PER_SECOND = 20
"""Pace of API answers, in answers: each costs the I/O thread and the worker some CPU too."""
FAST_PATHS = ("/metrics", "/healthz")
SWEEP_EVERY = 0.25
_TEXT = "text/plain; charset=utf-8"

REFUSALS: dict[str, str] = {
    "full": "all http_max_connections were busy: refused with a 503 at once",
    "evicted": "quiet for a second (no complete request yet, or not taking its answer) while the "
    "listener was full: closed to make room for a new connection",
    "header_timeout": "headers not complete within 10 s of the connect",
    "write_timeout": "took none of its answer for 10 s",
    "bad_request": "not a readable HTTP/1.x request line, or headers over 16 KiB",
    "busy": "API request while the API worker's queue was full: 503",
    "reset": "the connection failed (reset by the client) before the answer was sent",
    "no_fds": "accept failed for lack of file descriptors (the process limit); retried",
}
"""Why the listener closed a connection without a full answer (the metric's label values)."""

_READING, _WAITING, _WRITING = range(3)
Query = dict[str, list[str]]


class _Conn:
    __slots__ = ("buf", "deadline", "out", "quiet_since", "sent", "sock", "state")

    def __init__(self, sock: socket.socket, now: float, header_timeout: float) -> None:
        self.sock = sock
        self.buf = b""
        self.quiet_since = now
        """When the client last made progress: the connect, or the last bytes it took."""
        self.deadline = now + header_timeout
        self.state = _READING
        self.out = memoryview(b"")
        self.sent = 0


_Job = tuple[_Conn, str, Route, Query]


def _answer(status: int, ctype: str, body: bytes, extra: str = "", dated: bool = True) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    date = f"Date: {formatdate(usegmt=True)}\r\n" if dated else ""
    head = (
        f"HTTP/1.0 {status} {reason}\r\nServer: resetwatch\r\n"
        f"{date}Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


_FULL = _answer(503, _TEXT, b"busy: too many connections open (http_max_connections)\n",
                "Retry-After: 1\r\n", dated=False)
"""Made once: refusing must cost next to nothing (so it carries no Date)."""


class HttpServer:
    """The listener on its own thread; `routes` maps a path to a handler of the query."""

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        healthy: Callable[[], tuple[bool, str]],
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        evict_after: float = EVICT_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes: dict[str, Route] = {
            "/metrics": lambda _q: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": self._healthz,
        }
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.evict_after = evict_after
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._healthy = healthy
        self._clock = clock
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(BACKLOG)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._conns: dict[int, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._outbox: list[tuple[_Conn, Response]] = []
        self._outbox_lock = threading.Lock()
        self._jobs: queue.Queue[Optional[_Job]] = queue.Queue(API_QUEUE)
        self._stopping = threading.Event()
        self._listening = False
        self._logged: set[tuple[str, str]] = set()
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._worker = threading.Thread(target=self._work, name="http-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def _healthz(self, _query: Query) -> Response:
        ok, text = self._healthy()
        return (200 if ok else 503), _TEXT, (text + "\n").encode()

    def start(self) -> None:
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._listen(True)
        self.thread.start()
        self._worker.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self.thread.is_alive():
            self.thread.join(10)
        # Make room for the sentinel: waiting requests are dropped with the connections.
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        if self._worker.is_alive():
            self._worker.join(10)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # ---- the I/O thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        next_sweep = 0.0
        while not self._stopping.is_set():
            for key, mask in self._sel.select(SWEEP_EVERY):
                try:
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_outbox()
                    elif mask & selectors.EVENT_READ:
                        self._read(key.data)
                    else:
                        self._write(key.data)
                except Exception as error:  # never let one connection end the listener
                    self._log_once("listener", error)
                    if isinstance(key.data, _Conn):
                        self._close(key.data)
            now = self._clock()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + SWEEP_EVERY

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        elif not on and self._listening:
            self._sel.unregister(self._listener)
        self._listening = on

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst, but let the other connections have a turn
            try:
                sock, _address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop asking until the next sweep, or this spins.
                    self.refused["no_fds"] += 1
                    self._listen(False)
                return
            sock.setblocking(False)
            now = self._clock()
            if len(self._conns) >= self.max_connections and not self._evict(now):
                self.refused["full"] += 1
                self._refuse(sock)
                continue
            conn = _Conn(sock, now, self.header_timeout)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evict(self, now: float) -> bool:
        """Close the connection quiet the longest (no complete request, or not taking its
        answer), if it was quiet `evict_after`. Those waiting for the API are kept: at most
        the queue's length plus one."""
        quiet = [c for c in self._conns.values() if c.state != _WAITING]
        oldest = min(quiet, key=lambda c: c.quiet_since, default=None)
        if oldest is None or now - oldest.quiet_since < self.evict_after:
            return False
        self.refused["evicted"] += 1
        self._close(oldest)
        return True

    @staticmethod
    def _refuse(sock: socket.socket) -> None:
        # Take what the client already sent, so closing sends a FIN after the 503, not a RST.
        with contextlib.suppress(OSError):
            sock.recv(MAX_HEADER_BYTES)
        with contextlib.suppress(OSError):
            sock.send(_FULL)
        sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.refused["reset"] += 1
            self._close(conn)
            return
        if not data:  # the client gave up before sending a request
            self._close(conn)
            return
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.buf.find(b"\n\n")
        if end < 0:
            if len(conn.buf) > MAX_HEADER_BYTES:
                self._bad(conn, 431, "request headers over 16 KiB")
            return
        # Not watched while its answer is computed (a closed or chatty client must not spin
        # the selector); the answer re-registers it for writing.
        self._sel.unregister(conn.sock)
        conn.state = _WAITING
        self._dispatch(conn, conn.buf[:end])

    def _dispatch(self, conn: _Conn, head: bytes) -> None:
        words = head.split(b"\n", 1)[0].strip().split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/1."):
            self._bad(conn, 400, "not an HTTP/1.x request line")
            return
        if words[0] != b"GET":
            self._respond(conn, (405, _TEXT, b"only GET is served here\n"), "Allow: GET\r\n")
            return
        url = urlsplit(words[1].decode("latin-1"))
        route = self.routes.get(url.path)
        query = parse_qs(url.query)
        if route is None:
            self._respond(conn, (404, _TEXT, b"not found\n"))
        elif url.path in FAST_PATHS:
            self._respond(conn, self._call(url.path, route, query))
        else:
            try:
                self._jobs.put_nowait((conn, url.path, route, query))
            except queue.Full:
                self.refused["busy"] += 1
                body = b"busy: the API is answering other requests; retry shortly\n"
                self._respond(conn, (503, _TEXT, body), "Retry-After: 1\r\n")

    def _bad(self, conn: _Conn, status: int, why: str) -> None:
        self.refused["bad_request"] += 1
        self._respond(conn, (status, _TEXT, (why + "\n").encode()))

    def _respond(self, conn: _Conn, response: Response, extra: str = "") -> None:
        if conn.sock.fileno() < 0:
            return  # closed meanwhile (stopping)
        status, ctype, body = response
        conn.out = memoryview(_answer(status, ctype, body, extra))
        conn.sent = 0
        conn.state = _WRITING
        conn.deadline = self._clock() + self.write_timeout
        try:
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except KeyError:
            self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)  # most answers fit the socket buffer: no trip through select

    def _write(self, conn: _Conn) -> None:
        if conn.state != _WRITING:
            return  # writable while its answer is being computed: nothing to send yet
        try:
            sent = conn.sock.send(conn.out[conn.sent :])
        except BlockingIOError:
            return
        except OSError:
            self.refused["reset"] += 1
            self._close(conn)
            return
        if sent:
            conn.sent += sent
            conn.quiet_since = self._clock()
            conn.deadline = conn.quiet_since + self.write_timeout
        if conn.sent >= len(conn.out):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._close(conn)

    def _sweep(self, now: float) -> None:
        if not self._listening and not self._stopping.is_set():
            self._listen(True)  # after running out of descriptors
        for conn in list(self._conns.values()):
            if conn.state != _WAITING and now >= conn.deadline:
                reason = "header_timeout" if conn.state == _READING else "write_timeout"
                self.refused[reason] += 1
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        conn.sock.close()
        conn.out = memoryview(b"")

    # ---- answers computed elsewhere ----------------------------------------------------------

    def _call(self, path: str, route: Route, query: Query) -> Response:
        try:
            return route(query)
        except Exception as error:  # a bad handler must not kill the listener
            self._log_once(path, error)
            return 500, _TEXT, f"internal error: {error}\n".encode()

    def _log_once(self, where: str, error: Exception) -> None:
        key = (where, type(error).__name__)
        if key not in self._logged:  # one line per place and kind, never a client address
            self._logged.add(key)
            log.error("http %s: %s: %s", where, type(error).__name__, error)

    def _work(self) -> None:
        """The API worker: one answer at a time, then a rest proportional to its CPU."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, path, route, query = job
            started = time.thread_time()
            response = self._call(path, route, query)
            cost = time.thread_time() - started
            with self._outbox_lock:
                self._outbox.append((conn, response))
            self._wake()
            rest = max(
                cost * (1.0 / API_CPU_SHARE - 1.0),
                len(response[2]) / API_BYTES_PER_SECOND,
                1.0 / API_ANSWERS_PER_SECOND,
            )
            if self._stopping.wait(rest):
                return

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake is already pending
            self._wake_w.send(b"!")

    def _drain_outbox(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        with self._outbox_lock:
            ready, self._outbox = self._outbox, []
        for conn, response in ready:
            if conn.sock.fileno() >= 0:
                self._respond(conn, response)
