"""Parse one IPv4 or IPv6 packet carrying TCP into a small immutable `Packet`.

Parsing never raises on bad bytes: `parse_ip` returns an `Invalid` reason instead, which the
caller counts. Only header fields are kept; payload bytes are never read (the length of the
payload is taken from the IP header, so headers-only NFLOG copies still give the right value).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple, Optional, Union

from .decode import TUNNEL_PROTOCOLS, tunnel
from .invalid import Invalid as Invalid

# TCP flag bits (RFC 9293 section 3.1).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

_IPV4 = struct.Struct("!BxHHHBB")  # version/ihl, total length, id, flags/fragment, ttl, proto
# The common shapes in one unpack each: IPv4 with a 20-byte header, IPv6 with TCP right after
# the fixed header. Addresses and ports are adjacent on the wire there, so the flow key is one
# field. The IPv4 flags/fragment field and TCP's data offset/flags are read a byte at a time:
# ints below 256 are shared objects, where a 16-bit field would cost an allocation.
_IPV4_TCP = struct.Struct("!2xHHBBBB2x12sIIBBH")
_IPV6_TCP = struct.Struct("!4xHxB36sIIBBH")
# Tests on those bytes as lookups: an index costs a fraction of a bit operation (which CPython
# does not specialise), and these run for every packet.
_TCP_HEADER_LEN = tuple((byte >> 4) * 4 for byte in range(256))  # from the data offset byte
_FRAGMENT_HIGH = tuple(byte & 0x1F for byte in range(256))  # fragment offset bits, high byte
_DONT_FRAGMENT = tuple(byte & 0x40 != 0 for byte in range(256))
_HAS_SYN = tuple(byte & SYN != 0 for byte in range(256))
_IPV6 = struct.Struct("!HBB")  # payload length, next header, hop limit
_TCP = struct.Struct("!4xIIHH")  # seq, ack, data offset/flags, window
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

_IPPROTO_TCP = 6
# IPv6 extension headers walked on the way to TCP (RFC 8200 section 4).
_HOP_BY_HOP, _ROUTING, _FRAGMENT, _AUTH, _DEST_OPTS = 0, 43, 44, 51, 60
_EXTENSIONS_8_OCTET = frozenset((_HOP_BY_HOP, _ROUTING, _DEST_OPTS, 135, 139, 140))
_MAX_EXTENSIONS = 8


class Packet(NamedTuple):
    """One ingress TCP packet, reduced to the header fields the method needs."""

    ts: float
    """Arrival time on the source's clock (capture time for pcap, receive time when live)."""
    key: bytes
    """Source address, destination address, source port, destination port, as on the wire
    (12 bytes for IPv4, 36 for IPv6). Used as the flow key as it is."""
    flags: int
    """TCP flag bits (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR)."""
    seq: int
    ack: int
    window: int
    ttl: int
    """IPv4 TTL or IPv6 hop limit."""
    ip_id: int
    """IPv4 identification field; 0 for IPv6."""
    df: bool
    """IPv4 don't-fragment bit; False for IPv6."""
    payload_len: int
    """TCP payload length according to the IP header (not the captured length)."""
    options: str
    """TCP options fingerprint of a SYN (see `options_fingerprint`); empty on other packets."""

    @property
    def family(self) -> int:
        return key_family(self.key)

    @property
    def src(self) -> str:
        return key_fields(self.key)[0]

    @property
    def dst(self) -> str:
        return key_fields(self.key)[2]

    @property
    def sport(self) -> int:
        return key_fields(self.key)[1]

    @property
    def dport(self) -> int:
        return key_fields(self.key)[3]


ParseResult = Union[Packet, Invalid]

PacketFields = tuple[float, bytes, int, int, int, int, int, int, bool, int, str]
"""A `Packet`'s fields, in its order, as a plain tuple: what the capture reader hands the flow
table. Building one costs a third of building the NamedTuple, and the table only indexes it."""

FieldsResult = Union[PacketFields, Invalid]

# NamedTuple's generated __new__ is a Python function; `parse_ip` builds the tuple directly.
_new_packet = tuple.__new__


