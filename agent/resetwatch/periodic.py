"""Run something every N seconds, the next run N seconds after the last one ENDS.

Scheduling from the end (not from the start) means a slow run (a save to a slow disk, a rules
check waiting for the xtables lock) never makes runs back to back. `Every` is polled from a
loop; `Worker` runs its action in a thread of its own, off the packet loop. The clock is
injected, so a test can move time by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("resetwatch")


class Every:
    """A timer polled from a loop: `poll` runs `action` when due, and the next run is due
    `seconds` after it ended. With `background`, the action runs in a thread of its own (the
    loop goes on meanwhile; no second run starts before it ends)."""

    def __init__(
        self,
        seconds: float,
        action: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
        *,
        due_now: bool = False,
        background: bool = False,
    ) -> None:
        self.seconds = seconds
        self.action = action
        self.clock = clock
        self.background = background
        self.next_at = clock() if due_now else clock() + seconds
        self._running: Optional[threading.Thread] = None

    def poll(self) -> bool:
        """Start the action if it is due (and not running); True when it started."""
        if self._running is not None or self.clock() < self.next_at:
            return False
        if not self.background:
            self._run()
            return True
        thread = threading.Thread(target=self._run, name="periodic", daemon=True)
        self._running = thread
        thread.start()
        return True

    def _run(self) -> None:
        try:
            self.action()
        except Exception:  # a failed run must not end the schedule
            log.exception("periodic action failed")
        finally:
            self.next_at = self.clock() + self.seconds
            self._running = None

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait for a background run in progress to end."""
        running = self._running
        if running is not None:
            running.join(timeout)


class Worker:
    """`action` every `seconds` in a daemon thread, the first run `seconds` after `start`.

    An exception in the action is logged and the schedule goes on; `seconds` may be changed
    while it runs (it applies from the next schedule). `stop` wakes the thread and waits for
    a run in progress to end, at most `timeout` seconds."""

    def __init__(
        self,
        name: str,
        seconds: float,
        action: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.seconds = seconds
        self.action = action
        self.clock = clock
        self.runs = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = self.clock() + self.seconds
        while not self._stop.wait(max(0.0, next_at - self.clock())):
            try:
                self.action()
            except Exception:  # a failed run must not end the schedule
                log.exception("%s failed", self.name)
            self.runs += 1
            next_at = self.clock() + self.seconds

    def stop(self, timeout: Optional[float] = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
