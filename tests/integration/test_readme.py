"""The README, followed literally by a newcomer: a fresh clone of this commit, `./dev` building
its venv and linking the CLI, then every command of every ```sh block of README.md run as
written, in a shell with a new shell's PATH (not .venv/bin), each exiting 0 and printing what
the README says it does.

What is not literal, and why:
- `sudo` is dropped (the test is root; sudo may not be installed);
- `./dev` links into a scratch directory (DEV_LINK_DIR) put where /usr/local/bin stands in the
  new shell's PATH, so the machine's /usr/local/bin is not touched;
- the agents run in a network namespace of their own (their rules, NFLOG group and port 9824
  are the namespace's), and get `--state-dir` in a scratch directory, so the host's
  /var/lib/resetwatch is not touched;
- the install script, the demo and the whole suite are not run here: each has its own test
  (the table SKIPPED says which); `resetwatch demo --help` stands in for the demo.

A command added to the README and not known here fails `test_every_readme_command_is_known`.
The clone is of HEAD: commit first. Waits are limits, never asserted on.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.lab import netns
from tests.lab.requirements import lab_marks, skip_reason

ROOT = Path(__file__).resolve().parents[2]
LINK_DIR_DEFAULT = "/usr/local/bin"
START_LIMIT_S = 120.0
STOP_LIMIT_S = 30.0

pytestmark = lab_marks(
    skip_reason("a network namespace for the agent", tools=("ip", "git", "curl", "python3"))
)

SKIPPED = {
    "sudo ./dev demo": "tests/integration/test_demo.py runs the demo end to end",
    "sudo resetwatch demo --duration 60 --records flows.jsonl": "as above (test_demo.py)",
    "sudo deploy/install.sh": "tests/integration/test_install.py installs into a scratch root; "
    "here it would replace this machine's service",
    "sudo systemctl reload resetwatch": "needs the installed service (test_install.py)",
    "sudo deploy/install.sh --uninstall": "tests/integration/test_install.py",
}

INSTALL = [
    "python3 -m venv .venv",
    ".venv/bin/pip install -e .",
    ".venv/bin/pip install -e '.[demo]'",
    ".venv/bin/pip install -e '.[test]'",
]
REPLAY = [
    "resetwatch replay tests/fixtures/lab_mixed_v4v6.pcap --close-linger 1 --idle-timeout 5",
    "resetwatch replay tests/fixtures/lab_mixed_v4v6.pcap --format json",
    "resetwatch replay tests/fixtures/lab_mixed_v4v6.pcap --records flows.jsonl",
]
RUN = "sudo resetwatch run --probability 0.0001 --listen 127.0.0.1:9824"
CURL_SUMMARY = "curl -s 'localhost:9824/api/v1/tcp_resets_timeouts/summary?dateRange=1d'"
CURL_CSV = ("curl -s 'localhost:9824/api/v1/tcp_resets_timeouts/timeseries_groups"
            "?dateRange=7d&format=csv'")
ASSETS = "resetwatch assets write resetwatch-assets"
COVERED = [
    "sudo ./dev test",
    "sudo ./dev run",
    *INSTALL,
    *REPLAY,
    RUN,
    "sudo resetwatch rules check",
    "resetwatch status",
    "resetwatch status --range 1d --format json",
    CURL_SUMMARY,
    CURL_CSV,
    ASSETS,
]
"""The README commands this test runs (`sudo ./dev test` with a quick test file)."""


def readme_commands() -> list[str]:
    """Each command line of the README's ```sh blocks, without its trailing comment."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip()
            if command:
                commands.append(command)
    return commands


def literal(command: str) -> str:
    return command[len("sudo "):] if command.startswith("sudo ") else command


@dataclass
class Newcomer:
    clone: Path
    link_dir: Path
    state: Path
    path: str
    ns: str
    home: str

    def env(self) -> list[str]:
        return ["env", "-i", f"HOME={self.home}", f"PATH={self.path}", "LANG=C.UTF-8",
                f"DEV_LINK_DIR={self.link_dir}"]

    def argv(self, command: str, in_ns: bool) -> list[str]:
        inner = [*self.env(), "bash", "-c", command]
        return ["ip", "netns", "exec", self.ns, *inner] if in_ns else inner

    def run(self, command: str, in_ns: bool = False, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(literal(command), in_ns), cwd=self.clone,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        return result

    def start(self, command: str, log: Path) -> tuple[subprocess.Popen[str], str]:
        """Start a long-running README command in the namespace (`exec`: the signal reaches
        the agent itself); returns it once it logged its start line, and that line."""
        with log.open("w") as out:
            proc = subprocess.Popen(self.argv("exec " + literal(command), True),
                                    cwd=self.clone, stdout=out, stderr=subprocess.STDOUT,
                                    text=True)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and proc.poll() is None:
            started = [line for line in log.read_text().splitlines() if "started:" in line]
            if started:
                return proc, started[0]
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        raise AssertionError(f"{command} did not start:\n{log.read_text()[-3000:]}")

    def stop(self, proc: subprocess.Popen[str], log: Path) -> str:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_LIMIT_S) == 0, log.read_text()[-3000:]
        return log.read_text()


