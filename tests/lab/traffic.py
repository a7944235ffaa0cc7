"""Traffic for the lab: a server in the server namespace and client actions in the client one.

Every helper is bounded in packets (one connection or one probe) and in time (timeouts on every
socket and subprocess), and refuses any target that is not one of the lab's own addresses, so a
typo can never send a packet elsewhere (the namespaces' routes would stop it too: two fences).

Each client action takes the source port it must use: a test finds the flow of an action in a
capture by that port. Source ports must be unique within one capture.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .netns import Lab, LabError

HERE = Path(__file__).resolve().parent
SERVER_PROG = HERE / "serverprog.py"
CLIENT_PROG = HERE / "clientprog.py"

HTTP_PORT = 8080
"""The lab server answers HTTP requests here (both families)."""
HOLD_PORT = 8081
"""The lab server accepts here and never sends a byte (both families)."""

_TIMEOUT_S = 30.0


def _check_target(lab: Lab, addr: str) -> None:
    if not lab.owns(addr):
        raise LabError(f"refusing to send traffic to {addr}: not an address of this lab")


def _family(addr: str) -> int:
    return 6 if ":" in addr else 4


def _wait_line(stream: Any, marker: str, timeout: float, what: str) -> list[str]:
    """Read lines from a process's pipe until one contains `marker`; fail after `timeout`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise LabError(f"{what} did not report {marker!r} in {timeout} s: {''.join(seen)!r}")


# --------------------------------------------------------------------------------- server


@dataclass
class Server:
    """A running `serverprog.py`; the lab stops it on exit."""

    proc: Any
    http_port: int
    hold_port: int


