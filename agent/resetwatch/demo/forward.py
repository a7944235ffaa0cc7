"""Reaching the agent inside the server namespace from the demo process in the host namespace.

The agent serves /metrics on the server namespace's loopback. The demo opens its TCP sockets
*inside* that namespace (a socket keeps the namespace of the thread that created it, see
`lab.in_namespace`), so neither a scrape nor the forwarder needs any interface, route or rule
in the host namespace: the forwarder is one listening socket on the host's loopback that
copies bytes to a socket living in the lab.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Callable, Optional

SocketFactory = Callable[[], socket.socket]
"""Returns a fresh TCP socket inside the server namespace."""

_CHUNK = 65536


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT (IPv6 in brackets) into (address, port); ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9825)")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        number = int(port)
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not ADDR:PORT with a numeric address") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: the port must be from 0 to 65535")
    return host, number


def http_get(make: SocketFactory, port: int, path: str, timeout: float = 5.0) -> str:
    """The body of ``GET path`` from 127.0.0.1:`port` in the namespace ("" on any failure:
    the agent may be starting or stopping)."""
    try:
        with make() as sock:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            chunks = []
            while True:
                chunk = sock.recv(_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return ""
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return ""
    return body.decode("utf-8", "replace")


def category_counts(text: str) -> dict[str, int]:
    """Judged flows by category (both families summed) from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, int] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "resetwatch_connections_total":
                    category = sample.labels.get("category", "")
                    counts[category] = counts.get(category, 0) + int(sample.value)
    except ValueError:
        return {}
    return counts


class Forwarder:
    """Listens on the host's ADDR:PORT and copies each connection to the agent's port inside
    the server namespace. `bind` first (so a port in use is reported before the lab is built),
    then `start` once the agent runs."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(64)
        self.address = self.listener.getsockname()[:2]
        self._make: Optional[SocketFactory] = None
        self._target = 0
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self, make: SocketFactory, target_port: int) -> None:
        self._make, self._target = make, target_port
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(1.0)  # wakes to notice `close`
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        assert self._make is not None
        with conn, contextlib.suppress(OSError), self._make() as upstream:
            upstream.settimeout(5.0)
            upstream.connect(("127.0.0.1", self._target))
            upstream.settimeout(None)
            peers = {conn: upstream, upstream: conn}
            while not self._closed.is_set():
                ready, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in ready:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    peers[sock].sendall(data)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.close()
