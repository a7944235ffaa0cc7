"""The one count model: finished flows counted by their full key.

Every view of the counts (the metrics, the replay summary, the 15-minute history, the local
API) reads a `Tally`. A judged flow is counted once under its `JudgedKey` (family and the
whole verdict: stage, outcome, category, tags); an excluded flow under (family, reason).
Everything else (categories, outcomes, tags per category, shares) is a view folded from those
counts when it is read, so the per-flow cost is one dict update whatever the views.

Adding a dimension is one field of `JudgedKey` with a default, filled in `add`, named in
`to_rows`/`from_rows`: every existing view keeps working, and views that group by the new
field are one `group` call. The client network (`asn`, `country`) is such a dimension: its
labels are chosen by the caller, so one output can count all networks (replay `--by`) and
another only a bounded top N (metrics, history).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from .classify import Category, Outcome, Stage, Tag, Verdict
from .event import FlowEvent
from .flows import Exclusion
from .signature import Signature, signature_of

FAMILIES = ("4", "6")
"""Label values of `family`. History written before families were kept has family ""."""

K = TypeVar("K", bound=Hashable)


class JudgedKey(NamedTuple):
    """What a judged flow is counted under."""

    family: str
    verdict: Verdict
    asn: str = ""
    """The client's network as a label ("AS174", "other"), or "" where networks are not
    counted (no IP database, or a tally that does not split by network)."""
    country: str = ""
    """The client's country as a label ("DE", "other"), or ""."""


class ExcludedKey(NamedTuple):
    """What an excluded flow is counted under."""

    family: str
    reason: Exclusion


_new_key = tuple.__new__


class Tally:
    """Counts of judged and excluded flows by key; add, merge, views, (de)serialisation.

    Writers and readers in different threads: the writer only ever adds to the dicts, and
    readers take `copy()` (a dict copy runs under the GIL without calling Python code)."""

    __slots__ = ("excluded", "judged")

    def __init__(self) -> None:
        self.judged: dict[JudgedKey, int] = {}
        self.excluded: dict[ExcludedKey, int] = {}

    # ---- writing ------------------------------------------------------------------------

    def add(self, event: FlowEvent, asn: str = "", country: str = "") -> None:
        """Count one finished flow (the per-flow path: one key, one dict update), under the
        network labels given (the caller chooses them: all networks, or a bounded top N)."""
        verdict = event.verdict
        if verdict is not None:
            key = _new_key(JudgedKey, (event.family, verdict, asn, country))
            judged = self.judged
            judged[key] = judged.get(key, 0) + 1
        elif event.excluded is not None:
            excluded_key: ExcludedKey = _new_key(ExcludedKey, (event.family, event.excluded))
            self.excluded[excluded_key] = self.excluded.get(excluded_key, 0) + 1

    def add_judged(self, key: JudgedKey, count: int = 1) -> None:
        self.judged[key] = self.judged.get(key, 0) + count

    def add_excluded(self, key: ExcludedKey, count: int = 1) -> None:
        self.excluded[key] = self.excluded.get(key, 0) + count

    def merge(self, other: Tally) -> None:
        """Add every count of `other` to this one."""
        judged, excluded = self.judged, self.excluded
        for key, count in other.judged.copy().items():
            judged[key] = judged.get(key, 0) + count
        for reason_key, count in other.excluded.copy().items():
            excluded[reason_key] = excluded.get(reason_key, 0) + count

    def copy(self) -> Tally:
        other = Tally.__new__(Tally)
        other.judged = self.judged.copy()
        other.excluded = self.excluded.copy()
        return other

    @classmethod
    def sum(cls, tallies: Iterable[Tally]) -> Tally:
        out = cls()
        for tally in tallies:
            out.merge(tally)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tally):
            return NotImplemented
        return _nonzero(self.judged) == _nonzero(other.judged) and _nonzero(
            self.excluded
        ) == _nonzero(other.excluded)

    def __repr__(self) -> str:
        return f"Tally(judged={_nonzero(self.judged)}, excluded={_nonzero(self.excluded)})"

    # ---- views --------------------------------------------------------------------------

    def group(self, by: Callable[[JudgedKey], K]) -> dict[K, int]:
        """Judged flows summed by `by(key)`, in the order keys were first counted."""
        out: dict[K, int] = {}
        for key, count in self.judged.copy().items():
            group = by(key)
            out[group] = out.get(group, 0) + count
        return out

    def categories(self, family: Optional[str] = None) -> dict[Category, int]:
        """Judged flows per category, every category present."""
        out = dict.fromkeys(Category, 0)
        for key, count in self.judged.copy().items():
            if family is None or key.family == family:
                out[key.verdict.category] += count
        return out

    def outcomes(self) -> dict[tuple[Stage, Outcome], int]:
        """Judged flows per (stage, outcome), every pair present."""
        out = {(s, o): 0 for s in Stage for o in Outcome}
        for key, count in self.judged.copy().items():
            out[key.verdict.stage, key.verdict.outcome] += count
        return out

    def tags(self) -> dict[tuple[Category, Tag], int]:
        """Judged flows carrying each tag, by category, every pair present."""
        out = {(c, t): 0 for c in Category for t in Tag}
        for key, count in self.judged.copy().items():
            category = key.verdict.category
            for tag in key.verdict.tags:
                out[category, tag] += count
        return out

    def tag_totals(self) -> dict[Tag, int]:
        """Judged flows carrying each tag, every tag present."""
        out = dict.fromkeys(Tag, 0)
        for (_, tag), count in self.tags().items():
            out[tag] += count
        return out

    def signatures(self) -> dict[Signature, int]:
        """Judged flows per tampering signature (derived from the verdict), every one present."""
        out = dict.fromkeys(Signature, 0)
        for key, count in self.judged.copy().items():
            out[signature_of(key.verdict) or Signature.NONE] += count
        return out

    @property
    def anomalous(self) -> int:
        """Judged flows in a category other than `no_match`."""
        return self.classified - self.categories()[Category.NO_MATCH]

    def excluded_by(self) -> dict[Exclusion, int]:
        """Excluded flows per reason, every reason present."""
        out = dict.fromkeys(Exclusion, 0)
        for key, count in self.excluded.copy().items():
            out[key.reason] += count
        return out

    @property
    def classified(self) -> int:
        return sum(self.judged.copy().values())

    @property
    def excluded_total(self) -> int:
        return sum(self.excluded.copy().values())

    # ---- (de)serialisation --------------------------------------------------------------

    def to_rows(self) -> dict[str, list[list[Any]]]:
        """Plain JSON: judged rows `[family, stage, outcome, category, [tags], asn, country,
        count]` and excluded rows `[family, reason, count]`, names only (never enum reprs)."""
        return {
            "judged": [
                [k.family, k.verdict.stage.value, k.verdict.outcome.value,
                 k.verdict.category.value, [t.value for t in k.verdict.tags], k.asn, k.country,
                 n]
                for k, n in sorted(_nonzero(self.judged).items(), key=_row_order)
            ],
            "excluded": [
                [k.family, k.reason.value, n]
                for k, n in sorted(_nonzero(self.excluded).items(),
                                   key=lambda kv: (kv[0].family, kv[0].reason.value))
            ],
        }

    @classmethod
    def from_rows(cls, rows: Mapping[str, Any], where: str = "tally") -> tuple[Tally, int]:
        """The tally of `to_rows` output, and how many counts were skipped because a name is
        unknown to this version (a newer agent's tag, say). Raises `RowsError` on bad shape."""
        tally = cls()
        skipped = 0
        for index, row in enumerate(_list(rows.get("judged", []), f"{where}.judged")):
            at = f"{where}.judged[{index}]"
            if not isinstance(row, list) or len(row) != 8 or not isinstance(row[4], list):
                raise RowsError(
                    f"{at}: not [family, stage, outcome, category, [tags], asn, country, count]"
                )
            family, stage, outcome, category, tags, asn, country, count = row
            count = _count(count, at)
            if not isinstance(asn, str) or not isinstance(country, str):
                raise RowsError(f"{at}: asn and country are labels (strings)")
            key = _judged_key(family, stage, outcome, category, tags, asn, country)
            if key is None:
                skipped += count
            else:
                tally.add_judged(key, count)
        for index, row in enumerate(_list(rows.get("excluded", []), f"{where}.excluded")):
            at = f"{where}.excluded[{index}]"
            if not isinstance(row, list) or len(row) != 3:
                raise RowsError(f"{at}: not [family, reason, count]")
            family, reason, count = row
            count = _count(count, at)
            if family in _FAMILY_NAMES and reason in _EXCLUSIONS:
                tally.add_excluded(ExcludedKey(family, _EXCLUSIONS[reason]), count)
            else:
                skipped += count
        return tally, skipped


