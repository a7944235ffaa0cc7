"""The live agent (``resetwatch run``) as a subprocess inside a lab namespace.

The agent binds an NFLOG group and installs netfilter rules, both of which belong to a network
namespace, so it runs under ``ip netns exec`` in the server namespace; its /metrics and /healthz
listen on that namespace's loopback, so they are fetched from inside it too (with curl).

Loopback connections pass PREROUTING like any ingress connection, so with probability 1 the
sampling rules would also sample the test's own scrapes of /metrics (and log both directions:
on ``lo`` the replies are ingress too). `agent_flags` therefore limits sampling to the lab's
server interface (``--interfaces``), which keeps the agent's counts to the lab's traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Callable, Optional

from .netns import Lab, LabError

REPO = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO / "agent"
LISTEN_PORT = 9824
HEALTHY_WAIT_S = 20.0
"""Longest wait for /healthz to say ok after the start (a limit, never asserted on)."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Prometheus samples: (sample name, its labels) -> value."""


def agent_env() -> dict[str, str]:
    """The environment for resetwatch commands: this checkout's agent/ on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(AGENT_DIR), env.get("PYTHONPATH", "")) if p
    )
    return env


def resetwatch_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "resetwatch", *args]


def cli(
    lab: Lab, *args: str, ns: str = "server", timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``resetwatch ARGS`` to completion inside a namespace; never raises on its exit code."""
    return lab.run(ns, resetwatch_argv(*args), check=False, timeout=timeout, env=agent_env())


def agent_flags(
    lab: Lab,
    *,
    backend: str,
    records: Optional[Path],
    port: int = LISTEN_PORT,
    probability: str = "1",
    idle_timeout: float = 5.0,
    close_linger: float = 1.0,
    state_dir: Optional[Path] = None,
    sampler: str = "conntrack",
) -> list[str]:
    """The flags of a lab agent: no config file, every setting on the command line, sampling
    only what arrives on the server's lab interface (see the module's docstring). Without a
    `state_dir` the history is kept in memory only (never in the host's /var/lib)."""
    flags = [
        "--config", "/dev/null",
        "--probability", probability,
        "--idle-timeout", f"{idle_timeout:g}",
        "--close-linger", f"{close_linger:g}",
        "--listen", f"127.0.0.1:{port}",
        "--backend", backend,
        "--sampler", sampler,
        "--rules-check-interval", "1",
        "--interfaces", lab.server_if,
        "--state-dir", str(state_dir) if state_dir is not None else "",
    ]  # fmt: skip
    if records is not None:
        flags += ["--records", str(records)]
    return flags


def rule_flags(
    lab: Lab, backend: str, probability: str = "1", sampler: str = "conntrack"
) -> list[str]:
    """The flags of ``resetwatch rules check`` matching `agent_flags`."""
    return [
        "--config", "/dev/null",
        "--backend", backend,
        "--sampler", sampler,
        "--probability", probability,
        "--interfaces", lab.server_if,
    ]  # fmt: skip


class RunningAgent:
    """A ``resetwatch run`` process in a lab namespace, its log file and records file."""

    def __init__(
        self,
        lab: Lab,
        proc: subprocess.Popen[Any],
        log: Path,
        records: Optional[Path],
        port: int,
        ns: str,
    ) -> None:
        self.lab = lab
        self.proc = proc
        self.log = log
        self.records_path = records
        self.port = port
        self.ns = ns

    # ---- HTTP ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> str:
        """The body at `path` ("" when nothing answered)."""
        proc = self.lab.run(
            self.ns,
            ["curl", "--silent", "--noproxy", "*", "--max-time", "5", self.url(path)],
            check=False,
            timeout=15,
        )
        return str(proc.stdout)

    def wait_healthy(self, timeout: float = HEALTHY_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(
                    f"the agent exited with {self.proc.returncode} before it was healthy:\n"
                    f"{self.log_text()}"
                )
            if self.get("/healthz").strip() == "ok":
                return
            time.sleep(0.1)
        raise LabError(f"/healthz not ok after {timeout} s:\n{self.log_text()}")

    def metrics_text(self) -> str:
        text = self.get("/metrics")
        if not text:
            raise LabError(f"no answer from /metrics:\n{self.log_text()}")
        return text

    def samples(self) -> Samples:
        return parse_samples(self.metrics_text())

    def value(self, name: str, **labels: str) -> float:
        """One sample's value; missing samples raise KeyError."""
        return self.samples()[name, frozenset(labels.items())]

    # ---- files --------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        if self.records_path is None or not self.records_path.exists():
            return []
        out = []
        for line in self.records_path.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(ValueError):  # a line being written right now
                    out.append(json.loads(line))
        return out

    def records_by_sport(self) -> dict[int, list[dict[str, Any]]]:
        by_sport: dict[int, list[dict[str, Any]]] = {}
        for record in self.records():
            by_sport.setdefault(int(record["sport"]), []).append(record)
        return by_sport

    # ---- process ------------------------------------------------------------------------

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then wait up to `timeout` for the exit code (TimeoutExpired after it)."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        return int(self.proc.wait(timeout=timeout))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


def start_agent(
    lab: Lab,
    flags: Sequence[str],
    log: Path,
    *,
    records: Optional[Path] = None,
    port: int = LISTEN_PORT,
    ns: str = "server",
    wait: bool = True,
    env: Optional[Mapping[str, str]] = None,
    wrap: Sequence[str] = (),
) -> RunningAgent:
    """Start ``resetwatch run FLAGS`` in `ns` (stdout and stderr to `log`; `env` instead of
    `agent_env()`) and, when `wait`, return once /healthz answers ok. The lab stops the
    process on exit if it still runs. `wrap` goes before the command: one that execs it
    (``prlimit --nofile=...``), so the pid stays the agent's."""
    handle: IO[str] = open(log, "w", encoding="utf-8")  # noqa: SIM115
    try:
        proc = lab.popen(
            ns,
            [*wrap, *resetwatch_argv("run", *flags)],
            env=agent_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
    finally:
        handle.close()  # the child holds its own copy
    agent = RunningAgent(lab, proc, log, records, port, ns)
    if wait:
        agent.wait_healthy()
    return agent


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = float(sample.value)
    return samples


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    step: float = 0.2,
    details: Callable[[], str] = lambda: "",
) -> Any:
    """Poll `condition` until it returns something true (returned), or fail after `timeout`
    seconds with `what` and `details()` in the message. A limit only: how long it took is
    never asserted."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{details()}".rstrip())
        time.sleep(step)
