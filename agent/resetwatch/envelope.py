"""The one Radar envelope: the shape of every JSON answer of the local API and of
`resetwatch replay --format json`.

Radar answers `{"success", "errors", "result"}`; a summary's `result` holds `meta` and one
object of five percent strings per series (`summary_0`, or the `name` asked for). Our counts
behind the shares go in `meta.counts`, one entry per series, in the same layout everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import confidence
from .classify import Stage
from .summary import percent_shares
from .tally import Tally

NORMALIZATION = "PERCENTAGE"
UNITS = [{"name": "*", "value": "percentage"}]
"""Every share is a percentage of the classified connections of its series."""


def radar_meta(classified: int) -> dict[str, Any]:
    """The `meta` fields Radar's clients require besides the dates: `units` and
    `confidenceInfo`, its level from the sample size by the one rule (confidence.py)."""
    return {
        "units": UNITS,
        "confidenceInfo": {"level": confidence.level(classified), "annotations": []},
        "tooSmallToTrust": confidence.too_small(classified),
    }


def success(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"success": True, "errors": [], "result": dict(result)}


def failure(code: int, message: str) -> dict[str, Any]:
    """An error answer: `code` is the HTTP status (or 2 for a command-line failure)."""
    return {"success": False, "errors": [{"code": code, "message": message}], "result": None}


def shares(tally: Tally) -> dict[str, str]:
    """The five published fields: each category's share of the classified flows."""
    return percent_shares({c.value: n for c, n in tally.categories().items()})


def counts(tally: Tally) -> dict[str, Any]:
    """The counts behind one series' shares: the sample size, never to be guessed."""
    outcomes: dict[str, dict[str, int]] = {s.value: {} for s in Stage}
    for (stage, outcome), count in tally.outcomes().items():
        if count:
            outcomes[stage.value][outcome.value] = count
    return {
        "classified": tally.classified,
        "categories": {c.value: n for c, n in tally.categories().items()},
        "outcomes": outcomes,
        "tags": {t.value: n for t, n in tally.tag_totals().items()},
        "excluded": {e.value: n for e, n in tally.excluded_by().items()},
    }


def summary(meta: Mapping[str, Any], series: Mapping[str, Tally]) -> dict[str, Any]:
    """A summary answer: `meta` (with `normalization`, Radar's required fields judged on the
    main series, and `counts` added) and each series' shares under its key."""
    main = next(iter(series.values()), Tally())
    full = {
        "normalization": NORMALIZATION,
        **radar_meta(main.classified),
        **meta,
        "counts": {key: counts(tally) for key, tally in series.items()},
    }
    result: dict[str, Any] = {"meta": full}
    for key, tally in series.items():
        result[key] = shares(tally)
    return success(result)

