"""The demo's tampering middlebox (``python -m resetwatch.demo.middlebox``), run inside the
middlebox namespace, which routes between the clients and the server.

Every forwarded TCP packet goes through NFQUEUE to this program. It reads the server name in
the first data segment of each connection (HTTP Host header or TLS SNI) and, for the names it
was given, tampers the way real middleboxes do:

``drop``        zero-rating style: the first data segment and everything after it, in both
                directions, is dropped. The server saw the handshake and then nothing: the
                agent judges a Post-ACK timeout.
``rst+rstack``  censor style: the data segment goes through, then the middlebox forges a RST
                (ack 0) and a RST+ACK toward the server and a RST+ACK toward the client, and
                drops the rest of the connection. The server saw SYN, ACK, one PSH and two
                resets: a Post-PSH reset, shape `rst_and_rstacks`.
``rsts``        the same with two bare RSTs toward the server, ack 0 and the right ack:
                `multiple_rsts` with `acknumdiff0`.

The forged resets carry the middlebox's own TTL (its kernel default, 64), while the client's
packets reach the server one hop later (63): the agent tags them `ttl_mismatch`. On IPv4 they
carry the middlebox's own random IP ID too, drawn at least 8192 away from the client's (so the
demo's verdicts do not vary): `ipid_jump`. Their
sequence number is exactly the server's next expected one, so the server's conntrack accepts
them and the agent's sampling rule logs them (docs/methodology.md). They leave after a short
delay so the data segment is surely first on the wire.

With ``--only PREFIX`` (repeatable) it tampers only with connections from clients inside
those prefixes, as a box on one operator's path would: the demo puts it in front of one lab
network (demo/networks.py), so that network alone stands out in the agent's per-network view.

The program installs its own queue rule in its namespace (nft, or iptables where the kernel
lacks nft's queue), prints ``ready``, then one JSON line per tampered connection. Rules carry
``bypass``: if it dies, traffic flows untouched instead of stopping.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Callable, Optional

from .wire import ACK, FIN, RST, SYN, Segment, build, parse, raw_socket, server_name

ACTIONS = ("drop", "rst+rstack", "rsts")
INJECT_DELAY_S = 0.05
"""Wait after letting the data segment through before forging (it must arrive first)."""
FLOW_MEMORY_S = 300.0
"""Connections the middlebox has not heard of for this long are forgotten."""
_TABLE = "rwdemo_middlebox"

# Per connection: waiting for its first data segment, or tampered (drop the rest).
_WAITING, _TAMPERED = 0, 1


def _default_ttl(family: int) -> int:
    path = (
        "/proc/sys/net/ipv4/ip_default_ttl"
        if family == 4
        else "/proc/sys/net/ipv6/conf/all/hop_limit"
    )
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 64


class Middlebox:
    """The verdict logic, apart from NFQUEUE so it can be exercised with plain bytes."""

    def __init__(
        self, servers: Sequence[str], rules: dict[str, str], only: Sequence[str] = ()
    ) -> None:
        self.servers = frozenset(servers)
        self.rules = rules
        self.only = tuple(ipaddress.ip_network(prefix) for prefix in only)
        """Client prefixes tampered with (empty: every client)."""
        self.flows: dict[tuple[str, int, str, int], tuple[int, float]] = {}
        self.ttl = {4: _default_ttl(4), 6: _default_ttl(6)}
        self._raw: dict[int, socket.socket] = {}
        self._out_lock = threading.Lock()
        self._seen = 0

    def verdict(self, packet: bytes) -> bool:
        """True to let `packet` through, False to drop it."""
        seg = parse(packet)
        if seg is None:
            return True
        now = time.monotonic()
        self._seen += 1
        if self._seen % 256 == 0:
            self._forget(now)
        if seg.dst in self.servers:
            key = (seg.src, seg.sport, seg.dst, seg.dport)
            return self._to_server(key, seg, now)
        if seg.src in self.servers:
            state = self.flows.get((seg.dst, seg.dport, seg.src, seg.sport))
            return state is None or state[0] != _TAMPERED
        return True

    def _to_server(self, key: tuple[str, int, str, int], seg: Segment, now: float) -> bool:
        if seg.flags & (SYN | ACK) == SYN:
            self.flows[key] = (_WAITING, now)
            return True
        state = self.flows.get(key)
        if state is None:
            return True
        if state[0] == _TAMPERED:
            return False
        if not seg.payload:
            if seg.flags & (RST | FIN):
                del self.flows[key]
            return True
        # The first data segment: the only one a name is looked for in.
        name = server_name(seg.payload)
        action = self.rules.get(name or "")
        if action is not None and self.only and not self._behind(seg.src):
            action = None
        if action is None:
            del self.flows[key]
            return True
        self.flows[key] = (_TAMPERED, now)
        self._report(seg, name or "", action)
        if action == "drop":
            return False
        self.later(INJECT_DELAY_S, self._inject, seg, action)
        return True

    def _behind(self, client: str) -> bool:
        address = ipaddress.ip_address(client)
        return any(address in prefix for prefix in self.only)

    def later(self, delay: float, work: Callable[..., None], *args: Any) -> None:
        """Run `work(*args)` after `delay` seconds, off the packet thread."""
        timer = threading.Timer(delay, work, args=args)
        timer.daemon = True
        timer.start()

    def _inject(self, seg: Segment, action: str) -> None:
        seq = seg.seq + len(seg.payload) + (1 if seg.flags & FIN else 0)
        ttl = self.ttl[seg.family]
        first_ack = 0  # both shapes start with a bare RST whose ack field is zero
        second = (RST | ACK) if action == "rst+rstack" else RST
        for flags, ack in ((RST, first_ack), (second, seg.ack)):
            ip_id = (seg.ip_id + random.randrange(8192, 57345)) & 0xFFFF or 1
            self.send(build(seg.src, seg.dst, seg.sport, seg.dport,
                             seq=seq, ack=ack, flags=flags, ttl=ttl, ip_id=ip_id))  # fmt: skip
            time.sleep(0.01)
        # The client is told too, so it gives up at once, as under a real censor.
        self.send(build(seg.dst, seg.src, seg.dport, seg.sport,
                         seq=seg.ack, ack=seq, flags=RST | ACK, ttl=ttl))  # fmt: skip

    def send(self, packet: bytes) -> None:
        """Put a forged packet on the wire (a raw socket: the IP header is ours)."""
        family = 6 if packet[0] >> 4 == 6 else 4
        with self._out_lock:
            sock = self._raw.get(family)
            if sock is None:
                sock = self._raw[family] = raw_socket(
                    socket.AF_INET6 if family == 6 else socket.AF_INET
                )
        seg = parse(packet)
        assert seg is not None
        with contextlib.suppress(OSError):
            sock.sendto(packet, (seg.dst, 0))

    def _report(self, seg: Segment, name: str, action: str) -> None:
        line = json.dumps(
            {
                "event": "tamper",
                "action": action,
                "name": name,
                "family": seg.family,
                "src": seg.src,
                "sport": seg.sport,
            }
        )
        with self._out_lock:
            print(line, flush=True)

    def _forget(self, now: float) -> None:
        stale = [k for k, (_, seen) in self.flows.items() if now - seen > FLOW_MEMORY_S]
        for key in stale:
            del self.flows[key]


# ---------------------------------------------------------------------------------- rules


def _run(argv: Sequence[str]) -> bool:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    return proc.returncode == 0


def install_rules(queue: int) -> str:
    """Queue every forwarded TCP packet; returns the tool used. nft first; the iptables
    NFQUEUE target where the kernel has no nft queue support."""
    if shutil.which("nft"):
        ruleset = (
            f"table inet {_TABLE} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    meta l4proto tcp queue num {queue} bypass\n"
            "  }\n"
            "}\n"
        )
        proc = subprocess.run(
            ["nft", "-f", "-"], input=ruleset, capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return "nft"
        _run(["nft", "delete", "table", "inet", _TABLE])
    for tool in ("iptables", "ip6tables"):
        argv = [tool, "-w", "-A", "FORWARD", "-p", "tcp", "-j", "NFQUEUE"]
        if not _run([*argv, "--queue-num", str(queue), "--queue-bypass"]):
            raise SystemExit(f"middlebox: cannot install the NFQUEUE rule with {tool}")
    return "iptables"


# ---------------------------------------------------------------------------------- main


def _stop(signum: int, frame: Optional[FrameType]) -> None:
    raise SystemExit(0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from netfilterqueue import NetfilterQueue

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--server", action="append", default=[], required=True)
    parser.add_argument(
        "--rule", action="append", default=[], metavar="NAME=ACTION",
        help=f"tamper with connections to NAME; ACTION one of {', '.join(ACTIONS)}",
    )  # fmt: skip
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="tamper only with clients inside PREFIX (repeatable)")
    parser.add_argument("--lab", default="", help="the lab's id (lets leftovers be found)")
    args = parser.parse_args(argv)
    rules = {}
    for rule in args.rule:
        name, _, action = rule.partition("=")
        if action not in ACTIONS:
            parser.error(f"--rule {rule}: ACTION must be one of {', '.join(ACTIONS)}")
        rules[name.lower()] = action
    try:
        box = Middlebox(args.server, rules, args.only)
    except ValueError as error:
        parser.error(f"--only: {error}")
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()

    def on_packet(pkt: Any) -> None:
        if box.verdict(pkt.get_payload()):
            pkt.accept()
        else:
            pkt.drop()

    nfq = NetfilterQueue()
    nfq.bind(args.queue, on_packet)
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    try:
        tool = install_rules(args.queue)
        print(json.dumps({"event": "ready", "rules": tool}), flush=True)
        nfq.run_socket(sock)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        nfq.unbind()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
