"""Bytes on the wire for the demo: read and write IPv4/IPv6 TCP segments, find the server name
in a client's first message (HTTP Host header or TLS SNI), and build a TLS ClientHello.

Pure functions, no sockets, standard library only: the middlebox and the clients share them,
and neither needs scapy.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from dataclasses import dataclass
from typing import Optional

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_PROTO_TCP = 6


@dataclass(frozen=True)
class Segment:
    """The fields of one TCP segment that the middlebox looks at."""

    family: int
    src: str
    dst: str
    ttl: int
    """TTL (IPv4) or hop limit (IPv6)."""
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    ip_id: int = 0
    """The IPv4 identification field; 0 for IPv6."""


def parse(packet: bytes) -> Optional[Segment]:
    """The TCP segment in an IP packet, or None for anything else (other protocols, IPv6
    extension headers, fragments, truncated bytes): the middlebox lets those pass untouched."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        vihl, _, total, ip_id, frag, ttl, proto, _, src, dst = _IPV4.unpack_from(packet)
        ihl = (vihl & 0x0F) * 4
        if proto != _PROTO_TCP or frag & 0x1FFF or ihl < 20:
            return None
        end = min(total, len(packet))
        family, start = 4, ihl
        src_text = socket.inet_ntop(socket.AF_INET, src)
        dst_text = socket.inet_ntop(socket.AF_INET, dst)
    elif version == 6 and len(packet) >= 40:
        _, plen, proto, ttl, src, dst = _IPV6.unpack_from(packet)
        ip_id = 0
        if proto != _PROTO_TCP:
            return None
        end = min(40 + plen, len(packet))
        family, start = 6, 40
        src_text = socket.inet_ntop(socket.AF_INET6, src)
        dst_text = socket.inet_ntop(socket.AF_INET6, dst)
    else:
        return None
    if end - start < 20:
        return None
    sport, dport, seq, ack, offset, flags, _, _, _ = _TCP.unpack_from(packet, start)
    data = start + (offset >> 4) * 4
    if data > end:
        return None
    payload = packet[data:end]
    return Segment(family, src_text, dst_text, ttl, sport, dport, seq, ack, flags, payload, ip_id)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    seq: int,
    ack: int = 0,
    flags: int,
    ttl: int = 64,
    window: int = 0,
    options: bytes = b"",
    payload: bytes = b"",
    ip_id: Optional[int] = None,
    df: bool = True,
) -> bytes:
    """A whole IPv4 or IPv6 packet (by the form of `dst`) holding one TCP segment, checksums
    filled in, ready for a raw IPPROTO_RAW socket. `ip_id` None means a random one."""
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    offset = (20 + len(options)) // 4
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    saddr, daddr = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    length = 20 + len(options) + len(payload)
    if family == socket.AF_INET:
        pseudo = saddr + daddr + struct.pack("!BBH", 0, _PROTO_TCP, length)
    else:
        pseudo = saddr + daddr + struct.pack("!IxxxB", length, _PROTO_TCP)
    head = _TCP.pack(
        sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, offset << 4, flags, window, 0, 0
    )
    checksum = _checksum(pseudo + head + options + payload)
    tcp = head[:16] + struct.pack("!H", checksum) + head[18:] + options + payload
    if family == socket.AF_INET6:
        return _IPV6.pack(6 << 28, length, _PROTO_TCP, ttl, saddr, daddr) + tcp
    ident = random.getrandbits(16) if ip_id is None else ip_id
    frag = 0x4000 if df else 0
    ip = _IPV4.pack(0x45, 0, 20 + length, ident, frag, ttl, _PROTO_TCP, 0, saddr, daddr)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


def raw_socket(family: int) -> socket.socket:
    """A socket that sends whole IP packets as built by `build` (the header is ours)."""
    return socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)


def family_of(addr: str) -> int:
    return ipaddress.ip_address(addr).version


# ------------------------------------------------------------------------------ server names

_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def http_host(payload: bytes) -> Optional[str]:
    """The Host header of an HTTP/1 request (lower case, port removed), or None."""
    if not payload.startswith(_METHODS):
        return None
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            if host.startswith("["):
                return host[1:].split("]", 1)[0]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


def tls_sni(payload: bytes) -> Optional[str]:
    """The server_name of a TLS ClientHello that fits in `payload`, or None."""
    try:
        if payload[0] != 0x16 or payload[5] != 0x01:  # handshake record, ClientHello
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + payload[pos]  # session id
        pos += 2 + int.from_bytes(payload[pos : pos + 2], "big")  # cipher suites
        pos += 1 + payload[pos]  # compression methods
        end = pos + 2 + int.from_bytes(payload[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(payload)):
            kind = int.from_bytes(payload[pos : pos + 2], "big")
            size = int.from_bytes(payload[pos + 2 : pos + 4], "big")
            body = payload[pos + 4 : pos + 4 + size]
            if kind == 0 and len(body) >= 5 and body[2] == 0:  # server_name, host_name
                length = int.from_bytes(body[3:5], "big")
                return body[5 : 5 + length].decode("ascii", "replace").lower()
            pos += 4 + size
    except IndexError:
        return None
    return None


def server_name(payload: bytes) -> Optional[str]:
    """The name a client's first message asks for: HTTP Host, or TLS SNI."""
    return http_host(payload) or tls_sni(payload)


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(name: str, rng: random.Random) -> bytes:
    """A TLS 1.3-style ClientHello record asking for `name` (SNI), shaped like a browser's:
    the middlebox reads its SNI as a real censor would. Not a working TLS client."""
    host = name.encode("ascii")
    suites = struct.pack("!5H", 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F)
    sni = struct.pack("!HBH", len(host) + 3, 0, len(host)) + host
    groups = struct.pack("!H3H", 6, 0x001D, 0x0017, 0x0018)
    sigalgs = struct.pack("!H4H", 8, 0x0403, 0x0804, 0x0401, 0x0503)
    key = rng.randbytes(32)
    key_share = struct.pack("!HHH", 36, 0x001D, 32) + key
    extensions = b"".join(
        (
            _ext(0x0000, sni),
            _ext(0x000A, groups),
            _ext(0x000D, sigalgs),
            _ext(0x002B, b"\x02\x03\x04"),  # supported_versions: TLS 1.3
            _ext(0x0033, key_share),
            _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),  # ALPN
        )
    )
    session = rng.randbytes(32)
    body = (
        b"\x03\x03"
        + rng.randbytes(32)
        + bytes([len(session)])
        + session
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def tls_record(kind: int, size: int, rng: random.Random) -> bytes:
    """An opaque TLS record of `size` random bytes (`kind` 0x16 handshake, 0x17 app data)."""
    return bytes([kind, 3, 3]) + struct.pack("!H", size) + rng.randbytes(size)
