"""The kernel rules that choose the connections resetwatch watches.

Two rules per family (Cloudflare blog, 2024-09-05, describes the method): a new TCP SYN is
sampled at random and its connection gets a conntrack label; every packet of a labelled
connection is sent to NFLOG while conntrack has counted at most `max_packets` packets in the
original (client to server) direction.

The nft backend also has a conntrack-free sampler (`RuleSpec(sampler="stateless")`, see
`stateless`): a keyed hash of the 4-tuple chooses the SYN, and a bounded set with a per-element
packet limit stands in for the label and the packet count.

`backend_for(name)` returns an object with the `RulesBackend` interface: `render(spec)`,
`install(spec)`, `remove()`, `show()`, `check(spec)`, `present()`. Names: "auto" (detect),
"iptables" (the host's `iptables`), "iptables-legacy" or "iptables-nft" (force one flavour of
the iptables tools), "nft" (a native table).
"""

from __future__ import annotations

import shutil

from .base import RulesBackend, RulesError, Runner, netns_runner, run_local
from .iptables import IptablesBackend
from .nft import NftBackend
from .spec import RuleSpec

BACKENDS = ("auto", "iptables", "iptables-legacy", "iptables-nft", "nft")

__all__ = [
    "BACKENDS",
    "IptablesBackend",
    "NftBackend",
    "RuleSpec",
    "RulesBackend",
    "RulesError",
    "Runner",
    "backend_for",
    "detect_backend",
    "netns_runner",
    "run_local",
]


def detect_backend(runner: Runner = run_local) -> str:
    """Pick "nft" or "iptables" for this host.

    An iptables that reports "(nf_tables)" is a translation layer over nftables, so native nft
    is used when its binary is there; a legacy iptables host keeps iptables, because there nft
    rules and the legacy tables would both be evaluated and nobody looking at `iptables -S`
    would see ours.
    """
    has_iptables = shutil.which("iptables") is not None
    has_nft = shutil.which("nft") is not None
    if has_iptables:
        version = IptablesBackend(runner).run(["iptables", "-V"]).stdout
        return "nft" if "nf_tables" in version and has_nft else "iptables"
    if has_nft:
        return "nft"
    raise RulesError("no rules tool found: install iptables or nftables (nft)")


def backend_for(name: str, runner: Runner = run_local) -> RulesBackend:
    """The backend called `name` ("auto" detects it), running its commands through `runner`."""
    if name == "auto":
        name = detect_backend(runner)
    if name == "iptables":
        return IptablesBackend(runner)
    if name in ("iptables-legacy", "iptables-nft"):
        return IptablesBackend(runner, flavour=name.split("-", 1)[1])
    if name == "nft":
        return NftBackend(runner)
    raise ValueError(f"rules backend: {name!r} is not allowed; use one of {', '.join(BACKENDS)}")
