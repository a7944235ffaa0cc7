"""Per-connection records (JSON lines), opt-in: one object per judged or excluded flow."""

from __future__ import annotations

import json
from typing import IO, Any, Callable

from .classify import Verdict
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
    """A sink writing one JSON object per line. `to_wall` maps the flow clock to epoch
    seconds (the live agent's clock is monotonic)."""

    def __init__(self, stream: IO[str], to_wall: Callable[[float], float] = _identity) -> None:
        self.stream = stream
        self.to_wall = to_wall
        self.written = 0

    def judged(self, flow: Flow, verdict: Verdict) -> None:
        self._write(judged_record(flow, verdict, self.to_wall))

    def excluded(self, flow: Flow, reason: Exclusion) -> None:
        self._write(excluded_record(flow, reason, self.to_wall))

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def flush(self) -> None:
        self.stream.flush()
