"""Per-network views of the local API: the `asn`, `location` and `continent` filters, the top
lists (`/top/ases`, `/top/locations`) and the per-network table `resetwatch status --by` reads.

Radar's syntax: a comma list (or repeated parameter) of values, each one kept, or left out
when prefixed with `-` (`asn=-174,3356`: AS3356 and not AS174). Several parameters narrow
together (`asn=3356&location=DE`).

They read the per-network history (history.py): the top `network_top` networks and countries
by volume have labels of their own, everything else counts as `other`. So the answers are
honest about what is kept:

- A filter keeping a network or country that has no label of its own in the range gives an
  empty sample (a note in `meta.networks` says why), never the whole server's traffic.
- An exclusion keeps `other` (it may hold the excluded network from times it was untracked;
  the note says so). Flows counted before an IP database was set have no network and pass no
  filter; excluded flows (never looked up) pass none either.
- The continent is the one the database gave with the country, remembered per country label
  (history.NetworkNames): flows of countries folded into `other` have none and pass no
  continent filter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import confidence
from .classify import Category
from .report import network_rows
from .summary import percent_shares
from .tally import JudgedKey, Tally
from .topn import OTHER

if TYPE_CHECKING:
    from .history import Snapshot
    from .networks import NetworkNames

CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
FILTERS = ("asn", "location", "continent")
_ASN = re.compile(r"^(?:AS)?(\d{1,10})$", re.IGNORECASE)
_CODE = re.compile(r"^[A-Za-z]{2}$")

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


class FilterError(ValueError):
    """A filter value refused; `parameter` names it (the API answers a 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class Selector:
    """One parameter's values: labels kept (none: all) and labels left out."""

    include: frozenset[str]
    exclude: frozenset[str]

    def passes(self, label: Optional[str]) -> bool:
        """`label` None: the flow has no value for this parameter (no database then, or a
        continent unknown); it passes no filter. `other` passes exclusions only."""
        if label is None or label == "":
            return False
        if self.include:
            return label in self.include and label not in self.exclude
        return label not in self.exclude

    def as_json(self) -> dict[str, list[str]]:
        return {"include": sorted(self.include), "exclude": sorted(self.exclude)}


def _label(parameter: str, value: str) -> str:
    if parameter == "asn":
        match = _ASN.match(value)
        if not match or int(match[1]) >= 1 << 32:
            raise FilterError("asn", f"{value!r} is not an AS number such as 3356 or -174")
        return str(int(match[1]))
    if parameter == "continent":
        if value.upper() not in CONTINENTS:
            raise FilterError(
                "continent", f"{value!r} is not a continent code ({', '.join(CONTINENTS)})"
            )
        return value.upper()
    if not _CODE.match(value):
        raise FilterError(
            "location", f"{value!r} is not an ISO 3166 alpha-2 country code such as DE"
        )
    return value.upper()


def selector(parameter: str, values: Sequence[str]) -> Optional[Selector]:
    """The selector of a parameter's values (already split at commas); None when absent."""
    if not values:
        return None
    include, exclude = set(), set()
    for value in values:
        if value.startswith("-"):
            exclude.add(_label(parameter, value[1:].strip()))
        else:
            include.add(_label(parameter, value))
    return Selector(frozenset(include), frozenset(exclude))


@dataclass(frozen=True)
class NetFilter:
    """The network filters of one query; all None: the whole server."""

    asn: Optional[Selector] = None
    location: Optional[Selector] = None
    continent: Optional[Selector] = None

    @classmethod
    def of(cls, values: Callable[[str], list[str]]) -> NetFilter:
        """From a query's parameters (`values(name)`: the comma-split values)."""
        return cls(*(selector(name, values(name)) for name in FILTERS))

    @property
    def active(self) -> bool:
        return any(s is not None for s in (self.asn, self.location, self.continent))

    def passes(self, key: JudgedKey, continents: dict[str, str]) -> bool:
        if self.asn is not None and not self.asn.passes(key.asn):
            return False
        if self.location is not None and not self.location.passes(key.country):
            return False
        if self.continent is not None:
            return self.continent.passes(continents.get(key.country))
        return True

    def tally(self, tally: Tally, continents: dict[str, str]) -> Tally:
        """The judged flows that pass; excluded flows have no network and never pass."""
        out = Tally()
        for key, count in tally.judged.copy().items():
            if self.passes(key, continents):
                out.add_judged(key, count)
        return out

    def apply(self, snapshot: Snapshot) -> Snapshot:
        if not self.active:
            return snapshot
        continents = snapshot.names.continent
        buckets = {s: self.tally(b, continents) for s, b in snapshot.buckets.items()}
        return type(snapshot)(buckets, snapshot.names, snapshot.top)

    def meta(self, snapshot: Snapshot, filtered: Snapshot) -> Optional[dict[str, Any]]:
        """`meta.networks`: what the filters were and what the per-network counts hold."""
        if not self.active:
            return None
        kept = Tally.sum(filtered.buckets.values()).classified
        notes = [
            f"per-network counts hold the {snapshot.top} busiest networks and countries "
            "(the metrics' labels); the rest count as 'other'. Excluded flows have no network "
            "and are left out of filtered answers."
            if snapshot.top else
            "this agent has no IP database (ipdb): it keeps no per-network counts, so no "
            "flow passes a network filter."
        ]
        missing = self._untracked(snapshot)
        if missing:
            notes.append(
                f"no flows under {', '.join(missing)} in this range: not among the tracked "
                "networks (their flows count as 'other') or none seen. This is an empty "
                "sample, not the server's traffic."
            )
        if any(s is not None and s.exclude for s in (self.asn, self.location)):
            notes.append("an exclusion keeps 'other', which may hold an excluded network "
                         "from times it was not tracked.")
        if self.continent is not None:
            notes.append("a country's continent is the database's; countries counted as "
                         "'other' have none and pass no continent filter.")
        return {
            "filters": {name: s.as_json() for name, s in
                        zip(FILTERS, (self.asn, self.location, self.continent)) if s},
            "tracked": snapshot.top,
            "classified": kept,
            "notes": notes,
        }

    def _untracked(self, snapshot: Snapshot) -> list[str]:
        """The included labels that have no flow of their own in the range."""
        seen_asn, seen_country = set(), set()
        for bucket in snapshot.buckets.values():
            for key in bucket.judged.copy():
                seen_asn.add(key.asn)
                seen_country.add(key.country)
        seen_continent = {snapshot.names.continent.get(c) for c in seen_country}
        missing = []
        for selector_, seen, form in (
            (self.asn, seen_asn, "AS{}"),
            (self.location, seen_country, "{}"),
            (self.continent, seen_continent, "{}"),
        ):
            if selector_ is not None:
                missing += [form.format(v) for v in sorted(selector_.include) if v not in seen]
        return missing


NO_FILTER = NetFilter()


# ---- top lists -------------------------------------------------------------------------------


def category_of(values: list[str]) -> Category:
    """The `category` parameter of a top list: required, as Radar's top endpoints require
    the dimension value they rank by."""
    names = ", ".join(c.value for c in Category)
    if not values:
        raise FilterError("category", f"required: the category to rank by ({names})")
    if len(values) > 1:
        raise FilterError("category", f"give one value, not {len(values)}")
    for category in Category:
        if values[0].lower() == category.value:
            return category
    raise FilterError("category", f"{values[0]!r} is not one of {names}")


def limit_of(values: list[str]) -> int:
    if not values:
        return DEFAULT_LIMIT
    if len(values) > 1 or not values[0].isdigit() or not 1 <= int(values[0]) <= MAX_LIMIT:
        raise FilterError("limit", f"{','.join(values)!r} is not a number from 1 to {MAX_LIMIT}")
    return int(values[0])


def _split(tally: Tally, field: str) -> dict[str, Tally]:
    per: dict[str, Tally] = {}
    for key, count in tally.judged.copy().items():
        per.setdefault(getattr(key, field), Tally()).add_judged(key, count)
    return per


def top_rows(
    total: Tally, by: str, category: Category, limit: int, names: NetworkNames
) -> tuple[list[dict[str, Any]], int]:
    """The networks (or countries) with a label of their own, ranked by `category`'s share:
    those with enough flows to trust first (confidence.py), then the too-small ones, each by
    share and then by sample size. A 1-flow network at 100% never outranks a measured one.
    Also the flows counted as `other`."""
    per = _split(total, by)
    other = per.pop(OTHER, Tally()).classified
    per.pop("", None)
    ranked = []
    for label, part in per.items():
        classified = part.classified
        if not classified:
            continue
        count = part.categories()[category]
        ranked.append((confidence.too_small(classified), -count / classified, -classified,
                       label, classified, part))
    ranked.sort(key=lambda r: r[:4])
    rows = []
    for rank, (small, _, _, label, classified, part) in enumerate(ranked[:limit], 1):
        shares = percent_shares({c.value: n for c, n in part.categories().items()})
        row: dict[str, Any]
        if by == "asn":
            row = {"clientASN": int(label), "clientASName": names.as_name.get(label, "")}
        else:
            row = {"clientCountryAlpha2": label,
                   "clientCountryName": names.country_name.get(label, label),
                   "continent": names.continent.get(label)}
        row.update({"value": shares[category.value], "rank": rank, "classified": classified,
                    "tooSmallToTrust": small})
        rows.append(row)
    return rows, other


TOP_CSV = {
    "asn": ["rank", "clientASN", "clientASName", "value", "classified", "tooSmallToTrust"],
    "country": ["rank", "clientCountryAlpha2", "clientCountryName", "value", "classified",
                "tooSmallToTrust"],
}


def csv_rows(rows: Iterable[dict[str, Any]], header: Sequence[str]) -> list[list[Any]]:
    return [[str(r[h]).lower() if isinstance(r[h], bool) else r[h] for h in header]
            for r in rows]


def by_of(values: list[str]) -> str:
    """The `by` parameter of `/networks`: asn or country."""
    if len(values) != 1 or values[0] not in ("asn", "country"):
        raise FilterError("by", f"{','.join(values) or 'nothing'!r}: give asn or country")
    return values[0]


def networks_rows(total: Tally, by: str, names: NetworkNames) -> list[dict[str, Any]]:
    """`/networks?by=`: replay's per-network rows (report.network_rows) from the history;
    `other` is the flows of untracked networks, "" (shown as null) those never looked up."""
    return network_rows(total, by, names.as_name)
