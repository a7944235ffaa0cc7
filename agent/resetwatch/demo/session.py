"""One run of `resetwatch demo`: build the lab, start the programs, drive the traffic, show
progress, print what the agent concluded, and remove everything, whatever happens.

Programs, each in its own session so the terminal's Ctrl-C reaches only the demo, which then
stops them in order: the web server and the real agent (``resetwatch run``) in the server
namespace, the tampering middlebox in the middlebox namespace, the clients in the client
namespace. They are all started from the main thread before any other thread exists, and get
SIGTERM if the demo itself dies (see `lab.Lab.popen`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Optional

from ..classify import Category, Tag
from ..report import network_table, summary_table
from ..tally import Tally
from . import lab as labmod
from . import networks as labnets
from .forward import Forwarder, category_counts, http_get
from .lab import Lab, LabError
from .traffic import BEHAVIOURS, MIDDLEBOX_RULES

AGENT_PORT = 9824
"""The agent's port inside the server namespace (its own loopback: no clash with the host)."""
IDLE_TIMEOUT_S = 10.0
CLOSE_LINGER_S = 2.0
SETTLE_S = 3.0
"""Margin after the idle timeout for the agent's one-second loop and NFLOG batching."""
RATE = 3.0
"""New connections per second, on average."""
ZMAP_EVERY_S = 15.0
START_TIMEOUT_S = 30.0
LOG_TAIL = 1500


