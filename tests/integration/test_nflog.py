"""`NflogSource` against the real kernel: real namespaces, real NFLOG rules, real TCP.

Each test builds two network namespaces joined by a veth pair (client 10.78.0.1 / fd78::1,
server 10.78.0.2 / fd78::2, no other routes, so no traffic can leave the lab) and deletes them
when it ends, also on failure. The server namespace gets a plain NFLOG rule for TCP port 8080.

An NFLOG group lives in one network namespace, so the reader must run inside the server's:
this file doubles as the helper program the tests start there with ``ip netns exec``
(``python3 test_nflog.py reader|bind|server|client|syns ...``); helpers print JSON lines.

Nothing here asserts on elapsed time; sleeps and timeouts only bound how long a test may wait.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

HERE = Path(__file__).resolve()
AGENT = HERE.parents[2] / "agent"
GROUP = 33
PORT = 8080
ADDR = {4: ("10.78.0.1", "10.78.0.2"), 6: ("fd78::1", "fd78::2")}  # (client, server)
WAIT = 30.0  # the most any step may take before the test gives up (never asserted on)

TOOLS = ("ip", "iptables", "ip6tables")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates network namespaces and binds NFLOG groups"
    ),
    pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (not installed)"),
]


# -- the lab (runs in pytest) ------------------------------------------------------------------


class Child:
    """A helper process inside a namespace; its stdout is read as JSON lines by a thread."""

    def __init__(self, netns: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(AGENT), PYTHONUNBUFFERED="1")
        self.args = args
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(HERE), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def message(self) -> dict[str, Any]:
        """The next JSON line; fails with the child's stderr if it exits first."""
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            line = None
        if line is None:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"helper {' '.join(self.args)} gave no answer; stderr:\n{err}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)


@dataclass
class Lab:
    client: str
    server: str
    children: list[Child] = field(default_factory=list)

    def start(self, netns: str, *args: str) -> Child:
        child = Child(netns, *args)
        self.children.append(child)
        return child

    def run(self, netns: str, *args: str) -> dict[str, Any]:
        """Run a helper to completion and return its JSON answer."""
        child = self.start(netns, *args)
        answer = child.message()
        child.proc.wait(timeout=WAIT)
        return answer

    def rule_packets(self, family: int) -> int:
        """Packets the NFLOG rule matched: the kernel's own count, to check ours against."""
        tool = "iptables" if family == 4 else "ip6tables"
        out = sh("ip", "netns", "exec", self.server, tool, "-t", "mangle", "-L", "PREROUTING",
                 "-v", "-x", "-n")  # fmt: skip
        for line in out.splitlines():
            if "NFLOG" in line:
                return int(line.split()[0])
        raise AssertionError(f"no NFLOG rule in {tool} output:\n{out}")


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture
def lab() -> Iterator[Lab]:
    suffix = secrets.token_hex(3)
    client, server = f"rwtest-{suffix}-c", f"rwtest-{suffix}-s"
    lab = Lab(client, server)
    veth_c, veth_s = f"rwc{suffix}", f"rws{suffix}"
    try:
        sh("ip", "netns", "add", client)
        sh("ip", "netns", "add", server)
        sh("ip", "link", "add", veth_c, "netns", client, "type", "veth",
           "peer", "name", veth_s, "netns", server)  # fmt: skip
        for side, (netns, dev) in enumerate(((client, veth_c), (server, veth_s))):
            v4, v6 = ADDR[4][side], ADDR[6][side]
            sh("ip", "-n", netns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", netns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", netns, "link", "set", "lo", "up")
            sh("ip", "-n", netns, "link", "set", dev, "up")
        for tool in ("iptables", "ip6tables"):
            sh("ip", "netns", "exec", server, tool, "-t", "mangle", "-A", "PREROUTING",
               "-p", "tcp", "--dport", str(PORT), "-j", "NFLOG", "--nflog-group", str(GROUP),
               "--nflog-size", "128")  # fmt: skip
        yield lab
    finally:
        for child in lab.children:
            child.kill()
        for netns in (client, server):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def start_reader(lab: Lab, *args: str) -> tuple[Child, dict[str, Any]]:
    reader = lab.start(lab.server, "reader", *args)
    ready = reader.message()
    assert ready.get("ready"), ready
    return reader, ready


def stop_reader(reader: Child) -> dict[str, Any]:
    reader.send("stop")
    result = reader.message()
    reader.proc.wait(timeout=WAIT)
    return result


# -- the tests ---------------------------------------------------------------------------------

SYN, RST, PSH, ACK = 0x02, 0x04, 0x08, 0x10


