"""Counts of judged and excluded flows in 15-minute buckets, kept for 7 days and saved to disk.

`History` is a sink like `metrics.FlowCounts`. Each flow lands in the bucket of its last
packet's wall-clock time (the same `last_ts` the records carry), aligned to multiples of
`BUCKET_SECONDS` since the Unix epoch. The packet loop writes and the HTTP thread reads, so
every access holds one lock and readers get a copy (`snapshot`), never the live dicts.

`HistoryFile` keeps the buckets across restarts as one versioned JSON document, replaced
atomically (temporary file, fsync, rename). A file that cannot be read is moved aside, never
overwritten, and the agent starts empty; a failed save is logged once and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .classify import Category, Outcome, Stage, Tag
from .event import CountingOutput, FlowEvent
from .flows import Exclusion, Flow

log = logging.getLogger("resetwatch")

BUCKET_SECONDS = 900
RETENTION_SECONDS = 7 * 86400
FILE_NAME = "history.json"
FORMAT = "resetwatch-history"
VERSION = 1


def bucket_start(wall: float) -> int:
    """The start of the bucket holding wall-clock second `wall`."""
    return int(wall // BUCKET_SECONDS) * BUCKET_SECONDS


_OUTCOME_KEYS = [(s, o) for s in Stage for o in Outcome]
_TAG_KEYS = [(c, t) for c in Category for t in Tag]


class Bucket:
    """The counts of one 15-minute bucket, keyed by the enums' members. Every key is present
    from the start (plain dicts, no missing-key path: the writer runs once per flow)."""

    __slots__ = ("categories", "excluded", "outcomes", "tags")

    def __init__(self) -> None:
        self.categories: dict[Category, int] = dict.fromkeys(Category, 0)
        self.outcomes: dict[tuple[Stage, Outcome], int] = dict.fromkeys(_OUTCOME_KEYS, 0)
        self.tags: dict[tuple[Category, Tag], int] = dict.fromkeys(_TAG_KEYS, 0)
        self.excluded: dict[Exclusion, int] = dict.fromkeys(Exclusion, 0)

    def copy(self) -> Bucket:
        other = Bucket.__new__(Bucket)
        other.categories = self.categories.copy()
        other.outcomes = self.outcomes.copy()
        other.tags = self.tags.copy()
        other.excluded = self.excluded.copy()
        return other

    def add(self, other: Bucket) -> None:
        for mine, theirs in (
            (self.categories, other.categories),
            (self.outcomes, other.outcomes),
            (self.tags, other.tags),
            (self.excluded, other.excluded),
        ):
            for key, count in theirs.items():
                mine[key] += count  # type: ignore[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bucket) and all(
            getattr(self, name) == getattr(other, name) for name in Bucket.__slots__
        )

    def __repr__(self) -> str:
        nonzero = {
            name: {k: v for k, v in getattr(self, name).items() if v} for name in Bucket.__slots__
        }
        return f"Bucket({nonzero})"

    @property
    def classified(self) -> int:
        return sum(self.categories.values())

    @property
    def excluded_total(self) -> int:
        return sum(self.excluded.values())


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of some buckets, by start time; nothing else refers to them."""

    buckets: dict[int, Bucket]

    def total(self, start: int, end: int) -> Bucket:
        """The sum of the buckets starting in [start, end)."""
        out = Bucket()
        for begin, bucket in self.buckets.items():
            if start <= begin < end:
                out.add(bucket)
        return out


