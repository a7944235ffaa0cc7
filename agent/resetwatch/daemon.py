"""`resetwatch run`: wires the NFLOG source to the engine and the outputs, and runs the loop.

Start: load the history, open the outputs, bind NFLOG (so nothing the rules log is lost),
install the rules, start the HTTP listener (metrics, api.py), then tell systemd READY. The loop
wakes at least once a second to sweep, flush the outputs and ping the watchdog; nothing slow
runs in it (rules checks: rules/keeper.py; history saves, a reload's rules: worker threads).
SIGTERM/SIGINT: flows past a deadline are judged, the rest counted as truncated, outputs
closed, history saved, rules removed; each step runs whatever the others did.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Callable, Optional

from .config import Config, load, rule_spec
from .engine import Engine
from .history import History, HistoryFile
from .ipdb import IpdbError
from .listener import open_listener, started_line
from .liveness import Liveness
from .metrics import AgentHealth, FlowCounts, build_registry
from .networks import Networks, attach
from .nflog import NflogError
from .notify import Notifier
from .outputs import OutputSet, OutputSettings
from .periodic import Every
from .reload import Reloader, apply, prepare
from .rules import RulesBackend, RulesError, backend_for
from .rules.keeper import RulesKeeper
from .server import HttpServer
from .source import PacketSource, SourceFactory, open_nflog

log = logging.getLogger("resetwatch")

GC_EVERY = 3600.0  # seconds between full cyclic garbage collections (see Engine.sweep)
LOOP_WAKE = 1.0  # longest sleep with no traffic (seconds): bounds stop latency and sweep lag
HISTORY_SAVE_EVERY = 60.0  # seconds between history saves: at most this is lost in a crash


class StartError(Exception):
    """The agent could not start; the message is one line."""


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        reload: Callable[[], Config] = lambda: load(None),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        notifier: Optional[Notifier] = None,
        open_source: SourceFactory = open_nflog,
        rules_backend: Optional[Callable[[str], RulesBackend]] = None,
    ) -> None:
        self.config, self.clock = config, clock
        self.notifier = notifier or Notifier()
        self._open_source = open_source
        self._wall_offset = wall() - clock()
        # The in-memory outputs, built here only (their types may change).
        self.counts = FlowCounts()
        self.history = History(self.to_wall, config.retention_days * 86400)
        # An empty state_dir keeps the history in memory only.
        self.history_file: Optional[HistoryFile] = None
        self.health = health = AgentHealth(config.probability, config.max_flows)
        if config.state_dir:
            history_file = self.history_file = HistoryFile(config.state_dir, self.wall_now)
            health.history_save_errors = lambda: history_file.save_errors
        self.keeper = RulesKeeper(rules_backend or backend_for, clock=clock, state=health.rules,
                                  interval=config.rules_check_interval)  # fmt: skip
        self._reloader = Reloader(lambda: prepare(reload, self.config, self.keeper))
        self.outputs = OutputSet(clock, self.to_wall)
        health.outputs = lambda: list(self.outputs.states.values())
        self.registry = build_registry(self.counts, health)
        self.engine = Engine([self.counts, self.history], idle_timeout=config.idle_timeout,
                             close_linger=config.close_linger, max_flows=config.max_flows)
        health.flows_active = lambda: len(self.engine.table)
        self.liveness = Liveness(clock, self.to_wall)
        health.last_packet_age, health.last_packet_time = self.liveness.age, self.liveness.time
        self.source: Optional[PacketSource] = None
        self.http: Optional[HttpServer] = None
        self._stop = self._stopped = self._reload = self._history_loaded = self._ready = False
        self._watchdog = Every(5.0, self._ping, clock, due_now=True)
        self._gc = Every(GC_EVERY, self.engine.collect_cycles, clock)
        self.saver = Every(HISTORY_SAVE_EVERY, self.save_history, clock, background=True)
        self.networks: Optional[Networks] = None

    def to_wall(self, ts: float) -> float:
        return ts + self._wall_offset

    def wall_now(self) -> float:
        """Now, in epoch seconds, on the same clock the history's buckets use."""
        return self.to_wall(self.clock())

    def open_outputs(self, config: Config) -> None:
        self.outputs.configure(OutputSettings.of(config))
        self.engine.outputs = [self.counts, self.history, *self.outputs.outputs]

    def start(self) -> None:
        config = self.config
        if self.history_file is not None:
            self.history_file.load(self.history)
        self._history_loaded = True
        self.open_outputs(config)
        for state in self.outputs.failing():
            raise StartError(f"{state.name} {config.records}: {state.error}")
        try:
            self.source = self._open_source(config, self.clock)
        except (OSError, NflogError) as error:
            raise StartError(f"NFLOG group {config.nflog_group}: {error}") from None
        self.health.rules.managed = not config.no_rules
        if not config.no_rules:
            try:
                self.keeper.install(config.backend, rule_spec(config))
            except (RulesError, ValueError) as error:
                raise StartError(f"rules: {error}") from None
        if config.ipdb:
            try:
                self.networks = attach(config.ipdb, config.network_top, self.clock, self.counts,
                                       self.engine, self.registry, self.history)  # fmt: skip
            except IpdbError as error:
                raise StartError(f"ipdb: {error}") from None
        try:
            self.http = open_listener(config, self.registry, self.healthy, self.history,
                                      self.wall_now, self.health, lambda: self.config)
        except OSError as error:
            raise StartError(f"listen {config.listen}: {error.strerror}") from None
        self.http.start()
        log.info("%s", started_line(config, self.http.port))
        self.notifier.ready(self.status_line())
        self._ready = True
        self._watchdog.seconds = self.notifier.watchdog_interval or 5.0

    def run(self) -> int:
        """Start, loop until a stop signal, stop cleanly. Returns the exit code."""
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            self.start()
            while not self._stop:
                self.step()
            return 0
        finally:
            self.stop()  # also when the start or the loop fails: rules removed, history saved
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Optional[FrameType]) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def step(self, timeout: float = LOOP_WAKE) -> None:
        """One pass of the loop: read a batch (or wait up to `timeout`), then housekeeping."""
        source, engine = self.source, self.engine
        assert source is not None
        received = engine.feed_batches(source.batches(timeout), self.health.invalid)
        now = self.clock()
        engine.sweep(now)
        self.health.update(engine.table.stats, source.stats())
        self.outputs.flush()
        self._reload_step()
        self._gc.poll()
        self.saver.poll()
        if self.networks is not None:
            self.networks.poll()
        self.liveness.passed(now, received)
        self._watchdog.poll()

    def _ping(self) -> None:
        self.notifier.watchdog()
        self.notifier.status(self.status_line())

    def _reload_step(self) -> None:
        """The rules side of a reload runs in a thread (reload.py), the rest here."""
        if self._reload and self._reloader.start():
            self._reload = False
        new = self._reloader.ready()
        if new is not None:
            self._apply_reload(new)

    def reload(self) -> None:
        """SIGHUP at once: read the config again and apply it, rules first, all or nothing."""
        new = self._reloader.prepare()
        if new is not None:
            self._apply_reload(new)

    def _apply_reload(self, new: Config) -> None:
        apply(self, new)  # reload.py: what each part takes from the new config
        self.config = new
        self.health.reloads += 1
        log.info("configuration reloaded from %s", new.source)

    def stop(self) -> None:
        """Judge what is due, truncate the rest, clean up: each step whatever the others did."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        done = {"rules": "not installed"}
        steps: list[tuple[str, Callable[[], object]]] = [
            ("drain the flow table", lambda: self.engine.drain(self.clock())),
            ("close the outputs", self.outputs.close),
            ("wait for a history save", self.saver.wait),
            ("save the history", self.save_history),
            ("remove the rules",
             lambda: done.update(rules=self.keeper.stop(remove=not self.config.keep_rules))),
            ("close NFLOG", lambda: self.source.close() if self.source is not None else None),
            ("stop the listener", lambda: self.http.stop() if self.http is not None else None),
        ]
        for what, action in steps:
            try:
                action()
            except Exception:  # the remaining steps must run
                log.exception("stop: could not %s", what)
        self.source = self.http = None
        self.notifier.close()
        rules = "not managed (no_rules)" if self.config.no_rules else done["rules"]
        if self._ready:  # a failed start says one line (its error), not two
            log.info("stopped: %d flows judged, %d excluded, rules %s",
                     self.counts.tally.classified, self.counts.tally.excluded_total, rules)

    def save_history(self) -> None:
        """Save the history file (never raises: a failure is logged and counted)."""
        if not self._history_loaded:
            return  # saving before loading would replace the saved counts with nothing
        if self.history_file is not None:
            self.history_file.save(self.history)
        else:
            self.history.prune(self.wall_now())

    def healthy(self) -> tuple[bool, str]:
        stalled = "packet loop stalled" if self.liveness.stalled() else None
        problem = stalled or self.health.rules.problem(self.config.no_rules)
        for state in self.outputs.failing():
            problem = problem or f"output {state.name} failing: {state.error}"
        return problem is None, problem or "ok"

    def status_line(self) -> str:
        judged = self.counts.tally.classified
        rules = "ok" if self.health.rules.present or self.config.no_rules else "MISSING"
        return f"{len(self.engine.table)} flows held, {judged} judged, rules {rules}"