@pytest.mark.parametrize(("family", "copy_range"), [(4, 128), (6, 128), (4, 80)])
def test_connection_packets_arrive_parsed(lab: Lab, family: int, copy_range: int) -> None:
    reader, ready = start_reader(lab, "--copy-range", str(copy_range))
    # The kernel's view of our group: copy mode 2 (packet), our range, timeout 10/100 s.
    rows = [line.split() for line in ready["proc"].splitlines() if line.split()[0] == str(GROUP)]
    assert len(rows) == 1, ready["proc"]
    group, _portid, _qlen, mode, crange, timeout, *_ = rows[0]
    assert (group, mode, crange, timeout) == (str(GROUP), "2", str(copy_range), "10")

    server = lab.start(lab.server, "server")
    assert server.message()["listening"]
    client_addr, server_addr = ADDR[family]
    size = 1000
    client = lab.run(lab.client, "client", server_addr, str(size))
    sport = client["sport"]
    result = stop_reader(reader)

    ours = [p for p in result["packets"] if p.get("sport") == sport]
    assert all(p["src"] == client_addr and p["dst"] == server_addr for p in ours)
    assert all(p["dport"] == PORT for p in ours)
    flags = [p["flags"] for p in ours]
    assert flags[0] == SYN, flags
    assert ACK in flags, flags  # the handshake's third packet
    data = [p for p in ours if p["flags"] & PSH]
    assert len(data) == 1, flags
    # Headers only: the IP header says 1000 bytes of payload, the kernel copied `copy_range`.
    assert data[0]["payload_len"] == size
    assert data[0]["captured"] == copy_range
    assert all(p["captured"] <= copy_range for p in result["packets"])
    assert flags[-1] & RST, flags  # SO_LINGER 0: the client aborted
    assert result["invalid"] == []

    stats = result["stats"]
    assert stats["lost_seq_gap"] == 0
    assert stats["overruns"] == 0
    assert stats["lost_bad_message"] == 0
    assert stats["error_messages"] == 0
    # Sequence numbers ran from 0 without a hole: the next expected one is the packet count.
    assert result["expected_seq"] == stats["packets"] == len(result["packets"])
    assert stats["packets"] == lab.rule_packets(family)


def test_second_reader_gets_a_clear_error(lab: Lab) -> None:
    reader, _ = start_reader(lab)
    second = lab.run(lab.server, "bind")
    error = second["error"]
    assert error.startswith(f"NFLOG BIND group {GROUP}"), error
    assert "EPERM" in error and "already bound" in error, error
    assert "\n" not in error
    stop_reader(reader)
    # Closing the first reader frees the group.
    assert lab.run(lab.server, "bind") == {"bound": True}


def test_reader_wakes_without_traffic(lab: Lab) -> None:
    reader, _ = start_reader(lab)
    reader.send("wakeups 3")
    answer = reader.message()
    assert answer["wakeups"] == 3
    assert answer["packets"] == 0
    stop_reader(reader)


@pytest.mark.parametrize(
    ("rcvbuf_max", "grows"), [(64 << 10, False), (1 << 20, True)], ids=["fixed", "growing"]
)
def test_overrun_is_counted_not_silent(lab: Lab, rcvbuf_max: int, grows: bool) -> None:
    # A tiny receive buffer and a reader that does not read while 20,000 SYNs arrive.
    reader, ready = start_reader(
        lab, "--hold", "--rcvbuf", str(64 << 10), "--rcvbuf-max", str(rcvbuf_max)
    )
    first_rcvbuf = ready["stats"]["receive_buffer_bytes"]
    sent = lab.run(lab.client, "syns", ADDR[4][1], "20000")["sent"]
    reader.send("go")  # now drain everything that is left
    drained = reader.message()
    # A few more packets after the drain: their sequence numbers reveal the batches that the
    # kernel dropped at the end of the burst, when no later packet could show the gap yet.
    lab.run(lab.client, "syns", ADDR[4][1], "5")
    result = stop_reader(reader)

    stats = result["stats"]
    logged = lab.rule_packets(4)
    assert sent == 20000
    assert 0 < logged <= 20005
    assert drained["stats"]["packets"] < logged  # loss happened...
    assert stats["overruns"] > 0  # ...the kernel said so...
    assert stats["lost_seq_gap"] > 0  # ...and the sequence numbers count every lost packet:
    assert stats["packets"] + stats["lost_seq_gap"] == logged
    assert stats["socket_drops"] > 0
    if grows:
        assert stats["buffer_grows"] > 0
        assert stats["receive_buffer_bytes"] > first_rcvbuf
    else:
        assert stats["buffer_grows"] == 0
        assert stats["receive_buffer_bytes"] == first_rcvbuf


# -- helpers (run inside a namespace through `ip netns exec`) -----------------------------------


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def stdin_line(timeout: Optional[float]) -> Optional[str]:
    """A line from the test if one is waiting (empty string: the test closed stdin)."""
    import select

    if select.select([sys.stdin], [], [], timeout)[0]:
        return sys.stdin.readline()
    return None


