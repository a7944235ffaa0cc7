"""deploy/install.sh: lint, dry run, and a real install into a scratch root (twice), then
--uninstall. The scratch root keeps apt and systemctl out of it; everything else is real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from resetwatch.config import example_toml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)


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


def test_install_twice_keeps_config_then_uninstall_removes_everything(tmp_path: Path) -> None:
    first = run("--root", str(tmp_path))
    assert first.returncode == 0, first.stderr + first.stdout
    binary = tmp_path / "opt/resetwatch/bin/resetwatch"
    config = tmp_path / "etc/resetwatch/resetwatch.toml"
    assert (tmp_path / "etc/systemd/system/resetwatch.service").exists()
    assert config.read_text() == example_toml()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("resetwatch ")
    config.write_text("probability = 0.001\n")  # the operator's own edit
    second = run("--root", str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert config.read_text() == "probability = 0.001\n"
    assert (tmp_path / "etc/resetwatch/resetwatch.toml.example").exists()
    check = subprocess.run([str(binary), "rules", "install", "--dry-run", "--config",
                            str(config), "--backend", "iptables"], capture_output=True,
                           text=True)
    assert "--probability 0.001" in check.stdout
    gone = run("--uninstall", "--root", str(tmp_path))
    assert gone.returncode == 0, gone.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []
