"""SIGHUP reload: rules first, and all or nothing (a test double stands in for the kernel's
rules; tests/integration/test_agent_lab.py reloads a real agent)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Optional

import pytest

from resetwatch.config import Config
from resetwatch.daemon import Agent
from resetwatch.nflog import NflogStats
from resetwatch.packet import ParseResult
from resetwatch.rules import RuleSpec
from resetwatch.rules.base import RulesError


class NoTraffic:
    def batches(self, timeout: float) -> Iterator[list[ParseResult]]:
        return iter(())

    def stats(self) -> NflogStats:
        return NflogStats()

    def close(self) -> None:
        pass


class Rules:
    """One backend's installed rules; `refuse` makes installing that probability fail."""

    def __init__(self, name: str, refuse: Optional[float]) -> None:
        self.name = name
        self.refuse = refuse
        self.installed: Optional[RuleSpec] = None

    def install(self, spec: RuleSpec) -> None:
        if spec.probability == self.refuse:
            raise RulesError(f"{self.name}: exit 1: cannot install")
        self.installed = spec

    def label_users(self, spec: RuleSpec) -> list[str]:
        return []

    def candidates(self) -> Optional[int]:
        return None

    def remove(self) -> None:
        self.installed = None

    def check(self, spec: RuleSpec) -> list[str]:
        return [] if self.installed == spec else ["rules differ"]


@pytest.fixture
def reloading() -> Iterator[tuple[Agent, dict[str, Rules], list[Config]]]:
    backends = {name: Rules(name, refuse=0.5) for name in ("iptables", "nft")}
    pending = [Config(listen="127.0.0.1:0", state_dir="", backend="iptables")]
    agent = Agent(pending[0], reload=lambda: pending[0], open_source=lambda c, k: NoTraffic(),
                  rules_backend=backends.__getitem__)  # type: ignore[arg-type]
    agent.start()
    try:
        yield agent, backends, pending
    finally:
        agent.stop()


def test_reload_applies_new_rules_and_probability(reloading, caplog) -> None:
    caplog.set_level(logging.INFO, logger="resetwatch")
    agent, backends, pending = reloading
    pending[0] = Config(listen="127.0.0.1:0", state_dir="", backend="iptables", probability=0.25)
    agent.reload()
    assert backends["iptables"].installed == RuleSpec(probability=0.25)
    assert (agent.config.probability, agent.health.probability) == (0.25, 0.25)
    assert agent.health.reloads == 1
    assert "configuration reloaded" in caplog.text


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_rules_that_cannot_be_installed_refuse_the_whole_reload(
    reloading, backend: str, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="resetwatch")
    agent, backends, pending = reloading
    running = agent.config
    pending[0] = Config(listen="127.0.0.1:0", state_dir="", backend=backend, probability=0.5,
                        max_flows=10)
    agent.reload()
    assert agent.config == running
    assert agent.health.probability == running.probability  # what the installed rules sample
    assert agent.engine.table.max_flows == running.max_flows
    assert agent.health.reloads == 0
    # The running rules are where they were (put back, when the backend was to change).
    assert backends["iptables"].installed == RuleSpec(probability=running.probability)
    assert backends["nft"].installed is None
    assert "reload refused, keeping the running config: rules: " in caplog.text
    assert "configuration reloaded" not in caplog.text
    agent.step(timeout=0)  # the loop goes on


def test_reload_reopens_the_records_file_for_logrotate(tmp_path) -> None:
    path = tmp_path / "flows.jsonl"
    config = Config(listen="127.0.0.1:0", state_dir="", no_rules=True, records=str(path))
    agent = Agent(config, reload=lambda: config, open_source=lambda c, k: NoTraffic())
    agent.start()
    try:
        assert path.exists()
        path.rename(tmp_path / "flows.jsonl.1")  # what logrotate does before `postrotate`
        agent.reload()
        assert path.exists()  # a fresh file at the configured path
        assert agent.health.reloads == 1
    finally:
        agent.stop()


class ResizableSource(NoTraffic):
    def __init__(self) -> None:
        self.limits: list[int] = []

    def set_rcvbuf_max(self, size: int) -> None:
        self.limits.append(size)


def test_reload_applies_a_new_nflog_buffer_max() -> None:
    source = ResizableSource()
    pending = [Config(listen="127.0.0.1:0", state_dir="", no_rules=True)]
    agent = Agent(pending[0], reload=lambda: pending[0], open_source=lambda c, k: source)
    agent.start()
    try:
        agent.reload()  # unchanged: left alone
        pending[0] = replace(pending[0], nflog_buffer_max=1 << 20)
        agent.reload()
        assert source.limits == [1 << 20]
        assert agent.config.nflog_buffer_max == 1 << 20
    finally:
        agent.stop()


def test_sighup_reloads_off_the_loop_then_applies_in_it() -> None:
    pending = [Config(listen="127.0.0.1:0", state_dir="", no_rules=True)]
    agent = Agent(pending[0], reload=lambda: pending[0], open_source=lambda c, k: NoTraffic())
    agent.start()
    try:
        pending[0] = replace(pending[0], max_flows=7)
        agent._reload = True  # what SIGHUP sets
        for _ in range(1000):
            agent.step(timeout=0.01)
            if agent.health.reloads:
                break
        assert agent.engine.table.max_flows == 7 and agent.health.reloads == 1
    finally:
        agent.stop()


def test_reload_applies_a_new_connection_cap(reloading) -> None:
    agent, _, pending = reloading
    assert agent.http is not None and agent.http.max_connections == 64
    pending[0] = Config(listen="127.0.0.1:0", state_dir="", backend="iptables",
                        http_max_connections=8)
    agent.reload()
    assert agent.http.max_connections == 8
