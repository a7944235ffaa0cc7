"""Read the packets of a pcap or pcapng capture file, streamed, into `parse_ip` results.

`read_packets` yields one `ParseResult` per packet record, in file order; `read_batches`, what
replay uses, yields them a read buffer at a time as plain tuples (`parse_fields`). The file is
read in chunks, so memory stays flat whatever its size, and it may be a pipe. The per-record
cost is kept near a microsecond: records are decoded in place in the chunk (`unpack_from`
with offsets, nothing copied out but the header fields), the common link types are decoded
inline in the read loop rather than through a function call, and so is the framing of NFLOG
records of the usual TLV layout, with one `unpack_from` per record (see `_Nflog`).

Bad input is handled at two levels:

- a damaged record whose framing can still be stepped over (an NFLOG record with broken
  TLVs, a captured length larger than the snap length or the block) yields
  `Invalid.BAD_LINK`, and reading goes on with the next record;
- a file that is not a capture, or whose framing is lost (cut short, impossible lengths),
  raises `CaptureError` after everything before the damage has been yielded.

Supported link types: `LINK_TYPES`. Every link type other than the inline ones is decoded
by its entry in one table (`decode.LINK_DECODERS`, plus NFLOG here), and so is every
encapsulation (VLAN tags, MPLS, PPPoE, 802.1ah, and tunnels, which `parse_fields` enters).
A pcapng interface of another link type is counted (`Invalid.UNSUPPORTED_LINK`) rather than
refused, unless no interface of the file is supported. Errors from opening or reading the
file (`OSError`) propagate unchanged.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional

from .decode import LINK_DECODERS, LINK_NAMES, Decoder, Span
from .packet import FieldsResult, Invalid, Packet, ParseResult, parse_fields

__all__ = ["LINKTYPES", "LINK_TYPES", "CaptureError", "ip_offset", "read_batches", "read_packets"]

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
DLT_RAW_12 = 12  # DLT_RAW's value on most BSDs, which some files carry as their link type
DLT_RAW_14 = 14  # DLT_RAW's value on OpenBSD
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

LINK_TYPES: dict[int, str] = dict(sorted({**LINK_NAMES, LINKTYPE_NFLOG: "NFLOG"}.items()))
"""The link types `read_packets` decodes, with their names; a pcap file of any other raises
`CaptureError` (the README and `replay --help` list these)."""
LINKTYPES = frozenset(LINK_TYPES)

_RAW_IP = frozenset((LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6))
_IP_ETHERTYPES = frozenset((0x0800, 0x86DD))  # IPv4, IPv6
_NFULA_PAYLOAD = 9

# NamedTuple's generated __new__ is a Python function; `read_packets` builds the tuple directly.
_new_packet = tuple.__new__

_CHUNK = 1 << 16
"""Bytes asked of the file per read: few enough that the buffer is still in the CPU's cache
when its records are decoded (1 MiB chunks made reading 10-15% slower)."""
_MAX_RECORD = 1 << 24
"""The largest record or block that is loaded; a larger one is stepped over or refused."""
_MAX_LAYOUTS = 64

# How the read loops decode a link type: inline fast paths for the common ones.
_MODE_NFLOG, _MODE_ETHERNET, _MODE_RAW, _MODE_OTHER, _MODE_UNSUPPORTED = range(5)

_PCAP_MAGICS = {
    # first four bytes: (byte order, fraction-of-second units)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_PCAPNG_SHB = 0x0A0D0D0A  # the same in both byte orders
_PCAPNG_IDB = 1
_PCAPNG_SPB = 3
_PCAPNG_EPB = 6
_PCAPNG_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_IF_TSRESOL = 9
_IF_TSOFFSET = 14
_MAX_SECONDS = 1 << 33
"""Timestamps (and if_tsoffset) beyond this many seconds from the epoch (the year 2242) are
a damaged clock, not a capture: refused, because they would make every deadline pass."""
_MAX_UNITS = 10**15
"""The finest pcapng timestamp resolution accepted: with finer units a 64-bit timestamp cannot
reach past 1970 by more than hours, so every packet would fall at nearly the same time."""

_Unpack = Callable[[Any, int], tuple[Any, ...]]
_Interface = tuple[int, int, int, int, int, Decoder, int]
"""(link type, captured-length limit, timestamp units per second, timestamp offset in
seconds, decoding mode, decoder, largest valid upper timestamp word) of a pcapng interface."""


class CaptureError(Exception):
    """The file is not a readable capture; the message is one line naming file and problem."""


class _Nflog:
    """Finds the NFULA_PAYLOAD TLV of NFLOG records whose TLV headers have one byte order.

    Walking the TLV list costs a loop step per TLV, eight or so per record. The records of
    one capture nearly always share one TLV layout, so the layout found by the last walk is
    kept as a struct that reads every TLV header up to the payload's in one call: when they
    all match (`sig(buf, start) == expect`), the walk would have ended at the same place.

    For pcap files, `framed` reads the record header before the NFLOG record too, and the
    payload TLV's length, so that one call decodes a record's framing: `(seconds, fraction,
    captured length, *heads, payload TLV length, payload TLV type)`.
    """

    __slots__ = (
        "_layouts",
        "_order",
        "_tlv",
        "expect",
        "framed",
        "framed_size",
        "heads",
        "k",
        "need",
        "sig",
        "u16",
    )

    def __init__(self, order: str) -> None:
        self._order = order
        self._tlv: _Unpack = struct.Struct(order + "HH").unpack_from
        self._layouts: dict[tuple[int, ...], tuple[_Unpack, _Unpack]] = {}
        self.u16: _Unpack = struct.Struct(order + "H").unpack_from
        self.sig: _Unpack = self._tlv
        self.expect: tuple[int, ...] = ()
        self.framed: _Unpack = self._tlv
        self.heads: tuple[int, ...] = ()
        """Length and type of each TLV before the payload's (`expect` without its type)."""
        self.k = 0
        """Offset of the payload TLV from the record start in the current layout."""
        self.need = sys.maxsize
        """Bytes a record needs for `sig` to apply (none until a layout is learnt)."""
        self.framed_size = sys.maxsize
        """Bytes `framed` reads from the start of a pcap record header."""

    def span(self, buf: bytes, start: int, stop: int) -> Span:
        """The IP packet's span in the record `buf[start:stop]` (a `Decoder`)."""
        if stop - start >= self.need and self.sig(buf, start) == self.expect:
            i = start + self.k
            end = i + self.u16(buf, i)[0]
            if end < i + 4:
                return Invalid.BAD_LINK
            return i + 4, end if end < stop else stop, 0
        return self.find(buf, start, stop)

    def find(self, buf: bytes, start: int, stop: int) -> Span:
        """The IP packet's span in the record `buf[start:stop]`, by walking its TLVs."""
        i = start + 4  # nfgenmsg: family, version, resource id
        if i > stop:
            return Invalid.TRUNCATED
        heads: list[int] = []
        while i + 4 <= stop:
            tlen, ttype = self._tlv(buf, i)
            if tlen < 4:  # lengths include the TLV header: smaller is damage, and would loop
                return Invalid.BAD_LINK
            if ttype == _NFULA_PAYLOAD:
                self._learn(tuple(heads), i - start)
                end = i + tlen
                return i + 4, end if end < stop else stop, 0
            heads += (tlen, ttype)
            i += (tlen + 3) & ~3
        return Invalid.BAD_LINK

    def _learn(self, heads: tuple[int, ...], k: int) -> None:
        structs = self._layouts.get(heads)
        if structs is None:
            # Skip nfgenmsg; per TLV read length and type, skip the padded value. (Lengths
            # and types are small: their ints are cached, where one 32-bit word per header
            # would cost an allocation each.)
            body = "4x" + "".join(f"HH{((tlen + 3) & ~3) - 4}x" for tlen in heads[::2])
            # `sig`: of the payload TLV the type only (its length varies from record to
            # record); `framed`: the pcap record header first (seconds, fraction, captured
            # length, original length skipped), and both fields of the payload TLV header.
            sig = struct.Struct(self._order + body + "2xH").unpack_from
            framed = struct.Struct(self._order + "III4x" + body + "HH").unpack_from
            if len(self._layouts) >= _MAX_LAYOUTS:
                self._layouts.clear()
            structs = self._layouts[heads] = (sig, framed)
        self.sig, self.framed = structs
        self.heads = heads
        self.expect = (*heads, _NFULA_PAYLOAD)
        self.k = k
        self.need = k + 4
        self.framed_size = 16 + k + 4


