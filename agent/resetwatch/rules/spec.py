"""`RuleSpec`: what the two sampling rules should do, independent of the tool that installs them.

Both backends render the same spec, so a config file means the same thing on an iptables host
and on an nft host. Values are checked once, here, so a bad config is refused at start with the
field, the value and what is allowed, instead of as an obscure error from `iptables-restore`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHAIN = "RESETWATCH"
"""The iptables chain the agent owns in table `mangle` (reached by one jump from PREROUTING)."""

NFT_TABLE = "resetwatch"
"""The nft table the agent owns (`table inet resetwatch`): one table serves IPv4 and IPv6."""

NFT_CHAIN = "prerouting"
"""The only chain in the nft table, hooked at prerouting with priority mangle (-150)."""

LOG_PREFIX = "resetwatch"
"""NFLOG prefix on every logged packet, so a reader sharing the group can tell ours apart."""

ID_JUMP = "resetwatch:jump"
ID_SAMPLE = "resetwatch:sample"
ID_LOG_SYN = "resetwatch:log-syn"
ID_LOG = "resetwatch:log"
ID_CANDIDATES = "resetwatch:candidates"
"""Counts the SYNs the sample rule could have drawn for (its filters, no draw, no conntrack
state, so a NOTRACK rule that blinds the sampler still leaves them counted)."""
"""Rule id comments: they let `check` and a human reading `iptables -S` find our rules."""

MIN_PROBABILITY = 1.0 / 2**31
"""The kernel's statistic match stores the probability in 31 bits; anything smaller is zero."""

HEADER_COPY = {4: (40, 80), 6: (60, 100)}
"""Bytes of each logged packet copied to NFLOG, by family: (any other packet, SYN).

Headers only, never payload: the IP header without options or extension headers (20 or 40
bytes), then the TCP header. A SYN gets the longest TCP header there is (60 bytes), whose
options the agent fingerprints; every other packet only the fixed 20 bytes, which hold all
the agent reads of it (its payload length comes from the IP header). So a data packet gives
none of its data; only a SYN that carries data (TCP Fast Open) and has a short header gives
the first bytes of it. A packet with IP options or IPv6 extension headers is cut inside its
TCP header and counted as invalid (`truncated`): rare, and visible in the metrics."""

MAX_HEADER_COPY = max(size for sizes in HEADER_COPY.values() for size in sizes)
"""The largest copy a rule asks for: the agent's NFLOG group copies no more, whoever wrote
the rules."""

SAMPLERS = ("conntrack", "stateless")
"""How a connection is chosen and followed: by a conntrack label (the published rules), or by
a keyed hash of its 4-tuple and a set of sampled 4-tuples (nft only, no connection tracking)."""

MAX_MAX_PACKETS = 1000
"""Every logged packet is one netlink message; a sample is meant to be a connection's start."""

# Linux interface names are at most 15 bytes. We accept a conservative character set so that a
# name never needs quoting in either tool's syntax; a trailing "+" is the iptables wildcard
# ("eth+" = every name starting with "eth"), rendered as "eth*" for nft. Anchored with \A and
# \Z and used with fullmatch: `$` also matches before a final newline, and "eth0\n" would split
# the rule text.
IFNAME = re.compile(r"\A[A-Za-z0-9_.@:-]{1,15}\+?\Z")