def key_family(key: bytes) -> int:
    """4 or 6, from the length of a flow key."""
    return 4 if len(key) == 12 else 6


def key_fields(key: bytes) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a flow key, addresses as text."""
    if len(key) == 12:
        af, alen = socket.AF_INET, 4
    else:
        af, alen = socket.AF_INET6, 16
    src = socket.inet_ntop(af, key[:alen])
    dst = socket.inet_ntop(af, key[alen : 2 * alen])
    sport, dport = struct.unpack_from("!HH", key, 2 * alen)
    return src, sport, dst, dport


def make_key(src: str, sport: int, dst: str, dport: int) -> bytes:
    """Build a flow key from addresses as text (used by tests and tools)."""
    af = socket.AF_INET6 if ":" in src else socket.AF_INET
    return (
        socket.inet_pton(af, src) + socket.inet_pton(af, dst) + struct.pack("!HH", sport, dport)
    )


_OPTION_NAMES = {2: "M", 3: "W", 4: "S", 5: "K", 8: "T", 30: "P", 34: "F"}

# Fingerprints already computed, keyed by the options bytes with the value of the timestamps
# option zeroed (those 8 bytes differ on every SYN; nothing else of a client's options usually
# does). Bounded: a flood of random options must not grow it.
_FINGERPRINTS: dict[bytes, str] = {}
_FINGERPRINTS_MAX = 4096
_TIMESTAMPS_HEAD = b"\x08\x0a"  # kind 8, length 10
_STAMPS_ZEROED = bytes(8)
_STAMPS = struct.Struct("!II")  # TSval, TSecr
UNIX_STAMP_SLACK = 86400
"""How far (s) a SYN's TSval may be from the packet's Unix time and still read as a clock
stamp (`Tu`): ZMap stamps its template once at scan start, so a day covers any scan."""


def _unix_stamp(buf: bytes, at: int, unix: float) -> bool:
    """Whether the timestamps option value at `buf[at:at + 8]` is (Unix seconds near `unix`,
    0): ZMap's TSval is `time(NULL)` at scan start; an OS stack's is a millisecond clock from
    a random per-connection offset, which lands in that two-day window once in 25,000."""
    tsval: int
    tsecr: int
    tsval, tsecr = _STAMPS.unpack_from(buf, at)
    return tsecr == 0 and -UNIX_STAMP_SLACK <= tsval - unix <= UNIX_STAMP_SLACK


def options_fingerprint(buf: bytes, start: int, end: int, unix: float = 0.0) -> str:
    """A compact, comparable text form of a TCP options block.

    One comma-separated token per option in wire order: `N` NOP, `E` end of list, `M<mss>`,
    `W<shift>`, `S` SACK permitted, `K` SACK blocks, `T` timestamps, `Tu` timestamps whose
    TSval reads as the Unix time `unix` in seconds (within `UNIX_STAMP_SLACK`) and TSecr is
    0 (ZMap's probes, see `_unix_stamp`), `P` MPTCP, `F` fast open, `X<kind>` any other
    kind, and `?` where the block is malformed or cut off. The string is interned: flows
    from one kind of client share one object.
    """
    # The cache key zeroes the 8 value bytes after the first `08 0a` of the block, if there
    # are 8. It is only stored when the walk found the timestamps option right there: then any
    # block with the same key walks the same options to the same place (same length, same
    # bytes elsewhere), and has the same fingerprint.
    # The `Tu` test on those bytes goes into the key too (a last byte), so the key still
    # determines the fingerprint.
    block = buf[start:end]
    at = block.find(_TIMESTAMPS_HEAD)
    key = block
    if 0 <= at <= len(block) - 10:
        stamp = b"u" if _unix_stamp(block, at + 2, unix) else b"-"
        key = block[: at + 2] + _STAMPS_ZEROED + block[at + 10 :] + stamp
    text = _FINGERPRINTS.get(key)
    if text is not None:
        return text
    tokens: list[str] = []
    stamps_at = -1
    i = start
    while i < end:
        kind = buf[i]
        if kind == 1:
            tokens.append("N")
            i += 1
            continue
        if kind == 0:
            tokens.append("E")
            break
        if i + 1 >= end:
            tokens.append("?")
            break
        length = buf[i + 1]
        if length < 2 or i + length > end:
            tokens.append("?")
            break
        if kind == 2 and length == 4:
            tokens.append(f"M{_U16.unpack_from(buf, i + 2)[0]}")
        elif kind == 3 and length == 3:
            tokens.append(f"W{buf[i + 2]}")
        else:
            if kind == 8 and length == 10:
                if stamps_at < 0:
                    stamps_at = i - start
                tokens.append("Tu" if _unix_stamp(buf, i + 2, unix) else "T")
            else:
                tokens.append(_OPTION_NAMES.get(kind) or f"X{kind}")
        i += length
    text = sys.intern(",".join(tokens))
    if stamps_at == at:
        if len(_FINGERPRINTS) >= _FINGERPRINTS_MAX:
            _FINGERPRINTS.clear()
        _FINGERPRINTS[key] = text
    return text


def parse_ip(buf: bytes, ts: float, offset: int = 0) -> ParseResult:
    """Parse the IP packet that starts at `offset` in `buf`."""
    fields = parse_fields(buf, ts, offset, len(buf))
    if isinstance(fields, Invalid):
        return fields
    return _new_packet(Packet, fields)


def parse_fields(
    buf: bytes, ts: float, offset: int, end: int, depth: int = 0, unix: Optional[float] = None
) -> FieldsResult:
    """Parse the IP packet `buf[offset:end]` into a `Packet`'s fields as a plain tuple.

    Takes the span rather than a copy of it: a capture reader parses in its read buffer. A
    tunnel (see `decode.tunnel`) is entered: the fields are the innermost TCP packet's.
    `depth` is the number of encapsulations already stepped over to reach `offset`. `unix`
    is the packet's Unix time in seconds where `ts` is on another clock (the live agent's is
    monotonic): the SYN options' `Tu` test compares with it (see `options_fingerprint`).
    """
    if unix is None:
        unix = ts
    if end - offset < 1:
        return Invalid.TRUNCATED
    first = buf[offset]
    if first == 0x45 and end - offset >= 40:
        total_len, ip_id, frag_high, frag_low, ttl, proto, key, seq, ack, doff, flags, window = (
            _IPV4_TCP.unpack_from(buf, offset)
        )
        if proto == _IPPROTO_TCP and not (_FRAGMENT_HIGH[frag_high] or frag_low):
            doff = _TCP_HEADER_LEN[doff]
            payload_len = total_len - 20 - doff
            if doff >= 20 and payload_len >= 0:
                options = ""
                # A SYN without options (floods, some scanners) has the empty fingerprint.
                if _HAS_SYN[flags] and doff > 20:
                    options = options_fingerprint(
                        buf, offset + 40, min(offset + 20 + doff, end), unix
                    )
                df = _DONT_FRAGMENT[frag_high]
                return (ts, key, flags, seq, ack, window, ttl, ip_id, df, payload_len, options)
    elif first >> 4 == 6 and end - offset >= 60 and buf[offset + 6] == _IPPROTO_TCP:
        payload_len6, ttl, key, seq, ack, doff, flags, window = _IPV6_TCP.unpack_from(buf, offset)
        doff = _TCP_HEADER_LEN[doff]
        payload_len = payload_len6 - doff
        if doff >= 20 and payload_len >= 0:
            options = ""
            if _HAS_SYN[flags] and doff > 20:
                options = options_fingerprint(
                    buf, offset + 60, min(offset + 40 + doff, end), unix
                )
            return (ts, key, flags, seq, ack, window, ttl, 0, False, payload_len, options)
    return _parse_general(buf, ts, offset, end, depth, unix)


def _parse_general(
    buf: bytes, ts: float, offset: int, size: int, depth: int, unix: float
) -> FieldsResult:
    """Every packet the fast paths above do not take, including every malformed one.

    A total length of 0 (IPv4) or a payload length of 0 (IPv6) is what GSO/TSO and BIG TCP
    packets carry: their length is then the captured one (see docs/decisions.md).
    """
    first = buf[offset]
    version = first >> 4
    if version == 4:
        if size - offset < 20:
            return Invalid.TRUNCATED
        vihl, total_len, ip_id, frag, ttl, proto = _IPV4.unpack_from(buf, offset)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20:
            return Invalid.BAD_HEADER
        if proto != _IPPROTO_TCP:
            if proto not in TUNNEL_PROTOCOLS:
                return Invalid.NOT_TCP
            if frag & 0x1FFF:
                return Invalid.FRAGMENT
            return _inner(buf, ts, proto, offset + ihl, size, depth, unix)
        if frag & 0x1FFF:
            return Invalid.FRAGMENT
        l4 = offset + ihl
        if size < l4 + 20:
            return Invalid.TRUNCATED
        l4_len = (total_len or size - offset) - ihl
        key = buf[offset + 12 : offset + 20] + buf[l4 : l4 + 4]
        df = bool(frag & 0x4000)
    elif version == 6:
        if size - offset < 40:
            return Invalid.TRUNCATED
        payload_len6, nxt, ttl = _IPV6.unpack_from(buf, offset + 4)
        l4 = offset + 40
        if payload_len6 == 0 and nxt == _HOP_BY_HOP and size >= l4 + 8 and buf[l4 + 2] == 0xC2:
            # A jumbogram (RFC 2675), as BIG TCP builds them: the length is in the option.
            payload_len6 = _U32.unpack_from(buf, l4 + 4)[0]
        for _ in range(_MAX_EXTENSIONS):
            if nxt == _IPPROTO_TCP:
                break
            if nxt in TUNNEL_PROTOCOLS:
                return _inner(buf, ts, nxt, l4, size, depth, unix)
            if size < l4 + 8:
                return Invalid.TRUNCATED
            if nxt in _EXTENSIONS_8_OCTET:
                step = (buf[l4 + 1] + 1) * 8
            elif nxt == _FRAGMENT:
                if _U16.unpack_from(buf, l4 + 2)[0] >> 3:
                    return Invalid.FRAGMENT
                step = 8
            elif nxt == _AUTH:
                step = (buf[l4 + 1] + 2) * 4
            else:
                return Invalid.NOT_TCP
            nxt = buf[l4]
            l4 += step
        else:
            return Invalid.BAD_HEADER
        if nxt != _IPPROTO_TCP:
            return Invalid.BAD_HEADER
        if size < l4 + 20:
            return Invalid.TRUNCATED
        l4_len = (payload_len6 or size - offset - 40) - (l4 - offset - 40)
        key = buf[offset + 8 : offset + 40] + buf[l4 : l4 + 4]
        ip_id = 0
        df = False
    else:
        return Invalid.NOT_IP

    seq, ack, off_flags, window = _TCP.unpack_from(buf, l4)
    doff = (off_flags >> 12) * 4
    payload_len = l4_len - doff
    if doff < 20 or payload_len < 0:
        return Invalid.BAD_HEADER
    flags = off_flags & 0xFF
    options = ""
    if flags & SYN:
        options = options_fingerprint(buf, l4 + 20, min(l4 + doff, size), unix)
    return (ts, key, flags, seq, ack, window, ttl, ip_id, df, payload_len, options)


def _inner(
    buf: bytes, ts: float, protocol: int, l4: int, size: int, depth: int, unix: float
) -> FieldsResult:
    """The packet inside a tunnel whose header starts at `l4` (see `decode.tunnel`)."""
    span = tunnel(buf, protocol, l4, size, depth)
    if isinstance(span, Invalid):
        return span
    start, stop, depth = span
    if start >= stop:
        return Invalid.TRUNCATED
    return _parse_general(buf, ts, start, stop, depth, unix)


def flag_names(flags: int) -> str:
    """Flags as text in tcpdump's letters, e.g. 'S', 'R.', 'FP.'."""
    pairs = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"))
    letters = "".join(letter for bit, letter in pairs if flags & bit)
    return letters + ("." if flags & ACK else "")