class History(CountingOutput):
    """An output keeping counts per 15-minute bucket; `to_wall` maps a flow's clock to epoch
    seconds (the live agent's flow clock is monotonic)."""

    def __init__(self, to_wall: Callable[[float], float] = float) -> None:
        self._to_wall = to_wall
        self._buckets: dict[int, Bucket] = {}
        self._lock = threading.Lock()
        # The bucket most flows go to (the current one), found without arithmetic or lookup:
        # in a SYN flood every flow is judged, so this path is paid per packet.
        self._hot = Bucket()
        self._hot_start = self._hot_end = 0.0

    # ---- writing (the packet loop) ------------------------------------------------------

    def _bucket(self, wall: float) -> Bucket:
        """The bucket of `wall`, created if needed; call with the lock held."""
        start = bucket_start(wall)
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = Bucket()
        self._hot, self._hot_start, self._hot_end = bucket, start, start + BUCKET_SECONDS
        return bucket

    def write(self, event: FlowEvent) -> None:
        verdict = event.verdict
        if verdict is None:
            if event.excluded is not None:
                self._excluded(event.flow, event.excluded)
            return
        stage, outcome, category, tags = verdict
        wall = self._to_wall(event.flow.last_ts)
        # acquire/release: half the cost of a `with` block, and this runs once per flow.
        self._lock.acquire()
        try:
            bucket = self._hot if self._hot_start <= wall < self._hot_end else self._bucket(wall)
            bucket.categories[category] += 1
            bucket.outcomes[stage, outcome] += 1
            if tags:
                bucket_tags = bucket.tags
                for tag in tags:
                    bucket_tags[category, tag] += 1
        finally:
            self._lock.release()

    def _excluded(self, flow: Flow, reason: Exclusion) -> None:
        wall = self._to_wall(flow.last_ts)
        self._lock.acquire()
        try:
            bucket = self._hot if self._hot_start <= wall < self._hot_end else self._bucket(wall)
            bucket.excluded[reason] += 1
        finally:
            self._lock.release()

    def prune(self, now: float) -> int:
        """Drop buckets that ended more than `RETENTION_SECONDS` before `now`; how many."""
        oldest = bucket_start(now - RETENTION_SECONDS)
        with self._lock:
            old = [start for start in self._buckets if start < oldest]
            for start in old:
                del self._buckets[start]
            if self._hot_start < oldest:
                self._hot_start = self._hot_end = 0.0  # never write to a dropped bucket
        return len(old)

    def merge(self, buckets: Mapping[int, Bucket]) -> None:
        """Add counts (those loaded from the file) to what is held."""
        with self._lock:
            for start, bucket in buckets.items():
                held = self._buckets.get(start)
                if held is None:
                    self._buckets[start] = bucket.copy()
                else:
                    held.add(bucket)

    # ---- reading (any thread) -----------------------------------------------------------

    def snapshot(self, start: Optional[int] = None, end: Optional[int] = None) -> Snapshot:
        """A copy of the buckets starting in [start, end) (all of them by default)."""
        with self._lock:
            return Snapshot(
                {
                    begin: bucket.copy()
                    for begin, bucket in self._buckets.items()
                    if (start is None or begin >= start) and (end is None or begin < end)
                }
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


# ---- the file ------------------------------------------------------------------------------


def to_document(snapshot: Snapshot, saved_at: float) -> dict[str, Any]:
    """The versioned JSON document of a snapshot (names, never enum reprs)."""

    def nested(counts: Mapping[tuple[Any, Any], int]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (outer, inner), count in counts.items():
            if count:
                out.setdefault(outer.value, {})[inner.value] = count
        return out

    return {
        "format": FORMAT,
        "version": VERSION,
        "bucketSeconds": BUCKET_SECONDS,
        "savedAt": round(saved_at, 3),
        "buckets": [
            {
                "start": start,
                "categories": {c.value: n for c, n in b.categories.items() if n},
                "outcomes": nested(b.outcomes),
                "tags": nested(b.tags),
                "excluded": {e.value: n for e, n in b.excluded.items() if n},
            }
            for start, b in sorted(snapshot.buckets.items())
        ],
    }


class DocumentError(ValueError):
    """The history document is not one this version can read; the message says why."""


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DocumentError(f"{where}: {value!r} is not a count")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DocumentError(f"{where}: not an object")
    return value


def from_document(doc: Any) -> tuple[dict[int, Bucket], int]:
    """The buckets of a document, and how many counts were skipped because their names are
    unknown to this version (a newer agent's tag, say): those are dropped, not fatal."""
    doc = _mapping(doc, "document")
    if doc.get("format") != FORMAT:
        raise DocumentError(f"not a {FORMAT} document")
    if doc.get("version") != VERSION:
        raise DocumentError(f"version {doc.get('version')!r} (this agent reads {VERSION})")
    if doc.get("bucketSeconds") != BUCKET_SECONDS:
        raise DocumentError(f"bucketSeconds {doc.get('bucketSeconds')!r}")
    rows = doc.get("buckets")
    if not isinstance(rows, list):
        raise DocumentError("buckets: not a list")
    categories = {c.value: c for c in Category}
    stages = {s.value: s for s in Stage}
    outcomes = {o.value: o for o in Outcome}
    tags = {t.value: t for t in Tag}
    reasons = {e.value: e for e in Exclusion}
    skipped = 0
    buckets: dict[int, Bucket] = {}
    for index, row in enumerate(rows):
        where = f"buckets[{index}]"
        row = _mapping(row, where)
        start = row.get("start")
        if isinstance(start, bool) or not isinstance(start, int) or start % BUCKET_SECONDS:
            raise DocumentError(f"{where}.start: {start!r} is not a bucket start")
        bucket = buckets.setdefault(start, Bucket())
        for name, n in _mapping(row.get("categories", {}), where).items():
            count = _count(n, f"{where}.categories.{name}")
            if name in categories:
                bucket.categories[categories[name]] += count
            else:
                skipped += count
        for name, inner in _mapping(row.get("outcomes", {}), where).items():
            for sub, n in _mapping(inner, f"{where}.outcomes.{name}").items():
                count = _count(n, f"{where}.outcomes.{name}.{sub}")
                if name in stages and sub in outcomes:
                    bucket.outcomes[stages[name], outcomes[sub]] += count
                else:
                    skipped += count
        for name, inner in _mapping(row.get("tags", {}), where).items():
            for sub, n in _mapping(inner, f"{where}.tags.{name}").items():
                count = _count(n, f"{where}.tags.{name}.{sub}")
                if name in categories and sub in tags:
                    bucket.tags[categories[name], tags[sub]] += count
                else:
                    skipped += count
        for name, n in _mapping(row.get("excluded", {}), where).items():
            count = _count(n, f"{where}.excluded.{name}")
            if name in reasons:
                bucket.excluded[reasons[name]] += count
            else:
                skipped += count
    return buckets, skipped


class HistoryFile:
    """`history.json` in the state directory: load at start, save now and then, never fatal.

    Save failures are counted in `save_errors` and logged only when the problem changes (a
    read-only disk would otherwise log every minute)."""

    def __init__(self, directory: str, wall: Callable[[], float]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._wall = wall
        self.save_errors = 0
        self._problem: Optional[str] = None

    def load(self, history: History) -> None:
        """Add the saved counts to `history`. A missing file is normal; an unreadable one is
        moved aside (`history.json.bad`) with one log line, and the agent starts empty."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Not fatal: the agent runs without persistence; the saves will say so.
            log.error("history: cannot create %s: %s", self.directory, error.strerror)
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as error:
            log.error("history: cannot read %s: %s; starting empty", self.path, error.strerror)
            return
        try:
            buckets, skipped = from_document(json.loads(text))
        except (ValueError, RecursionError) as error:  # JSONDecodeError, DocumentError
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            aside = self._move_aside()
            log.error(
                "history: %s is not a readable history (%s); %s, starting empty",
                self.path, problem, f"moved to {aside}" if aside else "left in place",
            )
            return
        history.merge(buckets)
        dropped = history.prune(self._wall())
        if skipped:
            log.warning("history: ignored %d counts with names this version does not know",
                        skipped)
        log.info("history: loaded %d buckets from %s", len(buckets) - dropped, self.path)

    def _move_aside(self) -> Optional[Path]:
        aside = self.path.with_name(self.path.name + ".bad")
        number = 0
        while aside.exists() and number < 100:  # an earlier bad file is kept too
            number += 1
            aside = self.path.with_name(f"{self.path.name}.bad.{number}")
        try:
            os.replace(self.path, aside)
        except OSError as error:
            log.error("history: cannot move %s aside: %s", self.path, error.strerror)
            return None
        return aside

    def save(self, history: History) -> bool:
        """Write the history atomically; on failure count it, log if the problem is new."""
        now = self._wall()
        history.prune(now)
        data = json.dumps(to_document(history.snapshot(), now), separators=(",", ":"))
        try:
            self._write(data.encode())
        except OSError as error:
            self.save_errors += 1
            problem = f"{error.strerror or error}"
            if problem != self._problem:
                log.error("history: cannot save %s: %s (will retry)", self.path, problem)
            self._problem = problem
            return False
        if self._problem is not None:
            log.info("history: saved %s again", self.path)
            self._problem = None
        return True

    def _write(self, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        # The rename is durable only once the directory itself is on disk.
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
