"""The whole /metrics text after a fixed scenario, compared with a golden file.

The scenario runs the real daemon loop, HTTP listener and collector in-process; only the
packet source is scripted (the kernel parts are covered by tests/integration). Regenerate
after a deliberate change with: RESETWATCH_UPDATE_GOLDEN=1 pytest tests/unit/test_agent_golden.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from resetwatch.config import Config
from resetwatch.daemon import Agent
from resetwatch.nflog import NflogStats
from resetwatch.packet import Invalid, ParseResult

from .factory import CLIENT6, pkt

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedSource:
    """Hands out one batch per read and moves the clock on, like NFLOG would."""

    def __init__(self, script: list[list[ParseResult]], clock: FakeClock) -> None:
        self.script = script
        self.clock = clock
        self.received = 0
        self.closed = False

    def batches(self, timeout: float) -> Iterator[list[ParseResult]]:
        self.clock.now += 1.0
        if not self.script:
            return
        batch = self.script.pop(0)
        self.received += len(batch)
        yield [p if isinstance(p, Invalid) else p._replace(ts=self.clock.now) for p in batch]

    def stats(self) -> NflogStats:
        return NflogStats(packets=self.received, receive_buffer_bytes=8 << 20)

    def close(self) -> None:
        self.closed = True


def scenario() -> list[list[ParseResult]]:
    a = ("198.51.100.1", 1001, "203.0.113.1", 443)
    b = ("198.51.100.2", 1002, "203.0.113.1", 443)
    c = ("198.51.100.3", 1003, "203.0.113.1", 443)
    zmap = ("198.51.100.4", 1004, "203.0.113.1", 443)
    return [
        [pkt("S", tuple_=a), pkt("S", tuple_=b), pkt("S", tuple_=c), pkt("S", tuple_=CLIENT6),
         pkt("S", tuple_=zmap, ip_id=54321, window=65535, df=False, options="M1460")],
        [pkt("A", tuple_=a), pkt("A", tuple_=b), pkt("A", tuple_=CLIENT6)],
        [pkt("PA", tuple_=a), pkt("R", tuple_=a, ack=7, ttl=250), pkt("R", tuple_=a, ack=7),
         pkt("RA", tuple_=b), pkt("PA", tuple_=CLIENT6), pkt("FA", tuple_=CLIENT6),
         pkt("A", tuple_=("198.51.100.9", 9, "203.0.113.1", 443)), Invalid.TRUNCATED],
    ]


@pytest.fixture
def agent_run(tmp_path: Path):
    clock = FakeClock()
    source = ScriptedSource(scenario(), clock)
    config = Config(listen="127.0.0.1:0", no_rules=True, idle_timeout=30.0, close_linger=5.0,
                    state_dir=str(tmp_path / "state"))
    agent = Agent(config, clock=clock, wall=lambda: 1.7e9, open_source=lambda c, k: source)
    agent.start()
    try:
        for _ in range(12):  # 12 s on the fake clock: past every linger, not every idle
            agent.step()
        yield agent, source
    finally:
        agent.stop()


def scrape(agent: Agent, path: str = "/metrics") -> str:
    assert agent.http is not None
    url = f"http://127.0.0.1:{agent.http.port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def without_process_metrics(text: str) -> str:
    """The process collector's values (CPU, memory, fds) differ on every run."""
    return "".join(
        line for line in text.splitlines(keepends=True)
        if not line.startswith(("process_", "# HELP process_", "# TYPE process_"))
    )


def test_the_agents_own_cost_is_exported(agent_run) -> None:
    agent, _ = agent_run
    text = scrape(agent)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds", "process_start_time_seconds"):  # fmt: skip
        assert f"\n{name} " in text, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_promtool_check_metrics_is_clean(agent_run) -> None:
    agent, _ = agent_run
    result = subprocess.run(["promtool", "check", "metrics"], input=scrape(agent),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_metrics_match_golden_file(agent_run) -> None:
    agent, _ = agent_run
    text = without_process_metrics(scrape(agent))
    if os.environ.get("RESETWATCH_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_counters_of_the_scenario(agent_run) -> None:
    agent, _ = agent_run
    text = scrape(agent)
    assert 'resetwatch_connections_total{category="post_psh",family="4"} 1.0' in text
    assert 'resetwatch_connections_total{category="post_ack",family="4"} 1.0' in text
    assert 'resetwatch_connections_total{category="no_match",family="6"} 1.0' in text
    tags = 'resetwatch_connection_tags_total{category="post_psh",family="4",tag="%s"} 1.0'
    for tag in ("reset", "multiple_rsts", "acknumsame", "ttl_mismatch"):
        assert tags % tag in text
    assert 'resetwatch_flows_excluded_total{reason="no_syn"} 1.0' in text
    assert 'resetwatch_packets_invalid_total{reason="truncated"} 1.0' in text
    assert "resetwatch_flows_active 2.0" in text  # the post-SYN flows still waiting (idle)
    assert "203.0.113" not in text and "198.51.100" not in text  # no address in any label


def test_stop_truncates_instead_of_timing_out(agent_run) -> None:
    agent, source = agent_run
    agent.stop()
    counts = agent.counts
    excluded = counts.tally.excluded_by()
    assert excluded[next(e for e in excluded if e.value == "truncated")] == 2
    assert sum(v for (_, _, o), v in counts.outcomes().items() if o.value == "timeout") == 0
    assert source.closed


def test_healthz(agent_run) -> None:
    agent, _ = agent_run
    assert scrape(agent, "/healthz") == "ok\n"
