"""Build `Packet`s and run them through a `FlowTable` without bytes or a capture."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional, Union

from resetwatch.classify import Verdict, classify
from resetwatch.flows import Exclusion, Flow, FlowTable
from resetwatch.packet import ACK, FIN, PSH, RST, SYN, Packet, make_key

FLAG_LETTERS = {"S": SYN, "A": ACK, "P": PSH, "R": RST, "F": FIN}
CLIENT4 = ("198.51.100.7", 40000, "203.0.113.1", 443)
CLIENT6 = ("2001:db8::7", 40000, "2001:db8::1", 443)


def pkt(
    flags: str,
    ts: float = 0.0,
    *,
    ack: int = 0,
    seq: int = 1000,
    ttl: int = 57,
    ip_id: int = 1,
    window: int = 64240,
    df: bool = True,
    options: Optional[str] = None,
    payload: int = 0,
    tuple_: tuple[str, int, str, int] = CLIENT4,
) -> Packet:
    """`flags` in letters: S A P R F (e.g. "PA" = PSH+ACK)."""
    bits = 0
    for letter in flags:
        bits |= FLAG_LETTERS[letter]
    if options is None:
        options = "M1460,S,T,N,W7" if bits & SYN else ""
    return Packet(
        ts, make_key(*tuple_), bits, seq, ack, window, ttl, ip_id, df, payload, options
    )


@dataclass
class Collected:
    judged: list[tuple[Flow, Verdict]] = field(default_factory=list)
    excluded: list[tuple[Flow, Exclusion]] = field(default_factory=list)

    def __call__(self, flow: Flow, reason: Optional[Exclusion]) -> None:
        if reason is None:
            self.judged.append((flow, classify(flow)))
        else:
            self.excluded.append((flow, reason))

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for _, v in self.judged]

    @property
    def reasons(self) -> list[Exclusion]:
        return [r for _, r in self.excluded]


def run(
    packets: Iterable[Packet],
    *,
    end: Union[float, None] = 1e6,
    idle_timeout: float = 300.0,
    close_linger: float = 10.0,
    max_flows: int = 1000,
    pack_above: int = 65536,
) -> Collected:
    """Feed packets in the given order; then sweep at `end` (None: drain at the last ts)."""
    out = Collected()
    table = FlowTable(
        out,
        idle_timeout=idle_timeout,
        close_linger=close_linger,
        max_flows=max_flows,
        pack_above=pack_above,
    )
    last = 0.0
    for p in packets:
        table.add(p)
        last = max(last, p.ts)
    if end is None:
        table.drain(last)
    else:
        table.sweep(end, budget=1 << 30)
    return out


def handshake(ts: float = 0.0, **kw: object) -> list[Packet]:
    return [pkt("S", ts, **kw), pkt("A", ts + 0.05, ack=5001, **kw)]  # type: ignore[arg-type]