@dataclass(frozen=True)
class Options:
    duration: float
    keep_running: bool
    listen: tuple[str, int]
    records: Optional[Path]
    seed: int
    traffic_log: Optional[Path] = None
    ipdb: tuple[str, ...] = ()
    """Databases naming the clients' networks; empty: the lab's own (demo/networks.py)."""


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived (SIGINT arrives as KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_OWNER = [0]
"""The demo's pid. pyroute2 forks copies of this process to create namespaces: a copy that
gets a signal must die quietly, never run the demo's cleanup (it would tear the lab down)."""
_CLEANING = [False]
"""Set while the lab is being removed: a second Ctrl-C, or the SIGHUP of a closed terminal,
must not cut the removal short."""


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    if os.getpid() != _OWNER[0]:
        os._exit(128 + signum)
    if _CLEANING[0]:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _package_path() -> str:
    return str(Path(__file__).resolve().parents[2])


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL:].strip()
    except OSError:
        return ""


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a records file (a line being written is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


_CATEGORIES = {c.value for c in Category}


def summary_from_records(records: Iterable[dict[str, Any]]) -> Tally:
    """The counts `resetwatch replay` prints, rebuilt from the agent's records."""
    judged: list[list[Any]] = []
    excluded: list[list[Any]] = []
    for record in records:
        family = str(record["family"])
        if "excluded" in record:
            excluded.append([family, record["excluded"], 1])
        else:
            judged.append([family, record["stage"], record["outcome"], record["category"],
                           list(record["tags"]), "", "", 1])
    tally, _ = Tally.from_rows({"judged": judged, "excluded": excluded}, "records")
    return tally


def network_summary(records: Iterable[dict[str, Any]]) -> tuple[Tally, dict[str, str]]:
    """The judged records by client network (the `asn` label, "" where the database had no
    answer), and the AS names the records carry."""
    rows: list[list[Any]] = []
    names: dict[str, str] = {}
    for record in records:
        if "excluded" in record:
            continue
        asn = record.get("asn")
        label = str(asn) if isinstance(asn, int) else ""
        if label and record.get("as_name"):
            names[label] = str(record["as_name"])
        rows.append([str(record["family"]), record["stage"], record["outcome"],
                     record["category"], list(record["tags"]), label,
                     str(record.get("country") or ""), 1])
    tally, _ = Tally.from_rows({"judged": rows}, "records")
    return tally, names


def verdict_table(events: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
    """Per client behaviour: how many connections, and what the agent made of them (the
    categories, and the tags most of them carry). Joined on the client's address and port."""
    by_key = {(r["src"], int(r["sport"])): r for r in records}
    lines = ["what the clients did, and what the agent concluded", ""]
    lines.append(f"  {'behaviour':<42}{'flows':>6}  verdict (tags of most flows)")
    for action, behaviour in BEHAVIOURS.items():
        mine = [e for e in events if e.get("action") == action]
        if not mine:
            continue
        verdicts: Counter[str] = Counter()
        tags: Counter[str] = Counter()
        for event in mine:
            record = by_key.get((event["src"], int(event.get("sport") or 0)))
            if record is None:
                verdicts["not seen"] += 1
            elif "excluded" in record:
                verdicts[f"excluded:{record['excluded']}"] += 1
            else:
                verdicts[record["category"]] += 1
                tags.update(record["tags"])
        judged = sum(n for v, n in verdicts.items() if v in _CATEGORIES)
        common = [t.value for t in Tag if judged and tags[t.value] * 2 > judged]
        text = ", ".join(f"{v} {n}" for v, n in verdicts.most_common())
        if common:
            text += f"  ({' '.join(common)})"
        lines.append(f"  {behaviour.label:<42}{len(mine):>6}  {text}")
    return "\n".join(lines) + "\n"


class Demo:
    def __init__(self, options: Options, out: IO[str] = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.tty = out.isatty()
        self.lab = Lab()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{labmod.PREFIX}{os.getpid()}-"))
        self.records_path = self.tmp / "records.jsonl"
        self.forwarder: Optional[Forwarder] = None
        self.agent: Any = None
        self.traffic: Any = None
        self.middlebox: Any = None
        self.events: list[dict[str, Any]] = []
        self.tampered = 0
        self.traffic_done = threading.Event()
        self._lock = threading.Lock()
        self._records_copied = False
        self._line_open = False
        self.ipdb = options.ipdb or (str(labnets.DATABASE),)

    # ------------------------------------------------------------------------------ output

    def say(self, text: str = "") -> None:
        # The terminal may be gone (closed window, broken pipe): the lab must still go.
        with contextlib.suppress(OSError):
            if self._line_open:
                self.out.write("\n")
                self._line_open = False
            self.out.write(text + "\n")
            self.out.flush()

    def _status(self, text: str) -> None:
        if self.tty:
            # A line wider than the terminal wraps, and "\r" would then stack copies.
            width = shutil.get_terminal_size().columns
            with contextlib.suppress(OSError):
                self.out.write("\r" + text[: max(width - 1, 20)] + "\x1b[K")
                self._line_open = True
                self.out.flush()
        else:
            self.say(text)

    # ------------------------------------------------------------------------------ run

    def run(self) -> int:
        _OWNER[0] = os.getpid()
        handlers = {
            sig: signal.signal(sig, _on_signal)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        code = 1
        phase = "setup"
        try:
            removed = labmod.cleanup_stale()
            if removed:
                self.say(f"removed {len(removed)} namespaces left by an earlier demo")
            try:
                self.forwarder = Forwarder(*self.options.listen)
            except OSError as error:
                host, port = self.options.listen
                self.say_error(f"cannot listen on {host}:{port}: {error.strerror} "
                               "(choose another address with --listen)")  # fmt: skip
                return 2
            self._start()
            phase = "traffic"
            self._traffic_phase()
            phase = "settle"
            self._settle_phase()
            if self.options.keep_running:
                self._report(final=False)
                phase = "keep"
                self._keep_running()
            else:
                self._stop_agent()
                self._report(final=True)
            code = 0
        except KeyboardInterrupt:
            code = 0 if phase == "keep" else 130
            self.say("" if phase == "keep" else "resetwatch demo: interrupted")
        except Interrupted as stop:
            code = 0 if phase == "keep" else 128 + stop.signum
            self.say(f"resetwatch demo: stopped by {stop}")
        except LabError as error:
            self.say_error(str(error))
            code = 1
        finally:
            _CLEANING[0] = True
            # A signal landing before the flag was set interrupts one attempt, not the removal.
            for _ in range(3):
                try:
                    self._cleanup()
                    break
                except (KeyboardInterrupt, Interrupted):
                    continue
            _CLEANING[0] = False
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return code

    def say_error(self, text: str) -> None:
        if self._line_open:
            self.say()
        with contextlib.suppress(OSError):
            print(f"resetwatch demo: {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------ start

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_path(), env.get("PYTHONPATH", "")) if p
        )
        return env

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start(self) -> None:
        lab = self.lab
        opts = self.options
        self.say(f"resetwatch demo: building the lab (namespaces {labmod.PREFIX}{lab.id}-*)")
        try:
            lab.build()
        except Exception as error:  # OSError, or pyroute2's NetlinkError
            raise LabError(f"cannot build the lab: {error}") from None
        env = self._env()
        server = lab.popen(
            "server",
            self._python("resetwatch.demo.server", "--lab", lab.prefix),
            log=self.tmp / "server.log",
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._wait_line(server, "ready", "the web server", self.tmp / "server.log")
        rules = [f"--rule={name}={action}" for name, action in MIDDLEBOX_RULES.items()]
        rules += [f"--only={prefix}" for prefix in labnets.TAMPERED.prefixes]
        self.middlebox = lab.popen(
            "middlebox",
            self._python("resetwatch.demo.middlebox", "--server", labmod.SERVER4,
                         "--server", labmod.SERVER6, *rules, "--lab", lab.prefix),
            log=self.tmp / "middlebox.log",
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        self._wait_line(self.middlebox, '"ready"', "the middlebox", self.tmp / "middlebox.log")
        (self.tmp / "state").mkdir()
        agent_log = self.tmp / "agent.log"
        self.agent = lab.popen(
            "server",
            self._python(
                "resetwatch", "run",
                "--config", "/dev/null",
                "--probability", "1",
                "--backend", "auto",
                "--idle-timeout", f"{IDLE_TIMEOUT_S:g}",
                "--close-linger", f"{CLOSE_LINGER_S:g}",
                "--listen", f"127.0.0.1:{AGENT_PORT}",
                # Only the lab link: the demo's own scrapes over loopback stay unsampled.
                "--interfaces", labmod.SERVER_IF,
                "--records", str(self.records_path),
                "--state-dir", str(self.tmp / "state"),
                *(f"--ipdb={path}" for path in self.ipdb),
            ),
            log=agent_log,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
        )  # fmt: skip
        self._wait_healthy(agent_log)
        spec = {
            "seed": opts.seed,
            "duration": opts.duration,
            "rate": RATE,
            "zmap_every": ZMAP_EVERY_S,
            "server4": labmod.SERVER4,
            "server6": labmod.SERVER6,
            "clients4": list(labmod.CLIENTS4),
            "clients6": list(labmod.CLIENTS6),
            "tampered4": labnets.members(labnets.TAMPERED, labmod.CLIENTS4),
            "tampered6": labnets.members(labnets.TAMPERED, labmod.CLIENTS6),
            "spoofed4": labmod.SPOOFED4,
            "zmap_source": labmod.CLIENTS4[0],
            "iface": labmod.CLIENT_IF,
            "gateway_mac": lab.mac("middlebox", labmod.MB_CLIENT_IF),
        }
        spec_path = self.tmp / "traffic.json"
        spec_path.write_text(json.dumps(spec))
        self.traffic = lab.popen(
            "client",
            self._python("resetwatch.demo.traffic", str(spec_path)),
            log=self.tmp / "traffic.log",
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        # Threads only from here on: every program is started (see the module's docstring).
        assert self.forwarder is not None
        self.forwarder.start(lambda: lab.socket("server"), AGENT_PORT)
        threading.Thread(target=self._read_traffic, daemon=True).start()
        threading.Thread(target=self._read_middlebox, daemon=True).start()
        self._intro()

    def _wait_line(self, proc: Any, marker: str, what: str, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if marker in line:
                    return
                if not line:
                    break
            elif proc.poll() is not None:
                break
        raise LabError(f"{what} did not start:\n{_tail(log)}")

    def _wait_healthy(self, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise LabError(f"the agent exited with {self.agent.returncode}:\n{_tail(log)}")
            if self._get("/healthz").strip() == "ok":
                return
            time.sleep(0.2)
        raise LabError(f"the agent did not become healthy:\n{_tail(log)}")

    def _get(self, path: str) -> str:
        return http_get(lambda: self.lab.socket("server"), AGENT_PORT, path)

    def _intro(self) -> None:
        assert self.forwarder is not None
        url = self.forwarder.url
        names = self.lab.names
        c4, c6 = labmod.CLIENTS4, labmod.CLIENTS6
        tamper = {action: name for name, action in MIDDLEBOX_RULES.items()}
        last4, last6 = c4[-1].rsplit(".", 1)[1], c6[-1].rsplit(":", 1)[1]
        self.say(f"  clients    {c4[0]}-{last4}, {c6[0]}-{last6}  ({names['client']})")
        nets = ", ".join(f"AS{n.asn} {n.as_name} ({n.country})" for n in labnets.NETWORKS)
        self.say(f"             in three networks: {nets}")
        self.say(f"  middlebox  on AS{labnets.TAMPERED.asn}'s path only: "
                 f"{', '.join(labnets.TAMPERED.prefixes)}")
        self.say(f"             NFQUEUE: injects RSTs for {tamper['rst+rstack']} (TLS SNI) and "
                 f"{tamper['rsts']} (HTTP Host),")  # fmt: skip
        self.say(f"             drops {tamper['drop']} (zero-rating style)  ({names['middlebox']})")
        self.say(f"  server     {labmod.SERVER4}, {labmod.SERVER6}: web server on 80/443 and "
                 "`resetwatch run`")  # fmt: skip
        self.say(f"             (probability 1, idle timeout {IDLE_TIMEOUT_S:g} s, "
                 f"close linger {CLOSE_LINGER_S:g} s)  ({names['server']})")  # fmt: skip
        self.say(f"  metrics    {url}/metrics  (a browser, or Prometheus scraping "
                 f"{url.split('//', 1)[1]})")  # fmt: skip
        self.say(f"  API        {url}/api/v1/tcp_resets_timeouts/summary?dateRange=1h, "
                 f"or `resetwatch status --agent {url}`")  # fmt: skip
        self.say(f"traffic for {self.options.duration:g} s; Ctrl-C stops the demo and removes "
                 "the lab")  # fmt: skip

    # ------------------------------------------------------------------------------ readers

    def _read_traffic(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.traffic.stdout:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == "conn":
                        with self._lock:
                            self.events.append(event)
                    elif event.get("event") == "done":
                        self.traffic_done.set()
        self.traffic_done.set()

    def _read_middlebox(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in self.middlebox.stdout:
                if '"tamper"' in line:
                    with self._lock:
                        self.tampered += 1

    # ------------------------------------------------------------------------------ phases

    def _progress(self, started: float, total: float, label: str) -> None:
        counts = category_counts(self._get("/metrics"))
        judged = sum(counts.values())
        with self._lock:
            made, tampered = len(self.events), self.tampered
        parts = ", ".join(f"{c.value} {counts.get(c.value, 0)}" for c in Category)
        elapsed = time.monotonic() - started
        self._status(f"[{label} {elapsed:3.0f}/{total:g}s] {made} connections, {tampered} "
                     f"tampered | agent judged {judged}: {parts}")  # fmt: skip

    def _check_agent(self) -> None:
        if self.agent.poll() is not None:
            raise LabError(
                f"the agent stopped ({self.agent.returncode}):\n{_tail(self.tmp / 'agent.log')}"
            )

    def _tick_until(self, done: Any, started: float, total: float, label: str) -> None:
        every = 2.0 if self.tty else 10.0
        next_print = time.monotonic() + (every if not self.tty else 0.0)
        while not done():
            self._check_agent()
            now = time.monotonic()
            if now >= next_print:
                self._progress(started, total, label)
                next_print = now + every
            time.sleep(0.25)

    def _traffic_phase(self) -> None:
        started = time.monotonic()
        limit = started + self.options.duration + 60.0  # a wedged client program ends too

        def done() -> bool:
            return self.traffic_done.is_set() or time.monotonic() > limit

        self._tick_until(done, started, self.options.duration, "traffic")
        if self.traffic.poll() is not None and self.traffic.returncode != 0:
            raise LabError(f"the clients failed:\n{_tail(self.tmp / 'traffic.log')}")
        self._progress(started, self.options.duration, "traffic")

    def _settle_phase(self) -> None:
        wait = IDLE_TIMEOUT_S + CLOSE_LINGER_S + SETTLE_S
        self.say(f"traffic done; waiting {wait:g} s for the agent to judge the silent ones "
                 f"(idle timeout {IDLE_TIMEOUT_S:g} s)")  # fmt: skip
        started = time.monotonic()
        end = started + wait
        self._tick_until(lambda: time.monotonic() >= end, started, wait, "waiting")
        self._progress(started, wait, "waiting")
        self.say()

    def _keep_running(self) -> None:
        assert self.forwarder is not None
        url = self.forwarder.url
        self.say(f"still running: {url}/metrics, {url}/api/v1/tags, "
                 f"`resetwatch status --agent {url}`")  # fmt: skip
        self.say("Ctrl-C stops the demo and removes the lab")
        while True:
            self._check_agent()
            time.sleep(1.0)

    def _stop_agent(self) -> None:
        code = labmod.stop(self.agent, grace=15.0)
        if code not in (0, None):
            self.say_error(f"the agent exited with {code}:\n{_tail(self.tmp / 'agent.log')}")
        self._copy_records()

    # ------------------------------------------------------------------------------ report

    def _report(self, final: bool) -> None:
        records = read_records(self.records_path)
        summary = summary_from_records(records)
        with self._lock:
            events = list(self.events)
            tampered = self.tampered
        extra = [
            ("traffic", f"{self.options.duration:g} s, {len(events):,} connections"),
            ("tampered (middlebox)", f"{tampered:,}"),
            ("sampling", "every connection (probability 1)"),
        ]
        self.say(summary_table(summary, title="resetwatch demo: the agent's verdicts",
                               extra=extra).rstrip("\n"))  # fmt: skip
        self.say()
        self.say(verdict_table(events, records).rstrip("\n"))
        self.say()
        self.say(self._network_report(records).rstrip("\n"))
        if final and self.options.records:
            self.say()
            self.say(f"records (one JSON line per connection): {self.options.records}")

    def _network_report(self, records: Sequence[dict[str, Any]]) -> str:
        """The last table: shares per client network, as `replay --by asn` prints them; the
        network behind the middlebox should stand out."""
        tally, names = network_summary(records)
        net = labnets.TAMPERED
        source = ("the lab's database (demo/networks.py)" if not self.options.ipdb
                  else ", ".join(self.ipdb))
        lines = [f"per client network ({source}); the middlebox sits on AS{net.asn} "
                 f"({net.as_name}, {net.country})'s path only"]
        return "\n".join(lines) + network_table(tally, "asn", names)

    def _copy_records(self) -> None:
        if self._records_copied or self.options.records is None:
            return
        self._records_copied = True
        try:
            if self.records_path.exists():
                shutil.copyfile(self.records_path, self.options.records)
            else:
                self.options.records.write_text("")
        except OSError as error:
            self.say_error(f"--records {self.options.records}: {error.strerror}")

    def _write_traffic_log(self) -> None:
        path = self.options.traffic_log
        if path is None:
            return
        with self._lock:
            events = list(self.events)
        try:
            path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        except OSError as error:
            self.say_error(f"--traffic-log {path}: {error.strerror}")

    # ------------------------------------------------------------------------------ cleanup

    def _cleanup(self) -> None:
        """Stop everything and remove the lab (safe to repeat: each step is idempotent)."""
        if self.forwarder is not None:
            self.forwarder.close()
        if self.agent is not None:
            labmod.stop(self.agent, grace=10.0)
        self.lab.close()
        self._copy_records()
        self._write_traffic_log()
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = self.lab.leftovers()
        if left:
            self.say_error(f"could not remove {', '.join(left)}")
        elif self.lab.built:
            self.say("lab removed")
