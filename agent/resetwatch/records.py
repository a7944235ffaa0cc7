"""Per-connection records (JSON lines), opt-in: one object per judged or excluded flow."""

from __future__ import annotations

import json
from typing import IO, Any, Callable

from .classify import Verdict
from .event import FlowEvent
from .flows import Exclusion, Flow
from .packet import key_fields


def _identity(ts: float) -> float:
    return ts


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


def judged_record(
    flow: Flow, verdict: Verdict, to_wall: Callable[[float], float] = _identity
) -> dict[str, Any]:
    record = flow_fields(flow, to_wall)
    record["stage"] = verdict.stage.value
    record["outcome"] = verdict.outcome.value
    record["category"] = verdict.category.value
    record["tags"] = [tag.value for tag in verdict.tags]
    return record


def excluded_record(
    flow: Flow, reason: Exclusion, to_wall: Callable[[float], float] = _identity
) -> dict[str, Any]:
    record = flow_fields(flow, to_wall)
    record["excluded"] = reason.value
    return record


class RecordWriter:
    """An output writing one JSON object per line to a stream it does not own. `to_wall`
    maps the flow clock to epoch seconds (the live agent's clock is monotonic)."""

    name = "records"

    def __init__(self, stream: IO[str], to_wall: Callable[[float], float] = _identity) -> None:
        self.stream = stream
        self.to_wall = to_wall
        self.written = 0

    def open(self) -> None:
        return None

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        self.flush()

    def write(self, event: FlowEvent) -> None:
        if event.verdict is not None:
            self._write(judged_record(event.flow, event.verdict, self.to_wall))
        elif event.excluded is not None:
            self._write(excluded_record(event.flow, event.excluded, self.to_wall))

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def flush(self) -> None:
        self.stream.flush()
