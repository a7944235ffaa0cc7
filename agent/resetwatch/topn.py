"""Stable top-N membership, to keep a metric label with open-ended values (client networks,
countries) to at most N values plus "other".

Each judged flow is observed under its name. A name's volume decays with a half-life of a few
hours, so the ranking follows what is busy now and not since start. Membership is sticky on
purpose: a flapping label would start and stop series, and every start is a new counter.

- A name enters when its decayed volume ranks it in the top N and a place is free (at most N
  members: with "other", at most N + 1 label values).
- A member leaves only after `leave_after` (a day) continuously outside the top 2N; a member
  ranked between N and 2N holds its place, so a newcomer in the top N may wait for one.
  "Continuously" is as seen by the rankings (each `recompute_every`, on `observe` or `tick`).
- A new member's series starts at 0 at entry: its flows until then were counted under "other"
  (the caller creates the series when `observe` first returns the name, and removes the
  series of names that left). So sums over a fleet undercount a network that some agents fold
  into "other" and others do not; the share within one series stays right.

`observe` is O(1) amortised: one dict update with a score that never needs decaying.
Scores are stored inflated by 2 ** (t / half_life) (a later flow weighs more), which ranks
names exactly as decayed scores would; they are rescaled, all at once, before the factor gets
large. The ranking itself is redone at most once per `recompute_every` seconds. Memory is
bounded: at most 2 `max_candidates` names keep a score (pruned to the highest
`max_candidates` besides the members).

`observe` and `tick` belong to one thread (the packet loop); `members`, `label` and the
counters can be read from any thread.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Callable, Optional

OTHER = "other"
"""The label of every name that is not a member."""

HALF_LIFE = 3 * 3600.0
LEAVE_AFTER = 86400.0

_RESCALE_AT = 256.0
"""e-folds since the last rescale before scores are rescaled (e**256: far from overflow)."""


class TopN:
    """The top `n` names by decayed volume, with sticky membership (see the module text).

    `clock` is monotonic seconds; `max_candidates` (default 20 n) bounds the names scored
    besides the members; `max_distinct` bounds the set behind `distinct_seen`."""

    def __init__(
        self,
        n: int,
        half_life: float = HALF_LIFE,
        leave_after: float = LEAVE_AFTER,
        clock: Callable[[], float] = time.monotonic,
        max_candidates: Optional[int] = None,
        recompute_every: float = 1.0,
        max_distinct: int = 1 << 17,
    ) -> None:
        if n < 1:
            raise ValueError(f"top N needs N >= 1, not {n}")
        if half_life <= 0 or leave_after < 0 or recompute_every < 0:
            raise ValueError("half_life must be > 0, leave_after and recompute_every >= 0")
        self.n = n
        self.half_life = half_life
        self.leave_after = leave_after
        self.recompute_every = recompute_every
        self.max_candidates = max_candidates if max_candidates is not None else 20 * n
        if self.max_candidates < 2 * n:
            raise ValueError(f"max_candidates must be >= 2N ({2 * n})")
        self.max_distinct = max_distinct
        self._clock = clock
        self._rate = math.log(2.0) / half_life  # e-folds per second
        # Pruning halves the table: amortised O(log) per new name.
        self._prune_at = 2 * self.max_candidates
        self._scores: dict[str, float] = {}
        self._base = clock()
        self._next_recompute = self._base
        self._member_set: set[str] = set()
        self._members: frozenset[str] = frozenset()
        self._outside_since: dict[str, float] = {}
        self._seen: set[str] = set()
        self.folded_into_other: float = 0
        """Weight (flows) observed while their name was not a member."""
        self.observed: float = 0
        self.generation = 0
        """Incremented at every membership change, for callers that mirror the members."""

    # - the per-flow path -

    def observe(self, name: str, weight: float = 1) -> str:
        """Count `weight` flows for `name`; returns the label to count them under now (the
        name if it is a member, else "other")."""
        now = self._clock()
        if now >= self._next_recompute:
            self._recompute(now)
        exponent = (now - self._base) * self._rate
        if exponent > _RESCALE_AT:
            self._rescale(now)
            exponent = 0.0
        scores = self._scores
        old = scores.get(name)
        if old is None:  # a name not tracked (new, or dropped by _prune)
            if name == OTHER:
                raise ValueError(f"{OTHER!r} is the label of non-members, not a name")
            if len(self._seen) < self.max_distinct:
                self._seen.add(name)
            old = 0.0
            if len(scores) >= self._prune_at:
                self._prune()
                scores = self._scores
        scores[name] = old + weight * math.exp(exponent)
        self.observed += weight
        if name in self._members:
            return name
        self.folded_into_other += weight
        return OTHER

    def tick(self) -> None:
        """Redo the ranking if it is due: for idle periods (members leave on time even when
        no flow is observed). Call it from the thread that observes."""
        now = self._clock()
        if now >= self._next_recompute:
            self._recompute(now)

    # - reading -

    def members(self) -> frozenset[str]:
        return self._members

    def label(self, name: str) -> str:
        return name if name in self._members else OTHER

    @property
    def distinct_seen(self) -> int:
        """Distinct names observed since start (exact up to `max_distinct`, then a floor)."""
        return len(self._seen)

    def score(self, name: str) -> float:
        """`name`'s decayed volume now (0 when not, or no longer, tracked)."""
        exponent = (self._clock() - self._base) * self._rate
        return self._scores.get(name, 0.0) / math.exp(exponent)

    def ranking(self) -> list[str]:
        """Tracked names, highest decayed volume first (for tests and debugging: O(n log n))."""
        return sorted(self._scores, key=lambda name: -self._scores[name])

    # - the periodic part -

    def _recompute(self, now: float) -> None:
        self._next_recompute = now + self.recompute_every
        scores = self._scores
        top = heapq.nlargest(2 * self.n, scores, key=scores.__getitem__)
        within = set(top)
        members = self._member_set
        changed = False
        for name in list(members):
            if name in within:
                self._outside_since.pop(name, None)
                continue
            since = self._outside_since.setdefault(name, now)
            if now - since >= self.leave_after:
                members.discard(name)
                del self._outside_since[name]
                changed = True
        for name in top[: self.n]:
            if len(members) >= self.n:
                break
            if name not in members:
                members.add(name)
                changed = True
        if changed:
            self._members = frozenset(members)
            self.generation += 1

    def _rescale(self, now: float) -> None:
        factor = math.exp((now - self._base) * self._rate)
        self._scores = {name: score / factor for name, score in self._scores.items()}
        self._base = now

    def _prune(self) -> None:
        """Keep the members and the `max_candidates` highest other names."""
        scores = self._scores
        members = self._member_set
        others = sorted(score for name, score in scores.items() if name not in members)
        if len(others) <= self.max_candidates:
            return
        cut = others[-self.max_candidates]
        kept = {name: score for name, score in scores.items() if score > cut or name in members}
        # Names tied at the cut fill the places left (a flood at one instant is all ties).
        room = self.max_candidates + len(members) - len(kept)
        for name, score in scores.items():
            if room <= 0:
                break
            if score == cut and name not in kept:
                kept[name] = score
                room -= 1
        self._scores = kept
