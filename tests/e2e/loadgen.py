"""Steady client load for the end-to-end test (run as a script under ``ip netns exec`` in the
lab's client namespace; the test process itself stays in the host namespace).

One process opens `--rate` new connections per second, evenly spaced, for at most
`--duration` seconds (or until SIGTERM), each in its own thread, and prints one JSON summary
of what happened to stdout when it stops. Every connection asks ``GET /`` with the Host header
`--host`; what follows depends on `--give-up`:

- without it (a *normal* client): read the reply, then close with a FIN. The agent judges such
  a flow ``no_match`` (stage post_psh, outcome closed).
- with it (a *zero-rated* client): wait up to that many seconds for a reply; if none comes (the
  middlebox dropped the request), give up with an abortive close (SO_LINGER 0: the kernel sends
  a RST, which carries no payload and so passes the middlebox). The server then has seen
  ``S .`` and ``R.``: a post_ack reset. Such clients bind source ports from `--sport-base`
  upwards (outside the kernel's ephemeral range), so a middlebox that cannot match strings can
  pick them by port instead.

A normal client that gets no reply, or any connect error, is counted, never raised: the test
reads the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from typing import Any, Optional

CONNECT_TIMEOUT_S = 5.0
MAX_DURATION_S = 900.0
SPORT_SPAN = 10000


def _request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rwlab-e2e\r\n\r\n".encode()


def _read_reply(sock: socket.socket) -> bool:
    """Read one HTTP response (headers and Content-Length body); True if it was complete."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        body += chunk
    return True


def _abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def normal(self, n: int) -> None:
        args = self.args
        try:
            with socket.create_connection((args.dst, args.port), CONNECT_TIMEOUT_S) as sock:
                sock.sendall(_request(args.host))
                if not _read_reply(sock):
                    self.count("normal_no_reply")
                    return
                sock.shutdown(socket.SHUT_WR)  # our FIN, then wait for the server's
                with contextlib.suppress(OSError):
                    while sock.recv(4096):
                        pass
            self.count("normal_ok")
        except OSError as error:
            self.count(f"normal_error_{type(error).__name__}")

    def zero_rated(self, n: int) -> None:
        args = self.args
        sock = socket.socket(socket.AF_INET6 if ":" in args.dst else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("", args.sport_base + n % SPORT_SPAN))
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect((args.dst, args.port))
            sock.sendall(_request(args.host))
            sock.settimeout(args.give_up)
            try:
                answered = bool(sock.recv(4096))
            except socket.timeout:
                answered = False
            self.count("zero_rated_answered" if answered else "zero_rated_gave_up")
        except OSError as error:
            self.count(f"zero_rated_error_{type(error).__name__}")
        finally:
            with contextlib.suppress(OSError):
                _abort(sock)

    def run(self) -> dict[str, Any]:
        action = self.normal if self.args.give_up is None else self.zero_rated
        threads: list[threading.Thread] = []
        start = time.monotonic()
        n = 0
        while not self.stop.is_set():
            due = start + n / self.args.rate
            if due - start > self.args.duration:
                break
            if self.stop.wait(max(0.0, due - time.monotonic())):
                break
            thread = threading.Thread(target=action, args=(n,), daemon=True)
            thread.start()
            threads.append(thread)
            threads = [t for t in threads if t.is_alive()]
            n += 1
        deadline = time.monotonic() + CONNECT_TIMEOUT_S + (self.args.give_up or 0.0) + 1.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            return {"started": n, **dict(sorted(self.counts.items()))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dst", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True, help="the Host header of every request")
    parser.add_argument("--rate", type=float, required=True, help="new connections per second")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--give-up", type=float, default=None)
    parser.add_argument("--sport-base", type=int, default=20000)
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or not 0 < args.duration <= MAX_DURATION_S:
        parser.error("rate must be in (0, 1000] and duration in (0, 900]")
    load = Load(args)
    signal.signal(signal.SIGTERM, lambda *_: load.stop.set())
    summary = load.run()
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
