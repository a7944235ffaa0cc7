"""`Invalid`: why a captured frame gave no TCP packet (its own module: the IP parser and the
link and tunnel decoders under it both return these)."""

from __future__ import annotations

from .docenum import DocEnum


class Invalid(DocEnum):
    """Why a captured packet was not turned into a `Packet` (a label of
    `resetwatch_packets_invalid_total`)."""

    TRUNCATED = "truncated", "The bytes end before the link, IP or TCP header does."
    NOT_IP = "not_ip", "Not an IP packet (another ethertype, or IP version neither 4 nor 6)."
    NOT_TCP = "not_tcp", "The packet carries a protocol other than TCP."
    FRAGMENT = "fragment", "A non-first IP fragment: it holds no TCP header."
    BAD_HEADER = "bad_header", "A header length field is impossible (too small or too large)."
    BAD_LINK = "bad_link", "The link-layer framing around the IP packet is damaged or unknown."
    UNSUPPORTED_LINK = (
        "unsupported_link",
        "A pcapng packet on an interface whose link type is not decoded.",
    )
    TOO_DEEP = (
        "too_deep",
        "More than 8 encapsulations (VLAN tags, MPLS labels, tunnels) around the packet.",
    )
    UNDECODED_GRE = "undecoded_gre", "GRE of a version, flag or payload type not decoded."
    UNDECODED_MPLS = "undecoded_mpls", "MPLS whose payload is neither IP nor a pseudowire."
    UNDECODED_VXLAN = "undecoded_vxlan", "UDP to port 4789 without a valid VXLAN header."
    UNDECODED_GENEVE = (
        "undecoded_geneve",
        "UDP to port 6081: a Geneve version or payload type not decoded.",
    )
    UNDECODED_GTP = (
        "undecoded_gtp",
        "UDP to port 2152: not a GTP-U v1 header, or a G-PDU carrying no IP packet.",
    )