def _decoder(linktype: int, order: str, nflog: _Nflog) -> Decoder:
    """The table's decoder for `linktype` in a file (or section) of byte order `order`."""
    if linktype == LINKTYPE_NFLOG:
        return nflog.span
    make = LINK_DECODERS.get(linktype)
    return _unknown_link if make is None else make(order)


def _unknown_link(buf: bytes, start: int, stop: int) -> Span:
    return Invalid.BAD_LINK


def ip_offset(linktype: int, data: bytes, big_endian: bool = False) -> int | Invalid:
    """Where the (outermost) IP packet starts in the frame `data` of link type `linktype`.

    `Invalid.NOT_IP` for frames carrying something else (ARP, LLC, ...), `TRUNCATED` when
    the link header is cut off, `BAD_LINK` for damaged NFLOG TLVs or an unknown link type.
    NFLOG TLV headers (and NULL's family field) are in the byte order of the host that
    captured them, which is the capture file's byte order: `big_endian` selects it.
    """
    order = ">" if big_endian else "<"
    span = _decoder(linktype, order, _Nflog(order))(data, 0, len(data))
    return span if isinstance(span, Invalid) else span[0]


def _mode(linktype: int) -> int:
    if linktype == LINKTYPE_NFLOG:
        return _MODE_NFLOG
    if linktype == LINKTYPE_ETHERNET:
        return _MODE_ETHERNET
    if linktype in _RAW_IP:
        return _MODE_RAW
    return _MODE_OTHER


def _unsupported(name: str, linktype: int) -> str:
    supported = ", ".join(str(t) for t in LINK_TYPES)
    return f"{name}: link type {linktype} is not supported (supported: {supported})"


def _more(f: BinaryIO, buf: bytes, pos: int, need: int) -> bytes:
    """`buf[pos:]` extended by reads of at least a chunk until it holds `need` bytes or the
    file ends."""
    parts = [buf[pos:]]
    have = len(parts[0])
    while have < need:
        chunk = f.read(max(_CHUNK, need - have))
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def _skip(f: BinaryIO, n: int) -> int:
    """Read and drop `n` bytes of `f` (it may be a pipe); the count actually dropped."""
    done = 0
    while done < n:
        chunk = f.read(min(_CHUNK, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def read_packets(
    path: str | os.PathLike[str], counts: Optional[dict[str, int]] = None
) -> Iterator[ParseResult]:
    """Yield `parse_ip(...)` of every packet record of a pcap or pcapng file, in file order.

    Non-IP frames yield `Invalid.NOT_IP`, damaged records `Invalid.BAD_LINK` (reading goes
    on). Timestamps are float seconds since the epoch; a pcapng Simple Packet Block has none
    and gets that of the packet before it in its section (0.0 if none).

    `counts`, when given, accumulates `records` (packet records read, one per result) and
    `skipped_blocks` (pcapng blocks of other types), updated every chunk and at the end.

    Raises `CaptureError` for an empty file, a file that is not a capture, an unsupported
    link type, and a file cut short or with impossible lengths (after yielding every record
    before the damage).
    """
    for batch in read_batches(path, counts):
        for item in batch:
            yield item if isinstance(item, Invalid) else _new_packet(Packet, item)


def read_batches(
    path: str | os.PathLike[str], counts: Optional[dict[str, int]] = None
) -> Iterator[list[FieldsResult]]:
    """`read_packets` a buffer at a time, for consumers that go faster in bulk (replay).

    Yields lists of `parse_fields(...)` results, one per packet record, in file order: the
    fields of a packet as a plain tuple, or an `Invalid` reason. Each list is new, and holds
    the records of one read buffer (a few hundred). Same `counts` and errors as
    `read_packets`; the records before a `CaptureError` are yielded before it is raised.
    """
    name = os.fspath(path)
    tally = {"records": 0, "skipped_blocks": 0}
    try:
        with open(name, "rb") as f:
            head = _more(f, b"", 0, 24)
            if not head:
                raise CaptureError(f"{name}: empty file, not a pcap or pcapng capture")
            magic = head[:4]
            if magic in _PCAP_MAGICS:
                yield from _read_pcap(f, name, head, tally, counts)
            elif magic == b"\x0a\x0d\x0d\x0a":
                yield from _read_pcapng(f, name, head, tally, counts)
            else:
                raise CaptureError(
                    f"{name}: not a pcap or pcapng file (starts with 0x{magic.hex()})"
                )
    finally:
        _flush(tally, counts)


def _flush(tally: dict[str, int], counts: Optional[dict[str, int]]) -> None:
    if counts is not None:
        for key, value in tally.items():
            counts[key] = counts.get(key, 0) + value
    tally["records"] = tally["skipped_blocks"] = 0


def _read_pcap(
    f: BinaryIO,
    name: str,
    buf: bytes,
    tally: dict[str, int],
    counts: Optional[dict[str, int]],
) -> Iterator[list[FieldsResult]]:
    order, units = _PCAP_MAGICS[buf[:4]]
    if len(buf) < 24:
        raise CaptureError(f"{name}: cut short inside the file header")
    snaplen, linktype = struct.unpack_from(order + "II", buf, 16)
    # The upper 16 bits may hold FCS information (pcap spec, "LinkType and additional
    # information"); any FCS ends up after the IP packet, where it is never read.
    linktype &= 0xFFFF
    if linktype not in LINK_TYPES:
        raise CaptureError(_unsupported(name, linktype))
    limit = snaplen if 0 < snaplen <= _MAX_RECORD else _MAX_RECORD
    mode = _mode(linktype)
    record = struct.Struct(order + "III4x").unpack_from  # seconds, fraction, captured length
    nflog = _Nflog(order)
    decode = _decoder(linktype, order, nflog)
    nf_sig, nf_expect, nf_k, nf_need = nflog.sig, nflog.expect, nflog.k, nflog.need
    nf_framed, nf_heads, nf_framed_size = nflog.framed, nflog.heads, nflog.framed_size
    nf_u16 = nflog.u16
    ip_ethertypes = _IP_ETHERTYPES
    parse = parse_fields
    span: Span
    out: list[FieldsResult] = []  # one per record since the last batch was yielded
    add = out.append
    second = second_units = -1  # the last record's seconds, and those in fraction units
    base = 0  # file offset of buf[0]
    pos = 24
    end = len(buf)
    try:
        while True:
            # The hot loop: every record wholly inside the buffer and not damaged.
            while pos + 16 <= end:
                if mode == _MODE_NFLOG:
                    # Records of the learnt TLV layout, framing decoded by one call (see
                    # `_Nflog`); anything else leaves this loop for the general one below.
                    while pos + nf_framed_size <= end:
                        r = nf_framed(buf, pos)
                        caplen = r[2]
                        start = pos + 16
                        stop = start + caplen
                        if (
                            stop > end
                            or caplen > limit
                            or caplen < nf_need
                            or r[-1] != _NFULA_PAYLOAD
                            or r[3:-2] != nf_heads
                        ):
                            break
                        pos = stop
                        i = start + nf_k  # the payload TLV
                        e = i + r[-2]
                        if e < i + 4:  # its length is damaged (what the TLV walk would say)
                            add(Invalid.BAD_LINK)
                            continue
                        if r[0] != second:  # the multiplication, once per second of capture
                            second = r[0]
                            second_units = second * units
                        ts = (second_units + r[1]) / units  # as below, one rounding
                        add(parse(buf, ts, i + 4, e if e < stop else stop))
                    if pos + 16 > end:
                        break
                sec, frac, caplen = record(buf, pos)
                start = pos + 16
                stop = start + caplen
                if stop > end or caplen > limit:
                    break
                pos = stop
                ts = (sec * units + frac) / units  # one rounding, as for pcapng
                if mode == _MODE_NFLOG:
                    if caplen >= nf_need and nf_sig(buf, start) == nf_expect:
                        i = start + nf_k
                        e = i + nf_u16(buf, i)[0]
                        if e >= i + 4:
                            add(parse(buf, ts, i + 4, e if e < stop else stop))
                            continue
                    span = nflog.find(buf, start, stop)
                    nf_sig, nf_expect, nf_k, nf_need = nflog.sig, nflog.expect, nflog.k, nflog.need
                    nf_framed, nf_heads = nflog.framed, nflog.heads
                    nf_framed_size = nflog.framed_size
                elif mode == _MODE_ETHERNET:
                    if caplen >= 14:
                        ethertype = buf[start + 12] << 8 | buf[start + 13]
                        if ethertype in ip_ethertypes:
                            add(parse(buf, ts, start + 14, stop))
                            continue
                    span = decode(buf, start, stop)
                elif mode == _MODE_RAW:
                    add(parse(buf, ts, start, stop))
                    continue
                else:
                    span = decode(buf, start, stop)
                add(span if isinstance(span, Invalid) else parse(buf, ts, *span))

            # Out of whole records: the next one is damaged, or runs past the buffer.
            need = 16
            if pos + 16 <= end:
                caplen = record(buf, pos)[2]
                need = 16 + caplen
                if caplen > limit:
                    if caplen > _MAX_RECORD:
                        raise CaptureError(
                            f"{name}: impossible captured length {caplen} in the record at byte "
                            f"{base + pos}"
                        )
                    if pos + need <= end:
                        pos += need
                        add(Invalid.BAD_LINK)
                        continue
            # Hand over what this buffer held before reading more.
            tally["records"] += len(out)
            _flush(tally, counts)
            if out:
                yield out
                out = []
                add = out.append
            base += pos
            buf = _more(f, buf, pos, need)
            pos = 0
            end = len(buf)
            if end < need:
                if end == 0:
                    return
                raise CaptureError(f"{name}: cut short inside the record at byte {base}")
    except CaptureError:
        if out:  # the records before the damage
            tally["records"] += len(out)
            yield out
        raise


def _read_pcapng(
    f: BinaryIO,
    name: str,
    buf: bytes,
    tally: dict[str, int],
    counts: Optional[dict[str, int]],
) -> Iterator[list[FieldsResult]]:
    # Per section: the byte order and its readers, and the interfaces (see `_interface`).
    order = "<"
    block = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIIII").unpack_from  # block type and length, then the EPB fields
    nflog = _Nflog(order)
    nf_sig, nf_expect, nf_k, nf_need = nflog.sig, nflog.expect, nflog.k, nflog.need
    nf_u16 = nflog.u16
    ip_ethertypes = _IP_ETHERTYPES
    parse = parse_fields
    interfaces: list[_Interface] = []
    supported = [False]  # whether any interface of the file so far has a supported link type
    span: Span
    last_ts = 0.0
    out: list[FieldsResult] = []  # one per packet block since the last batch was yielded
    add = out.append
    base = 0
    pos = 0
    end = len(buf)
    try:
        while True:
            # The hot loop: Enhanced Packet Blocks wholly inside the buffer. The decoding
            # below is `_read_pcap`'s, inlined the same way.
            while pos + 28 <= end:
                btype, blen, iface, ts_high, ts_low, caplen = epb(buf, pos)
                bend = pos + blen
                if btype != _PCAPNG_EPB or blen < 32 or blen & 3 or bend > end:
                    break
                start = pos + 28
                stop = start + caplen
                pos = bend
                try:
                    _linktype, limit, units, offset, mode, decode, high = interfaces[iface]
                except IndexError:  # no such interface in this section
                    add(Invalid.BAD_LINK)
                    continue
                if caplen > limit or stop > bend - 4:
                    add(Invalid.BAD_LINK)
                    continue
                if ts_high > high:
                    raise CaptureError(_bad_clock(name, base + pos - blen))
                ts = (ts_high << 32 | ts_low) / units
                if offset:  # if_tsoffset, rare: spare the common case the addition
                    ts += offset
                last_ts = ts
                if mode == _MODE_NFLOG:
                    if caplen >= nf_need and nf_sig(buf, start) == nf_expect:
                        i = start + nf_k
                        e = i + nf_u16(buf, i)[0]
                        if e >= i + 4:
                            add(parse(buf, ts, i + 4, e if e < stop else stop))
                            continue
                    span = nflog.find(buf, start, stop)
                    nf_sig, nf_expect, nf_k, nf_need = (
                        nflog.sig,
                        nflog.expect,
                        nflog.k,
                        nflog.need,
                    )
                elif mode == _MODE_ETHERNET:
                    if caplen >= 14:
                        ethertype = buf[start + 12] << 8 | buf[start + 13]
                        if ethertype in ip_ethertypes:
                            add(parse(buf, ts, start + 14, stop))
                            continue
                    span = decode(buf, start, stop)
                elif mode == _MODE_RAW:
                    add(parse(buf, ts, start, stop))
                    continue
                else:
                    span = decode(buf, start, stop)
                add(span if isinstance(span, Invalid) else parse(buf, ts, *span))

            # Any other block, or one running past the buffer.
            need = 12
            if pos + 12 <= end:
                btype = block(buf, pos)[0]
                if btype == _PCAPNG_SHB:
                    shb_order = _PCAPNG_ORDERS.get(buf[pos + 8 : pos + 12])
                    if shb_order is None:
                        raise CaptureError(
                            f"{name}: bad byte-order magic in the section header at byte "
                            f"{base + pos}"
                        )
                    order = shb_order
                    block = struct.Struct(order + "II").unpack_from
                    epb = struct.Struct(order + "IIIIII").unpack_from
                blen = block(buf, pos)[1]
                if blen < 12 or blen & 3:
                    raise CaptureError(
                        f"{name}: impossible block length {blen} at byte {base + pos}"
                    )
                if blen > _MAX_RECORD:
                    if btype in (_PCAPNG_SHB, _PCAPNG_IDB):
                        raise CaptureError(
                            f"{name}: impossible block length {blen} at byte {base + pos}"
                        )
                    # Step over it without loading it (after handing over the batch).
                    tally["records"] += len(out)
                    _flush(tally, counts)
                    if out:
                        yield out
                        out = []
                        add = out.append
                    left = blen - (end - pos)
                    if _skip(f, left) < left:
                        raise CaptureError(
                            f"{name}: cut short inside the block at byte {base + pos}"
                        )
                    if btype in (_PCAPNG_EPB, _PCAPNG_SPB):
                        add(Invalid.BAD_LINK)
                    else:
                        tally["skipped_blocks"] += 1
                    base += pos + blen
                    buf = _more(f, b"", 0, 12)
                    pos = 0
                    end = len(buf)
                    if end == 0:
                        tally["records"] += len(out)
                        if out:
                            yield out
                        return
                    continue
                need = blen
                if pos + blen <= end:
                    bend = pos + blen
                    if btype == _PCAPNG_SHB:
                        if blen < 28:
                            raise CaptureError(
                                f"{name}: section header too short at byte {base + pos}"
                            )
                        major, minor = struct.unpack_from(order + "HH", buf, pos + 12)
                        if major != 1:
                            raise CaptureError(
                                f"{name}: unsupported pcapng version {major}.{minor} in the "
                                f"section header at byte {base + pos}"
                            )
                        # A new section: new byte order, interfaces numbered from 0 again.
                        nflog = _Nflog(order)
                        nf_sig, nf_expect, nf_k, nf_need = (
                            nflog.sig,
                            nflog.expect,
                            nflog.k,
                            nflog.need,
                        )
                        nf_u16 = nflog.u16
                        interfaces = []
                        last_ts = 0.0
                    elif btype == _PCAPNG_IDB:
                        if blen < 20:
                            raise CaptureError(
                                f"{name}: interface description too short at byte {base + pos}"
                            )
                        interface = _interface(name, order, buf, pos, bend, nflog)
                        if interface[4] != _MODE_UNSUPPORTED:
                            supported[0] = True
                        elif not supported[0]:
                            refuse = _refuser(_unsupported(name, interface[0]), supported)
                            interface = (*interface[:5], refuse, interface[6])
                        interfaces.append(interface)
                    elif btype == _PCAPNG_SPB:
                        if blen < 16 or not interfaces:
                            add(Invalid.BAD_LINK)
                        else:
                            limit, decode = interfaces[0][1], interfaces[0][5]
                            wire_len = block(buf, pos + 4)[1]
                            # Its captured length: the wire length, cut to the block and the
                            # snap length.
                            stop = pos + 12 + min(wire_len, blen - 16, limit)
                            span = decode(buf, pos + 12, stop)
                            add(
                                span
                                if isinstance(span, Invalid)
                                else parse(buf, last_ts, *span)
                            )
                    elif btype == _PCAPNG_EPB:  # damaged: too short, or unaligned
                        add(Invalid.BAD_LINK)
                    else:
                        tally["skipped_blocks"] += 1
                    pos = bend
                    continue
            # Hand over what this buffer held before reading more.
            tally["records"] += len(out)
            _flush(tally, counts)
            if out:
                yield out
                out = []
                add = out.append
            base += pos
            buf = _more(f, buf, pos, need)
            pos = 0
            end = len(buf)
            if end < need:
                if end == 0:
                    return
                raise CaptureError(f"{name}: cut short inside the block at byte {base}")
    except CaptureError:
        if out:  # the packets before the damage
            tally["records"] += len(out)
            yield out
        raise


def _interface(
    name: str, order: str, buf: bytes, pos: int, bend: int, nflog: _Nflog
) -> _Interface:
    """The interface that the Interface Description Block `buf[pos:bend]` describes."""
    linktype, snaplen = struct.unpack_from(order + "H2xI", buf, pos + 8)
    units = 1_000_000  # the default resolution: microseconds
    offset = 0
    option = struct.Struct(order + "HH").unpack_from
    i = pos + 16
    # Options: code, length, value padded to 4 bytes. A damaged list is ignored from there.
    while i + 4 <= bend - 4:
        code, size = option(buf, i)
        value = i + 4
        if code == 0 or value + size > bend - 4:
            break
        if code == _IF_TSRESOL and size >= 1:
            resol = buf[value]
            units = 1 << (resol & 0x7F) if resol & 0x80 else 10 ** (resol & 0x7F)
            if units > _MAX_UNITS:
                raise CaptureError(
                    f"{name}: if_tsresol {resol} in the interface description at byte {pos}: "
                    "finer than 10^-15 s, the clock cannot be read, refused"
                )
        elif code == _IF_TSOFFSET and size >= 8:
            offset = struct.unpack_from(order + "q", buf, value)[0]
            if abs(offset) > _MAX_SECONDS:
                raise CaptureError(
                    f"{name}: if_tsoffset {offset} s in the interface description at byte "
                    f"{pos}: beyond the year 2242, refused"
                )
        i = value + ((size + 3) & ~3)
    limit = snaplen if 0 < snaplen <= _MAX_RECORD else _MAX_RECORD
    high = (_MAX_SECONDS * units) >> 32
    if linktype not in LINK_TYPES:
        return linktype, limit, units, offset, _MODE_UNSUPPORTED, _unsupported_link, high
    mode = _mode(linktype)
    return linktype, limit, units, offset, mode, _decoder(linktype, order, nflog), high


def _unsupported_link(buf: bytes, start: int, stop: int) -> Span:
    return Invalid.UNSUPPORTED_LINK


def _refuser(message: str, supported: list[bool]) -> Decoder:
    """The decoder of an unsupported interface described before any supported one: its
    packets refuse the file (one of a single unsupported link type), unless by then some
    interface is supported, when they are counted as the others are."""

    def decode(buf: bytes, start: int, stop: int) -> Span:
        if supported[0]:
            return Invalid.UNSUPPORTED_LINK
        raise CaptureError(message)

    return decode


def _bad_clock(name: str, at: int) -> str:
    # The usual cause: microseconds written under if_tsresol 0 (whole seconds), which would
    # stretch the capture a millionfold and make every flow a timeout.
    return (
        f"{name}: packet timestamp beyond the year 2242 in the block at byte {at} (a damaged "
        "clock, or if_tsresol not the writer's units): refused"
    )
