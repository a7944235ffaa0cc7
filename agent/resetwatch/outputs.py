"""The outputs that can fail (files, sockets), built from the settings, and their failure policy.

`OUTPUTS` is the factory: one line per kind of output, name -> maker; a maker returns None
when its output is off. `run` (daemon.py) and `replay` (cli.py) build theirs with `OutputSet`.
In-memory outputs (the metrics counts, the history) never fail and are not built here.

The failure policy (`Guarded`): an output that fails (ENOSPC, EIO, EPIPE, a closed file) never
stops the packet loop, a reload or a stop. Each failure is counted per output; the first one
of an episode is logged, and so is the recovery; while it fails the output is retried with a
doubling backoff (1 s to 60 s: a reopen, then the next flush), and the flows it misses are
counted as dropped. `/healthz` names a failing output (see `OutputSet.failing`).

Adding an output: a module with a class implementing `event.Output` and a maker
`(OutputSettings, to_wall) -> Optional[Output]`, and one line in `OUTPUTS`. An output that
buffers may offer `pending` (events accepted, not yet written) and `discard()` (drop them
after a failure, returning how many): then a failed flush counts them as dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from . import records
from .event import FlowEvent, Output

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("resetwatch")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
"""Seconds before the first retry of a failing output, and the most between two retries."""


@dataclass(frozen=True)
class OutputSettings:
    """What the makers read: the output keys of `config.Config` (replay fills its own)."""

    records: str = ""
    records_max_bytes: int = 0
    records_keep: int = 5
    truncate: bool = False
    """Start the file empty (replay writes a new one; the agent appends)."""

    @classmethod
    def of(cls, config: Config) -> OutputSettings:
        return cls(config.records, config.records_max_bytes, config.records_keep)


Maker = Callable[[OutputSettings, Callable[[float], float]], Optional[Output]]

OUTPUTS: Mapping[str, Maker] = {
    "records": records.from_settings,
}
"""Every output the agent can build, by name (the `output` label, declared up front)."""


@dataclass
class OutputState:
    """One output's failure accounting; it outlives the output across reloads."""

    name: str
    errors: int = 0
    dropped: int = 0
    failing: bool = False
    error: str = ""
    """The first error of the current episode, one line (empty when healthy)."""


def describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


class Guarded:
    """An output behind the failure policy: no method ever raises."""

    def __init__(
        self,
        inner: Output,
        state: OutputState,
        clock: Callable[[], float],
        say: Callable[[str], None],
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.state = state
        self._clock = clock
        self._say = say
        self._backoff = BACKOFF_FIRST
        self._retry_at: Optional[float] = None
        """Set while waiting to retry: events are dropped until then."""

    def _failed(self, error: BaseException, lost: int) -> None:
        state = self.state
        state.errors += 1
        state.dropped += lost + self._discard()
        if not state.failing:
            state.failing = True
            state.error = describe(error)
            self._say(
                f"output {self.name} failing: {state.error}; retrying with backoff, "
                "its flows are dropped meanwhile"
            )
        else:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._retry_at = self._clock() + self._backoff

    def _discard(self) -> int:
        discard: Optional[Callable[[], int]] = getattr(self.inner, "discard", None)
        if discard is None:
            return 0
        try:
            return discard()
        except Exception:  # the policy: an output never raises
            return 0

    def _recovered(self) -> None:
        state = self.state
        self._say(
            f"output {self.name} recovered ({state.errors} errors so far, "
            f"{state.dropped} flows dropped so far)"
        )
        state.failing = False
        state.error = ""
        self._backoff = BACKOFF_FIRST

    def _ready(self) -> bool:
        """False while waiting for the next retry; on the retry, reopen the output."""
        if self._retry_at is None:
            return True
        if self._clock() < self._retry_at:
            return False
        self._retry_at = None
        try:
            self.inner.reopen()
        except Exception as error:
            self._failed(error, 0)
            return False
        return True

    def open(self) -> None:
        try:
            self.inner.open()
        except Exception as error:
            self._failed(error, 0)

    def write(self, event: FlowEvent) -> None:
        if self._retry_at is not None and not self._ready():
            self.state.dropped += 1
            return
        try:
            self.inner.write(event)
        except Exception as error:
            self._failed(error, 1)

    def flush(self) -> None:
        if not self._ready():
            return
        wrote = getattr(self.inner, "pending", 1) > 0
        try:
            self.inner.flush()
        except Exception as error:
            self._failed(error, 0)
            return
        if self.state.failing and wrote:
            self._recovered()

    def reopen(self) -> None:
        self._retry_at = None
        try:
            self.inner.reopen()
        except Exception as error:
            self._failed(error, 0)

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as error:
            self._failed(error, 0)


class OutputSet:
    """The guarded outputs of a run, rebuilt on reload; the states persist (metrics)."""

    def __init__(
        self,
        clock: Callable[[], float],
        to_wall: Callable[[float], float] = float,
        say: Callable[[str], None] = log.warning,
    ) -> None:
        self._clock = clock
        self._to_wall = to_wall
        self._say = say
        self.states = {name: OutputState(name) for name in OUTPUTS}
        self.outputs: list[Guarded] = []
        self.settings: Optional[OutputSettings] = None

    def configure(self, settings: OutputSettings) -> list[Guarded]:
        """Open the outputs `settings` asks for. Called again (a reload) with the same
        settings it reopens them (logrotate); with others it closes them and builds anew."""
        if settings == self.settings:
            for output in self.outputs:
                output.reopen()
            return self.outputs
        self.close()
        self.settings = settings
        built: list[Guarded] = []
        for name, make in OUTPUTS.items():
            inner = make(settings, self._to_wall)
            if inner is not None:
                built.append(Guarded(inner, self.states[name], self._clock, self._say))
        for output in built:
            output.open()
        self.outputs = built
        return built

    def flush(self) -> None:
        for output in self.outputs:
            output.flush()

    def close(self) -> None:
        for output in self.outputs:
            output.close()
        self.outputs = []

    def failing(self) -> list[OutputState]:
        return [state for state in self.states.values() if state.failing]
