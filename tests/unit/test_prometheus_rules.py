"""The shipped Prometheus rules: generated from resetwatch.promrules, valid, and their
promtool unit tests pass (a real spike fires; sampling noise and a steady high share do not)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from resetwatch import promrules

DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing"
)


def test_shipped_rules_are_generated() -> None:
    assert (DIR / "resetwatch.rules.yml").read_text() == promrules.render(), (
        "run: python -m resetwatch.generate"
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", "resetwatch.rules.yml"], cwd=DIR,
                            capture_output=True, text=True)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "SUCCESS: 13 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests() -> None:
    result = subprocess.run(["promtool", "test", "rules", "resetwatch.rules.test.yml"], cwd=DIR,
                            capture_output=True, text=True)
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_short_window_variant_is_valid(tmp_path: Path) -> None:
    """The variant the end-to-end test loads into a real Prometheus."""
    path = tmp_path / "short.rules.yml"
    path.write_text(promrules.render(promrules.Windows(
        short="30s", long="30s", baseline="10m", spike_for="0s", evaluation="1s",
        min_samples=10)))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