def _int_in(value: object, low: int, high: int) -> bool:
    """True for an int within [low, high]; bool is an int subclass, but `label = true` is a
    mistake in a config, not the number 1."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _int_field(name: str, value: object, low: int, high: int, why: str = "") -> None:
    if not _int_in(value, low, high):
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name}: {value!r} is not allowed; use an integer {low}..{high}{extra}")


@dataclass(frozen=True)
class RuleSpec:
    """The wanted sampling rules.

    Sequences are stored as sorted, de-duplicated tuples (lists from a TOML file are accepted),
    so two specs that mean the same rules compare equal and render the same text.
    """

    probability: float = 0.0001
    """Chance that a new ingress TCP connection is sampled (its SYN gets the label)."""
    label: int = 7
    """Conntrack label bit (0..127) that marks a sampled connection."""
    nflog_group: int = 10
    """NFLOG group the logged packets go to (the agent binds to it)."""
    max_packets: int = 10
    """How many ingress packets of a sampled connection are logged (the first N)."""
    dports: tuple[int, ...] = ()
    """Only sample connections to these local TCP ports (empty: every port)."""
    in_interfaces: tuple[str, ...] = ()
    """Only sample connections arriving on these interfaces (empty: every interface)."""
    families: tuple[int, ...] = (4, 6)
    """IP versions to sample (4, 6 or both)."""
    sampler: str = "conntrack"
    """"conntrack" (label the connection) or "stateless" (hash the 4-tuple; nft only)."""

    def __post_init__(self) -> None:
        prob: object = self.probability
        if isinstance(prob, int) and not isinstance(prob, bool):
            prob = float(prob)
        if not isinstance(prob, float) or not MIN_PROBABILITY <= prob <= 1.0:
            raise ValueError(
                f"probability: {self.probability!r} is not allowed; use a number from "
                f"{MIN_PROBABILITY:.3g} (1/2^31, the kernel's resolution) to 1"
            )
        object.__setattr__(self, "probability", prob)
        _int_field("label", self.label, 0, 127, "a conntrack label bit")
        _int_field("nflog_group", self.nflog_group, 0, 65535)
        _int_field(
            "max_packets",
            self.max_packets,
            1,
            MAX_MAX_PACKETS,
            "ingress packets logged per sampled connection",
        )
        object.__setattr__(self, "dports", self._dports(self.dports))
        object.__setattr__(self, "in_interfaces", self._interfaces(self.in_interfaces))
        object.__setattr__(self, "families", self._families(self.families))
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"sampler: {self.sampler!r} is not allowed; use one of {', '.join(SAMPLERS)}"
            )

    @staticmethod
    def _sequence(name: str, value: object) -> tuple[object, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise ValueError(f"{name}: {value!r} is not allowed; use a list")
        return tuple(value)

    @classmethod
    def _dports(cls, value: object) -> tuple[int, ...]:
        ports = cls._sequence("dports", value)
        checked: set[int] = set()
        for port in ports:
            if not isinstance(port, int) or not _int_in(port, 1, 65535):
                raise ValueError(
                    f"dports: {port!r} is not allowed; use TCP port numbers 1..65535 "
                    "(an empty list samples every port)"
                )
            checked.add(port)
        return tuple(sorted(checked))

    @classmethod
    def _interfaces(cls, value: object) -> tuple[str, ...]:
        names = cls._sequence("in_interfaces", value)
        checked: set[str] = set()
        for name in names:
            if not isinstance(name, str) or not IFNAME.fullmatch(name):
                raise ValueError(
                    f"in_interfaces: {name!r} is not allowed; use interface names of 1..15 "
                    "letters, digits or _.@:- with an optional trailing + as a wildcard "
                    "(an empty list samples every interface)"
                )
            checked.add(name)
        return tuple(sorted(checked))

    @classmethod
    def _families(cls, value: object) -> tuple[int, ...]:
        checked: set[int] = set()
        for family in cls._sequence("families", value):
            if not isinstance(family, int) or isinstance(family, bool) or family not in (4, 6):
                checked.clear()
                break
            checked.add(family)
        if not checked:
            raise ValueError(f"families: {value!r} is not allowed; use [4], [6] or [4, 6]")
        return tuple(sorted(checked))

    @property
    def packets_below(self) -> int:
        """The conntrack packet count a logged packet stays below (11 for the first 10).

        Conntrack counts a packet before the mangle hook sees it, so the SYN is packet 1.
        """
        return self.max_packets + 1
