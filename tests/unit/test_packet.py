"""Header parsing: IPv4, IPv6 (with extension headers), TCP options, and bad bytes."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from resetwatch.packet import ACK, PSH, RST, SYN, Invalid, Packet, flag_names, parse_ip

WINDOWS_OPTS = [("MSS", 1460), ("NOP", None), ("WScale", 8), ("NOP", None), ("NOP", None),
                ("SAckOK", b"")]


def parse(layer: object, ts: float = 1.5) -> Packet:
    result = parse_ip(bytes(layer), ts)  # type: ignore[call-overload]
    assert isinstance(result, Packet), result
    return result


def test_ipv4_syn_fields() -> None:
    p = parse(IP(src="198.51.100.7", dst="203.0.113.1", id=54321, ttl=255, flags=0)
              / TCP(sport=40000, dport=443, flags="S", seq=123, window=65535,
                    options=[("MSS", 1460)]))
    assert (p.family, p.src, p.sport, p.dst, p.dport) == (4, "198.51.100.7", 40000,
                                                          "203.0.113.1", 443)
    assert (p.flags, p.seq, p.ack, p.window, p.ttl, p.ip_id, p.df) == (
        SYN, 123, 0, 65535, 255, 54321, False)
    assert p.options == "M1460"
    assert p.payload_len == 0
    assert p.ts == 1.5


def test_windows_like_options_fingerprint() -> None:
    p = parse(IP(dst="203.0.113.1") / TCP(flags="S", options=WINDOWS_OPTS))
    assert p.options == "M1460,N,W8,N,N,S"


def test_options_only_fingerprinted_on_syn() -> None:
    p = parse(IP(dst="203.0.113.1") / TCP(flags="A", options=[("Timestamp", (1, 2))]))
    assert p.options == ""


def test_payload_length_comes_from_the_ip_header_even_when_cut() -> None:
    full = bytes(IP(dst="203.0.113.1", flags="DF") / TCP(flags="PA") / Raw(b"x" * 1000))
    headers_only = full[:60]
    p = parse_ip(headers_only, 0.0)
    assert isinstance(p, Packet)
    assert p.payload_len == 1000
    assert p.flags == PSH | ACK
    assert p.df is True


@pytest.mark.parametrize(
    "ext",
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(),
        IPv6ExtHdrFragment(offset=0, m=0),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
    ],
    ids=["hop-by-hop", "dest-opts", "routing", "first-fragment", "two-headers"],
)
def test_ipv6_walks_extension_headers(ext: object) -> None:
    layer = (IPv6(src="2001:db8::7", dst="2001:db8::1", hlim=61) / ext
             / TCP(sport=5, dport=443, flags="R", seq=9, ack=77) / Raw(b"abc"))
    p = parse(layer)
    assert (p.family, p.src, p.dst, p.sport, p.dport) == (6, "2001:db8::7", "2001:db8::1", 5,
                                                          443)
    assert (p.flags, p.ack, p.ttl, p.payload_len) == (RST, 77, 61, 3)


BAD = [
    ("empty", b"", Invalid.TRUNCATED),
    ("short-ipv4", bytes(IP() / TCP())[:19], Invalid.TRUNCATED),
    ("short-tcp", bytes(IP() / TCP())[:30], Invalid.TRUNCATED),
    ("not-ip", b"\x50" + bytes(39), Invalid.NOT_IP),
    ("udp", bytes(IP(proto=17) / Raw(bytes(20))), Invalid.NOT_TCP),
    ("v4-fragment", bytes(IP(frag=10) / TCP()), Invalid.FRAGMENT),
    ("v6-fragment", bytes(IPv6() / IPv6ExtHdrFragment(offset=3) / TCP()), Invalid.FRAGMENT),
    ("ihl-too-small", b"\x44" + bytes(IP() / TCP())[1:], Invalid.BAD_HEADER),
    ("doff-too-small", bytes(IP() / TCP(dataofs=2)), Invalid.BAD_HEADER),
    ("total-len-too-small", bytes(IP(len=30) / TCP()), Invalid.BAD_HEADER),
    ("v6-no-tcp", bytes(IPv6(nh=59) / Raw(bytes(20))), Invalid.NOT_TCP),
    ("v6-short", bytes(IPv6() / TCP())[:39], Invalid.TRUNCATED),
]


@pytest.mark.parametrize("data,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_bytes_give_a_reason_never_an_exception(data: bytes, reason: Invalid) -> None:
    assert parse_ip(data, 0.0) is reason


def test_every_invalid_reason_is_documented() -> None:
    for reason in Invalid:
        assert reason.doc.endswith(".")


def test_fuzzed_bytes_never_raise() -> None:
    import random

    rnd = random.Random(7)
    base = bytes(IP() / TCP(flags="S", options=WINDOWS_OPTS))
    for _ in range(5000):
        data = bytearray(base[: rnd.randrange(len(base) + 1)])
        for _ in range(rnd.randrange(4)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        result = parse_ip(bytes(data), 0.0)
        assert isinstance(result, (Packet, Invalid))


@pytest.mark.parametrize("flags,text", [(SYN, "S"), (RST | ACK, "R."), (PSH | ACK, "P.")])
def test_flag_names(flags: int, text: str) -> None:
    assert flag_names(flags) == text
