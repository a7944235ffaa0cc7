"""Is conntrack already on? The conntrack sampler's cost to a host is the table it turns on.

A network namespace tracks connections only once a rule (or NAT, or a stateful firewall)
asks for it. The published rules match `ct state` and `ct label`, so on a host where nothing
tracked connections before them they make the kernel track every connection, to watch 1 in
10,000; the agent says so once, with what that was measured to cost (bench/hostcost.py), and
points to the stateless sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

COUNT_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_count")
"""Entries in this network namespace's conntrack table (absent: conntrack never loaded)."""

COST = (
    "in the lab (bench/hostcost.py) a spoofed SYN flood filled the table (262,144 entries, "
    "64 MB) in seconds, early-dropped 1.2 million entries and cost 2.4 us more per SYN, where "
    "the stateless sampler kept no entry and cost 0.13 us"
)
"""The measured cost, in a few words (docs/operations.md, "Cost to the host", has the table)."""


def tracked_connections(path: Path = COUNT_FILE) -> Optional[int]:
    """Entries in the conntrack table of the namespace we run in; 0 when conntrack is not
    loaded; None when the count cannot be read (then we say nothing)."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):
        return None


def untracked_hint(sampler: str, path: Path = COUNT_FILE) -> Optional[str]:
    """One line for an operator about to install the conntrack rules where nothing tracked
    connections yet; None when conntrack is in use already or the stateless sampler is."""
    if sampler != "conntrack" or tracked_connections(path) != 0:
        return None
    return (
        "nothing tracked connections here before these rules (conntrack table empty): the "
        f"conntrack sampler turns tracking on for every connection; {COST}; "
        "--sampler stateless (nft) samples without conntrack"
    )