def start_server(
    lab: Lab,
    ns: str = "server",
    http_port: int = HTTP_PORT,
    hold_port: int = HOLD_PORT,
    max_seconds: float = 600.0,
    max_connections: int = 1000,
) -> Server:
    """Start the lab's TCP server and wait until it listens on both families."""
    proc = lab.popen(
        ns,
        [
            sys.executable,
            SERVER_PROG,
            "--http-port",
            str(http_port),
            "--hold-port",
            str(hold_port),
            "--max-seconds",
            str(max_seconds),
            "--max-connections",
            str(max_connections),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    _wait_line(proc.stdout, "ready", 10.0, "lab server")
    return Server(proc, http_port, hold_port)


# --------------------------------------------------------------------------------- clients


def http_get(lab: Lab, dst: str, port: int, sport: int, timeout: float = 5.0) -> str:
    """One HTTP GET with curl from a chosen source port, ending with curl's normal FIN close.
    Returns the HTTP status code curl saw."""
    _check_target(lab, dst)
    host = f"[{dst}]" if ":" in dst else dst
    proc = lab.run(
        "client",
        [
            "curl",
            "--silent",
            "--noproxy",
            "*",
            "--max-time",
            str(timeout),
            "--local-port",
            str(sport),
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            f"http://{host}:{port}/",
        ],
        timeout=timeout + 5,
    )
    return proc.stdout.strip()


def session(
    lab: Lab,
    dst: str,
    port: int,
    sport: int,
    *,
    requests: int,
    end: str,
    wait_replies: bool = True,
    settle: float = 0.0,
    wait_acked: bool = False,
    fastopen: bool = False,
) -> dict[str, Any]:
    """Connect from `sport`, send `requests` HTTP requests (reading each reply when
    `wait_replies`; waiting until the server acknowledged them when `wait_acked`), wait `settle`
    seconds, then end with "abort" (RST), "close" (FIN) or "hang" (silence). The building block
    of the named actions below."""
    _check_target(lab, dst)
    argv = [
        sys.executable,
        CLIENT_PROG,
        "session",
        "--dst",
        dst,
        "--port",
        str(port),
        "--sport",
        str(sport),
        "--requests",
        str(requests),
        "--end",
        end,
        "--settle",
        str(settle),
    ]
    if wait_replies:
        argv.append("--wait-replies")
    if wait_acked:
        argv.append("--wait-acked")
    if fastopen:
        argv.append("--fastopen")
    proc = lab.run("client", argv, timeout=_TIMEOUT_S)
    return dict(json.loads(proc.stdout))


def abort_after_connect(lab: Lab, dst: str, port: int, sport: int) -> dict[str, Any]:
    """Handshake, then close with SO_LINGER 0: the kernel resets right after the handshake."""
    return session(lab, dst, port, sport, requests=0, end="abort")


def abort_after_send(lab: Lab, dst: str, port: int, sport: int) -> dict[str, Any]:
    """Handshake, one request, then a RST as soon as the server's kernel has acknowledged it.
    Use the hold port: its server never replies, so no reply can cross the RST (the client's
    kernel would answer a crossing reply with a second, bare RST)."""
    return session(
        lab, dst, port, sport, requests=1, end="abort", wait_replies=False, wait_acked=True
    )


def many_aborts(lab: Lab, dst: str, port: int, sport: int, count: int) -> dict[str, Any]:
    """`count` ordinary aborting clients (real sockets, SO_LINGER 0) from source ports
    `sport`, `sport` + 1, ...: each sends 0, 1 or 2 requests in turn, then resets."""
    _check_target(lab, dst)
    argv = [sys.executable, CLIENT_PROG, "aborts", "--dst", dst, "--port", str(port),
            "--sport", str(sport), "--count", str(count)]  # fmt: skip
    proc = lab.run("client", argv, timeout=_TIMEOUT_S + count)
    return dict(json.loads(proc.stdout))


def fastopen_then_abort(lab: Lab, dst: str, port: int, sport: int) -> dict[str, Any]:
    """TCP Fast Open: the request rides in the SYN (the client namespace's
    ``net.ipv4.tcp_fastopen`` set to 5: client on, no cookie needed), the reply is read, then
    a RST. The lab server does not accept TFO data, so the client's kernel sends the request
    again after the handshake, with PSH; the SYN still carried it."""
    _check_target(lab, dst)
    lab.run("client", ["sysctl", "-q", "-w", "net.ipv4.tcp_fastopen=5"], timeout=10)
    return session(lab, dst, port, sport, requests=1, end="abort", fastopen=True)


def send_twice_then_abort(lab: Lab, dst: str, port: int, sport: int) -> dict[str, Any]:
    """Two request/reply rounds on one connection, then a RST."""
    return session(lab, dst, port, sport, requests=2, end="abort")


def fin_then_abort(lab: Lab, dst: str, port: int, sport: int) -> dict[str, Any]:
    """Handshake, one request, a FIN (shutdown), then a RST: a reset flow that carries a FIN.
    Use the hold port, so the server never closes its side first."""
    return session(lab, dst, port, sport, requests=1, end="fin_abort", wait_replies=False)


def connect_and_hang(
    lab: Lab, dst: str, port: int, sport: int, send_request: bool = False
) -> dict[str, Any]:
    """Handshake (and one request when `send_request`; use the server's hold port so no reply
    needs acknowledging), then silence: a DROP rule in the client namespace's OUTPUT chain
    for this source port, and the socket is aborted behind it. The server sees nothing more."""
    return session(
        lab, dst, port, sport, requests=1 if send_request else 0, end="hang", wait_replies=False
    )


def syn_only(lab: Lab, dst: str, port: int, sport: int) -> str:
    """One bare SYN with no socket behind it: the server answers SYN-ACK (open port) and the
    client's kernel answers that with a RST. IPv4 uses hping3 (``hping3 -S -c 1``); hping3 has
    no IPv6, so IPv6 uses a scapy SYN. Returns the tool's output."""
    _check_target(lab, dst)
    if _family(dst) == 4:
        argv = ["hping3", "-S", "-c", "1", "-p", str(port), "-s", str(sport), "-k", dst]
        return lab.run("client", argv, check=False, timeout=10).stdout
    src = lab.client_addr(6)
    argv = [
        sys.executable,
        CLIENT_PROG,
        "syn",
        "--src",
        src,
        "--dst",
        dst,
        "--port",
        str(port),
        "--sport",
        str(sport),
    ]
    return lab.run("client", argv, timeout=_TIMEOUT_S).stdout


def zmap_modern_syn(lab: Lab, dst: str, port: int, sport: int) -> str:
    """One SYN shaped like ZMap 4.1+'s (scapy: Debian's ZMap 2.1.1 cannot send it), from a
    raw socket like `syn_only`, so the client's kernel answers the SYN-ACK with a RST."""
    _check_target(lab, dst)
    argv = [sys.executable, CLIENT_PROG, "syn", "--zmap-modern", "--src", lab.client_addr(4),
            "--dst", dst, "--port", str(port), "--sport", str(sport)]  # fmt: skip
    return lab.run("client", argv, timeout=_TIMEOUT_S).stdout


def zmap_scan(lab: Lab, dst: str, port: int, sport: int, rate: int = 10) -> str:
    """One ZMap probe (Debian's ZMap 2.1.1) from the client namespace to `dst` only.

    ZMap refuses private ranges by its default deny-list, so it gets an allow-list file holding
    only `dst` and an empty deny-list file, ``-n 1`` (one target at most) and the next hop's MAC
    (it builds Ethernet frames itself). Returns ZMap's stdout (the responding addresses)."""
    _check_target(lab, dst)
    if _family(dst) != 4:
        raise LabError("ZMap 2.1.1 scans IPv4 only")
    with tempfile.TemporaryDirectory(prefix="rwlab-zmap-") as tmp:
        allow, empty = Path(tmp, "allow.txt"), Path(tmp, "empty.txt")
        allow.write_text(f"{dst}/32\n")
        empty.write_text("")
        argv = [
            "zmap",
            "-p",
            str(port),
            "-i",
            lab.client_if,
            "-w",
            str(allow),
            "-b",
            str(empty),
            "--source-ip",
            lab.client4,
            "-G",
            lab.peer_mac("client"),
            "-s",
            str(sport),
            "-r",
            str(rate),
            "-n",
            "1",
            "-c",
            "1",
            "-q",
            "-v",
            "1",
            "--disable-syslog",
            "-o",
            "-",
        ]
        return lab.run("client", argv, timeout=30).stdout


@dataclass(frozen=True)
class Rst:
    """One forged RST. `ack` None means the correct ack (the server's next sequence number);
    `ttl` None means scapy's default (64, as the client's own kernel uses). `ip_id` (IPv4):
    "client" is the client's own next IP ID (its SYN's plus a few, as its kernel counts),
    "random" an injector's own, drawn at random at least 8192 away from the client's SYN's
    (so the verdict, `ipid_jump`, does not vary from run to run)."""

    ack: Optional[int] = 0
    ttl: Optional[int] = None
    flags: str = "R"
    ip_id: str = "client"


@dataclass(frozen=True)
class Forgery:
    """A connection the helper opens from `sport`, and the RSTs it then forges on it."""

    dst: str
    port: int
    sport: int
    rsts: tuple[Rst, ...] = field(default_factory=tuple)
    request: bool = False


def forged_rsts(lab: Lab, forgeries: Sequence[Forgery]) -> list[dict[str, Any]]:
    """Open each connection from its source port, then forge its RSTs with scapy inside the
    client namespace (one subprocess for all, since importing scapy takes a second). Each RST
    carries the client's next sequence number so the server's conntrack accepts it (see
    `clientprog.forge`). Afterwards the real socket is silenced, so the server sees only the
    forged RSTs. Returns what was sent, per connection."""
    spec = []
    for f in forgeries:
        _check_target(lab, f.dst)
        spec.append(
            {
                "src": lab.client_addr(_family(f.dst)),
                "dst": f.dst,
                "port": f.port,
                "sport": f.sport,
                "request": f.request,
                "rsts": [
                    {"ack": r.ack, "ttl": r.ttl, "flags": r.flags, "ip_id": r.ip_id}
                    for r in f.rsts
                ],
            }
        )
    proc = lab.run(
        "client",
        [sys.executable, CLIENT_PROG, "forge", "--iface", lab.client_if],
        input=json.dumps(spec),
        timeout=_TIMEOUT_S + 10 * len(spec),
    )
    return list(json.loads(proc.stdout))
