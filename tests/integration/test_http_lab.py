"""A hostile local client against the live agent (issue 12), under the default fd limit.

The agent runs in a lab's server namespace under ``prlimit --nofile=1024:1024`` (the soft limit
most systems give a service without LimitNOFILE). A helper in the same namespace opens 1,100
TCP connections to its listener and holds them, sending nothing. While they are held: /metrics
and the API answer, rules flushed behind the agent's back are repaired, and a history save at
SIGTERM succeeds; the log holds no traceback and no client address. Needs root, iproute2,
iptables, curl, prlimit; skips otherwise. Waits are generous limits, never asserted on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.lab import Lab
from tests.lab.agent import (
    RunningAgent,
    agent_env,
    agent_flags,
    cli,
    parse_samples,
    rule_flags,
    start_agent,
    wait_until,
)
from tests.lab.requirements import lab_marks, skip_reason

TOOLS = ("ip", "iptables", "ip6tables", "iptables-save", "curl", "prlimit")
HELD = 1100
CAP = 64
WAIT_S = 30.0
TIMESERIES = "/api/v1/tcp_resets_timeouts/timeseries_groups?dateRange=7d&aggInterval=15m"
DAMAGE = [
    ["iptables", "-w", "-t", "mangle", "-F"],
    ["ip6tables", "-w", "-t", "mangle", "-F", "RESETWATCH"],
]

pytestmark = lab_marks(
    skip_reason("network namespaces, netfilter rules, NFLOG", tools=TOOLS,
                modules=("prometheus_client",))
)

HOLDER = """
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))  # ours, not the agent's
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    held.append(socket.create_connection(("127.0.0.1", port), timeout=30))
print("held", len(held), flush=True)
sys.stdin.read()  # until the test closes our stdin
"""
"""Opens `count` connections to the agent, sends nothing, holds them until stdin closes."""


@dataclass
class Held:
    lab: Lab
    agent: RunningAgent
    holder: subprocess.Popen[Any]
    state: Path
    hold_started: float


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    tmp = tmp_path_factory.mktemp("http_lab")
    state = tmp / "state"
    with Lab(tag="http") as lab:
        flags = agent_flags(lab, backend="iptables", records=None, state_dir=state)
        agent = start_agent(lab, flags, tmp / "agent.log", wrap=["prlimit", "--nofile=1024:1024"])
        started = time.time()
        holder = lab.popen(
            "server", [sys.executable, "-c", HOLDER, str(agent.port), str(HELD)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=agent_env(),
        )  # fmt: skip
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.split() == ["held", str(HELD)], (line, agent.log_text())
        try:
            yield Held(lab, agent, holder, state, started)
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)


def _scrape(agent: RunningAgent) -> dict[Any, float]:
    text = agent.get("/metrics")
    return parse_samples(text) if "resetwatch_build_info" in text else {}


def test_the_agent_is_under_the_low_fd_limit(held: Held) -> None:
    limits = Path(f"/proc/{held.agent.proc.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3:5] == ["1024", "1024"], line


def test_a_scrape_answers_while_the_connections_are_held(held: Held) -> None:
    samples = wait_until(lambda: _scrape(held.agent), WAIT_S, "an answer from /metrics",
                         details=held.agent.log_text)
    refused = sum(v for (name, labels), v in samples.items()
                  if name == "resetwatch_http_connections_refused_total")
    assert refused >= HELD - CAP, samples
    assert samples["resetwatch_http_connections_open", frozenset()] <= CAP
    assert held.agent.get("/healthz").strip() == "ok"
    fds = len(list(Path(f"/proc/{held.agent.proc.pid}/fd").iterdir()))
    assert fds < 1024 - 512, fds  # the cap, not the clients, bounds what the listener holds
    threads = len(list(Path(f"/proc/{held.agent.proc.pid}/task").iterdir()))
    # The loop, the listener, the API worker, the rules keeper (and at most a history save in
    # flight): none per client.
    assert threads <= 5, threads


def test_the_api_answers_while_the_connections_are_held(held: Held) -> None:
    def answer() -> Any:
        body = held.agent.get(TIMESERIES)
        return json.loads(body) if body.startswith("{") else None

    doc = wait_until(answer, WAIT_S, "an answer from the API", details=held.agent.log_text)
    assert doc["success"] is True
    assert len(doc["result"]["serie_0"]["timestamps"]) == 672


def test_a_rule_flush_is_repaired_while_the_connections_are_held(held: Held) -> None:
    lab, agent = held.lab, held.agent
    repairs_before = wait_until(lambda: _scrape(agent), WAIT_S, "/metrics")[
        "resetwatch_rules_repairs_total", frozenset()
    ]
    for argv in DAMAGE:
        lab.run("server", argv)

    def repaired() -> bool:
        samples = _scrape(agent)
        if samples.get(("resetwatch_rules_repairs_total", frozenset()), 0) <= repairs_before:
            return False
        return cli(lab, "rules", "check", *rule_flags(lab, "iptables")).returncode == 0

    wait_until(repaired, WAIT_S, "the rules repaired", details=agent.log_text)


def test_zz_a_history_save_succeeds_and_the_log_is_clean(held: Held) -> None:
    """Last (zz): stops the agent while the connections are still held."""
    agent = held.agent
    assert agent.stop(WAIT_S) == 0, agent.log_text()
    doc = json.loads((held.state / "history.json").read_text())
    assert doc["savedAt"] >= held.hold_started
    log = agent.log_text()
    assert "Traceback" not in log and "cannot save" not in log and "rules check failed" not in log
    for line in log.splitlines():  # the listen address once, at the start; no client's
        assert "127.0.0.1" not in line or line.startswith("resetwatch: started:"), line
