"""Counts over judged flows, and the shares the public dataset publishes (Radar shape)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from .classify import Category, Outcome, Stage, Tag, Verdict
from .event import CountingOutput, FlowEvent
from .flows import Exclusion, Flow

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
    """An output that counts categories, outcomes, tags and exclusions."""

    def __init__(self) -> None:
        self._categories: Counter[Category] = Counter({c: 0 for c in Category})
        self._outcomes: Counter[tuple[Stage, Outcome]] = Counter()
        self._tags: Counter[Tag] = Counter()
        self._unfolded: dict[Verdict, int] = {}
        """Flows judged per verdict, not yet added to the counters above. Verdicts are a few
        dozen distinct ones: one dict update per flow instead of one per counter and tag."""
        self.excluded_by: Counter[Exclusion] = Counter({e: 0 for e in Exclusion})
        self.first_ts: Optional[float] = None
        self.last_ts: Optional[float] = None

    @property
    def categories(self) -> Counter[Category]:
        self._fold()
        return self._categories

    @property
    def outcomes(self) -> Counter[tuple[Stage, Outcome]]:
        self._fold()
        return self._outcomes

    @property
    def tags(self) -> Counter[Tag]:
        self._fold()
        return self._tags

    def _fold(self) -> None:
        # In order of the verdicts' first flows: counter keys appear in the order of theirs.
        for (stage, outcome, category, tags), count in self._unfolded.items():
            self._categories[category] += count
            self._outcomes[stage, outcome] += count
            for tag in tags:
                self._tags[tag] += count
        self._unfolded.clear()

    def write(self, event: FlowEvent) -> None:
        verdict = event.verdict
        if verdict is not None:
            unfolded = self._unfolded
            unfolded[verdict] = unfolded.get(verdict, 0) + 1
        elif event.excluded is not None:
            self.excluded_by[event.excluded] += 1
        self._span(event.flow)

    def _span(self, flow: Flow) -> None:
        if self.first_ts is None or flow.first_ts < self.first_ts:
            self.first_ts = flow.first_ts
        if self.last_ts is None or flow.last_ts > self.last_ts:
            self.last_ts = flow.last_ts

    @property
    def classified(self) -> int:
        return sum(self.categories.values())

    @property
    def excluded_total(self) -> int:
        return sum(self.excluded_by.values())

    def shares(self) -> dict[str, str]:
        """The five published fields, in percent strings summing to 100."""
        return percent_shares({c.value: self.categories[c] for c in Category})

    def radar(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The public API's summary response shape, with our counts alongside in `meta`."""
        meta = {
            "normalization": "PERCENTAGE",
            **meta,
            "counts": {
                "classified": self.classified,
                "categories": {c.value: self.categories[c] for c in Category},
                "excluded": {e.value: self.excluded_by[e] for e in Exclusion},
                "tags": {t.value: self.tags[t] for t in Tag},
            },
        }
        return {"success": True, "errors": [], "result": {"meta": meta, "summary_0": self.shares()}}