def new_shell_path() -> str:
    """PATH as a new login shell of root sets it (what a newcomer's next terminal has)."""
    result = subprocess.run(["env", "-i", f"HOME={os.environ.get('HOME', '/root')}", "bash",
                             "-l", "-c", "echo $PATH"], capture_output=True, text=True,
                            timeout=60)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    base = tmp_path_factory.mktemp("readme")
    clone = base / "resetwatch"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    path = new_shell_path()
    entries = path.split(":")
    assert LINK_DIR_DEFAULT in entries, f"a new shell's PATH lacks {LINK_DIR_DEFAULT}: {path}"
    link_dir = base / "bin"
    entries = [str(link_dir) if e == LINK_DIR_DEFAULT else e for e in entries]
    ns = f"{netns.PREFIX}{os.getpid()}-{secrets.token_hex(3)}-readme"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        yield Newcomer(clone, link_dir, base / "state", ":".join(entries), ns,
                       os.environ.get("HOME", "/root"))
    finally:
        netns.delete_namespace(ns)  # kills what still runs in it, rules go with it


def test_every_readme_command_is_known() -> None:
    known = set(SKIPPED) | set(COVERED)
    assert [c for c in readme_commands() if c not in known] == []
    assert [c for c in known if c not in readme_commands()] == []



def test_the_readme_as_a_newcomer_runs_it(newcomer: Newcomer) -> None:
    n = newcomer
    link = n.link_dir / "resetwatch"
    venv_cli = n.clone / ".venv" / "bin" / "resetwatch"

    # `sudo ./dev test`, on one quick test file (the whole suite is what runs this test).
    result = n.run("sudo ./dev test -q tests/unit/test_docs.py")
    assert os.readlink(link) == str(venv_cli)
    assert f"dev: resetwatch is on PATH: {link} -> {venv_cli}" in result.stderr
    assert "passed" in result.stdout
    assert n.run("command -v resetwatch").stdout.strip() == str(link)

    # Install from the checkout, every extra (on the host: pip may need the package index).
    for command in INSTALL:
        n.run(command)

    # `sudo ./dev run`: one line each at start (metrics, API, state) and at stop.
    log = n.clone.parent / "dev-run.log"
    proc, started = n.start(f"sudo ./dev run --state-dir {n.state}", log)
    assert "metrics on http://127.0.0.1:9824/metrics" in started, started
    assert "API on http://127.0.0.1:9824/api/v1" in started, started
    assert f"state in {n.state}" in started, started
    text = n.stop(proc, log)
    assert "resetwatch: stopped: 0 flows judged, 0 excluded, rules removed" in text, text
    assert f"dev: resetwatch is on PATH: {link} -> {venv_cli}" in text

    # The agent as the README's `run` block starts it, then what talks to it.
    log = n.clone.parent / "run.log"
    proc, _ = n.start(RUN + f" --state-dir {n.state}", log)
    try:
        check = n.run("sudo resetwatch rules check", in_ns=True)
        assert "resetwatch rules: installed as configured" in check.stdout
        table = n.run("resetwatch status", in_ns=True).stdout
        assert table.startswith("resetwatch status: http://127.0.0.1:9824")
        for row in ("classified flows:", "post_psh", "sampling probability:  0.0001 "
                    "(1 in 10,000)", "rules:                 present",
                    "last packet:           no packet yet"):
            assert row in table, table
        doc = json.loads(n.run("resetwatch status --range 1d --format json", in_ns=True).stdout)
        assert doc["range"] == "1d" and doc["health"]["rulesPresent"] == 1
        summary = json.loads(n.run(CURL_SUMMARY, in_ns=True).stdout)
        assert summary["success"] is True and "summary_0" in summary["result"]
        csv = n.run(CURL_CSV, in_ns=True).stdout.splitlines()
        assert csv[0].startswith("serie,timestamp,post_syn,") and len(csv) > 1, csv[:3]
    finally:
        text = n.stop(proc, log)
    assert "rules removed" in text

    # Offline: the committed capture, three ways.
    summary_table = n.run(REPLAY[0]).stdout
    assert "classified flows:     33" in summary_table and "post_psh" in summary_table
    radar = json.loads(n.run(REPLAY[1]).stdout)
    assert radar["success"] is True
    n.run(REPLAY[2])
    records = (n.clone / "flows.jsonl").read_text().splitlines()
    assert len(records) == 34 and all(json.loads(line) for line in records)

    # The deploy assets, equal to the repository's own files.
    n.run(ASSETS)
    written = n.clone / "resetwatch-assets"
    assert (written / "systemd/resetwatch.service").read_text() == (
        n.clone / "systemd/resetwatch.service").read_text()
    assert (written / "prometheus/resetwatch.rules.yml").read_text() == (
        n.clone / "deploy/prometheus/resetwatch.rules.yml").read_text()

    # The demo's stand-in, through the link like the rest.
    assert "usage: resetwatch demo" in n.run("resetwatch demo --help").stdout
    assert shutil.which("resetwatch", path=n.path) == str(link)
