"""Counts of judged and excluded flows in 15-minute buckets, kept for the retention (28 days
by default) and saved to disk.

`History` is a sink like `metrics.FlowCounts`. Each flow lands in the bucket of its last
packet's wall-clock time (the same `last_ts` the records carry), aligned to multiples of
`BUCKET_SECONDS` since the Unix epoch. The packet loop writes and the HTTP thread reads, so
every access holds one lock and readers get a copy (`snapshot`), never the live dicts.

With an IP database (`labels`, set by networks.attach), each judged flow is counted under
the client network and country labels of the metrics: the top `network_top` networks and
countries by volume have their own label, the rest count as `other` (networks.py). So the
history holds per-network counts for the top networks only, and the whole server's counts
are the sum over labels. `names` (bounded) says each label's AS name and each country's
continent, and is saved with the buckets.

`HistoryFile` keeps the buckets across restarts as one versioned JSON document, replaced
atomically (temporary file, fsync, rename). A file that cannot be read is moved aside, never
overwritten, and the agent starts empty; a failed save is logged once and counted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .classify import Category, Outcome, Stage
from .event import CountingOutput, FlowEvent
from .networks import NetworkLabels, NetworkNames
from .tally import JudgedKey, RowsError, Tally

log = logging.getLogger("resetwatch")

BUCKET_SECONDS = 900
RETENTION_SECONDS = 28 * 86400
"""The default retention (the `retention_days` setting): Radar's longest common range."""
FILE_NAME = "history.json"
FORMAT = "resetwatch-history"
MAX_BUCKET_BYTES = 256 << 10
"""The most a bucket's JSON can take (measured buckets take 1 to 3 KiB; a bucket split by
network labels tens): a file larger than its retention's worth of these is refused unread."""

INTERN_MAX = 1 << 16
"""Distinct keys shared between buckets at most; beyond, the table starts again."""

VERSION = 2
"""The version this agent writes; `from_document` reads every version up to it."""


