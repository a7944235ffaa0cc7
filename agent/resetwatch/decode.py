"""Find the IP packet inside a frame: link types, encapsulations and tunnels, in one table each.

A decoder returns the span of the IP packet it found as `(start, stop, depth)`, or the
`Invalid` reason why there is none. `depth` counts the encapsulation headers stepped over on
the way (a VLAN tag, an MPLS label, a PPPoE header, a tunnel): past `MAX_DEPTH` a frame is
`Invalid.TOO_DEEP`, so a crafted frame of nested headers costs a bounded amount of work.

- `LINK_DECODERS`: link type -> factory of the decoder for a file of that byte order (NULL's
  family field is in the writer's byte order). NFLOG, which keeps state per file, is added by
  `pcap.py`, whose read loops also decode the common link types inline (they are per packet).
- `ETHERTYPES`: ethertype (or GRE/Geneve protocol type) -> decoder of what follows it; every
  link type that carries an ethertype, and every tunnel that carries one, goes through it.
- `tunnel`: called by the IP parser (`packet.py`) for an IP packet whose protocol is not TCP:
  the span of the packet it carries (IP-in-IP, 6in4, 4in6, GRE, VXLAN, Geneve, GTP-U).
"""

from __future__ import annotations

from typing import Callable, Union

from .invalid import Invalid

MAX_DEPTH = 8
"""Encapsulation headers (tags, labels, tunnels) stepped over before a frame is `too_deep`."""

Span = Union[tuple[int, int, int], Invalid]
"""(start, stop, depth) of an IP packet in the buffer, or why there is none."""
Decoder = Callable[[bytes, int, int], Span]
"""Decodes the frame `buf[start:stop]` of one link type."""
_Next = Callable[[bytes, int, int, int], Span]
"""Decodes what follows a header: (buf, start, stop, depth so far)."""

_TRUNCATED = Invalid.TRUNCATED
_NOT_IP = Invalid.NOT_IP
_TOO_DEEP = Invalid.TOO_DEEP

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
ETH_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet frame follows (GRE, Geneve)
ETH_MPLS, ETH_MPLS_MULTICAST = 0x8847, 0x8848
ETH_PPPOE_SESSION = 0x8864
ETH_PBB = 0x88E7  # 802.1ah I-TAG
# 802.1Q, 802.1ad, and the pre-standard QinQ outer tag some switches still send.
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)


def _ip(buf: bytes, i: int, stop: int, depth: int) -> Span:
    return i, stop, depth


def ethertype_payload(buf: bytes, ethertype: int, i: int, stop: int, depth: int) -> Span:
    """The IP packet in what follows an ethertype at `buf[i:stop]`."""
    decoder = ETHERTYPES.get(ethertype)
    if decoder is None:
        return _NOT_IP
    return decoder(buf, i, stop, depth)


def ethernet(buf: bytes, i: int, stop: int, depth: int) -> Span:
    """An Ethernet header (destination, source, ethertype) at `i`."""
    if i + 14 > stop:
        return _TRUNCATED
    return ethertype_payload(buf, buf[i + 12] << 8 | buf[i + 13], i + 14, stop, depth)


