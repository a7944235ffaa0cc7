"""The demo's clients (``python -m resetwatch.demo.traffic SPEC.json``), run inside the client
namespace: a mix of ordinary visitors, impatient browsers, clients that vanish, scanners, and
visitors of the names the middlebox tampers with.

Each behaviour is one connection (or one probe). The program prints one JSON line per finished
connection: the behaviour, the client's address and port, and what the client itself saw. The
demo joins these with the agent's records, so it can show what was done next to what the agent
concluded. Choices (which behaviour, which address, which name) come from ``--seed``.

Bounds: every socket has a timeout, ZMap scans exactly one address (the lab server, from an
allow-list file) at a low rate, and the namespace has no route out of the lab. After the
traffic it prints ``{"event": "done"}`` and keeps the silent connections open (so the server
sees silence, not a close) until it is stopped or its parent goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from .wire import SYN, build, client_hello, raw_socket, tls_record

TIMEOUT_S = 5.0
TAMPER_WAIT_S = 4.0
"""How long a visitor of a tampered name waits for an answer before giving up."""
FIXED_PORTS = (61000, 65535)
"""Source ports for ZMap and forged SYNs: above Linux's ephemeral range (32768-60999), so they
never collide with the kernel's own choices."""

ALLOWED_NAMES = ("www.example.com", "news.example.org", "shop.example.net", "cdn.example.com")
BLOCKED_TLS = "blocked.example"
FORBIDDEN_HTTP = "forbidden.example"
ZERO_RATED = "free-video.example"
MIDDLEBOX_RULES = {BLOCKED_TLS: "rst+rstack", FORBIDDEN_HTTP: "rsts", ZERO_RATED: "drop"}
"""Which name the middlebox tampers with, and how (see `middlebox`)."""
TAMPERED_ACTIONS = ("blocked_tls", "forbidden_http", "zero_rated")
"""Visits of those names: made from the tampered network's clients (spec `tampered4`,
`tampered6`) when the spec names them, as the middlebox sits on that network's path only."""


@dataclass(frozen=True)
class Behaviour:
    label: str
    """What the client does, for the demo's closing table."""
    weight: int
    """Relative frequency in the random mix (0: on its own timer)."""
    families: tuple[int, ...] = (4, 6)


BEHAVIOURS: dict[str, Behaviour] = {
    "page": Behaviour("page load: HTTP GET, then FIN", 30),
    "keepalive": Behaviour("2-4 HTTP requests on one connection", 12),
    "tls": Behaviour("TLS-like handshake with an allowed SNI", 14),
    "abort_connect": Behaviour("browser preconnect, closed with RST", 6),
    "abort_request": Behaviour("request sent, tab closed: RST", 5),
    "abort_later": Behaviour("2 requests, then RST", 4),
    "silent_connect": Behaviour("connects, then goes silent", 3),
    "silent_request": Behaviour("one request, then goes silent", 3),
    "spoofed_syn": Behaviour("SYN from a spoofed address", 4, (4,)),
    "zmap": Behaviour("ZMap probe (one address allowed)", 0, (4,)),
    "blocked_tls": Behaviour(f"TLS to {BLOCKED_TLS} (RSTs injected)", 7),
    "forbidden_http": Behaviour(f"HTTP to {FORBIDDEN_HTTP} (RSTs injected)", 6),
    "zero_rated": Behaviour(f"HTTP to {ZERO_RATED} (dropped)", 6),
}


@dataclass(frozen=True)
class Plan:
    """One connection to make, decided in the scheduling thread (so the seed fixes it)."""

    action: str
    family: int
    src: str
    dst: str
    port: int
    host: str
    requests: int
    seed: int
    sport: int = 0