def bucket_start(wall: float) -> int:
    """The start of the bucket holding wall-clock second `wall`."""
    return int(wall // BUCKET_SECONDS) * BUCKET_SECONDS


Bucket = Tally
"""One 15-minute bucket's counts: the one count model (tally.py)."""


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of some buckets, by start time; nothing else refers to them."""

    buckets: dict[int, Tally]
    names: NetworkNames = field(default_factory=NetworkNames)
    """What the database called the labels (AS names, countries' continents)."""
    top: int = 0
    """How many networks (and countries) get a label of their own; 0 without a database."""

    def total(self, start: int, end: int) -> Tally:
        """The sum of the buckets starting in [start, end)."""
        return Tally.sum(b for begin, b in self.buckets.items() if start <= begin < end)


class History(CountingOutput):
    """An output keeping counts per 15-minute bucket; `to_wall` maps a flow's clock to epoch
    seconds (the live agent's flow clock is monotonic)."""

    def __init__(
        self, to_wall: Callable[[float], float] = float, retention: int = RETENTION_SECONDS
    ) -> None:
        self._to_wall = to_wall
        self.retention = retention
        """Seconds of buckets kept (a multiple of BUCKET_SECONDS)."""
        self._buckets: dict[int, Tally] = {}
        self._lock = threading.Lock()
        # The bucket most flows go to (the current one), found without arithmetic or lookup:
        # in a SYN flood every flow is judged, so this path is paid per packet.
        self._hot = Tally()
        self._hot_start = self._hot_end = 0.0
        self.labels: Optional[NetworkLabels] = None
        """The network labels shared with the metrics (set by networks.attach)."""
        self.names = NetworkNames()
        # One key object for equal keys of different buckets: each flow's key (and verdict)
        # is a new tuple, and a bucket of per-network keys would otherwise hold its own copy
        # of each (~200 bytes a key instead of ~45; bench/history.py).
        self._interned: dict[JudgedKey, JudgedKey] = {}

    def use_labels(self, labels: NetworkLabels) -> None:
        """Count judged flows under `labels` (those of the metrics), which from now on note
        the AS names and continents in this history's `names` (kept across restarts)."""
        labels.names = self.names
        self.labels = labels

    # ---- writing (the packet loop) ------------------------------------------------------

    def _bucket(self, wall: float) -> Tally:
        """The bucket of `wall`, created if needed; call with the lock held."""
        start = bucket_start(wall)
        self._intern(self._hot)  # the bucket that was hot gets few new keys from now on
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = Tally()
        self._hot, self._hot_start, self._hot_end = bucket, start, start + BUCKET_SECONDS
        return bucket

    def write(self, event: FlowEvent) -> None:
        wall = self._to_wall(event.flow.last_ts)
        network, labels = event.network, self.labels
        asn, country = ("", "") if network is None or labels is None else (
            labels.labels_of(event, network))
        # acquire/release: half the cost of a `with` block, and this runs once per flow.
        self._lock.acquire()
        try:
            bucket = self._hot if self._hot_start <= wall < self._hot_end else self._bucket(wall)
            bucket.add(event, asn, country)
        finally:
            self._lock.release()

    def _intern(self, bucket: Tally) -> None:
        """Share `bucket`'s keys with the other buckets'; call with the lock held (every
        writer and reader of a bucket holds it)."""
        table = self._interned
        if len(table) > INTERN_MAX:
            table.clear()
        bucket.judged = {table.setdefault(key, key): n for key, n in bucket.judged.items()}

    def prune(self, now: float) -> int:
        """Drop buckets that ended more than the retention before `now`; how many."""
        oldest = bucket_start(now - self.retention)
        with self._lock:
            old = [start for start in self._buckets if start < oldest]
            for start in old:
                del self._buckets[start]
            if self._hot_start < oldest:
                self._hot_start = self._hot_end = 0.0  # never write to a dropped bucket
        return len(old)

    def merge(self, buckets: Mapping[int, Tally]) -> None:
        """Add counts (those loaded from the file) to what is held."""
        with self._lock:
            for start, bucket in buckets.items():
                held = self._buckets.get(start)
                if held is None:
                    held = self._buckets[start] = bucket.copy()
                else:
                    held.merge(bucket)
                self._intern(held)

    # ---- reading (any thread) -----------------------------------------------------------

    def snapshot(self, start: Optional[int] = None, end: Optional[int] = None) -> Snapshot:
        """A copy of the buckets starting in [start, end) (all of them by default)."""
        with self._lock:
            buckets = {
                begin: bucket.copy()
                for begin, bucket in self._buckets.items()
                if (start is None or begin >= start) and (end is None or begin < end)
            }
        labels = self.labels
        return Snapshot(buckets, self.names.copy(), labels.top if labels is not None else 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


# ---- the file ------------------------------------------------------------------------------


def to_document(snapshot: Snapshot, saved_at: float) -> dict[str, Any]:
    """The versioned JSON document of a snapshot (version `VERSION`; docs/operations.md
    describes every version's layout)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "bucketSeconds": BUCKET_SECONDS,
        "savedAt": round(saved_at, 3),
        "buckets": [
            {"start": start, **bucket.to_rows()}
            for start, bucket in sorted(snapshot.buckets.items())
        ],
        "names": snapshot.names.to_json(),
    }


class DocumentError(ValueError):
    """The history document is not one this version can read; the message says why."""


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DocumentError(f"{where}: not an object")
    return value


def from_document(doc: Any) -> tuple[dict[int, Tally], int]:
    """The buckets of a document of any version up to `VERSION`, and how many counts were
    skipped because their names are unknown to this version (a newer agent's tag, say):
    those are dropped, not fatal. A newer version is refused (its layout is unknown)."""
    doc = _mapping(doc, "document")
    if doc.get("format") != FORMAT:
        raise DocumentError(f"not a {FORMAT} document")
    version = doc.get("version")
    readers = {1: _v1_bucket, 2: _v2_bucket}
    if isinstance(version, bool) or version not in readers:
        raise DocumentError(f"version {version!r} (this agent reads 1 to {VERSION})")
    if doc.get("bucketSeconds") != BUCKET_SECONDS:
        raise DocumentError(f"bucketSeconds {doc.get('bucketSeconds')!r}")
    rows = doc.get("buckets")
    if not isinstance(rows, list):
        raise DocumentError("buckets: not a list")
    read_bucket = readers[version]
    skipped = 0
    buckets: dict[int, Tally] = {}
    for index, row in enumerate(rows):
        where = f"buckets[{index}]"
        row = _mapping(row, where)
        start = row.get("start")
        if isinstance(start, bool) or not isinstance(start, int) or start % BUCKET_SECONDS:
            raise DocumentError(f"{where}.start: {start!r} is not a bucket start")
        try:
            bucket, lost = read_bucket(row, where)
        except RowsError as error:
            raise DocumentError(str(error)) from None
        skipped += lost
        buckets.setdefault(start, Tally()).merge(bucket)
    return buckets, skipped


def _v2_bucket(row: Mapping[str, Any], where: str) -> tuple[Tally, int]:
    return Tally.from_rows(row, where)


def _v1_bucket(row: Mapping[str, Any], where: str) -> tuple[Tally, int]:
    """Version 1 kept three separate marginals per bucket: flows per category, per (stage,
    outcome) and per (category, tag), without families. A tally keyed by whole verdicts is
    rebuilt whose marginals are exactly those (every view the API serves reads only them);
    which tags went together on one flow was not kept and is not claimed. Family is ""."""
    outcomes: dict[tuple[str, str], int] = {}
    for stage, inner in _mapping(row.get("outcomes", {}), f"{where}.outcomes").items():
        for outcome, n in _mapping(inner, f"{where}.outcomes.{stage}").items():
            outcomes[stage, outcome] = _v1_count(n, f"{where}.outcomes.{stage}.{outcome}")
    tags: dict[str, dict[str, int]] = {}
    for category, inner in _mapping(row.get("tags", {}), f"{where}.tags").items():
        for tag, n in _mapping(inner, f"{where}.tags.{category}").items():
            tags.setdefault(category, {})[tag] = _v1_count(n, f"{where}.tags.{category}.{tag}")
    for category, n in _mapping(row.get("categories", {}), f"{where}.categories").items():
        _v1_count(n, f"{where}.categories.{category}")  # implied by the outcomes
    rows: list[list[Any]] = []
    by_category: dict[str, list[tuple[str, str, int]]] = {}
    skipped = 0
    for (stage, outcome), n in outcomes.items():
        name = _category_of(stage, outcome)
        if name is None:
            skipped += n
        elif n:
            by_category.setdefault(name, []).append((stage, outcome, n))
    for name, units in by_category.items():
        rows.extend(_v1_rows(name, units, tags.get(name, {})))
    excluded = [["", reason, _v1_count(n, f"{where}.excluded.{reason}")]
                for reason, n in _mapping(row.get("excluded", {}), f"{where}.excluded").items()]
    tally, unknown = Tally.from_rows({"judged": rows, "excluded": excluded}, where)
    return tally, skipped + unknown


def _v1_rows(
    category: str, units: list[tuple[str, str, int]], tag_counts: Mapping[str, int]
) -> list[list[Any]]:
    """Lay the category's flows out in a row (by stage and outcome), give each tag to the
    first `count` of them, and cut the row wherever a unit or a tag changes."""
    total = sum(n for _, _, n in units)
    tags = {tag: min(n, total) for tag, n in tag_counts.items() if n}
    cuts = {0, total, *tags.values()}
    edge = 0
    for _, _, n in units:
        edge += n
        cuts.add(edge)
    points = sorted(cuts)
    rows = []
    unit_index, unit_end = 0, units[0][2]
    for low, high in zip(points, points[1:]):
        while low >= unit_end:
            unit_index += 1
            unit_end += units[unit_index][2]
        stage, outcome, _ = units[unit_index]
        members = sorted(tag for tag, n in tags.items() if n > low)
        rows.append(["", stage, outcome, category, members, "", "", high - low])
    return rows


def _category_of(stage: str, outcome: str) -> Optional[str]:
    """The methodology's category of a (stage, outcome), by name; None for unknown names."""
    stages = {s.value for s in Stage}
    if stage not in stages or outcome not in {o.value for o in Outcome}:
        return None
    if outcome == Outcome.RESET.value or (
        outcome == Outcome.TIMEOUT.value and stage != Stage.LATER.value
    ):
        return str(Category.LATER_IN_FLOW.value) if stage == Stage.LATER.value else str(stage)
    return str(Category.NO_MATCH.value)


def _v1_count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DocumentError(f"{where}: {value!r} is not a count")
    return value


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
        text = self._read(history.retention)
        if text is None:
            return
        try:
            doc = json.loads(text)
            buckets, skipped = from_document(doc)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, DocumentError
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            self._refuse(f"is not a readable history ({problem})")
            return
        now = self._wall()
        # A clock that was ahead at the last save, or a crafted file: nothing can have been
        # counted after the current bucket, and such buckets would be kept forever.
        future = [start for start in buckets if start > bucket_start(now) + BUCKET_SECONDS]
        for start in future:
            del buckets[start]
        if future:
            log.warning("history: dropped %d buckets of %s that lie in the future (a clock "
                        "that was ahead?)", len(future), self.path)  # fmt: skip
        history.merge(buckets)
        history.names.load(doc.get("names"))  # version 2 files of part 1 have none
        dropped = history.prune(now)
        if skipped:
            log.warning("history: ignored %d counts with names this version does not know",
                        skipped)
        log.info("history: loaded %d buckets from %s", len(buckets) - dropped, self.path)

    def _read(self, retention: int) -> Optional[bytes]:
        """The file's bytes, or None (missing, unreadable, not a regular file, or larger than
        the retention can explain: logged, and the agent starts empty)."""
        try:
            info = os.stat(self.path)
            if not stat.S_ISREG(info.st_mode):
                # A FIFO would block the start forever; a directory cannot be read.
                log.error("history: %s is not a regular file; starting empty (left in place)",
                          self.path)  # fmt: skip
                return None
            limit = (retention // BUCKET_SECONDS + 2) * MAX_BUCKET_BYTES
            if info.st_size > limit:
                self._refuse(f"is {info.st_size:,} bytes, more than {limit:,} that "
                             f"{retention // 86400} days of buckets can hold")  # fmt: skip
                return None
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.error("history: cannot read %s: %s; starting empty", self.path, error.strerror)
            return None

    def _refuse(self, problem: str) -> None:
        aside = self._move_aside()
        log.error("history: %s %s; %s, starting empty", self.path, problem,
                  f"moved to {aside}" if aside else "left in place")  # fmt: skip

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
