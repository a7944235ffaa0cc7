"""The pure parts of `resetwatch demo`: packet bytes, server names, the middlebox's verdicts and
forgeries, the closing tables, and the command line (no root, no namespaces needed).

Packet bytes are checked against scapy, an independent implementation.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resetwatch.demo import forward, missing_requirements, wire
from resetwatch.demo.middlebox import Middlebox
from resetwatch.demo.session import summary_from_records, verdict_table
from resetwatch.report import summary_table

ROOT = Path(__file__).resolve().parents[2]
C4, S4 = "198.51.100.20", "203.0.113.10"
C6, S6 = "2001:db8:c::10", "2001:db8:5::10"


# ------------------------------------------------------------------------------- wire


@pytest.mark.parametrize("src,dst", [(C4, S4), (C6, S6)])
def test_built_segments_have_the_checksums_scapy_computes(src: str, dst: str) -> None:
    scapy = pytest.importorskip("scapy.all")
    raw = wire.build(src, dst, 40000, 80, seq=0xFFFFFFF0, ack=1234, flags=wire.RST | wire.ACK,
                     ttl=57, window=512, options=b"\x02\x04\x05\xb4", payload=b"odd")  # fmt: skip
    layer = scapy.IPv6 if ":" in dst else scapy.IP
    pkt = layer(raw)
    tcp = pkt[scapy.TCP]
    ours = (pkt.chksum if layer is scapy.IP else None, tcp.chksum)
    del pkt[scapy.TCP].chksum  # scapy fills in deleted checksums when it builds the bytes
    if layer is scapy.IP:
        del pkt.chksum
    again = layer(bytes(pkt))
    assert ours == (again.chksum if layer is scapy.IP else None, again[scapy.TCP].chksum)
    assert (again.ttl if layer is scapy.IP else again.hlim) == 57
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (40000, 80, 0xFFFFFFF0, 1234)
    assert str(tcp.flags) == "RA"
    assert bytes(tcp.payload) == b"odd"


@pytest.mark.parametrize("src,dst", [(C4, S4), (C6, S6)])
def test_parse_reads_back_what_build_wrote(src: str, dst: str) -> None:
    raw = wire.build(src, dst, 50000, 443, seq=7, ack=9, flags=wire.PSH | wire.ACK, ttl=63,
                     payload=b"hello", ip_id=4242)  # fmt: skip
    seg = wire.parse(raw)
    v4 = ":" not in dst
    assert seg == wire.Segment(
        4 if v4 else 6, src, dst, 63, 50000, 443, 7, 9, wire.PSH | wire.ACK, b"hello",
        4242 if v4 else 0,
    )


def test_parse_ignores_what_is_not_tcp() -> None:
    tcp = wire.build(C4, S4, 1, 2, seq=0, flags=wire.SYN)
    udp = tcp[:9] + b"\x11" + tcp[10:]
    assert wire.parse(udp) is None
    assert wire.parse(tcp[:30]) is None
    assert wire.parse(b"") is None


def test_server_names_from_http_and_tls() -> None:
    rng = random.Random(3)
    hello = wire.client_hello("Blocked.Example", rng)
    assert wire.server_name(hello) == "blocked.example"
    assert wire.server_name(b"GET / HTTP/1.1\r\nHost: forbidden.example:8080\r\n\r\n") == (
        "forbidden.example"
    )
    assert wire.server_name(b"GET / HTTP/1.1\r\nhost:  A.example\r\n\r\n") == "a.example"
    assert wire.server_name(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n") == "2001:db8::1"
    assert wire.server_name(b"\x17\x03\x03\x00\x05hello") is None
    assert wire.server_name(hello[:60]) is None  # cut before the extensions
    assert wire.server_name(b"SSH-2.0-OpenSSH\r\n") is None


def test_openssl_reads_the_sni_of_our_client_hello() -> None:
    """OpenSSL, a real TLS server, parses the ClientHello and hands its SNI to the callback
    (the handshake then fails: there is no certificate, and none is wanted)."""
    seen: list[str] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.sni_callback = lambda sock, name, c: seen.append(name)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(wire.client_hello("blocked.example", random.Random(1)))
    with pytest.raises(ssl.SSLError):
        server.do_handshake()
    assert seen == ["blocked.example"]


# ------------------------------------------------------------------------------- middlebox


class Box(Middlebox):
    """Runs forgeries at once and keeps them instead of sending."""

    def __init__(self, rules: dict[str, str], only: tuple[str, ...] = ()) -> None:
        super().__init__([S4, S6], rules, only)
        self.sent: list[wire.Segment] = []

    def later(self, delay: float, work: Any, *args: Any) -> None:
        work(*args)

    def send(self, packet: bytes) -> None:
        seg = wire.parse(packet)
        assert seg is not None
        self.sent.append(seg)


def _handshake(box: Box, client: str, server: str, sport: int) -> None:
    assert box.verdict(wire.build(client, server, sport, 80, seq=999, flags=wire.SYN, ttl=63))
    assert box.verdict(
        wire.build(server, client, 80, sport, seq=4999, ack=1000, flags=wire.SYN | wire.ACK)
    )
    assert box.verdict(wire.build(client, server, sport, 80, seq=1000, ack=5000, flags=wire.ACK,
                                  ttl=63))  # fmt: skip


def _data(client: str, server: str, sport: int, payload: bytes, seq: int = 1000) -> bytes:
    return wire.build(client, server, sport, 80, seq=seq, ack=5000, flags=wire.PSH | wire.ACK,
                      ttl=63, payload=payload)  # fmt: skip


@pytest.mark.parametrize("client,server", [(C4, S4), (C6, S6)])
@pytest.mark.parametrize(
    "action,second_flags",
    [("rsts", wire.RST), ("rst+rstack", wire.RST | wire.ACK)],
)
def test_injection_forges_resets_the_server_accepts(
    client: str, server: str, action: str, second_flags: int
) -> None:
    box = Box({"forbidden.example": action})
    _handshake(box, client, server, 41000)
    request = b"GET / HTTP/1.1\r\nHost: forbidden.example\r\n\r\n"
    assert box.verdict(_data(client, server, 41000, request))  # the data goes through
    to_server = [s for s in box.sent if s.dst == server]
    to_client = [s for s in box.sent if s.dst == client]
    family = 6 if ":" in server else 4
    # Exactly the server's next expected sequence number, so its conntrack takes them.
    assert [(s.seq, s.flags, s.ack) for s in to_server] == [
        (1000 + len(request), wire.RST, 0),
        (1000 + len(request), second_flags, 5000),
    ]
    assert {(s.src, s.sport, s.dport) for s in to_server} == {(client, 41000, 80)}
    # The middlebox's own TTL: not the 63 of the client's packets, hence ttl_mismatch.
    assert {s.ttl for s in box.sent} == {box.ttl[family]}
    assert box.ttl[family] != 63
    assert [(s.seq, s.ack, s.flags) for s in to_client] == [
        (5000, 1000 + len(request), wire.RST | wire.ACK)
    ]
    # Everything after, either way, is dropped.
    assert not box.verdict(_data(client, server, 41000, b"more", seq=1000 + len(request)))
    reply = wire.build(server, client, 80, 41000, seq=5000, ack=1100, flags=wire.ACK)
    assert not box.verdict(reply)


def test_zero_rating_drops_the_first_data_and_the_rest() -> None:
    box = Box({"free-video.example": "drop"})
    _handshake(box, C4, S4, 41001)
    request = b"GET /v.mp4 HTTP/1.1\r\nHost: free-video.example\r\n\r\n"
    assert not box.verdict(_data(C4, S4, 41001, request))
    assert not box.verdict(_data(C4, S4, 41001, request))  # the retransmission too
    fin = wire.build(C4, S4, 41001, 80, seq=1000, ack=5000, flags=wire.FIN | wire.ACK)
    assert not box.verdict(fin)
    assert box.sent == []


def test_other_names_pass_and_are_forgotten() -> None:
    box = Box({"blocked.example": "rst+rstack"})
    _handshake(box, C4, S4, 41002)
    assert box.verdict(_data(C4, S4, 41002, b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"))
    assert box.flows == {}
    # A later segment naming a blocked server is not a first message: left alone.
    late = b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n"
    assert box.verdict(_data(C4, S4, 41002, late, seq=1100))
    assert box.sent == []
    # Traffic between other hosts is not the middlebox's business.
    assert box.verdict(wire.build(C4, "192.0.2.1", 1, 80, seq=0, flags=wire.SYN))


@pytest.mark.parametrize("client,server", [("198.51.100.11", S4), ("2001:db8:c::12", S6)])
def test_only_the_tampered_networks_clients_are_tampered_with(client: str, server: str) -> None:
    from resetwatch.demo import networks

    box = Box({"free-video.example": "drop"}, networks.TAMPERED.prefixes)
    request = b"GET /v.mp4 HTTP/1.1\r\nHost: free-video.example\r\n\r\n"
    _handshake(box, client, server, 41003)
    assert not box.verdict(_data(client, server, 41003, request))  # behind the middlebox
    other = "198.51.100.20" if ":" not in client else "2001:db8:c::15"
    _handshake(box, other, server, 41004)
    assert box.verdict(_data(other, server, 41004, request))  # another network: untouched
    assert box.flows.get((other, 41004, server, 80)) is None


def test_the_lab_database_puts_the_clients_in_three_networks() -> None:
    import ipaddress

    pytest.importorskip("maxminddb")
    from resetwatch.demo import lab, networks
    from resetwatch.ipdb import Ipdb

    db = Ipdb([str(networks.DATABASE)])
    try:
        seen = {}
        for address in (*lab.CLIENTS4, *lab.CLIENTS6):
            network = db.lookup(ipaddress.ip_address(address).packed)
            owner = next(n for n in networks.NETWORKS if n.holds(address))
            assert (network.asn, network.country) == (owner.asn, owner.country)
            seen.setdefault(owner.asn, []).append(address)
        assert len(seen) == 3 and all(len(v) >= 4 for v in seen.values())
        assert not db.lookup(ipaddress.ip_address(lab.SPOOFED4).packed).found
    finally:
        db.close()


def test_the_lab_database_is_what_its_generator_writes(tmp_path: Path) -> None:
    pytest.importorskip("mmdb_writer")
    from resetwatch.demo import networks

    networks.write(tmp_path / "lab.mmdb")
    assert (tmp_path / "lab.mmdb").read_bytes() == networks.DATABASE.read_bytes()


def test_tampered_visits_come_from_the_tampered_network() -> None:
    from resetwatch.demo import lab, networks
    from resetwatch.demo.traffic import TAMPERED_ACTIONS, Clients

    spec = {"seed": 3, "clients4": list(lab.CLIENTS4), "clients6": list(lab.CLIENTS6),
            "tampered4": networks.members(networks.TAMPERED, lab.CLIENTS4),
            "tampered6": networks.members(networks.TAMPERED, lab.CLIENTS6),
            "server4": lab.SERVER4, "server6": lab.SERVER6}
    clients = Clients(spec)
    for _ in range(50):
        for action in TAMPERED_ACTIONS:
            assert networks.TAMPERED.holds(clients.plan(action).src)
    sources = {clients.plan("page").src for _ in range(200)}
    assert any(not networks.TAMPERED.holds(s) for s in sources)


# ------------------------------------------------------------------------------- reports


def _records() -> list[dict[str, Any]]:
    base = {"dst": S4, "dport": 80, "family": 4, "first_ts": 10.0, "last_ts": 11.0, "packets": 5}
    return [
        {**base, "src": C4, "sport": 1, "stage": "post_psh", "outcome": "reset",
         "category": "post_psh", "tags": ["reset", "rst_and_rstacks", "ttl_mismatch"]},
        {**base, "src": C4, "sport": 2, "stage": "post_ack", "outcome": "timeout",
         "category": "post_ack", "tags": ["timeout"]},
        {**base, "src": C4, "sport": 3, "stage": "post_psh", "outcome": "closed",
         "category": "no_match", "tags": [], "last_ts": 20.0},
        {**base, "src": C4, "sport": 4, "excluded": "truncated"},
    ]  # fmt: skip


def test_summary_from_records_gives_the_replay_table() -> None:
    summary = summary_from_records(_records())
    assert summary.classified == 3
    assert summary.excluded_total == 1
    table = summary_table(summary, title="t")
    assert "post_psh" in table and "ttl_mismatch" in table and "truncated" in table


def test_network_summary_of_records_stands_the_tampered_network_out() -> None:
    from resetwatch.demo.session import network_summary
    from resetwatch.report import network_rows

    def record(asn: Any, category: str, stage: str, outcome: str) -> dict[str, Any]:
        return {"family": 4, "stage": stage, "outcome": outcome, "category": category,
                "tags": [], "asn": asn, "as_name": f"Net {asn}" if asn else None,
                "country": "DE" if asn else None}

    records = ([record(64512, "post_ack", "post_ack", "timeout")] * 30
               + [record(64512, "no_match", "later", "closed")] * 10
               + [record(64513, "no_match", "later", "closed")] * 40
               + [record(None, "post_syn", "post_syn", "timeout")] * 5
               + [{"family": 4, "excluded": "no_syn"}])
    tally, names = network_summary(records)
    assert names == {"64512": "Net 64512", "64513": "Net 64513"}
    rows = {r["asn"]: r for r in network_rows(tally, "asn", names)}
    assert rows[64512]["shares"]["post_ack"] == "75"
    assert rows[64513]["shares"]["post_ack"] == "0" and rows[None]["classified"] == 5


def test_verdict_table_joins_clients_and_records() -> None:
    events = [
        {"action": "blocked_tls", "src": C4, "sport": 1},
        {"action": "zero_rated", "src": C4, "sport": 2},
        {"action": "page", "src": C4, "sport": 3},
        {"action": "page", "src": C4, "sport": 4},
        {"action": "page", "src": C4, "sport": 99},
    ]
    lines = verdict_table(events, _records()).splitlines()
    blocked = next(line for line in lines if "blocked.example" in line)
    assert "post_psh 1" in blocked and "rst_and_rstacks ttl_mismatch" in blocked
    page = next(line for line in lines if "page load" in line)
    assert "no_match 1" in page and "excluded:truncated 1" in page and "not seen 1" in page


# ------------------------------------------------------------------------------- command line


def resetwatch(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "resetwatch", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False, **kw,
    )  # fmt: skip


def test_help_explains_every_flag() -> None:
    result = resetwatch("demo", "--help")
    assert result.returncode == 0
    for flag in ("--duration", "--keep-running", "--listen", "--records", "--seed"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--duration", "0"], "must be a positive number"),
        (["--listen", "nowhere"], "is not ADDR:PORT"),
        (["--listen", "127.0.0.1:70000"], "port must be from 0 to 65535"),
        (["--seed", "x"], "invalid int value"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = resetwatch("demo", *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_without_root_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from resetwatch import demo

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo.run(argparse.Namespace()) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs root" in lines[0]


def test_missing_tools_are_named_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "zmap" else real(name))
    problem = missing_requirements()
    assert problem is not None and "zmap" in problem and "apt install zmap" in problem


def test_parse_listen() -> None:
    assert forward.parse_listen("127.0.0.1:9825") == ("127.0.0.1", 9825)
    assert forward.parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        forward.parse_listen("localhost:9825")


def test_category_counts_sums_families() -> None:
    text = "\n".join(
        [
            "# TYPE resetwatch_connections counter",
            'resetwatch_connections_total{family="4",category="post_ack"} 3.0',
            'resetwatch_connections_total{family="6",category="post_ack"} 2.0',
            'resetwatch_connections_total{family="4",category="no_match"} 7.0',
        ]
    )
    assert forward.category_counts(text + "\n") == {"post_ack": 5, "no_match": 7}
    assert json.dumps(forward.category_counts("garbage{")) == "{}"
