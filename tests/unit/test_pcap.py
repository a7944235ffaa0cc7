"""Capture reading: pcap and pcapng framing, every link type, and damaged or foreign files."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest
import scapy.layers.l2
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.utils import PcapNgWriter, wrpcap

from resetwatch import pcap
from resetwatch.packet import ACK, FIN, PSH, RST, SYN, Invalid, Packet, ParseResult, parse_ip
from resetwatch.pcap import CaptureError, ip_offset, read_batches, read_packets

# Linux cooked v2 arrived in scapy 2.5; without it the header is packed by hand.
COOKED_LINUX_V2: Any = getattr(scapy.layers.l2, "CookedLinuxV2", None)

SRC4, DST4 = "198.51.100.7", "203.0.113.1"
SRC6, DST6 = "2001:db8::7", "2001:db8::1"
T0 = 1_700_000_000
SHB, IDB, SPB, EPB = 0x0A0D0D0A, 1, 3, 6
NFULA_PACKET_HDR, NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX = 1, 4, 9, 10


# --- Frames -----------------------------------------------------------------------------------


def ether() -> Any:
    # Explicit addresses: scapy would otherwise look the destination up on the network.
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp4(flags: str = "S", seq: int = 1000, sport: int = 40000, ack: int = 0) -> Any:
    return IP(src=SRC4, dst=DST4, ttl=57) / TCP(
        sport=sport, dport=443, flags=flags, seq=seq, ack=ack
    )


def tcp6(flags: str = "S", seq: int = 1000, sport: int = 40000, ack: int = 0) -> Any:
    return IPv6(src=SRC6, dst=DST6, hlim=57) / TCP(
        sport=sport, dport=443, flags=flags, seq=seq, ack=ack
    )


def tlv(kind: int, value: bytes, order: str = "<", length: Optional[int] = None) -> bytes:
    """One NFLOG TLV: length (header included) and type in host order, value padded to 4."""
    size = 4 + len(value) if length is None else length
    return struct.pack(order + "HH", size, kind) + value + b"\0" * (-len(value) % 4)


def nflog(ip: bytes, order: str = "<", prefix: bytes = b"rw\0", trailer: bytes = b"") -> bytes:
    """An NFLOG frame laid out as the kernel does: header TLVs, then the payload."""
    return (
        struct.pack("!BBH", 2, 0, 10)  # nfgenmsg: AF_INET, version 0, group 10 (big-endian)
        + tlv(NFULA_PACKET_HDR, b"\x08\x00\x01\x00", order)
        + (tlv(NFULA_PREFIX, prefix, order) if prefix else b"")
        + tlv(NFULA_IFINDEX_INDEV, struct.pack(">I", 2), order)
        + tlv(NFULA_PAYLOAD, ip, order)
        + trailer
    )


def sll2(ip: Any) -> bytes:
    if COOKED_LINUX_V2 is not None:
        return bytes(COOKED_LINUX_V2() / ip)
    proto = 0x86DD if ip.version == 6 else 0x0800
    return struct.pack("!HHIHBB8s", proto, 0, 2, 1, 0, 6, b"\x02" * 6) + bytes(ip)


# --- File writers (struct, so that every header field is under the test's control) ------------

Record = tuple[int, int, bytes]  # seconds, fraction of a second, frame


def write_pcap(
    path: Path,
    linktype: int,
    records: Iterable[Union[Record, tuple[int, int, bytes, int]]],
    order: str = "<",
    nano: bool = False,
    snaplen: int = 65535,
) -> Path:
    """A pcap file; a record may carry a 4th item, a captured length to write instead."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    parts = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, frame, *caplen in records:
        size = caplen[0] if caplen else len(frame)
        parts.append(struct.pack(order + "IIII", sec, frac, size, len(frame)) + frame)
    path.write_bytes(b"".join(parts))
    return path