class RowsError(ValueError):
    """Serialised counts of the wrong shape; the message names where."""


_FAMILY_NAMES = frozenset((*FAMILIES, ""))
_STAGES = {s.value: s for s in Stage}
_OUTCOMES = {o.value: o for o in Outcome}
_CATEGORIES = {c.value: c for c in Category}
_TAGS = {t.value: t for t in Tag}
_TAG_ORDER = {t: i for i, t in enumerate(Tag)}
_EXCLUSIONS = {e.value: e for e in Exclusion}


def _judged_key(
    family: Any, stage: Any, outcome: Any, category: Any, tags: list[Any], asn: str = "",
    country: str = "",
) -> Optional[JudgedKey]:
    if family not in _FAMILY_NAMES or stage not in _STAGES or outcome not in _OUTCOMES:
        return None
    if category not in _CATEGORIES or not all(t in _TAGS for t in tags):
        return None
    members = tuple(sorted((_TAGS[t] for t in set(tags)), key=_TAG_ORDER.__getitem__))
    verdict = Verdict(_STAGES[stage], _OUTCOMES[outcome], _CATEGORIES[category], members)
    return JudgedKey(family, verdict, asn, country)


def _row_order(item: tuple[JudgedKey, int]) -> tuple[Any, ...]:
    key = item[0]
    v = key.verdict
    return (key.family, v.stage.value, v.outcome.value, v.category.value,
            [t.value for t in v.tags], key.asn, key.country)


def _nonzero(counts: dict[K, int]) -> dict[K, int]:
    return {k: v for k, v in counts.copy().items() if v}


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RowsError(f"{where}: not a list")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RowsError(f"{where}: {value!r} is not a count")
    return value
