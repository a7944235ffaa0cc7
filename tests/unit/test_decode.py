"""Link types, encapsulations and tunnels (decode.py), shown on real lab traffic.

The plain capture `tests/fixtures/lab_mixed_v4v6.pcap` (NFLOG, recorded in the lab) is
re-wrapped, packet by packet and with its timestamps, in each link type and encapsulation;
replaying the wrapped file must give every flow exactly the record the plain file gives.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN

from resetwatch import decode
from resetwatch.cli import main
from resetwatch.packet import Invalid, Packet, parse_ip
from resetwatch.pcap import LINK_TYPES, CaptureError, ip_offset, read_packets

from .test_pcap import (
    T0,
    V4,
    V6,
    epb,
    ether,
    fields,
    idb,
    option,
    packet,
    read_all,
    shb,
    tcp4,
    tcp6,
    write_pcap,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lab_mixed_v4v6.pcap"
REPLAY_ARGS = ["--close-linger", "1", "--idle-timeout", "5", "--format", "json"]
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
OUTER4 = {"src": "192.0.2.1", "dst": "192.0.2.2"}
OUTER6 = {"src": "2001:db8:ffff::1", "dst": "2001:db8:ffff::2"}


def fixture_packets() -> list[tuple[int, int, bytes]]:
    """(seconds, microseconds, IP packet bytes) of every record of the plain capture."""
    data = FIXTURE.read_bytes()
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out = []
    pos = 24
    while pos + 16 <= len(data):
        sec, usec, caplen, _ = struct.unpack_from(order + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        start = ip_offset(239, frame, order == ">")
        assert isinstance(start, int)
        out.append((sec, usec, frame[start:]))
    return out


def replay_records(path: Path, tmp_path: Path, *extra: str) -> dict[int, dict[str, Any]]:
    out = tmp_path / f"{path.name}.jsonl"
    assert main(["replay", str(path), *REPLAY_ARGS, "--records", str(out), *extra]) == 0
    return {r["sport"]: r for r in map(json.loads, out.read_text().splitlines())}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    records = replay_records(FIXTURE, tmp_path_factory.mktemp("plain"))
    assert len(records) > 30  # every lab scenario, IPv4 and IPv6
    return records


def _v(ip: bytes) -> int:
    return ip[0] >> 4


def eth(ip: bytes) -> bytes:
    return bytes(Ether(**MAC, type=0x0800 if _v(ip) == 4 else 0x86DD)) + ip


def ip_type(ip: bytes) -> int:
    return 0x0800 if _v(ip) == 4 else 0x86DD


def ppp_proto(ip: bytes) -> int:
    return 0x0021 if _v(ip) == 4 else 0x0057


def pbb(ip: bytes) -> bytes:
    # Backbone MACs, B-tag (802.1ad), I-TAG (0x88E7: flags and a 24-bit service id), then the
    # customer's frame.
    outer = bytes(Ether(**MAC, type=0x88A8) / Dot1AD(vlan=100, type=0x88E7))
    return outer + struct.pack("!I", 0x00012345) + eth(ip)


def gre4(inner: bytes, proto: int, **flags: int) -> bytes:
    return bytes(Ether(**MAC) / IP(**OUTER4, proto=47) / GRE(proto=proto, **flags)) + inner


def udp4(port: int, header: bytes, inner: bytes) -> bytes:
    # The UDP length and checksum are those of the headers only: nothing reads them.
    return bytes(Ether(**MAC) / IP(**OUTER4) / UDP(sport=54321, dport=port)) + header + inner


Wrap = Callable[[bytes], bytes]
ENCAPSULATIONS: list[tuple[str, Wrap]] = [
    ("802.1q", lambda ip: bytes(Ether(**MAC) / Dot1Q(vlan=7, type=ip_type(ip))) + ip),
    ("qinq-802.1ad", lambda ip: bytes(Ether(**MAC) / Dot1AD(vlan=9) / Dot1Q(vlan=7,
                                                                           type=ip_type(ip))) + ip),
    ("mpls-2-labels", lambda ip: bytes(Ether(**MAC, type=0x8847) / MPLS(label=16, s=0)
                                       / MPLS(label=17, s=1)) + ip),
    ("mpls-pseudowire", lambda ip: bytes(Ether(**MAC, type=0x8847) / MPLS(label=16, s=1))
     + bytes(4) + eth(ip)),
    ("pppoe", lambda ip: bytes(Ether(**MAC) / PPPoE(sessionid=3) / PPP(proto=ppp_proto(ip))) + ip),
    ("pppoe-over-qinq", lambda ip: bytes(Ether(**MAC) / Dot1AD(vlan=9) / Dot1Q(vlan=7)
                                         / PPPoE(sessionid=3) / PPP(proto=ppp_proto(ip))) + ip),
    ("802.1ah-pbb", pbb),
    ("gre", lambda ip: gre4(ip, ip_type(ip))),
    ("gre-key-seq-checksum", lambda ip: gre4(ip, ip_type(ip), key_present=1, key=5,
                                              seqnum_present=1, chksum_present=1)),
    ("gre-teb", lambda ip: gre4(eth(ip), 0x6558)),
    ("gre-over-ipv6", lambda ip: bytes(Ether(**MAC) / IPv6(**OUTER6, nh=47)
                                       / GRE(proto=ip_type(ip))) + ip),
    ("erspan-i", lambda ip: gre4(eth(ip), 0x88BE)),
    ("erspan-ii", lambda ip: gre4(bytes(ERSPAN_II(session_id=1)) + eth(ip), 0x88BE,
                                  seqnum_present=1)),
    ("erspan-iii", lambda ip: gre4(bytes(ERSPAN_III(session_id=1)) + eth(ip), 0x22EB,
                                   seqnum_present=1)),
    ("erspan-iii-platform", lambda ip: gre4(bytes(ERSPAN_III(o=1) / ERSPAN_PlatformSpecific())
                                            + eth(ip), 0x22EB, seqnum_present=1)),
    # IP-in-IP and 6in4 over IPv4, 4in6 and IPv6-in-IPv6 over IPv6.
    ("ip-in-ipv4", lambda ip: bytes(Ether(**MAC) / IP(**OUTER4, proto=4 if _v(ip) == 4 else 41))
     + ip),
    ("ip-in-ipv6", lambda ip: bytes(Ether(**MAC) / IPv6(**OUTER6, nh=4 if _v(ip) == 4 else 41))
     + ip),
    ("vxlan", lambda ip: udp4(4789, bytes(VXLAN(vni=42)), eth(ip))),
    ("geneve", lambda ip: udp4(6081, bytes(GENEVE(vni=42, proto=0x6558)), eth(ip))),
    ("geneve-ip-with-option", lambda ip: udp4(
        6081, bytes(GENEVE(vni=42, proto=ip_type(ip), optionlen=2)) + bytes(8), ip)),
    ("gtp-u", lambda ip: udp4(2152, bytes(GTP_U_Header(teid=7, gtp_type=255)), ip)),
    ("gtp-u-extension", lambda ip: udp4(2152, bytes(
        GTP_U_Header(teid=7, gtp_type=255, E=1, next_ex=0x85)
        / GTPPDUSessionContainer(type=1, QFI=5)), ip)),
    # Eight deep: VLAN, MPLS, GRE to Ethernet, VLAN, VXLAN, two VLANs, IP-in-IP (the most
    # that is decoded).
    ("nested-8", lambda ip: bytes(Ether(**MAC) / Dot1Q(vlan=1, type=0x8847) / MPLS(s=1)
                                  / IP(**OUTER4, proto=47) / GRE(proto=0x6558))
     + bytes(Ether(**MAC) / Dot1Q(vlan=2, type=0x0800)) + udp4(4789, bytes(VXLAN(vni=1)), b"")[14:]
     + bytes(Ether(**MAC) / Dot1Q(vlan=3) / Dot1Q(vlan=4, type=0x0800)
             / IP(**OUTER4, proto=4 if _v(ip) == 4 else 41)) + ip),
]


@pytest.mark.parametrize("wrap", [w for _, w in ENCAPSULATIONS], ids=[n for n, _ in ENCAPSULATIONS])
def test_wrapped_lab_traffic_gets_the_plain_verdicts(
    wrap: Wrap, plain: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    path = write_pcap(tmp_path / "wrapped.pcap", 1, [(s, u, wrap(ip))
                                                       for s, u, ip in fixture_packets()])
    assert replay_records(path, tmp_path) == plain
    assert not [p for p in read_packets(path) if isinstance(p, Invalid)]


def null_header(ip: bytes, order: str, ipv6_family: int = 30) -> bytes:
    return struct.pack(order + "I", 2 if _v(ip) == 4 else ipv6_family) + ip


LINKS: list[tuple[str, int, str, Wrap]] = [
    # (id, link type, byte order of the file, frame around an IP packet)
    ("null-little-endian", 0, "<", lambda ip: null_header(ip, "<")),
    ("null-big-endian", 0, ">", lambda ip: null_header(ip, ">", 24)),
    ("null-family-in-the-other-order", 0, "<", lambda ip: null_header(ip, ">", 28)),
    ("loop-108", 108, "<", lambda ip: null_header(ip, ">", 24)),
    ("ppp-9", 9, "<", lambda ip: bytes(PPP(proto=ppp_proto(ip))) + ip),
    ("ppp-9-hdlc-framing", 9, ">", lambda ip: b"\xff\x03" + bytes(PPP(proto=ppp_proto(ip))) + ip),
    ("ppp-9-compressed-protocol", 9, "<", lambda ip: bytes([ppp_proto(ip)]) + ip),
    ("ppp-hdlc-50", 50, "<", lambda ip: b"\xff\x03" + bytes(PPP(proto=ppp_proto(ip))) + ip),
    ("pppoe-51", 51, "<", lambda ip: bytes(PPPoE(sessionid=1) / PPP(proto=ppp_proto(ip))) + ip),
    ("linux-sll-gre", 113, "<", lambda ip: bytes(CookedLinux(proto=0x0800) / IP(**OUTER4, proto=47)
                                                 / GRE(proto=ip_type(ip))) + ip),
]


@pytest.mark.parametrize(("linktype", "order", "wrap"), [c[1:] for c in LINKS],
                         ids=[c[0] for c in LINKS])
def test_link_types_with_lab_traffic(
    linktype: int, order: str, wrap: Wrap, plain: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    assert linktype in LINK_TYPES
    records = [(s, u, wrap(ip)) for s, u, ip in fixture_packets()]
    path = write_pcap(tmp_path / "link.pcap", linktype, records, order=order)
    assert replay_records(path, tmp_path) == plain


def test_link_types_have_names() -> None:
    assert {0, 1, 9, 101, 108, 113, 239, 276} <= set(LINK_TYPES)
    assert all(name for name in LINK_TYPES.values())
    assert set(LINK_TYPES) == set(decode.LINK_DECODERS) | {239}


def test_server_matches_the_inner_addresses(tmp_path: Path) -> None:
    # A tunnel between two routers carries both directions of a client's connection: the
    # inner destination says which packets are ingress, the outer addresses never do.
    syn = IP(src="198.51.100.7", dst="203.0.113.1") / tcp4("S")[1]
    synack = IP(src="203.0.113.1", dst="198.51.100.7") / tcp4("SA", sport=443)[1]
    synack[1].dport = 40000
    rst = IP(src="198.51.100.7", dst="203.0.113.1") / tcp4("R", seq=1001)[1]
    frames = [udp4(4789, bytes(VXLAN(vni=1)), eth(bytes(p))) for p in (syn, synack, rst)]
    records = [(T0, i, f) for i, f in enumerate(frames)]
    # An egress packet 20 s on moves the clock past the RST's linger: the flow is judged.
    records.append((T0 + 20, 0, frames[1]))
    path = write_pcap(tmp_path / "c.pcap", 1, records)
    for server in ("203.0.113.1", "192.0.2.2"):
        out = tmp_path / f"{server}.jsonl"
        assert main(["replay", str(path), "--server", server, "--records", str(out),
                     "--format", "json"]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        if server == "192.0.2.2":  # the outer destination: no packet is ingress
            assert records == []
        else:
            (record,) = records
            assert (record["dst"], record["packets"], record["category"]) == (
                "203.0.113.1", 2, "post_syn")


# --- What cannot be decoded, by reason ----------------------------------------------------------

SYN4 = bytes(tcp4("S"))
UNDECODED: list[tuple[str, bytes, Invalid]] = [
    ("nine-vlan-tags", bytes(Ether(**MAC) / Dot1Q() / Dot1Q() / Dot1Q() / Dot1Q() / Dot1Q()
                             / Dot1Q() / Dot1Q() / Dot1Q() / Dot1Q(type=0x0800)) + SYN4,
     Invalid.TOO_DEEP),
    ("nine-mpls-labels", bytes(Ether(**MAC, type=0x8847)) + b"".join(
        bytes(MPLS(label=i, s=int(i == 8))) for i in range(9)) + SYN4, Invalid.TOO_DEEP),
    ("gre-version-1", gre4(SYN4, 0x880B, version=1), Invalid.UNDECODED_GRE),
    ("gre-routing", gre4(SYN4, 0x0800, routing_present=1), Invalid.UNDECODED_GRE),
    ("gre-unknown-protocol", gre4(SYN4, 0x1234), Invalid.UNDECODED_GRE),
    ("mpls-unknown-payload", bytes(Ether(**MAC, type=0x8847) / MPLS(s=1)) + b"\x90" + SYN4[1:],
     Invalid.UNDECODED_MPLS),
    ("vxlan-without-i-flag", udp4(4789, bytes(VXLAN(flags=0)), eth(SYN4)),
     Invalid.UNDECODED_VXLAN),
    ("geneve-version-1", udp4(6081, b"\x40" + bytes(GENEVE(proto=0x6558))[1:], eth(SYN4)),
     Invalid.UNDECODED_GENEVE),
    ("geneve-unknown-protocol", udp4(6081, bytes(GENEVE(proto=0x1234)), eth(SYN4)),
     Invalid.UNDECODED_GENEVE),
    ("gtp-version-2", udp4(2152, b"\x48" + bytes(GTP_U_Header(gtp_type=255))[1:], SYN4),
     Invalid.UNDECODED_GTP),
    ("gtp-echo", udp4(2152, bytes(GTP_U_Header(gtp_type=1)), b""), Invalid.NOT_TCP),
    ("gtp-not-ip", udp4(2152, bytes(GTP_U_Header(gtp_type=255)), b"\x00" * 40),
     Invalid.UNDECODED_GTP),
    ("plain-udp", udp4(53, b"", b"\x00" * 12), Invalid.NOT_TCP),
    ("pppoe-lcp", bytes(Ether(**MAC) / PPPoE() / PPP(proto=0xC021)) + b"\x01\x01\x00\x04",
     Invalid.NOT_IP),
    ("pppoe-discovery", bytes(Ether(**MAC, type=0x8863)) + bytes(20), Invalid.NOT_IP),
    ("tunnel-cut-short", gre4(SYN4, 0x0800)[:14 + 20 + 2], Invalid.TRUNCATED),
    ("vxlan-cut-short", udp4(4789, bytes(VXLAN(vni=1))[:5], b""), Invalid.TRUNCATED),
]


@pytest.mark.parametrize(("frame", "reason"), [c[1:] for c in UNDECODED],
                         ids=[c[0] for c in UNDECODED])
def test_what_cannot_be_decoded_is_counted_by_reason(
    frame: bytes, reason: Invalid, tmp_path: Path
) -> None:
    path = write_pcap(tmp_path / "c.pcap", 1, [(T0, 0, frame), (T0, 1, eth(SYN4))])
    got, syn = read_all(path)
    assert got is reason
    assert fields(syn) == (*V4, 2, 1000, 0)


def test_nesting_deeper_than_eight_is_too_deep() -> None:
    inner = SYN4
    for depth in range(1, 12):
        inner = bytes(IP(**OUTER4, proto=4)) + inner
        result = parse_ip(inner, 0.0)
        if depth <= decode.MAX_DEPTH:
            assert isinstance(result, Packet), depth
        else:
            assert result is Invalid.TOO_DEEP, depth


def test_tunnel_in_a_non_first_fragment_is_a_fragment() -> None:
    outer = bytes(IP(**OUTER4, proto=47, frag=100)) + bytes(GRE(proto=0x0800)) + SYN4
    assert parse_ip(outer, 0.0) is Invalid.FRAGMENT


# --- Lengths of 0 (GSO/TSO, BIG TCP) ------------------------------------------------------------


def test_ipv4_total_length_0_takes_the_captured_length() -> None:
    data = bytearray(bytes(tcp4("PA", seq=5, ack=6) / (b"x" * 100)))
    data[2:4] = b"\0\0"
    got = parse_ip(bytes(data), 0.0)
    assert isinstance(got, Packet)
    assert (got.seq, got.ack, got.payload_len) == (5, 6, 100)


def test_ipv6_payload_length_0_takes_the_captured_length() -> None:
    data = bytearray(bytes(tcp6("PA", seq=5, ack=6) / (b"x" * 100)))
    data[4:6] = b"\0\0"
    got = parse_ip(bytes(data), 0.0)
    assert isinstance(got, Packet)
    assert (got.seq, got.ack, got.payload_len) == (5, 6, 100)


# --- pcapng interfaces and clocks ----------------------------------------------------------------


def test_pcapng_mixed_interface_list_reads_the_supported_ones(tmp_path: Path) -> None:
    # Interface 0 is of a link type not decoded (147, user-defined), 1 Ethernet, 2 NULL.
    data = (shb() + idb(147) + idb(1) + idb(0)
            + epb(0, T0 * 10**6, b"\x01" * 40)
            + epb(1, T0 * 10**6, bytes(ether() / tcp4("S")))
            + epb(0, T0 * 10**6, b"\x02" * 40)
            + epb(2, T0 * 10**6 + 1, null_header(bytes(tcp6("S")), "<")))
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    first, syn4, third, syn6 = read_all(path)
    assert first is third is Invalid.UNSUPPORTED_LINK
    assert fields(syn4) == (*V4, 2, 1000, 0)
    assert fields(syn6) == (*V6, 2, 1000, 0)


def test_pcapng_of_only_unsupported_interfaces_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb() + idb(147) + idb(148) + epb(1, 0, bytes(tcp4())))
    with pytest.raises(CaptureError, match=r"c\.pcapng: link type 148 is not supported"):
        read_all(path)


@pytest.mark.parametrize(
    ("options", "ticks", "message"),
    [
        (b"", (1 << 64) - 1, "timestamp beyond the year 2242"),
        (option(9, b"\x00"), T0 * 10**6, "timestamp beyond the year 2242"),  # µs as seconds
        (option(9, bytes([0x80 | 60])), T0, "finer than 10^-15 s"),
        (option(14, struct.pack("<q", 1 << 40)), T0, "if_tsoffset 1099511627776 s"),
        (option(14, struct.pack("<q", -(1 << 40))), T0, "if_tsoffset -1099511627776 s"),
    ],
    ids=["near-2^64", "if_tsresol-0-with-microseconds", "if_tsresol-2^-60", "huge-tsoffset",
         "huge-negative-tsoffset"],
)
def test_pcapng_clocks_that_cannot_be_read_are_refused(
    tmp_path: Path, options: bytes, ticks: int, message: str
) -> None:
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb() + idb(1, options=options) + epb(0, ticks, bytes(ether() / tcp4())))
    with pytest.raises(CaptureError) as error:
        read_all(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert main(["replay", str(path)]) == 2


def test_pcapng_if_tsresol_0_with_seconds_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb() + idb(1, options=option(9, b"\x00"))
                     + epb(0, T0, bytes(ether() / tcp4())))
    (item,) = read_all(path)
    assert packet(item).ts == T0


# --- Fuzz: every decoder, on damaged frames -------------------------------------------------------

FUZZ_BASES = [wrap(bytes(tcp4("S"))) for _, wrap in ENCAPSULATIONS] + [
    wrap(bytes(tcp6("S"))) for _, wrap in ENCAPSULATIONS
]


def test_fuzzed_frames_never_raise_in_any_decoder() -> None:
    rnd = random.Random(11)
    decoders = [(lt, make(order)) for lt, make in decode.LINK_DECODERS.items() for order in "<>"]
    for _ in range(3000):
        base = rnd.choice(FUZZ_BASES)
        data = bytearray(base[: rnd.randrange(len(base) + 1)])
        for _ in range(rnd.randrange(5)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        frame = bytes(data)
        for _linktype, decoder in decoders:
            span = decoder(frame, 0, len(frame))
            if not isinstance(span, Invalid):
                start, stop, depth = span
                assert 0 <= start <= stop <= len(frame) or start >= stop
                assert 0 <= depth <= decode.MAX_DEPTH
                if start < stop:
                    result = parse_ip(frame[:stop], 0.0, start)
                    assert isinstance(result, (Packet, Invalid))


def test_big_tcp_packets_logged_by_nflog_in_the_lab() -> None:
    # See tests/fixtures/decode/README.md: BIG TCP IPv6 packets reach NFLOG as jumbograms.
    path = FIXTURE.parent / "decode" / "lab_bigtcp_nflog.pcap"
    items = list(read_packets(path))
    assert len(items) == 32
    packets = [p for p in items if isinstance(p, Packet)]
    assert len(packets) == len(items)
    jumbo = [p for p in packets if p.family == 6 and p.payload_len > 65535]
    assert len(jumbo) == 12
    assert max(p.payload_len for p in packets if p.family == 4) <= 65535
