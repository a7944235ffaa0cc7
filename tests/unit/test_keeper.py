"""The periodic helper, the rules keeper off the packet path, and an agent that survives its
outputs: a test double stands for the rules tools (tests/integration/test_agent_lab.py holds
the real xtables lock and a slow nft)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from resetwatch.config import Config
from resetwatch.daemon import Agent
from resetwatch.history import FILE_NAME
from resetwatch.nflog import NflogStats
from resetwatch.packet import ParseResult
from resetwatch.periodic import Every, Worker
from resetwatch.rules import RuleSpec
from resetwatch.rules.base import RulesError
from resetwatch.rules.keeper import RulesKeeper

from .factory import pkt


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_schedules_the_next_run_after_the_last_one_ends() -> None:
    clock = Clock()
    runs: list[float] = []

    def slow() -> None:
        runs.append(clock.now)
        clock.now += 7.0  # the run itself takes 7 s

    timer = Every(5.0, slow, clock)
    assert not timer.poll()
    clock.now = 5.0
    assert timer.poll()
    assert timer.next_at == 12.0 + 5.0  # ended at 12: the next one at 17, not at 10
    clock.now = 16.9
    assert not timer.poll()
    clock.now = 17.0
    assert timer.poll() and runs == [5.0, 17.0]


def test_every_in_the_background_never_overlaps_and_survives_errors() -> None:
    clock = Clock()
    release = threading.Event()
    runs: list[int] = []

    def action() -> None:
        runs.append(1)
        release.wait(5)
        raise RuntimeError("a failed save")

    timer = Every(1.0, action, clock, due_now=True, background=True)
    assert timer.poll()
    assert not timer.poll()  # still running: no second one
    release.set()
    timer.wait(5)
    clock.now = timer.next_at
    assert timer.poll()
    timer.wait(5)
    assert runs == [1, 1]


def test_worker_runs_in_its_own_thread_until_stopped() -> None:
    seen: list[str] = []
    worker = Worker("test worker", 0.01, lambda: seen.append(threading.current_thread().name))
    worker.start()
    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop(5)
    assert seen[:3] == ["test worker"] * 3


class SlowRules:
    """A backend whose checks wait on `gate` (a held lock) and then time out, as iptables
    does after -w 5."""

    name = "slow"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.installed: Optional[RuleSpec] = None
        self.removed = False
        self.stuck = False

    def install(self, spec: RuleSpec) -> None:
        self.installed = spec

    def label_users(self, spec: RuleSpec) -> list[str]:
        return []

    def candidates(self) -> Optional[int]:
        return None

    def remove(self) -> None:
        self.removed = True
        self.installed = None

    def check(self, spec: RuleSpec) -> list[str]:
        if self.stuck:
            self.entered.set()
            self.gate.wait(10)
            raise RulesError("`iptables -w 5 -S` failed (exit 4): Another app is currently "
                             "holding the xtables lock.", timed_out=True)
        return [] if self.installed == spec else ["missing"]


def test_a_check_that_times_out_is_counted_and_keeps_the_last_state() -> None:
    rules = SlowRules()
    keeper = RulesKeeper(lambda name: rules, interval=3600)  # type: ignore[arg-type,return-value]
    keeper.install("slow", RuleSpec())
    rules.stuck = True
    rules.gate.set()
    keeper.check()
    state = keeper.state
    assert (state.checks, state.timeouts, state.present) == (1, 1, True)
    rules.stuck = False
    rules.installed = None  # flushed by someone: the next check repairs
    keeper.check()
    assert (state.checks, state.repairs, state.present) == (2, 1, True)
    keeper.stop(remove=True)
    assert rules.removed and not state.present


class Traffic:
    """One flow per read, forever: a loop that stalls shows as missing reads."""

    def __init__(self) -> None:
        self.reads = 0

    def batches(self, timeout: float) -> Iterator[list[ParseResult]]:
        self.reads += 1
        port = 1000 + self.reads % 50000
        flow = ("198.51.100.1", port, "203.0.113.1", 443)
        yield [pkt("S", tuple_=flow), pkt("A", tuple_=flow), pkt("R", tuple_=flow)]

    def stats(self) -> NflogStats:
        return NflogStats(packets=3 * self.reads)

    def close(self) -> None:
        pass


@pytest.fixture
def slow_agent(tmp_path: Path) -> Iterator[tuple[Agent, SlowRules, Traffic]]:
    rules, source = SlowRules(), Traffic()
    config = Config(listen="127.0.0.1:0", state_dir=str(tmp_path / "state"), close_linger=0.0,
                    rules_check_interval=0.5, records="/dev/full")
    agent = Agent(config, open_source=lambda c, k: source,
                  rules_backend=lambda name: rules)  # type: ignore[arg-type,return-value]
    agent.start()
    try:
        yield agent, rules, source
    finally:
        rules.gate.set()
        agent.stop()


def test_the_loop_reads_while_a_check_waits_for_the_lock(slow_agent) -> None:
    agent, rules, source = slow_agent
    rules.stuck = True
    assert rules.entered.wait(10)  # a check is now waiting in the keeper's thread...
    before = source.reads
    for _ in range(200):
        agent.step(timeout=0)  # ...and every pass of the loop still returns
    assert source.reads == before + 200
    assert agent.keeper.state.checking_since is not None
    rules.gate.set()
    deadline = time.monotonic() + 10
    while agent.keeper.state.timeouts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert agent.keeper.state.timeouts >= 1


def test_a_failing_output_never_stops_the_loop_or_the_stop(slow_agent, tmp_path: Path) -> None:
    agent, rules, _ = slow_agent
    for _ in range(50):
        agent.step(timeout=0)  # records to /dev/full: every flush fails
    state = agent.outputs.states["records"]
    assert state.failing and state.errors >= 1 and state.dropped > 0
    ok, why = agent.healthy()
    assert not ok and why == "output records failing: No space left on device"
    agent.outputs.outputs[0].inner.close()  # a closed file as well, for the stop's close
    agent.stop()
    assert rules.removed  # the rules went...
    assert (tmp_path / "state" / FILE_NAME).exists()  # ...and the history was saved
    judged = agent.counts.tally.classified
    assert judged >= 50  # the counts kept every flow the records lost
