"""The rules keeper: owns the installed sampling rules for the agent's whole run.

It installs them at start, checks them (and puts them back) in a thread of its own, swaps
them on reload, and removes them at stop. The checks never run in the packet loop: with the
xtables lock held by another program, one check can take the tool's lock wait (5 s) or its
whole timeout (15 s), and a loop blocked that long loses packets. The next check starts
`interval` seconds after the last one ended, so a slow check never makes checks back to back.
One lock orders the tool runs: a check, a reload's swap and the final removal never overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..periodic import Worker
from .base import RulesBackend, RulesError
from .conflicts import refusal
from .spec import RuleSpec
from .tracking import untracked_hint

log = logging.getLogger("resetwatch")


@dataclass
class RulesState:
    """What the keeper knows, read by the metrics collector and /healthz."""

    present: bool = False
    """The installed rules were as configured at the last check that finished."""
    managed: bool = True
    repairs: int = 0
    checks: int = 0
    timeouts: int = 0
    """Checks or repairs that gave up waiting (`RulesError.timed_out`)."""
    last_check_seconds: float = 0.0
    checking_since: Optional[float] = None
    """When the check now running started (None between checks), on the keeper's clock."""
    set_full: int = 0
    """SYNs the stateless sampler's set had no room for, over every install of this run
    (the kernel's counter starts again at each install)."""
    _set_full_before: int = 0
    candidates: int = 0
    """New SYNs the sample rule could have drawn for, over every install of this run (the
    kernel's rule counter starts again at each install), read at each check."""
    _candidates_before: int = 0
    label_conflicts: int = 0
    """Foreign rules that set our conntrack label bit, at the last check (each makes every
    connection it matches look sampled)."""

    def problem(self, no_rules: bool) -> Optional[str]:
        """What /healthz says is wrong with the rules, or None."""
        if not (no_rules or self.present):
            return "sampling rules missing"
        if self.label_conflicts:
            return "another rule sets the sampling label"
        return None


class RulesKeeper:
    def __init__(
        self,
        backend_for: Callable[[str], RulesBackend],
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        state: Optional[RulesState] = None,
    ) -> None:
        self._backend_for = backend_for
        self.clock = clock
        self.state = state or RulesState()
        self.backend: Optional[RulesBackend] = None
        self.backend_name = ""
        self.spec: Optional[RuleSpec] = None
        self._lock = threading.Lock()
        self._worker = Worker("rules check", interval, self.check, clock)
        self._started = False

    @property
    def interval(self) -> float:
        return self._worker.seconds

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._worker.seconds = seconds

    def install(self, backend_name: str, spec: RuleSpec) -> None:
        """At start: install the rules (RulesError/ValueError when that fails), then begin
        the periodic checks."""
        with self._lock:
            backend = self._backend_for(backend_name)
            hint = untracked_hint(spec.sampler)  # asked before our rules track anything
            refuse_shared_label(backend, spec)
            backend.install(spec)
            self.backend, self.backend_name, self.spec = backend, backend_name, spec
            self.state.present = True
        if hint:
            log.warning("%s", hint)
        if not self._started:
            self._started = True
            self._worker.start()

    def check(self) -> None:
        """One check, and a repair when the rules differ (never raises)."""
        with self._lock:
            backend, spec = self.backend, self.spec
            if backend is None or spec is None:
                return
            state = self.state
            started = state.checking_since = self.clock()
            try:
                self._check(backend, spec)
            except RulesError as error:
                if error.timed_out:
                    # The rules were not seen: keep what the last check knew.
                    state.timeouts += 1
                    log.warning("rules check gave up waiting: %s", error)
                else:
                    state.present = False
                    log.error("rules check failed: %s", error)
            finally:
                state.checks += 1
                state.checking_since = None
                state.last_check_seconds = max(0.0, self.clock() - started)

    def _check(self, backend: RulesBackend, spec: RuleSpec) -> None:
        differences = backend.check(spec)
        self._count_set_full(backend, spec)
        self._count_candidates(backend)
        self._count_label_users(backend, spec)
        if not differences:
            self.state.present = True
            return
        log.warning("rules changed or missing (%s): putting them back", differences[0])
        self.state.present = False
        self._reinstalling()
        backend.install(spec)
        self.state.repairs += 1
        self.state.present = not backend.check(spec)

    def _count_label_users(self, backend: RulesBackend, spec: RuleSpec) -> None:
        """Another rule that sets our label bit while we run: counted, and logged once per
        episode (when the count rises from zero), not at every check."""
        users = backend.label_users(spec)
        if users and not self.state.label_conflicts:
            log.error("%s", refusal(users, spec.label).replace("would look", "looks"))
        self.state.label_conflicts = len(users)

    def _count_candidates(self, backend: RulesBackend) -> None:
        count = backend.candidates()
        if count is not None:
            self.state.candidates = self.state._candidates_before + count

    def _count_set_full(self, backend: RulesBackend, spec: RuleSpec) -> None:
        if spec.sampler != "stateless":
            return
        count = backend.set_full()
        if count is not None:
            self.state.set_full = self.state._set_full_before + count

    def _reinstalling(self) -> None:
        """An install restarts the kernel's counters: keep what they counted."""
        self.state._set_full_before = self.state.set_full
        self.state._candidates_before = self.state.candidates

    def swap(self, backend_name: Optional[str], spec: Optional[RuleSpec], *, remove: bool) -> None:
        """A reload: make the installed rules those of `spec` with `backend_name` (None: stop
        managing rules, removing ours when `remove`). On failure (RulesError) the old rules
        are put back where they were taken away; the periodic check repairs the rest."""
        with self._lock:
            current = self.backend
            if backend_name is None or spec is None:
                if current is not None and remove:
                    current.remove()
                self.backend, self.spec = None, None
                self.state.managed = False
                return
            self._reinstalling()
            if current is not None and backend_name == self.backend_name:
                refuse_shared_label(current, spec)
                current.install(spec)
            else:
                fresh = self._backend_for(backend_name)
                refuse_shared_label(fresh, spec)
                if current is not None:
                    current.remove()
                try:
                    fresh.install(spec)
                except RulesError:
                    if current is not None and self.spec is not None:
                        current.install(self.spec)
                    raise
                self.backend = fresh
            self.backend_name, self.spec = backend_name, spec
            self.state.present = True
            self.state.managed = True
        if not self._started:
            self._started = True
            self._worker.start()

    def stop(self, *, remove: bool) -> str:
        """End the checks (waiting for one in progress), then remove the rules when `remove`.
        Never raises: a failed removal is logged. Returns what became of the rules, for the
        stop line: removed, kept (keep_rules), not installed, or NOT removed."""
        self._worker.stop()
        with self._lock:
            backend, self.backend = self.backend, None
            outcome = "not installed" if backend is None else "kept (keep_rules)"
            if backend is not None and remove:
                outcome = "removed"
                try:
                    backend.remove()
                except RulesError as error:
                    log.error("could not remove the rules: %s", error)
                    outcome = "NOT removed (see above)"
            self.state.present = False
        return outcome


def refuse_shared_label(backend: RulesBackend, spec: RuleSpec) -> None:
    """Before installing: another rule that sets our label bit is a RulesError (one line,
    naming the rule), because it would make every connection it matches look sampled."""
    users = backend.label_users(spec)
    if users:
        raise RulesError(refusal(users, spec.label))
