"""When the packet loop last ran and when the last packet came: what /healthz, the watchdog
and the last-packet gauges read. Written by the loop, read by any thread."""

from __future__ import annotations

from typing import Callable

STALLED_AFTER = 5.0
"""Seconds without a loop pass before /healthz says the loop stalled (the loop wakes at
least once a second)."""


class Liveness:
    def __init__(self, clock: Callable[[], float], to_wall: Callable[[float], float]) -> None:
        self._clock, self._to_wall = clock, to_wall
        self.last_loop = self.last_packet = clock()
        self.received = False

    def passed(self, now: float, received: bool) -> None:
        """One loop pass at `now`; `received`: it read packets."""
        self.last_loop = now
        if received:
            self.last_packet, self.received = now, True

    def stalled(self) -> bool:
        return self._clock() - self.last_loop > STALLED_AFTER

    def age(self) -> float:
        """Seconds since the last packet (since the start while none has come)."""
        return max(0.0, self._clock() - self.last_packet)

    def time(self) -> float:
        """Epoch seconds of the last packet; 0 while none has come."""
        return self._to_wall(self.last_packet) if self.received else 0.0