def _vlan(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # A tag: 2 bytes of TCI, then the next ethertype.
    depth += 1
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    if i + 4 > stop:
        return _TRUNCATED
    return ethertype_payload(buf, buf[i + 2] << 8 | buf[i + 3], i + 4, stop, depth)


def _mpls(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # Labels of 4 bytes up to the one with the bottom-of-stack bit; MPLS does not say what it
    # carries, so the payload is told by its first nibble (as Wireshark and tcpdump do).
    while True:
        depth += 1
        if depth > MAX_DEPTH:
            return _TOO_DEEP
        if i + 4 > stop:
            return _TRUNCATED
        bottom = buf[i + 2] & 1
        i += 4
        if bottom:
            break
    if i >= stop:
        return _TRUNCATED
    nibble = buf[i] >> 4
    if nibble == 4 or nibble == 6:
        return i, stop, depth
    if nibble == 0:  # a pseudowire control word (RFC 4385), then the Ethernet frame
        return ethernet(buf, i + 4, stop, depth)
    return Invalid.UNDECODED_MPLS


# PPP protocol numbers (RFC 1661 and the IANA list) of what is decoded.
_PPP_PROTOCOLS: dict[int, _Next] = {0x0021: _ip, 0x0057: _ip, 0x0281: _mpls, 0x0283: _mpls}


def _ppp_payload(buf: bytes, i: int, stop: int, depth: int) -> Span:
    """A PPP protocol field at `i` (one byte when compressed: an odd first byte), then data."""
    if i + 1 > stop:
        return _TRUNCATED
    if buf[i] & 1:
        protocol, i = buf[i], i + 1
    else:
        if i + 2 > stop:
            return _TRUNCATED
        protocol, i = buf[i] << 8 | buf[i + 1], i + 2
    decoder = _PPP_PROTOCOLS.get(protocol)
    if decoder is None:
        return _NOT_IP  # LCP, IPCP, CHAP...: PPP's own control traffic
    return decoder(buf, i, stop, depth)


def _pppoe(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # PPPoE session header (RFC 2516): version/type, code, session id, length; then PPP.
    depth += 1
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    if i + 6 > stop:
        return _TRUNCATED
    return _ppp_payload(buf, i + 6, stop, depth)


def _pbb(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # 802.1ah: a 4-byte I-TAG (priority, flags, service id), then the customer's Ethernet frame.
    depth += 1
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    return ethernet(buf, i + 4, stop, depth)


def _teb(buf: bytes, i: int, stop: int, depth: int) -> Span:
    return ethernet(buf, i, stop, depth)


ETHERTYPES: dict[int, _Next] = {
    ETH_IPV4: _ip,
    ETH_IPV6: _ip,
    **{tpid: _vlan for tpid in VLAN_TPIDS},
    ETH_MPLS: _mpls,
    ETH_MPLS_MULTICAST: _mpls,
    ETH_PPPOE_SESSION: _pppoe,
    ETH_PBB: _pbb,
    ETH_TEB: _teb,
}
"""Ethertype -> decoder of the header that follows it."""


# --- Link types -------------------------------------------------------------------------------


def _ethernet_link(buf: bytes, start: int, stop: int) -> Span:
    return ethernet(buf, start, stop, 0)


def _raw_link(buf: bytes, start: int, stop: int) -> Span:
    return start, stop, 0


def _sll_link(buf: bytes, start: int, stop: int) -> Span:
    # Linux cooked v1: packet type, ARPHRD type, address length, 8 address bytes, protocol.
    if start + 16 > stop:
        return _TRUNCATED
    return ethertype_payload(buf, buf[start + 14] << 8 | buf[start + 15], start + 16, stop, 0)


def _sll2_link(buf: bytes, start: int, stop: int) -> Span:
    # Linux cooked v2: the protocol first, then 18 bytes of interface and address fields.
    if start + 20 > stop:
        return _TRUNCATED
    return ethertype_payload(buf, buf[start] << 8 | buf[start + 1], start + 20, stop, 0)


# BSD address family values for IPv6 differ between systems (2 is IPv4 on all).
_NULL_FAMILIES = {2: ETH_IPV4, 10: ETH_IPV6, 24: ETH_IPV6, 28: ETH_IPV6, 30: ETH_IPV6}


def _null_link(order: str) -> Decoder:
    """NULL (0): a 4-byte address family in the byte order of the host that wrote the file."""
    first = 0 if order == "<" else 3  # where the (one significant) byte of a family sits

    def decode(buf: bytes, start: int, stop: int) -> Span:
        if start + 4 > stop:
            return _TRUNCATED
        word = buf[start : start + 4]
        family = word[first] if word.count(0) >= 3 else -1
        if family not in _NULL_FAMILIES:
            # Some writers use the other byte order than the file header's: accept it too.
            family = word[3 - first] if word.count(0) >= 3 else -1
        if family not in _NULL_FAMILIES:
            return _NOT_IP
        return start + 4, stop, 0

    return decode


def _loop_link(buf: bytes, start: int, stop: int) -> Span:
    # LOOP (108, OpenBSD): the same family field as NULL, always big-endian.
    if start + 4 > stop:
        return _TRUNCATED
    if buf[start] | buf[start + 1] | buf[start + 2] or buf[start + 3] not in _NULL_FAMILIES:
        return _NOT_IP
    return start + 4, stop, 0


def _ppp_link(buf: bytes, start: int, stop: int) -> Span:
    # PPP (9) and PPP in HDLC-like framing (50): address 0xFF and control 0x03 when present.
    if start + 2 <= stop and buf[start] == 0xFF and buf[start + 1] == 0x03:
        start += 2
    return _ppp_payload(buf, start, stop, 0)


def _pppoe_link(buf: bytes, start: int, stop: int) -> Span:
    # PPP_ETHER (51): a PPPoE session header at the start of the frame.
    return _pppoe(buf, start, stop, 0)


def _same(decoder: Decoder) -> Callable[[str], Decoder]:
    return lambda _order: decoder


LINK_DECODERS: dict[int, Callable[[str], Decoder]] = {
    0: _null_link,
    1: _same(_ethernet_link),
    9: _same(_ppp_link),
    12: _same(_raw_link),
    14: _same(_raw_link),
    50: _same(_ppp_link),
    51: _same(_pppoe_link),
    101: _same(_raw_link),
    108: _same(_loop_link),
    113: _same(_sll_link),
    228: _same(_raw_link),
    229: _same(_raw_link),
    276: _same(_sll2_link),
}
"""Link type -> the decoder for a file of that byte order ("<" or ">")."""

LINK_NAMES: dict[int, str] = {
    0: "NULL (BSD loopback)",
    1: "Ethernet",
    9: "PPP",
    12: "raw IP (DLT_RAW of most BSDs)",
    14: "raw IP (DLT_RAW of OpenBSD)",
    50: "PPP in HDLC-like framing",
    51: "PPPoE",
    101: "raw IP",
    108: "LOOP (OpenBSD loopback)",
    113: "Linux cooked v1",
    228: "IPv4",
    229: "IPv6",
    276: "Linux cooked v2",
}
"""The names of `LINK_DECODERS`' link types (https://www.tcpdump.org/linktypes.html)."""


ENCAPSULATIONS = (
    "VLAN tags (802.1Q, 802.1ad QinQ)", "MPLS", "PPPoE", "802.1ah PBB", "GRE (also ERSPAN, "
    "and over IPv6)", "IP-in-IP", "6in4", "4in6", "VXLAN (UDP 4789)", "Geneve (UDP 6081)",
    "GTP-U (UDP 2152)",
)
"""What is decoded inside any link type, down to the innermost TCP packet (at most
`MAX_DEPTH` headers deep); the README and `replay --help` list these."""


def supported() -> str:
    """One sentence naming every link type and encapsulation read (README, --help)."""
    from .pcap import LINK_TYPES  # NFLOG is read by pcap.py itself

    links = ", ".join(f"{name} ({number})" for number, name in LINK_TYPES.items())
    return f"Link types: {links}. Decoded inside them: {', '.join(ENCAPSULATIONS)}."


# --- Tunnels: an IP packet that carries another -----------------------------------------------

IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_IPV6, IPPROTO_GRE = 4, 17, 41, 47
TUNNEL_PROTOCOLS = frozenset((IPPROTO_IPIP, IPPROTO_UDP, IPPROTO_IPV6, IPPROTO_GRE))
"""IP protocols `tunnel` may find a packet in (UDP only on the ports below)."""
UDP_VXLAN, UDP_GENEVE, UDP_GTPU = 4789, 6081, 2152
_ERSPAN_II, _ERSPAN_III = 0x88BE, 0x22EB


def tunnel(buf: bytes, protocol: int, i: int, stop: int, depth: int) -> Span:
    """The packet carried by an IP packet of `protocol` whose payload starts at `i`.

    `Invalid.NOT_TCP` for a protocol or UDP port that is no tunnel (plain UDP, ICMP, ...).
    """
    depth += 1
    if depth > MAX_DEPTH:
        return _TOO_DEEP
    if protocol in (IPPROTO_IPIP, IPPROTO_IPV6):
        return i, stop, depth
    if protocol == IPPROTO_GRE:
        return _gre(buf, i, stop, depth)
    if protocol == IPPROTO_UDP:
        if i + 8 > stop:
            return _TRUNCATED
        port = buf[i + 2] << 8 | buf[i + 3]
        decoder = _UDP_TUNNELS.get(port)
        if decoder is not None:
            return decoder(buf, i + 8, stop, depth)
    return Invalid.NOT_TCP


def _gre(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # RFC 2784/2890: flags and version, protocol type, then checksum, key and sequence number
    # words when their flags say so. Version 1 (PPTP) and source routing are not decoded.
    if i + 4 > stop:
        return _TRUNCATED
    flags = buf[i]
    if buf[i + 1] & 0x07 or flags & 0x40:
        return Invalid.UNDECODED_GRE
    protocol = buf[i + 2] << 8 | buf[i + 3]
    j = i + 4 + 4 * ((flags >> 7) + (flags >> 5 & 1) + (flags >> 4 & 1))
    if protocol == _ERSPAN_II:
        # Type I has no header of its own (and no sequence number); type II has 8 bytes.
        if flags & 0x10:
            j += 8
        return ethernet(buf, j, stop, depth)
    if protocol == _ERSPAN_III:
        # 12 bytes, then an 8-byte platform subheader when the O bit (the last) is set.
        if j + 12 > stop:
            return _TRUNCATED
        j += 20 if buf[j + 11] & 1 else 12
        return ethernet(buf, j, stop, depth)
    decoder = ETHERTYPES.get(protocol)
    if decoder is None:
        return Invalid.UNDECODED_GRE
    return decoder(buf, j, stop, depth)


def _vxlan(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # RFC 7348: flags (the I bit says the network id is valid), reserved, VNI; then Ethernet.
    if i + 8 > stop:
        return _TRUNCATED
    if not buf[i] & 0x08:
        return Invalid.UNDECODED_VXLAN
    return ethernet(buf, i + 8, stop, depth)


def _geneve(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # RFC 8926: version and option length, flags, protocol type, VNI, then the options.
    if i + 8 > stop:
        return _TRUNCATED
    if buf[i] >> 6:
        return Invalid.UNDECODED_GENEVE
    decoder = ETHERTYPES.get(buf[i + 2] << 8 | buf[i + 3])
    if decoder is None:
        return Invalid.UNDECODED_GENEVE
    return decoder(buf, i + 8 + (buf[i] & 0x3F) * 4, stop, depth)


def _gtpu(buf: bytes, i: int, stop: int, depth: int) -> Span:
    # 3GPP TS 29.281: flags (version 1, protocol type GTP), message type, length, TEID; with
    # any of E, S, PN set, 4 more bytes and then a chain of extension headers.
    if i + 8 > stop:
        return _TRUNCATED
    flags = buf[i]
    if flags >> 5 != 1 or not flags & 0x10:
        return Invalid.UNDECODED_GTP
    if buf[i + 1] != 0xFF:  # not a G-PDU: echo, error indication...: no user packet
        return Invalid.NOT_TCP
    j = i + 8
    if flags & 0x07:
        if j + 4 > stop:
            return _TRUNCATED
        following = buf[j + 3] if flags & 0x04 else 0
        j += 4
        while following:
            if j + 1 > stop:
                return _TRUNCATED
            size = buf[j] * 4
            if size == 0 or j + size > stop:
                return Invalid.UNDECODED_GTP
            following = buf[j + size - 1]
            j += size
    if j >= stop:
        return _TRUNCATED
    if buf[j] >> 4 not in (4, 6):
        return Invalid.UNDECODED_GTP
    return j, stop, depth


_UDP_TUNNELS: dict[int, _Next] = {UDP_VXLAN: _vxlan, UDP_GENEVE: _geneve, UDP_GTPU: _gtpu}
"""UDP destination port -> decoder of the tunnel header at the start of the UDP payload."""
