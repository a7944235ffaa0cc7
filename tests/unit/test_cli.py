"""The command line: one-line errors with exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def resetwatch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT / "agent"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "resetwatch", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


BAD_FLAGS = [
    (["replay", "x.pcap", "--idle-timeout", "abc"], "--idle-timeout: 'abc' is not a number"),
    (["replay", "x.pcap", "--idle-timeout", "-1"], "must be a positive number"),
    (["replay", "x.pcap", "--close-linger", "400"], "--close-linger 400 must be less than"),
    (["replay", "x.pcap", "--server", "10.0.0.300"], "--server '10.0.0.300': not an address"),
    (["replay", "x.pcap", "--format", "xml"], "invalid choice: 'xml'"),
    (["replay"], "the following arguments are required: FILE"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--probability", "7", "--config", "/dev/null"],
     "--probability: probability = 7 is not allowed"),
    (["run", "--listen", "nowhere", "--config", "/dev/null"], "listen = 'nowhere' is not"),
    (["rules", "check", "--label", "300", "--config", "/dev/null"], "label = 300 is not"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_give_one_line_and_exit_2(argv: list[str], message: str) -> None:
    result = resetwatch(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "rules", "replay"])
def test_help_explains_every_flag(command: str) -> None:
    result = resetwatch(command, "--help")
    assert result.returncode == 0
    assert "--" in result.stdout


def test_replay_of_files_that_are_not_captures(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"<html>not a capture</html>")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    result = resetwatch("replay", str(garbage), str(empty), str(tmp_path / "missing.pcap"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line]
    assert len(errors) == 3, result.stderr
    assert "garbage.pcap" in errors[0] and "empty.pcap" in errors[1]
    assert "missing.pcap" in errors[2] and "No such file" in errors[2]
    assert "Traceback" not in result.stderr
    # Nothing was read: no table of zeros that would look like a result.
    assert "classified flows:" not in result.stdout


ACTIONS = ("install", "remove", "show", "check")
HELPS = [["run"], ["replay"], ["rules"], *[["rules", action] for action in ACTIONS]]


@pytest.mark.parametrize("argv", HELPS, ids=[" ".join(a) for a in HELPS])
def test_help_texts_have_no_empty_or_doubled_defaults(argv: list[str]) -> None:
    text = " ".join(resetwatch(*argv, "--help").stdout.split())  # argparse wraps lines
    assert "(default: )" not in text
    assert "(empty: all)" not in text and "(default: all)" not in text


def test_run_listen_names_the_api_and_rules_actions_have_their_own_help() -> None:
    run = " ".join(resetwatch("run", "--help").stdout.split())
    assert "--listen ADDR:PORT HTTP address of /metrics, /healthz and the local API" in run
    rules = resetwatch("rules", "--help").stdout
    for action in ACTIONS:
        assert f"    {action} " in rules
    install = " ".join(resetwatch("rules", "install", "--help").stdout.split())
    assert "--dry-run print what would be applied" in install
    assert "--dry-run" not in resetwatch("rules", "check", "--help").stdout
    check = " ".join(resetwatch("rules", "check", "--help").stdout.split())
    assert "Exit 0 when the installed rules equal the expected ones" in check
    assert "--agent URL" in check


def test_rules_never_imports_the_daemon() -> None:
    code = (
        "import sys\n"
        "from resetwatch import cli\n"
        "cli.main(['rules', 'install', '--dry-run', '--config', '/dev/null', '--backend', 'nft'])\n"
        "assert 'resetwatch.daemon' not in sys.modules, 'rules imported the daemon'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT / "agent")}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "table inet resetwatch" in result.stdout