def block(kind: int, body: bytes, order: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    size = 12 + len(body)
    return struct.pack(order + "II", kind, size) + body + struct.pack(order + "I", size)


def shb(order: str = "<") -> bytes:
    return block(SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def option(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def idb(linktype: int, order: str = "<", snaplen: int = 0, options: bytes = b"") -> bytes:
    if options:
        options += option(0, b"", order)  # opt_endofopt
    return block(IDB, struct.pack(order + "HHI", linktype, 0, snaplen) + options, order)


def epb(
    iface: int, ticks: int, frame: bytes, order: str = "<", caplen: Optional[int] = None
) -> bytes:
    size = len(frame) if caplen is None else caplen
    fields = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, size, len(frame))
    return block(EPB, fields + frame, order)


def spb(frame: bytes, order: str = "<") -> bytes:
    return block(SPB, struct.pack(order + "I", len(frame)) + frame, order)


# --- Helpers ----------------------------------------------------------------------------------


def read_all(path: Path, counts: Optional[dict[str, int]] = None) -> list[ParseResult]:
    return list(read_packets(path, counts))


def read_until_error(path: Path) -> tuple[list[ParseResult], CaptureError]:
    """Everything yielded before the CaptureError, and the error."""
    got: list[ParseResult] = []
    with pytest.raises(CaptureError) as info:
        for item in read_packets(path):
            got.append(item)
    return got, info.value


def packet(item: ParseResult) -> Packet:
    assert isinstance(item, Packet), item
    return item


def fields(item: ParseResult) -> tuple[Any, ...]:
    p = packet(item)
    return (p.family, p.src, p.sport, p.dst, p.dport, p.flags, p.seq, p.ack)


V4 = (4, SRC4, 40000, DST4, 443)
V6 = (6, SRC6, 40000, DST6, 443)


# --- Link types -------------------------------------------------------------------------------

Wrap = Callable[[Any], bytes]
LINK_CASES: list[tuple[str, int, Wrap, int, int]] = [
    # (id, link type, frame around an IP packet, IP version, IP offset in the frame)
    ("ethernet", 1, lambda ip: bytes(ether() / ip), 4, 14),
    ("ethernet-ipv6", 1, lambda ip: bytes(ether() / ip), 6, 14),
    ("ethernet-802.1q", 1, lambda ip: bytes(ether() / Dot1Q(vlan=5) / ip), 4, 18),
    ("ethernet-qinq", 1, lambda ip: bytes(ether() / Dot1AD(vlan=9) / Dot1Q(vlan=5) / ip), 6, 22),
    ("raw-101-ipv4", 101, bytes, 4, 0),
    ("raw-101-ipv6", 101, bytes, 6, 0),
    ("dlt-raw-12", 12, bytes, 4, 0),
    ("dlt-raw-14", 14, bytes, 6, 0),
    ("ipv4-228", 228, bytes, 4, 0),
    ("ipv6-229", 229, bytes, 6, 0),
    ("linux-sll", 113, lambda ip: bytes(CookedLinux() / ip), 4, 16),
    ("linux-sll-ipv6", 113, lambda ip: bytes(CookedLinux() / ip), 6, 16),
    ("linux-sll2", 276, sll2, 4, 20),
    ("linux-sll2-ipv6", 276, sll2, 6, 20),
    ("nflog", 239, lambda ip: nflog(bytes(ip)), 4, 32),
    ("nflog-ipv6", 239, lambda ip: nflog(bytes(ip)), 6, 32),
]


@pytest.mark.parametrize(
    ("linktype", "wrap", "version", "offset"),
    [case[1:] for case in LINK_CASES],
    ids=[case[0] for case in LINK_CASES],
)
def test_every_link_type(
    tmp_path: Path, linktype: int, wrap: Wrap, version: int, offset: int
) -> None:
    tcp, addresses = (tcp4, V4) if version == 4 else (tcp6, V6)
    syn_frame = wrap(tcp("S", seq=1000))
    records = [(T0, 250_000, syn_frame), (T0 + 1, 500_000, wrap(tcp("A", seq=1001, ack=5001)))]
    syn, established = read_all(write_pcap(tmp_path / "c.pcap", linktype, records))
    assert fields(syn) == (*addresses, SYN, 1000, 0)
    assert fields(established) == (*addresses, ACK, 1001, 5001)
    assert (packet(syn).ts, packet(established).ts) == (T0 + 0.25, T0 + 1.5)
    assert ip_offset(linktype, syn_frame) == offset


NOT_IP = bytes(ether() / ARP())
OFFSET_CASES = [
    # (id, link type, frame, big-endian NFLOG TLVs, expected)
    ("ethernet-arp", 1, NOT_IP, False, Invalid.NOT_IP),
    ("ethernet-short", 1, NOT_IP[:13], False, Invalid.TRUNCATED),
    ("ethernet-tag-cut", 1, bytes(ether() / Dot1Q(vlan=5))[:16], False, Invalid.TRUNCATED),
    ("ethernet-tagged-arp", 1, bytes(ether() / Dot1Q(vlan=5) / ARP()), False, Invalid.NOT_IP),
    ("sll-arp", 113, bytes(CookedLinux() / ARP()), False, Invalid.NOT_IP),
    ("sll-tagged", 113, bytes(CookedLinux() / Dot1Q(vlan=7) / tcp4()), False, 20),
    ("sll-short", 113, bytes(15), False, Invalid.TRUNCATED),
    ("sll2-short", 276, bytes(19), False, Invalid.TRUNCATED),
    ("raw-empty", 101, b"", False, 0),
    ("nflog-header-only", 239, b"\x02\x00\x00\x0a", False, Invalid.BAD_LINK),
    ("nflog-short", 239, b"\x02\x00", False, Invalid.TRUNCATED),
    ("nflog-no-prefix", 239, nflog(b"\x45", prefix=b""), False, 24),
    ("nflog-long-prefix", 239, nflog(b"\x45", prefix=b"resetwatch\0"), False, 40),
    ("nflog-big-endian", 239, nflog(b"\x45", order=">"), True, 32),
    ("nflog-wrong-order", 239, nflog(b"\x45", order=">"), False, Invalid.BAD_LINK),
    (
        "nflog-zero-length-tlv",
        239,
        b"\x02\x00\x00\x0a" + tlv(NFULA_PACKET_HDR, b"", length=0) + tlv(NFULA_PAYLOAD, b"\x45"),
        False,
        Invalid.BAD_LINK,
    ),
    (
        "nflog-payload-length-too-small",
        239,
        b"\x02\x00\x00\x0a" + tlv(NFULA_PAYLOAD, b"\x45\0\0\0", length=3),
        False,
        Invalid.BAD_LINK,
    ),
    (
        "nflog-no-payload",
        239,
        b"\x02\x00\x00\x0a" + tlv(NFULA_PACKET_HDR, b"\x08\x00\x01\x00"),
        False,
        Invalid.BAD_LINK,
    ),
    ("unknown-link-type", 147, bytes(tcp4()), False, Invalid.BAD_LINK),
]


@pytest.mark.parametrize(
    ("linktype", "frame", "big_endian", "expected"),
    [case[1:] for case in OFFSET_CASES],
    ids=[case[0] for case in OFFSET_CASES],
)
def test_ip_offset(
    linktype: int, frame: bytes, big_endian: bool, expected: Union[int, Invalid]
) -> None:
    assert ip_offset(linktype, frame, big_endian) == expected


def test_non_ip_frames_yield_not_ip(tmp_path: Path) -> None:
    path = write_pcap(
        tmp_path / "c.pcap",
        1,
        [(T0, 0, NOT_IP), (T0, 1, bytes(ether() / tcp4("R", seq=9))), (T0, 2, NOT_IP[:10])],
    )
    arp, rst, short = read_all(path)
    assert arp is Invalid.NOT_IP
    assert fields(rst) == (*V4, RST, 9, 0)
    assert short is Invalid.TRUNCATED


# --- pcap byte orders and resolutions ---------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize(
    ("nano", "frac", "seconds"),
    [(False, 123_456, 0.123456), (True, 987_654_321, 0.987654321)],
    ids=["microseconds", "nanoseconds"],
)
def test_pcap_byte_order_and_resolution(
    tmp_path: Path, order: str, nano: bool, frac: int, seconds: float
) -> None:
    records = [
        (T0, frac, bytes(ether() / tcp4("S", seq=7))),
        (T0 + 5, 0, bytes(ether() / tcp6("FA", seq=8, ack=70))),
    ]
    path = write_pcap(tmp_path / "c.pcap", 1, records, order=order, nano=nano)
    first, second = read_all(path)
    assert fields(first) == (*V4, SYN, 7, 0)
    assert fields(second) == (*V6, FIN | ACK, 8, 70)
    assert packet(first).ts == pytest.approx(T0 + seconds, abs=1e-6)
    assert packet(second).ts == T0 + 5


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_nflog_tlvs_are_in_the_file_byte_order(tmp_path: Path, order: str) -> None:
    # A capture written on a big-endian host has big-endian TLV headers and file headers.
    frame = nflog(bytes(tcp4("PA", seq=3, ack=4) / b"hello"), order=order)
    path = write_pcap(tmp_path / "c.pcap", 239, [(T0, 0, frame)], order=order)
    (item,) = read_all(path)
    assert fields(item) == (*V4, PSH | ACK, 3, 4)
    assert packet(item).payload_len == 5


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_written_by_scapy(tmp_path: Path, endianness: str, nano: bool) -> None:
    frames = [ether() / tcp4("S", seq=1), ether() / Dot1Q(vlan=3) / tcp6("RA", seq=2, ack=3)]
    frames[0].time = T0 + 0.5
    frames[1].time = T0 + 2.25
    path = tmp_path / "scapy.pcap"
    wrpcap(str(path), frames, endianness=endianness, nano=nano)
    syn, rst = read_all(path)
    assert fields(syn) == (*V4, SYN, 1, 0)
    assert fields(rst) == (*V6, RST | ACK, 2, 3)
    assert (packet(syn).ts, packet(rst).ts) == (T0 + 0.5, T0 + 2.25)


# --- pcapng ------------------------------------------------------------------------------------


def test_pcapng_sections_blocks_and_interfaces(tmp_path: Path) -> None:
    frame_eth = bytes(ether() / tcp4("S", seq=1))
    frame_spb = bytes(ether() / tcp4("A", seq=2, ack=20))
    frame_nflog = nflog(bytes(tcp6("S", seq=3)), order=">")
    frame_raw = bytes(tcp4("R", seq=4))
    data = b"".join(
        [
            # Section 1: little-endian, one Ethernet interface with the default resolution.
            shb("<"),
            idb(1, "<", snaplen=65535),
            block(0x00000BAD, b"custom block, to be skipped"),
            epb(0, (T0 + 1) * 10**6 + 250_000, frame_eth),
            block(5, bytes(24)),  # interface statistics: skipped
            spb(frame_spb),
            block(0x7FFFFF01, b""),  # unknown type: skipped
            # Section 2: big-endian, interfaces are numbered again from 0.
            shb(">"),
            idb(239, ">", options=option(9, bytes([9]), ">")),  # nanoseconds
            idb(101, ">", options=option(9, bytes([0x80 | 10]), ">")),  # 1/1024 s
            epb(1, (T0 + 3) * 1024 + 512, frame_raw, ">"),
            epb(0, (T0 + 2) * 10**9 + 1, frame_nflog, ">"),
        ]
    )
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    counts: dict[str, int] = {}
    eth, simple, raw, nfl = read_all(path, counts)
    assert fields(eth) == (*V4, SYN, 1, 0)
    assert packet(eth).ts == pytest.approx(T0 + 1.25, abs=1e-6)
    assert fields(simple) == (*V4, ACK, 2, 20)
    assert packet(simple).ts == packet(eth).ts  # an SPB has no timestamp of its own
    assert fields(raw) == (*V4, RST, 4, 0)
    assert packet(raw).ts == T0 + 3.5
    assert fields(nfl) == (*V6, SYN, 3, 0)
    assert packet(nfl).ts == pytest.approx(T0 + 2, abs=1e-6)
    assert counts == {"records": 4, "skipped_blocks": 3}


@pytest.mark.parametrize(
    ("tsresol", "units"),
    [(None, 10**6), (3, 10**3), (6, 10**6), (9, 10**9), (0x80 | 20, 2**20), (0x80, 1)],
    ids=["default", "milliseconds", "microseconds", "nanoseconds", "2^-20", "seconds"],
)
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcapng_if_tsresol(tmp_path: Path, tsresol: Optional[int], units: int, order: str) -> None:
    options = b"" if tsresol is None else option(9, bytes([tsresol]), order)
    ticks = T0 * units + units // 2 if units > 1 else T0
    frame = bytes(ether() / tcp4())
    data = shb(order) + idb(1, order, options=options) + epb(0, ticks, frame, order)
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    (item,) = read_all(path)
    assert packet(item).ts == (T0 + 0.5 if units > 1 else T0)


def test_pcapng_if_tsoffset_and_other_options(tmp_path: Path) -> None:
    options = (
        option(2, b"eth0")  # if_name, skipped
        + option(14, struct.pack("<q", 1000))  # if_tsoffset: add 1000 s
        + option(9, bytes([3]))
    )
    data = shb() + idb(1, options=options) + epb(0, 1500, bytes(ether() / tcp4()))
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    (item,) = read_all(path)
    assert packet(item).ts == 1001.5


def test_pcapng_written_by_scapy(tmp_path: Path) -> None:
    path = tmp_path / "scapy.pcapng"
    frames = [ether() / tcp4("S", seq=10), ether() / tcp4("PA", seq=11, ack=99) / b"GET /"]
    for i, frame in enumerate(frames):
        frame.time = T0 + i + 0.125
    writer = PcapNgWriter(str(path))
    for frame in frames:
        writer.write(frame)
    writer.close()
    syn, data = read_all(path)
    assert fields(syn) == (*V4, SYN, 10, 0)
    assert fields(data) == (*V4, PSH | ACK, 11, 99)
    assert packet(data).payload_len == 5
    assert packet(syn).ts == pytest.approx(T0 + 0.125, abs=1e-6)
    assert packet(data).ts == pytest.approx(T0 + 1.125, abs=1e-6)


def test_pcapng_damaged_packet_blocks_are_bad_link(tmp_path: Path) -> None:
    good = bytes(ether() / tcp4("S", seq=5))
    data = b"".join(
        [
            shb(),
            idb(1, snaplen=200),
            epb(1, 0, good),  # no interface 1
            epb(0, 0, good, caplen=len(good) + 8),  # claims more bytes than the block holds
            epb(0, 0, good + bytes(200), caplen=len(good) + 200),  # more than the snap length
            block(EPB, bytes(8)),  # too short to hold the EPB fields
            epb(0, 0, good),
        ]
    )
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    *damaged, last = read_all(path)
    assert damaged == [Invalid.BAD_LINK] * 4
    assert fields(last) == (*V4, SYN, 5, 0)


def test_pcapng_spb_before_any_interface_is_bad_link(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    path.write_bytes(shb() + spb(bytes(tcp4())) + idb(101) + spb(bytes(tcp4("S", seq=6))))
    damaged, simple = read_all(path)
    assert damaged is Invalid.BAD_LINK
    assert fields(simple) == (*V4, SYN, 6, 0)
    assert packet(simple).ts == 0.0


# --- Bad input -------------------------------------------------------------------------------


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(b"<html><body>not a capture</body></html>\n")
    with pytest.raises(CaptureError) as info:
        read_all(path)
    assert str(info.value) == f"{path}: not a pcap or pcapng file (starts with 0x3c68746d)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\x01", "not a pcap or pcapng file (starts with 0x01)"),
        (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "cut short inside the file header"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00", "cut short inside the block at byte 0"),
        (
            shb()[:8] + b"\xde\xad\xbe\xef" + shb()[12:],
            "bad byte-order magic in the section header at byte 0",
        ),
        (shb() + struct.pack("<II", 1, 13) + bytes(16), "impossible block length 13 at byte 28"),
        (
            b"\x0a\x0d\x0d\x0a"
            + struct.pack("<II", 28, 0x1A2B3C4D)
            + struct.pack("<HHq", 2, 0, -1)
            + struct.pack("<I", 28),
            "unsupported pcapng version 2.0",
        ),
    ],
    ids=["empty", "one-byte", "pcap-header-cut", "shb-cut", "bad-order", "bad-length", "v2"],
)
def test_unreadable_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "capture.pcap"
    path.write_bytes(content)
    got, error = read_until_error(path)
    assert got == []
    assert str(error).startswith(f"{path}: ")
    assert message in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_unsupported_link_type_is_named(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"c.{kind}"
    if kind == "pcap":
        write_pcap(path, 147, [(T0, 0, bytes(tcp4()))])
    else:
        path.write_bytes(shb() + idb(147) + epb(0, 0, bytes(tcp4())))
    with pytest.raises(CaptureError, match=r"c\.pcap(ng)?: link type 147 is not supported"):
        read_all(path)


@pytest.mark.parametrize(
    "cut",
    [1, 15, 16, 17, 69],
    ids=["in-header", "header-end", "header-only", "in-data", "last-byte"],
)
def test_pcap_cut_short_mid_record(tmp_path: Path, cut: int) -> None:
    frames = [bytes(ether() / tcp4("S", seq=n)) for n in (1, 2, 3)]
    path = write_pcap(tmp_path / "capture.pcap", 1, [(T0 + i, 0, f) for i, f in enumerate(frames)])
    third = 24 + 2 * (16 + len(frames[0]))
    path.write_bytes(path.read_bytes()[: third + cut])
    got, error = read_until_error(path)
    assert [packet(item).seq for item in got] == [1, 2]
    assert [packet(item).ts for item in got] == [T0, T0 + 1]
    assert str(error) == f"{path}: cut short inside the record at byte {third}"


@pytest.mark.parametrize("cut", [3, 8, 30], ids=["in-type", "after-length", "in-body"])
def test_pcapng_cut_short_mid_block(tmp_path: Path, cut: int) -> None:
    head = shb() + idb(1)
    blocks = [epb(0, i, bytes(ether() / tcp4("S", seq=i))) for i in (1, 2, 3)]
    path = tmp_path / "capture.pcapng"
    third = len(head) + 2 * len(blocks[0])
    path.write_bytes((head + b"".join(blocks))[: third + cut])
    got, error = read_until_error(path)
    assert [packet(item).seq for item in got] == [1, 2]
    assert str(error) == f"{path}: cut short inside the block at byte {third}"


def test_nflog_record_without_payload_is_bad_link(tmp_path: Path) -> None:
    no_payload = (
        b"\x02\x00\x00\x0a"
        + tlv(NFULA_PACKET_HDR, b"\x08\x00\x01\x00")
        + tlv(NFULA_PREFIX, b"rw\0")
    )
    broken = b"\x02\x00\x00\x0a" + tlv(NFULA_PACKET_HDR, b"", length=2)
    records = [
        (T0, 0, nflog(bytes(tcp4("S", seq=1)))),
        (T0, 1, no_payload),
        (T0, 2, broken),
        (T0, 3, nflog(bytes(tcp4("A", seq=2, ack=8)))),
    ]
    path = write_pcap(tmp_path / "c.pcap", 239, records)
    first, missing, damaged, last = read_all(path)
    assert fields(first) == (*V4, SYN, 1, 0)
    assert missing is Invalid.BAD_LINK
    assert damaged is Invalid.BAD_LINK
    assert fields(last) == (*V4, ACK, 2, 8)


def test_nflog_damaged_payload_length_in_the_usual_layout(tmp_path: Path) -> None:
    # Records of one layout are decoded without walking their TLVs: a payload TLV whose
    # length is impossible must still read as damaged, as the walk says, and no more.
    good = nflog(bytes(tcp4("S", seq=1)))
    payload_at = good.index(struct.pack("<H", NFULA_PAYLOAD)) - 2
    damaged = good[:payload_at] + struct.pack("<H", 3) + good[payload_at + 2 :]
    records = [(T0, 0, good), (T0, 1, good), (T0, 2, damaged), (T0, 3, good)]
    path = write_pcap(tmp_path / "c.pcap", 239, records)
    got = read_all(path)
    assert got == expected(239, records)
    assert got[2] is Invalid.BAD_LINK
    assert [fields(got[i]) for i in (0, 1, 3)] == [(*V4, SYN, 1, 0)] * 3


def test_batches_are_new_lists_of_plain_tuples(tmp_path: Path) -> None:
    records = mixed_nflog_records(50)
    path = write_pcap(tmp_path / "c.pcap", 239, records)
    batches = list(read_batches(path))
    assert len({id(batch) for batch in batches}) == len(batches)
    items = [item for batch in batches for item in batch]
    assert all(type(item) is tuple for item in items)
    assert [_packet(item) for item in items] == read_all(path)


def _packet(item: Any) -> Packet:
    return Packet(*item)


def test_batches_before_damage_are_yielded_then_the_error(tmp_path: Path) -> None:
    good = bytes(ether() / tcp4("S", seq=1))
    path = write_pcap(tmp_path / "c.pcap", 1, [(T0, 0, good), (T0, 0, good, 0x7FFFFFF0)], snaplen=0)
    got: list[Any] = []
    with pytest.raises(CaptureError):
        for batch in read_batches(path):
            got += batch
    assert [item[3] for item in got] == [1]


def test_nflog_payload_stops_at_its_tlv(tmp_path: Path) -> None:
    # A copy-range-truncated payload followed by another TLV must read as truncated, not
    # borrow the next TLV's bytes as TCP header.
    cut = bytes(tcp4())[:30]
    frame = nflog(cut, trailer=tlv(NFULA_PREFIX, bytes(40)))
    path = write_pcap(tmp_path / "c.pcap", 239, [(T0, 0, frame)] * 3)
    assert read_all(path) == [Invalid.TRUNCATED] * 3


def test_captured_length_beyond_snaplen_is_bad_link(tmp_path: Path) -> None:
    big = bytes(ether() / tcp4("S", seq=1) / bytes(200))
    records: list[Any] = [
        (T0, 0, big),  # 254 bytes in a 128-byte snap length
        (T0, 1, bytes(ether() / tcp4("S", seq=2))),
    ]
    path = write_pcap(tmp_path / "c.pcap", 1, records, snaplen=128)
    damaged, good = read_all(path)
    assert damaged is Invalid.BAD_LINK
    assert fields(good) == (*V4, SYN, 2, 0)


def test_impossible_captured_length_stops_reading(tmp_path: Path) -> None:
    good = bytes(ether() / tcp4("S", seq=1))
    path = write_pcap(tmp_path / "c.pcap", 1, [(T0, 0, good), (T0, 0, good, 0x7FFFFFF0)], snaplen=0)
    got, error = read_until_error(path)
    assert [packet(item).seq for item in got] == [1]
    assert "impossible captured length 2147483632 in the record at byte" in str(error)


# --- Streaming --------------------------------------------------------------------------------


def mixed_nflog_records(count: int) -> list[Record]:
    """NFLOG records whose TLV layouts change from record to record, with odd sizes."""
    records: list[Record] = []
    prefixes = [b"rw\0", b"", b"a-longer-prefix\0", b"rw\0", b"x\0"]
    for i in range(count):
        ip = tcp4("PA" if i % 3 else "S", seq=i) / bytes(i % 7)
        trailer = tlv(NFULA_PREFIX, b"tail") if i % 4 == 3 else b""
        frame = nflog(bytes(ip), prefix=prefixes[i % 5], trailer=trailer)
        records.append((T0 + i, i % 4 * 250_000, frame))
    return records


def expected(linktype: int, records: Sequence[Record]) -> list[ParseResult]:
    """What each record decodes to on its own, through the public `ip_offset`."""
    out: list[ParseResult] = []
    for sec, frac, frame in records:
        offset = ip_offset(linktype, frame)
        out.append(
            offset if isinstance(offset, Invalid) else parse_ip(frame, sec + frac / 1e6, offset)
        )
    return out


@pytest.mark.parametrize("chunk", [1, 13, 100, 4096, 1 << 20])
def test_records_straddling_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(pcap, "_CHUNK", chunk)
    records = mixed_nflog_records(200)
    path = write_pcap(tmp_path / "c.pcap", 239, records)
    got = read_all(path)
    assert got == expected(239, records)
    assert [packet(item).seq for item in got] == list(range(200))
    assert [item for batch in read_batches(path) for item in batch] == got

    ng = tmp_path / "c.pcapng"
    ng.write_bytes(
        shb()
        + idb(239)
        + b"".join(epb(0, sec * 10**6 + frac, frame) for sec, frac, frame in records)
    )
    assert read_all(ng) == got


def test_reads_are_bounded_by_the_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap, "_CHUNK", 4096)
    records = [(T0, i, bytes(ether() / tcp4("A", seq=i))) for i in range(2000)]
    path = write_pcap(tmp_path / "c.pcap", 1, records)
    sizes: list[int] = []

    class Recording:
        def __init__(self, name: str, mode: str) -> None:
            self.file = open(name, mode)  # noqa: SIM115 - closed in __exit__

        def read(self, size: int) -> bytes:
            sizes.append(size)
            return self.file.read(size)  # type: ignore[no-any-return]

        def __enter__(self) -> Recording:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    monkeypatch.setattr(pcap, "open", Recording, raising=False)
    got = read_all(path)
    assert len(got) == 2000
    assert all(isinstance(item, Packet) for item in got)
    assert max(sizes) <= 4096
    assert len(sizes) >= path.stat().st_size // 4096


def test_counts_accumulate_across_files(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", 101, [(T0, 0, bytes(tcp4()))] * 3)
    counts = {"records": 10}
    read_all(path, counts)
    read_all(path, counts)
    assert counts == {"records": 16, "skipped_blocks": 0}


def test_reading_is_lazy(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", 101, [(T0, 0, bytes(tcp4()))] * 3)
    items = read_packets(path)
    path.unlink()  # the file is opened on the first next(), not by the call
    with pytest.raises(FileNotFoundError):
        next(items)
