"""`resetwatch rules check` compares with the running agent's settings when one answers
(flags given still win), else with the config file, and says which."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from resetwatch import cli
from resetwatch.config import Config
from resetwatch.listener import CONFIG, config_route
from resetwatch.metrics import AgentHealth, FlowCounts, build_registry
from resetwatch.server import HttpServer


@pytest.fixture
def agent() -> Iterator[str]:
    running = replace(Config(), probability=0.3, label=9, dports=(443,), source="/etc/x.toml")
    server = HttpServer(("127.0.0.1", 0), build_registry(FlowCounts(), AgentHealth()),
                        lambda: (True, "ok"))  # fmt: skip
    server.routes[CONFIG] = config_route(lambda: running)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def args_for(tmp_path: Path, *argv: str) -> argparse.Namespace:
    config = tmp_path / "resetwatch.toml"
    config.write_text("probability = 0.01\n")
    return cli.build_parser().parse_args(["rules", "check", "--config", str(config), *argv])


def test_the_running_agents_settings_are_compared(agent: str, tmp_path: Path, capsys) -> None:
    args = args_for(tmp_path, "--agent", agent)
    expected = cli._expected_by_agent(args, cli._config_from(args, cli.RULE_KEYS))
    assert (expected.probability, expected.label, expected.dports) == (0.3, 9, (443,))
    assert f"comparing with the running agent at {agent}" in capsys.readouterr().out


def test_flags_given_still_win(agent: str, tmp_path: Path) -> None:
    args = args_for(tmp_path, "--agent", agent, "--probability", "0.5")
    expected = cli._expected_by_agent(args, cli._config_from(args, cli.RULE_KEYS))
    assert expected.probability == 0.5 and expected.label == 9


def test_without_an_agent_the_config_file_is_compared(tmp_path: Path, capsys) -> None:
    args = args_for(tmp_path, "--agent", "http://127.0.0.1:9")  # nothing listens on port 9
    expected = cli._expected_by_agent(args, cli._config_from(args, cli.RULE_KEYS))
    assert expected.probability == 0.01
    out = capsys.readouterr().out
    assert "resetwatch.toml (no agent answered at http://127.0.0.1:9)" in out
