"""`resetwatch run`: wires the NFLOG source to the engine and the outputs, and runs the loop.

Order of start: load the history, bind NFLOG (so nothing the rules log is lost), install the
rules, start the HTTP listener (metrics and the local API of api.py), then tell systemd READY.
The loop wakes at least once a second; each pass sweeps the flow table, checks the rules on
schedule and pings the watchdog, so the watchdog only hears from a loop that really runs.
SIGTERM/SIGINT stop it: flows past a deadline are judged, the rest counted as truncated (never
as timeouts), records flushed, rules removed, and the 15-minute history saved (it is also
saved every minute, from the loop).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO, Callable, Optional, Protocol

from . import api
from .config import Config, ConfigError, load
from .engine import Engine
from .event import Output
from .history import History, HistoryFile
from .metrics import AgentHealth, FlowCounts, build_registry
from .nflog import NflogError
from .notify import Notifier
from .packet import FieldsResult, Invalid
from .records import RecordWriter
from .rules import RulesBackend, RulesError, RuleSpec, backend_for
from .rules.spec import MAX_HEADER_COPY
from .rules.tracking import untracked_hint
from .server import HttpServer

log = logging.getLogger("resetwatch")

GC_EVERY = 3600.0
"""Seconds between full cyclic garbage collections (see Engine.sweep)."""

LOOP_WAKE = 1.0
"""Longest the loop sleeps with no traffic (seconds): bounds stop latency and sweep lag."""

HISTORY_SAVE_EVERY = 60.0
"""Seconds between saves of the history file: at most this much is lost in a crash."""


class PacketSource(Protocol):
    """What the daemon needs of a packet source (nflog.NflogSource, or a test double)."""

    def batches(self, timeout: float) -> Iterator[Sequence[FieldsResult]]:
        """Wait up to `timeout` for packets, yield them in batches (consumed fully)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters by name: packets, seq_gaps, enobufs, buffer_grows, rcvbuf_bytes, ..."""
        ...

    def close(self) -> None: ...


SourceFactory = Callable[[Config, Callable[[], float]], PacketSource]


def open_nflog(config: Config, clock: Callable[[], float]) -> PacketSource:
    from .nflog import NflogSource

    # The group copies no more than the longest header a rule asks for, also when someone
    # else's rules (no_rules) log to it with a larger size.
    return NflogSource(
        config.nflog_group,
        copy_range=MAX_HEADER_COPY,
        clock=clock,
        rcvbuf_max=config.nflog_buffer_max,
    )


def rule_spec(config: Config) -> RuleSpec:
    return RuleSpec(
        probability=config.probability,
        label=config.label,
        nflog_group=config.nflog_group,
        dports=config.dports,
        in_interfaces=config.interfaces,
        sampler=config.sampler,
    )


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
        self.config = config
        self._reload_config = reload
        self.clock = clock
        self.notifier = notifier or Notifier()
        self._open_source = open_source
        self._backend_for = rules_backend or backend_for
        self._wall_offset = wall() - clock()
        self._records: Optional[IO[str]] = None
        self._writer: Optional[RecordWriter] = None
        self.counts = FlowCounts()
        self.history = History(self.to_wall)
        # An empty state_dir keeps the history in memory only.
        self.history_file: Optional[HistoryFile] = None
        if config.state_dir:
            self.history_file = HistoryFile(config.state_dir, self.wall_now)
        self._history_loaded = False
        self.health = AgentHealth(probability=config.probability, max_flows=config.max_flows)
        if self.history_file is not None:
            history_file = self.history_file
            self.health.history_save_errors = lambda: history_file.save_errors
        self.registry = build_registry(self.counts, self.health)
        self.engine: Engine = self._make_engine(config)
        self.health.flows_active = lambda: len(self.engine.table)
        self.health.last_packet_age = lambda: max(0.0, self.clock() - self._last_packet)
        self.backend: Optional[RulesBackend] = None
        self._set_full_before = 0
        self._set_full_seen = 0
        self.source: Optional[PacketSource] = None
        self.http: Optional[HttpServer] = None
        self._stop = False
        self._stopped = False
        self._reload = False
        self._last_loop = clock()
        self._last_packet = clock()
        self._next_rules_check = 0.0
        self._next_watchdog = 0.0
        self._next_gc = clock() + GC_EVERY
        self._next_history_save = clock() + HISTORY_SAVE_EVERY

    # ---- wiring -------------------------------------------------------------------------

    def to_wall(self, ts: float) -> float:
        return ts + self._wall_offset

    def wall_now(self) -> float:
        """Now, in epoch seconds, on the same clock the history's buckets use."""
        return self.to_wall(self.clock())

    def _make_engine(self, config: Config) -> Engine:
        return Engine(
            self._sinks(),
            idle_timeout=config.idle_timeout,
            close_linger=config.close_linger,
            max_flows=config.max_flows,
        )

    def _open_records(self, path: str) -> None:
        self._close_records()
        if not path:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._records = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as error:
            raise StartError(f"records {path}: {error.strerror}") from None
        self._writer = RecordWriter(self._records, self.to_wall)

    def _close_records(self) -> None:
        if self._records is not None:
            self._records.close()
        self._records = None
        self._writer = None

    def _sinks(self) -> list[Output]:
        sinks: list[Output] = [self.counts, self.history]
        if self._writer is not None:
            sinks.append(self._writer)
        return sinks

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        config = self.config
        if self.history_file is not None:
            self.history_file.load(self.history)
        self._history_loaded = True
        self._open_records(config.records)
        self.engine.outputs = self._sinks()
        try:
            self.source = self._open_source(config, self.clock)
        except (OSError, NflogError) as error:
            raise StartError(f"NFLOG group {config.nflog_group}: {error}") from None
        self.health.rules_managed = not config.no_rules
        if not config.no_rules:
            try:
                self.backend = self._backend_for(config.backend)
                hint = untracked_hint(config.sampler)
                self.backend.install(rule_spec(config))
                if hint:
                    log.warning("%s", hint)
            except (RulesError, ValueError) as error:
                raise StartError(f"rules: {error}") from None
            self.health.rules_present = True
            self._next_rules_check = self.clock() + config.rules_check_interval
        try:
            self.http = HttpServer(config.listen_address, self.registry, self.healthy)
        except OSError as error:
            raise StartError(f"listen {config.listen}: {error.strerror}") from None
        self.http.routes.update(
            api.routes(self.history, self.wall_now, lambda: self.health.probability)
        )
        self.http.start()
        log.info(
            "started: sampling %g of new TCP connections, NFLOG group %d, metrics on http://%s/metrics",
            config.probability,
            config.nflog_group,
            config.listen,
        )
        self.notifier.ready(self.status_line())

    def run(self) -> int:
        """Start, loop until a stop signal, stop cleanly. Returns the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            try:
                self.start()
            except StartError:
                self.stop()
                raise
            try:
                while not self._stop:
                    self.step()
            finally:
                self.stop()  # also when the loop fails: flows recorded, rules removed
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Optional[FrameType]) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True

    def step(self, timeout: float = LOOP_WAKE) -> None:
        """One pass of the loop: read a batch (or wait up to `timeout`), then housekeeping."""
        source = self.source
        assert source is not None
        engine = self.engine
        feed_many = engine.feed_many
        invalid = self.health.invalid
        received = False
        for batch in source.batches(timeout):
            if not batch:
                continue
            received = True
            packets = [item for item in batch if not isinstance(item, Invalid)]
            if len(packets) != len(batch):
                for item in batch:
                    if isinstance(item, Invalid):
                        invalid[item] += 1
            feed_many(packets)
        now = self.clock()
        if received:
            self._last_packet = now
        engine.sweep(now)
        health = self.health
        table_stats = engine.table.stats
        health.flows_started = table_stats.started
        health.late_packets = table_stats.late_packets
        stats = source.stats()
        health.nflog_packets = stats["packets"]
        health.nflog_lost["seq_gap"] = stats["seq_gaps"]
        health.nflog_lost["bad_message"] = stats["truncated_messages"]
        health.nflog_overruns = stats["enobufs"]
        health.nflog_socket_drops = max(0, stats.get("kernel_drops", 0))
        health.nflog_buffer_bytes = stats["rcvbuf_bytes"]
        if self._writer is not None:
            self._writer.flush()
        if self.backend is not None and now >= self._next_rules_check:
            self._check_rules()
            self._next_rules_check = now + self.config.rules_check_interval
        if self._reload:
            self._reload = False
            self.reload()
        if now >= self._next_gc:
            engine.collect_cycles()
            self._next_gc = now + GC_EVERY
        if now >= self._next_history_save:
            self.save_history()
            self._next_history_save = now + HISTORY_SAVE_EVERY
        self._last_loop = now
        if now >= self._next_watchdog:
            self.notifier.watchdog()
            self.notifier.status(self.status_line())
            self._next_watchdog = now + (self.notifier.watchdog_interval or 5.0)

    def _check_rules(self) -> None:
        backend = self.backend
        assert backend is not None
        spec = rule_spec(self.config)
        try:
            differences = backend.check(spec)
            self._count_set_full(backend)
            if not differences:
                self.health.rules_present = True
                return
            log.warning("rules changed or missing (%s): putting them back", differences[0])
            self.health.rules_present = False
            self._set_full_before += self._set_full_seen
            self._set_full_seen = 0
            backend.install(spec)
            self.health.rules_repairs += 1
            self.health.rules_present = not backend.check(spec)
        except RulesError as error:
            self.health.rules_present = False
            log.error("rules check failed: %s", error)

    def _count_set_full(self, backend: RulesBackend) -> None:
        """The kernel's set-full counter starts at 0 with each install; the metric adds up
        what earlier installs of this run counted."""
        if self.config.sampler != "stateless":
            return
        count = backend.set_full()
        if count is not None:
            self._set_full_seen = count
        self.health.sampler_set_full = self._set_full_before + self._set_full_seen

    def reload(self) -> None:
        """SIGHUP: read the config again and apply it, rules first. Keep the running config,
        whole, when the new file is bad or its rules cannot be installed: the exported
        probability must stay the one the installed rules sample with."""
        try:
            new = self._reload_config()
        except ConfigError as error:
            log.error("reload refused, keeping the running config: %s", error)
            return
        old = self.config
        restart_keys = ("listen", "nflog_group", "state_dir")
        if any(getattr(new, key) != getattr(old, key) for key in restart_keys):
            log.warning("listen, nflog_group and state_dir changes take effect after a restart")
            new = replace(new, **{key: getattr(old, key) for key in restart_keys})
        try:
            self._apply_rules(old, new)
        except (RulesError, ValueError) as error:
            log.error("reload refused, keeping the running config: rules: %s", error)
            return
        # Reopened on every reload, also at the same path: that is how logrotate hands the
        # agent a fresh file (`postrotate systemctl reload resetwatch`).
        try:
            self._open_records(new.records)
        except StartError as error:
            log.error("reload: %s; records stay off", error)
        table = self.engine.table
        table.idle_timeout = new.idle_timeout
        table.close_linger = new.close_linger
        table.max_flows = new.max_flows
        self.engine.outputs = self._sinks()
        self.config = new
        self.health.probability = new.probability
        self.health.max_flows = new.max_flows
        self.health.rules_managed = not new.no_rules
        self.health.reloads += 1
        log.info("configuration reloaded from %s", new.source)

    def _apply_rules(self, old: Config, new: Config) -> None:
        """Make the installed rules those of `new`. On failure the rules of `old` are put
        back where they were taken away (the periodic check repairs what this cannot)."""
        current = self.backend
        if new.no_rules:
            if current is not None and not old.keep_rules:
                current.remove()
            self.backend = None
            return
        self._set_full_before += self._set_full_seen  # an install restarts the kernel's count
        self._set_full_seen = 0
        if current is not None and new.backend == old.backend:
            current.install(rule_spec(new))
        else:
            fresh = self._backend_for(new.backend)
            if current is not None:
                current.remove()
            try:
                fresh.install(rule_spec(new))
            except RulesError:
                if current is not None:
                    current.install(rule_spec(old))
                raise
            self.backend = fresh
        self.health.rules_present = True

    def stop(self) -> None:
        """Judge what is past a deadline, count the rest as truncated, clean up everything.

        Safe to call twice (a failed start, then the caller's own cleanup)."""
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        self.engine.drain(self.clock())
        if self._writer is not None:
            self._writer.flush()
        self._close_records()
        self.save_history()
        if self.backend is not None and not self.config.keep_rules:
            try:
                self.backend.remove()
            except RulesError as error:
                log.error("could not remove the rules: %s", error)
        self.health.rules_present = False
        if self.source is not None:
            self.source.close()
            self.source = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.notifier.close()

    def save_history(self) -> None:
        """Save the history file (never raises: a failure is logged and counted)."""
        if not self._history_loaded:
            return  # saving before loading would replace the saved counts with nothing
        if self.history_file is not None:
            self.history_file.save(self.history)
        else:
            self.history.prune(self.wall_now())

    # ---- reporting ----------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        stalled = self.clock() - self._last_loop > 5 * LOOP_WAKE
        rules_ok = self.config.no_rules or self.health.rules_present
        if stalled:
            return False, "packet loop stalled"
        if not rules_ok:
            return False, "sampling rules missing"
        return True, "ok"

    def status_line(self) -> str:
        counts = self.counts
        judged = counts.tally.classified
        return (
            f"{len(self.engine.table)} flows held, {judged} judged, "
            f"rules {'ok' if self.health.rules_present or self.config.no_rules else 'MISSING'}"
        )

