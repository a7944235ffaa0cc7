"""Build `History` contents for tests: flows ending at chosen wall-clock times, with verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from resetwatch.classify import Category, Outcome, Stage, Tag, Verdict
from resetwatch.event import excluded_event, judged_event
from resetwatch.flows import Exclusion, Flow
from resetwatch.history import History

from .factory import pkt

# A verdict per category that the classifier could give (stage and outcome consistent).
VERDICTS = {
    Category.POST_SYN: (Stage.POST_SYN, Outcome.TIMEOUT),
    Category.POST_ACK: (Stage.POST_ACK, Outcome.RESET),
    Category.POST_PSH: (Stage.POST_PSH, Outcome.RESET),
    Category.LATER_IN_FLOW: (Stage.LATER, Outcome.RESET),
    Category.NO_MATCH: (Stage.LATER, Outcome.CLOSED),
}


def epoch(text: str) -> float:
    """'2026-11-22T10:07:30' (UTC) in epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def flow_at(wall: float) -> Flow:
    """A flow whose last packet was at `wall` (History's clock is the identity here)."""
    return Flow(pkt("S", wall))


def judge(
    history: History,
    wall: float,
    category: Category,
    n: int = 1,
    tags: Sequence[Tag] = (),
) -> None:
    stage, outcome = VERDICTS[category]
    for _ in range(n):
        history.write(judged_event(flow_at(wall), Verdict(stage, outcome, category, tuple(tags))))


def exclude(history: History, wall: float, reason: Exclusion, n: int = 1) -> None:
    for _ in range(n):
        history.write(excluded_event(flow_at(wall), reason))
