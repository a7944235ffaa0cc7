"""Per-connection records (JSON lines), opt-in: one object per judged or excluded flow."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from .event import FlowEvent, Output
from .flows import Flow
from .packet import key_fields

if TYPE_CHECKING:
    from .outputs import OutputSettings


def _identity(ts: float) -> float:
    return ts


class Field(NamedTuple):
    """One field of a record: its JSON name and type, when it is there, what it means."""

    name: str
    type: str
    present: str
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("src", "string", "always", "The client's address (records hold addresses: opt-in)."),
    Field("sport", "int", "always", "The client's port."),
    Field("dst", "string", "always", "The server's address."),
    Field("dport", "int", "always", "The server's port."),
    Field("family", "int", "always", "4 or 6."),
    Field("first_ts", "float", "always", "Epoch seconds of the flow's first packet."),
    Field("last_ts", "float", "always", "Epoch seconds of its last packet (the history bucket)."),
    Field("packets", "int", "always", "Ingress packets seen (at most 10)."),
    Field("stage", "string", "judged", "How far the connection got (see Stages)."),
    Field("outcome", "string", "judged", "How it ended (see Outcomes)."),
    Field("category", "string", "judged", "The published bucket (see Categories)."),
    Field("tags", "list of strings", "judged", "How it terminated, in the Tag enum's order."),
    Field("signature", "string", "judged", "The paper's tampering signature, or none."),
    Field("asn", "int or null", "judged, with an ipdb", "The client's autonomous system."),
    Field("as_name", "string or null", "judged, with an ipdb", "That system's name."),
    Field("country", "string or null", "judged, with an ipdb",
          "The client's country, ISO 3166 alpha-2."),
    Field("excluded", "string", "excluded", "Why the flow was counted but not classified."),
)
"""Every field a record can have, in the order written: the docs table comes from here."""


def flow_fields(flow: Flow, to_wall: Callable[[float], float] = _identity) -> dict[str, Any]:
    src, sport, dst, dport = key_fields(flow.key)
    return {
        "src": src,
        "sport": sport,
        "dst": dst,
        "dport": dport,
        "family": flow.family,
        "first_ts": round(to_wall(flow.first_ts), 6),
        "last_ts": round(to_wall(flow.last_ts), 6),
        "packets": flow.packets,
    }


def event_record(
    event: FlowEvent, to_wall: Callable[[float], float] = _identity
) -> dict[str, Any]:
    """The record of one finished flow (`FIELDS` says which keys, when)."""
    record = flow_fields(event.flow, to_wall)
    verdict = event.verdict
    if verdict is None:
        record["excluded"] = event.excluded.value if event.excluded is not None else None
        return record
    record["stage"] = verdict.stage.value
    record["outcome"] = verdict.outcome.value
    record["category"] = verdict.category.value
    record["tags"] = [tag.value for tag in verdict.tags]
    record["signature"] = event.signature.value if event.signature is not None else None
    network = event.network
    if network is not None:
        record["asn"], record["as_name"], record["country"] = (
            network.asn, network.as_name, network.country
        )
    return record


class Record(NamedTuple):
    """A record read back (the demo, tests, tools): typed, never string keys at the caller."""

    src: str
    sport: int
    dst: str
    dport: int
    family: int
    first_ts: float
    last_ts: float
    packets: int
    stage: Optional[str] = None
    outcome: Optional[str] = None
    category: Optional[str] = None
    tags: tuple[str, ...] = ()
    signature: Optional[str] = None
    asn: Optional[int] = None
    as_name: Optional[str] = None
    country: Optional[str] = None
    excluded: Optional[str] = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """From one parsed line; unknown keys (a newer agent's) are ignored."""
        known = {f.name: data[f.name] for f in FIELDS if f.name in data}
        if "tags" in known:
            known["tags"] = tuple(known["tags"])
        return cls(**known)

    @property
    def judged(self) -> bool:
        return self.excluded is None


STDOUT = "-"
"""The records path meaning standard output (replay only): never reopened, rotated or closed."""

MODE = 0o640
"""Records hold client addresses: never readable by other users, whatever the umask."""

FLUSH_AT = 64 << 10
"""Bytes buffered before a write flushes by itself (the loop also flushes once a second)."""


class RecordWriter:
    """An output writing one JSON object per line to a file it owns (opened in `open`, made
    0640 or stricter, reopened by `reopen` for logrotate, rotated at `max_bytes` keeping
    `keep` older files as PATH.1 ... PATH.N). `to_wall` maps the flow clock to epoch seconds
    (the live agent's clock is monotonic).

    Lines are buffered here and written with os.write, so a failed write (a full disk) loses
    exactly the buffered lines: `discard` says how many (the failure policy counts them)."""

    name = "records"

    def __init__(
        self,
        path: str,
        to_wall: Callable[[float], float] = _identity,
        *,
        max_bytes: int = 0,
        keep: int = 5,
        truncate: bool = False,
    ) -> None:
        self.path = path
        self.to_wall = to_wall
        self.max_bytes = max_bytes
        self.keep = keep
        self._truncate = truncate
        self._fd = -1
        self._size = 0
        self._regular = False
        self._lines: list[bytes] = []
        self._buffered = 0
        self.written = 0
        """Records written to the file (buffered ones not yet)."""

    @property
    def pending(self) -> int:
        """Records accepted but not yet written."""
        return len(self._lines)

    def open(self) -> None:
        if self._fd >= 0:
            return
        if self.path == STDOUT:
            self._fd = sys.stdout.fileno()
            return
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if self._truncate:
            flags |= os.O_TRUNC
            self._truncate = False  # a reopen appends to what this run wrote
        fd = os.open(self.path, flags, MODE)
        try:
            info = os.fstat(fd)
            self._regular = stat.S_ISREG(info.st_mode)
            if self._regular:  # never chmod a device (/dev/null, /dev/full)
                os.fchmod(fd, stat.S_IMODE(info.st_mode) & MODE)
            self._size = info.st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def reopen(self) -> None:
        """A fresh file at the same path (logrotate moved the old one away)."""
        if self.path == STDOUT:
            self.flush()
            return
        try:
            self.flush()
        finally:
            self._close_fd()
        self.open()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.path != STDOUT:
                self._close_fd()
            self._fd = -1

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            # Linux frees the descriptor even when close fails; the lines were written
            # (or counted as lost) before, so there is nothing more to report.
            with contextlib.suppress(OSError):
                os.close(fd)

    def write(self, event: FlowEvent) -> None:
        record = event_record(event, self.to_wall)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        self._lines.append(line)
        self._buffered += len(line)
        if self._buffered >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        if self._fd < 0:
            raise ValueError(f"{self.path}: not open")
        data = b"".join(self._lines)
        if self.max_bytes and self._regular and self._size and (
            self._size + len(data) > self.max_bytes
        ):
            self._rotate()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        self.written += len(self._lines)
        self._lines.clear()
        self._buffered = 0

    def discard(self) -> int:
        """Drop the buffered lines (after a failed write); returns how many were dropped."""
        lost = len(self._lines)
        self._lines.clear()
        self._buffered = 0
        return lost

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.keep (the oldest is removed), then a fresh PATH."""
        self._close_fd()
        for index in range(self.keep, 0, -1):
            older = f"{self.path}.{index}"
            newer = f"{self.path}.{index - 1}" if index > 1 else self.path
            if index == self.keep and os.path.exists(older):
                os.unlink(older)
            if os.path.exists(newer):
                os.rename(newer, older)
        self.open()


def from_settings(settings: OutputSettings, to_wall: Callable[[float], float]) -> Optional[Output]:
    """The records output of a config (None when records are off): `outputs.OUTPUTS` entry."""
    if not settings.records:
        return None
    return RecordWriter(
        settings.records,
        to_wall,
        max_bytes=settings.records_max_bytes,
        keep=settings.records_keep,
        truncate=settings.truncate,
    )
