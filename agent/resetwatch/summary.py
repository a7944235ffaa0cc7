"""The shares the public dataset publishes, and replay's output counting a whole run."""

from __future__ import annotations

from typing import Optional

from .event import CountingOutput, FlowEvent
from .tally import Tally

SHARE_DECIMALS = 2


def percent_shares(counts: dict[str, int], decimals: int = SHARE_DECIMALS) -> dict[str, str]:
    """Each count's share of the total in percent, as decimal strings that sum to exactly 100.

    Largest-remainder rounding (Hamilton's method), so the published shares always add up.
    With a total of zero every share is "0": there is nothing to share out.
    """
    total = sum(counts.values())
    if total == 0:
        return {name: "0" for name in counts}
    unit = 10**decimals
    whole = 100 * unit
    exact = {name: count * whole for name, count in counts.items()}  # scaled by `total`
    floors = {name: value // total for name, value in exact.items()}
    short = whole - sum(floors.values())
    by_remainder = sorted(counts, key=lambda name: (-(exact[name] % total), name))
    for name in by_remainder[:short]:
        floors[name] += 1
    return {name: _decimal(value, decimals) for name, value in floors.items()}


def share_cell(share: str) -> str:
    """A share from `percent_shares` for a table column: the same number, always with
    `SHARE_DECIMALS` decimals and a percent sign ("3.7" -> "3.70%"), so columns line up."""
    whole, _, frac = share.partition(".")
    return f"{whole}.{frac:0<{SHARE_DECIMALS}}%"


def _decimal(scaled: int, decimals: int) -> str:
    whole, frac = divmod(scaled, 10**decimals)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{decimals}d}".rstrip("0")


class Summary(CountingOutput):
    """An output counting finished flows in one `Tally` (replay's whole run), and the span of
    time their packets cover."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None
        self.as_names: dict[str, str] = {}
        """AS number label -> the database's name for it, for tables."""

    def write(self, event: FlowEvent) -> None:
        network = event.network
        if network is None:
            self.tally.add(event)
        else:
            # Every network its own label (a capture is bounded); "" where the database
            # had no answer.
            asn = str(network.asn) if network.asn is not None else ""
            self.tally.add(event, asn, network.country or "")
            if asn and network.as_name and asn not in self.as_names:
                self.as_names[asn] = network.as_name
        flow = event.flow
        if self.first_ts is None or flow.first_ts < self.first_ts:
            self.first_ts = flow.first_ts
        if self.last_ts is None or flow.last_ts > self.last_ts:
            self.last_ts = flow.last_ts
