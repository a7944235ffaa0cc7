"""`resetwatch assets write DIR`: the deploy assets from the package equal the repository's,
and writing them keeps an operator's edits unless told otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from resetwatch import assets, cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_the_repository_file_equals_the_packaged_asset(name: str) -> None:
    repo_path = assets.ASSETS[name][0]
    assert (ROOT / repo_path).read_text() == assets.content(name), (
        f"{repo_path} differs from the package's {name}: regenerate it (see the generator's "
        "docstring), or, for a file without a generator, make the copy in "
        "agent/resetwatch/assets/ the same"
    )


def test_every_deploy_file_is_an_asset() -> None:
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "deploy").rglob("*")
               if p.is_file() and p.suffix in (".yml", ".json", ".toml")}
    shipped.add("systemd/resetwatch.service")
    assert shipped == {repo for repo, _ in assets.ASSETS.values()}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["assets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_write_then_keep_an_edit_then_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "new" / "dir"
    code, out, err = run(capsys, "write", str(target))
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"wrote {target / name}" for name in assets.ASSETS]
    for name in assets.ASSETS:
        assert (target / name).read_text() == assets.content(name)
    config = target / "resetwatch.toml"
    config.write_text("probability = 0.01\n")
    code, out, err = run(capsys, "write", str(target))
    assert code == 2 and out == ""
    assert err == f"resetwatch assets: {config} exists and differs (--force replaces it)\n"
    assert config.read_text() == "probability = 0.01\n"
    code, out, _ = run(capsys, "write", "--force", str(target))
    unchanged = len(assets.ASSETS) - 1  # all but the edited config
    assert code == 0 and f"wrote {config}" in out and out.count("unchanged ") == unchanged
    assert config.read_text() == assets.content("resetwatch.toml")


def test_an_unwritable_place_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = run(capsys, "write", str(blocker))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"resetwatch assets: {blocker}/"), err


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_written_rules_pass_their_promtool_tests(tmp_path: Path) -> None:
    assets.write(tmp_path)
    result = subprocess.run(["promtool", "test", "rules", "resetwatch.rules.test.yml"],
                            cwd=tmp_path / "prometheus", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
