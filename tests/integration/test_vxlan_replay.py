"""A real VXLAN tunnel between two lab namespaces: replaying the underlay capture (UDP 4789,
Ethernet inside) gives every connection the record that the capture of the overlay device
itself (plain Ethernet) gives.

Needs root (namespaces, a vxlan device), iproute2 and tcpdump; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.lab import Lab
from tests.lab.requirements import lab_marks, skip_reason

from resetwatch.cli import main
from resetwatch.packet import Invalid
from resetwatch.pcap import read_packets

pytestmark = lab_marks(skip_reason("network namespaces and a vxlan device",
                                   tools=("ip", "tcpdump")))

SERVER4, CLIENT4 = "10.202.0.1", "10.202.0.2"
SERVER6, CLIENT6 = "fd30:202::1", "fd30:202::2"
PORT = 8080

SERVER = f"""
import socket, threading
def serve(family, addr):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, {PORT}))
    s.listen(16)
    while True:
        c, _ = s.accept()
        try:
            if c.recv(4096):
                c.sendall(b"ok\\n")
            while c.recv(4096):
                pass
        except OSError:
            pass
        c.close()
for args in ((socket.AF_INET, "{SERVER4}"), (socket.AF_INET6, "{SERVER6}")):
    threading.Thread(target=serve, args=args, daemon=True).start()
threading.Event().wait()
"""

# One connection per way to end it: (source port, how).
CLIENT = f"""
import socket, struct, sys, time
dst, sport, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(family)
s.bind(("", sport))
s.connect((dst, {PORT}))
if how != "abort_after_connect":
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    s.recv(4096)
if how == "close":
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    s.close()
else:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""
ENDINGS = ("close", "abort_after_send", "abort_after_connect")
PROBE = f"""
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection((sys.argv[1], {PORT}), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the server is not reachable through the tunnel")
"""


class Tcpdump:
    """tcpdump on one interface of a lab namespace, returning once it listens."""

    def __init__(self, lab: Lab, iface: str, path: Path) -> None:
        self.proc = lab.popen("server", ["tcpdump", "-i", iface, "-w", path, "-U", "-Z", "root",
                                         "-s", "256", "-n", "--immediate-mode"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.listening.wait(10.0), "tcpdump did not start"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening on" in line:
                self.listening.set()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10.0)


def _tunnel(lab: Lab) -> None:
    """vx0 in both namespaces, VNI 42 over the lab's veth (its IPv4 addresses), with overlay
    subnets of their own (only reachable through the tunnel)."""
    ends = (("client", lab.client_if, lab.client4, lab.server4, CLIENT4, CLIENT6),
            ("server", lab.server_if, lab.server4, lab.client4, SERVER4, SERVER6))
    for role, dev, local, remote, addr4, addr6 in ends:
        lab.run(role, ["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
                       "remote", remote, "dstport", "4789", "dev", dev])
        lab.run(role, ["ip", "addr", "add", f"{addr4}/24", "dev", "vx0"])
        lab.run(role, ["ip", "-6", "addr", "add", f"{addr6}/64", "dev", "vx0", "nodad"])
        lab.run(role, ["ip", "link", "set", "vx0", "up"])


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("vxlan")
    under, over = tmp / "underlay.pcap", tmp / "overlay.pcap"
    with Lab(tag="vxlan") as lab:
        _tunnel(lab)
        lab.popen("server", [sys.executable, "-c", SERVER])
        lab.run("server", ["sh", "-c", f"for i in $(seq 100); do [ $(ss -Hltn 'sport = :{PORT}'"
                           " | wc -l) = 2 ] && exit 0; sleep 0.1; done; exit 1"])
        # Through the tunnel to the server once per family before capturing (neighbours
        # resolved, server listening), so the captures hold only the connections below.
        for dst in (SERVER4, SERVER6):
            lab.run("client", [sys.executable, "-c", PROBE, dst])
        dumps = [Tcpdump(lab, lab.server_if, under), Tcpdump(lab, "vx0", over)]
        sport = 43000
        for dst in (SERVER4, SERVER6):
            for how in ENDINGS:
                sport += 1
                lab.run("client", [sys.executable, "-c", CLIENT, dst, str(sport), how])
        # The clock mover: a connection well after the others' lingers, truncated by design.
        lab.run("client", ["sleep", "2"])
        lab.run("client", [sys.executable, "-c", CLIENT, SERVER4, "43100", "close"])
        lab.run("client", ["sleep", "0.5"])  # tcpdump reads its last packets
        for dump in dumps:
            dump.stop()
    yield under, over


def _records(path: Path, tmp: Path) -> dict[int, dict[str, Any]]:
    out = tmp / (path.stem + ".jsonl")
    code = main(["replay", str(path), "--server", SERVER4, "--server", SERVER6,
                 "--close-linger", "1", "--idle-timeout", "5", "--records", str(out),
                 "--format", "json"])
    assert code == 0
    records = {r["sport"]: r for r in map(json.loads, out.read_text().splitlines())}
    for record in records.values():  # stamped on another interface: microseconds apart
        record.pop("first_ts", None)
        record.pop("last_ts", None)
    return records


def test_underlay_capture_is_judged_as_the_overlay(
    captures: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    under, over = captures
    plain = _records(over, tmp_path)
    assert sorted(plain) == [*range(43001, 43007), 43100]
    assert _records(under, tmp_path) == plain
    assert plain[43001]["category"] == "no_match"  # closed
    assert plain[43002]["category"] == "post_psh"  # aborted after its request
    assert plain[43003]["category"] == "post_ack"  # aborted after the handshake
    # Every TCP packet of the underlay is a VXLAN packet, and none is left undecoded.
    reasons = {p for p in read_packets(under) if isinstance(p, Invalid)}
    assert reasons <= {Invalid.NOT_IP, Invalid.NOT_TCP}  # ARP, neighbour discovery, ICMP