def helper_reader(args: argparse.Namespace) -> None:
    from resetwatch.nflog import NflogSource
    from resetwatch.packet import Packet, parse_ip

    kwargs: dict[str, Any] = {"copy_range": args.copy_range}
    if args.rcvbuf:
        kwargs.update(rcvbuf=args.rcvbuf, rcvbuf_max=args.rcvbuf_max)
    captured: list[tuple[float, bytes]] = []
    with NflogSource(GROUP, **kwargs) as source:
        proc = Path("/proc/net/netfilter/nfnetlink_log").read_text().strip()
        emit({"ready": True, "proc": proc, "stats": asdict(source.stats())})

        def drain(quiet: float = 1.0) -> None:
            # The kernel flushes a partial batch after 0.1 s: a second of quiet means done.
            while source.read(quiet, captured):
                pass

        while True:
            line = stdin_line(None if args.hold else 0.0)
            if line is not None:
                word = line.split()
                if not word or word[0] == "stop":
                    break
                if word[0] == "go":
                    drain()
                    emit({"stats": asdict(source.stats())})
                    args.hold = False
                elif word[0] == "wakeups":
                    # Each read returns by itself within its timeout when nothing arrives.
                    wakeups = sum(1 for _ in range(int(word[1])) if not source.read(0.2, captured))
                    emit({"wakeups": wakeups, "packets": len(captured)})
                continue
            if not args.hold:
                source.read(0.2, captured)
        drain()
        packets, invalid = [], []
        for ts, data in captured:
            parsed = parse_ip(data, ts)
            if isinstance(parsed, Packet):
                packets.append(
                    {
                        "src": parsed.src,
                        "dst": parsed.dst,
                        "sport": parsed.sport,
                        "dport": parsed.dport,
                        "flags": parsed.flags,
                        "payload_len": parsed.payload_len,
                        "captured": len(data),
                    }
                )
            else:
                invalid.append(str(parsed))
        emit(
            {
                "packets": packets,
                "invalid": invalid,
                "stats": asdict(source.stats()),
                "expected_seq": source.parser.expected_seq,
            }
        )


def helper_bind(_args: argparse.Namespace) -> None:
    from resetwatch.nflog import NflogError, NflogSource

    try:
        with NflogSource(GROUP):
            emit({"bound": True})
    except NflogError as exc:
        emit({"error": str(exc)})


def helper_server(_args: argparse.Namespace) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    for family, addr in ((socket.AF_INET, ADDR[4][1]), (socket.AF_INET6, ADDR[6][1])):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, PORT))
        sock.listen(16)
        sel.register(sock, selectors.EVENT_READ, "listen")
    emit({"listening": True})
    while True:  # until killed by the test
        for key, _ in sel.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            if key.data == "listen":
                conn, _ = ready.accept()
                sel.register(conn, selectors.EVENT_READ, "conn")
                continue
            try:
                data = ready.recv(65536)
            except OSError:
                data = b""
            if data:
                ready.sendall(b"ok")  # tells the client its data arrived
            else:
                sel.unregister(ready)
                ready.close()


def helper_client(args: argparse.Namespace) -> None:
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect((args.addr, PORT))
    sport = sock.getsockname()[1]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"x" * args.size)  # one segment: the lab's MTU is 1500
    sock.recv(16)  # the server has the data: the PSH packet was logged before the RST
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # abort: RST
    emit({"sport": sport})


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def helper_syns(args: argparse.Namespace) -> None:
    """Send `count` TCP SYNs to the lab server's port 8080 through a raw socket."""
    src = socket.inet_aton(ADDR[4][0])
    dst = socket.inet_aton(args.addr)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    sent = 0
    for i in range(args.count):
        sport = 20000 + i % 40000
        header = struct.pack("!HHIIHHHH", sport, PORT, i, 0, (5 << 12) | SYN, 64240, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
        header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
        while True:
            try:
                sock.sendto(header, (args.addr, 0))
                break
            except OSError:  # ENOBUFS from a full queue: wait a moment and resend
                time.sleep(0.001)
        sent += 1
    emit({"sent": sent})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    reader = sub.add_parser("reader")
    reader.add_argument("--copy-range", type=int, default=128)
    reader.add_argument("--rcvbuf", type=int, default=0)
    reader.add_argument("--rcvbuf-max", type=int, default=0)
    reader.add_argument("--hold", action="store_true", help="read nothing until told 'go'")
    sub.add_parser("bind")
    sub.add_parser("server")
    client = sub.add_parser("client")
    client.add_argument("addr")
    client.add_argument("size", type=int)
    syns = sub.add_parser("syns")
    syns.add_argument("addr")
    syns.add_argument("count", type=int)
    args = parser.parse_args()
    helpers = {
        "reader": helper_reader,
        "bind": helper_bind,
        "server": helper_server,
        "client": helper_client,
        "syns": helper_syns,
    }
    helpers[args.mode](args)


if __name__ == "__main__":
    main()
