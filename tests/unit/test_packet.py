"""Header parsing: IPv4, IPv6 (with extension headers), TCP options, and bad bytes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from resetwatch import packet as packet_module
from resetwatch.packet import (
    ACK,
    PSH,
    RST,
    SYN,
    Invalid,
    Packet,
    flag_names,
    options_fingerprint,
    parse_fields,
    parse_ip,
)

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


@pytest.mark.parametrize("flags", ["S", "SEC", "A", "PA", "EA", "CA", "CPA", "FA", "RA", "R"])
@pytest.mark.parametrize("version", [4, 6])
def test_every_field_whatever_the_flags(flags: str, version: int) -> None:
    # The common shapes take a fast path with one unpack per packet: every field must come
    # out the same as from the general one, whatever the flag bits next to the data offset.
    if version == 4:
        ip: object = IP(src="198.51.100.7", dst="203.0.113.1", ttl=61, id=4242, flags="DF")
        src, dst = "198.51.100.7", "203.0.113.1"
    else:
        ip = IPv6(src="2001:db8::7", dst="2001:db8::1", hlim=61)
        src, dst = "2001:db8::7", "2001:db8::1"
    tcp = TCP(sport=40000, dport=443, flags=flags, seq=123456789, ack=987654321, window=29200,
              options=[("MSS", 1440), ("NOP", None), ("WScale", 7)])
    p = parse(ip / tcp / Raw(b"hello"))  # type: ignore[operator]
    assert (p.family, p.src, p.sport, p.dst, p.dport) == (version, src, 40000, dst, 443)
    assert (p.flags, p.seq, p.ack, p.window, p.ttl, p.payload_len) == (
        int(tcp.flags), 123456789, 987654321, 29200, 61, 5)
    assert (p.ip_id, p.df) == ((4242, True) if version == 4 else (0, False))
    assert p.options == ("M1440,N,W7" if "S" in flags else "")


def test_parsing_in_place_equals_parsing_a_copy() -> None:
    rnd = random.Random(11)
    bases = [
        bytes(IP(flags="DF") / TCP(flags="S", options=WINDOWS_OPTS)),
        bytes(IP(flags="MF") / TCP(flags="PA") / Raw(b"x" * 10)),
        bytes(IPv6() / TCP(flags="SEC", options=[("Timestamp", (1, 2)), ("MSS", 1220)])),
        bytes(IPv6() / IPv6ExtHdrHopByHop() / TCP(flags="RA")),
    ]
    for _ in range(5000):
        base = rnd.choice(bases)
        data = bytearray(base[: rnd.randrange(len(base) + 1)])
        for _ in range(rnd.randrange(4)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        pad = bytes(rnd.randrange(256) for _ in range(rnd.randrange(9)))
        buf = pad + bytes(data) + pad
        assert parse_fields(buf, 1.5, len(pad), len(pad) + len(data)) == parse_ip(bytes(data), 1.5)


OPTION = st.sampled_from([
    b"\x01", b"\x00", b"\x02\x04\x05\xb4", b"\x02\x04\x08\x0a", b"\x03\x03\x07", b"\x04\x02",
    b"\x08\x0a" + bytes(8), b"\x08\x0a\x00\x00\x08\x0a\x00\x00\x00\x00", b"\x08\x0a", b"\x08\x09",
    b"\x05\x0a" + bytes(8), b"\x22\x02", b"\x1e\x04\x08\x0a", b"\xfe",
])


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(OPTION, max_size=8).map(b"".join),
    st.binary(min_size=8, max_size=8),
    st.integers(0, 8),
    st.lists(OPTION, max_size=2).map(b"".join),
)
def test_fingerprints_from_the_cache_are_those_of_the_walk(
    block: bytes, stamps: bytes, cut: int, tail: bytes
) -> None:
    # The cache key zeroes the 8 bytes after the first `08 0a`: blocks that differ there,
    # or are cut inside them, or go on after them, must each get their own walk's answer,
    # whether that `08 0a` is a timestamps option or not.
    at = block.find(b"\x08\x0a")
    variants = [block, block + tail]
    if at >= 0:
        variants.append(block[: at + 2] + stamps[: max(0, len(block) - at - 2)] + block[at + 10 :])
        variants.append(block[: at + 2 + cut])
        variants.append(block[: at + 2 + cut] + tail)
    fresh = {}
    for b in variants:
        packet_module._FINGERPRINTS.clear()
        fresh[b] = options_fingerprint(b"\x01" + b, 1, 1 + len(b))
    packet_module._FINGERPRINTS.clear()
    for b in variants + variants[::-1]:
        assert options_fingerprint(b + b"\x01", 0, len(b)) == fresh[b]


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


def _tunnelled(inner: bytes) -> list[bytes]:
    """`inner` in each tunnel `parse_ip` enters (and one nested in another)."""
    from scapy.contrib.gtp import GTP_U_Header
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import GRE, Ether
    from scapy.layers.vxlan import VXLAN

    eth = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)) + inner
    gre = bytes(IP(proto=47) / GRE(proto=0x0800, key_present=1, seqnum_present=1)) + inner
    return [
        bytes(IP(proto=4)) + inner,
        bytes(IPv6(nh=4)) + inner,
        gre,
        bytes(IP(proto=47) / GRE(proto=0x22EB, seqnum_present=1)) + bytes(12) + eth,
        bytes(IP() / UDP(dport=4789) / VXLAN(vni=1)) + eth,
        bytes(IP() / UDP(dport=6081)) + bytes.fromhex("0100655800000100") + bytes(4) + eth,
        bytes(IP() / UDP(dport=2152) / GTP_U_Header(gtp_type=255, E=1, next_ex=0x85))
        + bytes.fromhex("01000000") + inner,
        bytes(IPv6(nh=41)) + gre,
    ]


@pytest.mark.parametrize("kind", ["plain", "tunnelled"])
def test_fuzzed_bytes_never_raise(kind: str) -> None:
    import random

    rnd = random.Random(7)
    plain = bytes(IP() / TCP(flags="S", options=WINDOWS_OPTS))
    bases = [plain] if kind == "plain" else _tunnelled(plain)
    for _ in range(5000):
        base = rnd.choice(bases)
        data = bytearray(base[: rnd.randrange(len(base) + 1)])
        for _ in range(rnd.randrange(4)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        result = parse_ip(bytes(data), 0.0)
        assert isinstance(result, (Packet, Invalid))


@pytest.mark.parametrize("flags,text", [(SYN, "S"), (RST | ACK, "R."), (PSH | ACK, "P.")])
def test_flag_names(flags: int, text: str) -> None:
    assert flag_names(flags) == text