class Clients:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rng = random.Random(spec["seed"])
        self.held: list[socket.socket] = []
        self._out = threading.Lock()
        self._zmap_busy = threading.Lock()
        self._fixed_port = FIXED_PORTS[0] + self.rng.randrange(1000)

    # ----------------------------------------------------------------------------- plans

    def plan(self, action: str) -> Plan:
        rng = self.rng
        family = 6 if 6 in BEHAVIOURS[action].families and rng.random() < 0.25 else 4
        pool = "clients"
        if action in TAMPERED_ACTIONS and self.spec.get("tampered4"):
            pool = "tampered"  # the names the middlebox tampers with, from its network
        src = rng.choice(self.spec[f"{pool}4"] if family == 4 else self.spec[f"{pool}6"])
        dst = self.spec["server4"] if family == 4 else self.spec["server6"]
        port, host = 80, rng.choice(ALLOWED_NAMES)
        if action in ("tls", "blocked_tls"):
            port = 443
        if action == "blocked_tls":
            host = BLOCKED_TLS
        elif action == "forbidden_http":
            host = FORBIDDEN_HTTP
        elif action == "zero_rated":
            host = ZERO_RATED
        sport = 0
        if action == "spoofed_syn":
            src = self.spec["spoofed4"]
        if action in ("spoofed_syn", "zmap"):
            sport = self._next_fixed_port()
        if action == "zmap":
            src = self.spec["zmap_source"]
        requests = rng.randint(2, 4) if action == "keepalive" else 2
        return Plan(action, family, src, dst, port, host, requests, rng.getrandbits(32), sport)

    def _next_fixed_port(self) -> int:
        port = self._fixed_port
        self._fixed_port += 1
        if self._fixed_port > FIXED_PORTS[1]:
            self._fixed_port = FIXED_PORTS[0]
        return port

    # ----------------------------------------------------------------------------- running

    def run(self, plan: Plan) -> None:
        info: dict[str, Any] = {"sport": plan.sport}
        try:
            result = ACTIONS[plan.action](self, plan, info)
        except ConnectionResetError:
            result = "reset"
        except (socket.timeout, TimeoutError):
            result = "timeout"
        except OSError as error:
            result = f"error: {error.strerror or error}"
        self.emit(
            {
                "event": "conn",
                "action": plan.action,
                "family": plan.family,
                "src": plan.src,
                "sport": info.get("sport", 0),
                "dst": plan.dst,
                "dport": plan.port,
                "result": result,
            }
        )

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._out:
            print(line, flush=True)

    def connect(self, plan: Plan, info: dict[str, Any]) -> socket.socket:
        family = socket.AF_INET6 if plan.family == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        sock.bind((plan.src, 0))
        info["sport"] = sock.getsockname()[1]
        sock.connect((plan.dst, plan.port))
        return sock

    def zmap(self, plan: Plan, info: dict[str, Any]) -> str:
        """One ZMap probe of the lab server only: an allow-list file holding its address and
        an empty deny-list file (ZMap's default deny-list refuses reserved ranges), one
        target at most, 10 packets/s."""
        if not self._zmap_busy.acquire(blocking=False):
            return "skipped"
        try:
            with tempfile.TemporaryDirectory(prefix="rwdemo-zmap-") as tmp:
                allow, deny = Path(tmp, "allow.txt"), Path(tmp, "deny.txt")
                allow.write_text(f"{plan.dst}/32\n")
                deny.write_text("")
                argv = [
                    "zmap", "-p", str(plan.port), "-i", self.spec["iface"],
                    "-w", str(allow), "-b", str(deny),
                    "--source-ip", plan.src, "-G", self.spec["gateway_mac"],
                    "-s", str(plan.sport), "-r", "10", "-n", "1", "-c", "1",
                    "-q", "-v", "1", "--disable-syslog", "-o", "-",
                ]  # fmt: skip
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                print(f"zmap failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
                return f"error: zmap exit {proc.returncode}"
            return "answered" if plan.dst in proc.stdout else "no answer"
        finally:
            self._zmap_busy.release()


def _request(host: str, n: int) -> bytes:
    return (
        f"GET /{'index.html' if n == 0 else f'asset{n}.js'} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) resetwatch-demo\r\nAccept: */*\r\n\r\n"
    ).encode()


def _read_reply(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before a reply")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return len(buf)


def _read_record(sock: socket.socket) -> None:
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionResetError("closed before a record")
        head += chunk
    left = struct.unpack("!H", head[3:5])[0]
    while left:
        chunk = sock.recv(min(left, 16384))
        if not chunk:
            raise ConnectionResetError("closed inside a record")
        left -= len(chunk)


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends a RST instead of a FIN, as browsers do."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _close(sock: socket.socket) -> None:
    sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass
    sock.close()


def _page(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    sock.sendall(_request(p.host, 0))
    _read_reply(sock)
    _close(sock)
    return "ok"


def _keepalive(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    for n in range(p.requests):
        sock.sendall(_request(p.host, n))
        _read_reply(sock)
    _close(sock)
    return "ok"


def _tls(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    rng = random.Random(p.seed)
    sock = c.connect(p, info)
    sock.sendall(client_hello(p.host, rng))
    _read_record(sock)
    sock.sendall(tls_record(0x17, 200, rng))
    _read_record(sock)
    _close(sock)
    return "ok"


def _abort_connect(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    time.sleep(random.Random(p.seed).uniform(0.0, 0.3))
    _abort(sock)
    return "ok"


def _abort_request(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    sock.sendall(_request(p.host, 0))
    _abort(sock)
    return "ok"


def _abort_later(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    for n in range(2):
        sock.sendall(_request(p.host, n))
        _read_reply(sock)
    _abort(sock)
    return "ok"


def _silent_connect(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    c.held.append(c.connect(p, info))
    return "ok"


def _silent_request(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    sock = c.connect(p, info)
    sock.sendall(_request(p.host, 0))
    _read_reply(sock)
    c.held.append(sock)
    return "ok"


def _spoofed_syn(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    """A SYN from an address nobody in the lab holds (as in a SYN flood): the server's SYN-ACK
    goes unanswered, so the agent sees a lone SYN that times out."""
    rng = random.Random(p.seed)
    mss = struct.pack("!BBH", 2, 4, 1460)
    packet = build(p.src, p.dst, p.sport, p.port, seq=rng.getrandbits(32), flags=SYN,
                   window=64240, options=mss, ttl=64)  # fmt: skip
    with raw_socket(socket.AF_INET) as sock:
        sock.sendto(packet, (p.dst, 0))
    return "sent"


def _tampered(c: Clients, p: Plan, info: dict[str, Any]) -> str:
    """Ask for a tampered name and wait: a reset (injected) or silence (dropped)."""
    rng = random.Random(p.seed)
    sock = c.connect(p, info)
    sock.settimeout(TAMPER_WAIT_S)
    try:
        if p.port == 443:
            sock.sendall(client_hello(p.host, rng))
            _read_record(sock)
        else:
            sock.sendall(_request(p.host, 0))
            _read_reply(sock)
        return "answered"
    finally:
        with contextlib.suppress(OSError):
            _abort(sock)  # the middlebox drops this RST too


ACTIONS: dict[str, Callable[[Clients, Plan, dict[str, Any]], str]] = {
    "page": _page,
    "keepalive": _keepalive,
    "tls": _tls,
    "abort_connect": _abort_connect,
    "abort_request": _abort_request,
    "abort_later": _abort_later,
    "silent_connect": _silent_connect,
    "silent_request": _silent_request,
    "spoofed_syn": _spoofed_syn,
    "zmap": Clients.zmap,
    "blocked_tls": _tampered,
    "forbidden_http": _tampered,
    "zero_rated": _tampered,
}


def schedule(clients: Clients, duration: float, rate: float, zmap_every: float) -> None:
    """Start connections for `duration` seconds, about `rate` a second: first every behaviour
    once (so a short demo shows them all), then a weighted random mix; a ZMap probe every
    `zmap_every` seconds. Returns when every connection has finished."""
    rng = clients.rng
    mix = [name for name, b in BEHAVIOURS.items() if b.weight]
    weights = [BEHAVIOURS[name].weight for name in mix]
    first = list(mix)
    rng.shuffle(first)
    threads: list[threading.Thread] = []
    start = time.monotonic()
    end = start + duration
    next_zmap = start + min(2.0, duration / 2)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_zmap:
            action = "zmap"
            next_zmap += zmap_every
        elif first:
            action = first.pop()
        else:
            action = rng.choices(mix, weights)[0]
        thread = threading.Thread(target=clients.run, args=(clients.plan(action),), daemon=True)
        thread.start()
        threads.append(thread)
        threads = [t for t in threads if t.is_alive()]
        pause = 0.25 if first else min(rng.expovariate(rate), 2.0)
        time.sleep(max(0.0, min(pause, end - time.monotonic(), next_zmap - time.monotonic())))
    for thread in threads:
        thread.join(timeout=TIMEOUT_S * 4)


def _stop(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(0)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m resetwatch.demo.traffic SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()
    clients = Clients(spec)
    try:
        schedule(clients, float(spec["duration"]), float(spec["rate"]), float(spec["zmap_every"]))
        clients.emit({"event": "done"})
        while os.getppid() == parent:  # hold the silent connections until told to stop
            time.sleep(1.0)
    except (SystemExit, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
