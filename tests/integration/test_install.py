"""deploy/install.sh: lint, dry run, and a real install into a scratch root (twice), then
--uninstall. The scratch root keeps apt and systemctl out of it; everything else is real.
Install and uninstall run inside a network namespace of their own (the uninstall removes
rules from the namespace it runs in), an nft host's: no legacy iptables tables in it."""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from resetwatch.config import example_toml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"


def run(*args: str, netns: Optional[str] = None,
        umask: Optional[int] = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    old = os.umask(umask) if umask is not None else None
    try:
        return subprocess.run([*prefix, "bash", str(SCRIPT), *args], capture_output=True,
                              text=True, timeout=600)
    finally:
        if old is not None:
            os.umask(old)


def in_ns(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft (a network namespace of its own)")
    name = "rwinst-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def test_script_parses_and_passes_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(["shellcheck", str(SCRIPT), str(ROOT / "dev"),
                             str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_example_config_is_generated_from_the_settings() -> None:
    assert (ROOT / "deploy" / "resetwatch.toml").read_text() == example_toml()


def test_dry_run_prints_each_step_and_changes_nothing(tmp_path: Path) -> None:
    result = run("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert any("venv" in s for s in steps)
    assert any("resetwatch.service" in s for s in steps)
    assert list(tmp_path.iterdir()) == []


def test_bad_option_is_one_line() -> None:
    result = run("--frobnicate")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "install.sh: unknown option '--frobnicate' (see --help)"
    ]


def test_install_twice_keeps_config_then_uninstall_removes_everything(
    tmp_path: Path, netns: str
) -> None:
    first = run("--root", str(tmp_path), netns=netns, umask=0o077)  # a strict caller
    assert first.returncode == 0, first.stderr + first.stdout
    # The script's own umask (022), not the caller's: the venv is usable by every user.
    python = tmp_path / "opt/resetwatch/lib"
    assert stat.S_IMODE(python.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "etc/resetwatch").stat().st_mode) == 0o755
    binary = tmp_path / "opt/resetwatch/bin/resetwatch"
    config = tmp_path / "etc/resetwatch/resetwatch.toml"
    assert (tmp_path / "etc/systemd/system/resetwatch.service").exists()
    assert config.read_text() == example_toml()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("resetwatch ")
    config.write_text("probability = 0.001\n")  # the operator's own edit
    second = run("--root", str(tmp_path), netns=netns)
    assert second.returncode == 0, second.stderr
    assert config.read_text() == "probability = 0.001\n"
    assert (tmp_path / "etc/resetwatch/resetwatch.toml.example").exists()
    check = subprocess.run([str(binary), "rules", "install", "--dry-run", "--config",
                            str(config), "--backend", "iptables"], capture_output=True,
                           text=True)
    assert "--probability 0.001" in check.stdout
    installed = in_ns(netns, str(binary), "rules", "install", "--config", "/dev/null",
                      "--backend", "nft")
    assert installed.returncode == 0, installed.stderr
    assert in_ns(netns, "iptables-legacy-save").stdout == ""  # an nft host: no legacy tables
    gone = run("--uninstall", "--root", str(tmp_path), netns=netns)
    assert gone.returncode == 0, gone.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []
    assert "resetwatch" not in in_ns(netns, "nft", "list", "ruleset").stdout  # ours removed
    # ...without creating legacy tables on the way (listing a legacy table creates it).
    assert in_ns(netns, "iptables-legacy-save").stdout == ""
    assert in_ns(netns, "ip6tables-legacy-save").stdout == ""
