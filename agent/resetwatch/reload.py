"""SIGHUP: the rules side of a reload, run off the packet loop.

`prepare` reads the config again and swaps the rules through the keeper (the slow part: rules
tools, the xtables lock); the daemon's loop then applies the rest of the new config itself.
All or nothing: when the file is bad or its rules cannot be installed, the running config is
kept whole, so the exported probability stays the one the installed rules sample with.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional

from .config import Config, ConfigError, rule_spec
from .rules import RulesError
from .rules.keeper import RulesKeeper
from .source import set_buffer_max

if TYPE_CHECKING:
    from .daemon import Agent

log = logging.getLogger("resetwatch")

RESTART_KEYS = ("listen", "nflog_group", "state_dir", "ipdb", "network_top")
"""Settings a reload cannot change (a bound socket, an NFLOG group, a loaded history)."""


def prepare(load: Callable[[], Config], old: Config, keeper: RulesKeeper) -> Optional[Config]:
    """The new config with its rules installed, or None (refused, logged)."""
    try:
        new = load()
    except ConfigError as error:
        log.error("reload refused, keeping the running config: %s", error)
        return None
    if any(getattr(new, key) != getattr(old, key) for key in RESTART_KEYS):
        changed = [key for key in RESTART_KEYS if getattr(new, key) != getattr(old, key)]
        log.warning("%s: changes take effect after a restart", ", ".join(changed))
        new = replace(new, **{key: getattr(old, key) for key in RESTART_KEYS})
    try:
        if new.no_rules:
            keeper.swap(None, None, remove=not old.keep_rules)
        else:
            keeper.swap(new.backend, rule_spec(new), remove=not old.keep_rules)
    except (RulesError, ValueError) as error:
        log.error("reload refused, keeping the running config: rules: %s", error)
        return None
    return new


class Reloader:
    """One reload at a time in a worker thread; the loop collects its result with `ready`."""

    def __init__(self, prepare: Callable[[], Optional[Config]]) -> None:
        self.prepare = prepare
        """Prepare a reload now, in the caller's thread."""
        self._results: queue.SimpleQueue[Optional[Config]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> bool:
        """Begin a reload unless one runs; False when one was already running."""
        if self._thread is not None:
            return False
        self._thread = threading.Thread(
            target=lambda: self._results.put(self.prepare()), name="reload", daemon=True
        )
        self._thread.start()
        return True

    def ready(self) -> Optional[Config]:
        """The config of a finished reload to apply now (None: none, or it was refused)."""
        if self._results.empty():
            return None
        self._thread = None
        return self._results.get()


def apply(agent: Agent, new: Config) -> None:
    """The loop's side of a reload (the rules are already swapped): every part takes what it
    uses from `new`. A change of ipdb or network_top takes a restart (RESTART_KEYS)."""
    # Outputs reopen on every reload, also at the same path: that is how logrotate hands
    # the agent a fresh records file (`postrotate systemctl reload resetwatch`).
    agent.open_outputs(new)
    table = agent.engine.table
    table.idle_timeout, table.close_linger = new.idle_timeout, new.close_linger
    table.max_flows = new.max_flows
    if new.nflog_buffer_max != agent.config.nflog_buffer_max:
        set_buffer_max(agent.source, new.nflog_buffer_max)
    agent.keeper.interval = new.rules_check_interval
    agent.history.retention = new.retention_days * 86400
    if agent.networks is not None:
        agent.networks.request_reopen()
    if agent.http is not None:
        agent.http.max_connections = new.http_max_connections
    agent.health.configure(new.probability, new.max_flows, not new.no_rules)
