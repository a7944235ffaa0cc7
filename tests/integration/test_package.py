"""The package stands on its own: `python -m build` on a fresh clone makes an sdist and, from
it, a wheel; both carry LICENSE and the SPDX license; the wheel, installed into a clean venv
(no checkout on its path), writes the deploy assets, equal to the repository's files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from resetwatch.assets import ASSETS

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 600

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None, reason="the build package ([test] extra) missing"
)


def run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                            timeout=LIMIT_S)
    assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


def test_wheel_and_sdist_carry_the_license_and_the_wheel_writes_the_assets(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "resetwatch"
    run("git", "clone", "-q", ROOT, clone, cwd=tmp_path)
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, clone, cwd=tmp_path)
    (sdist,) = dist.glob("resetwatch-*.tar.gz")
    (wheel,) = dist.glob("resetwatch-*-py3-none-any.whl")
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text

    with tarfile.open(sdist) as tar:
        top = sdist.name[: -len(".tar.gz")]
        names = set(tar.getnames())
        member = tar.extractfile(f"{top}/LICENSE")
        assert member is not None and member.read().decode() == license_text
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        sdist_meta = pkg_info.read().decode()
    assert f"{top}/agent/resetwatch/assets/resetwatch.service" in names

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (licence,) = [n for n in names if ".dist-info/" in n and n.endswith("/LICENSE")]
        assert whl.read(licence).decode() == license_text
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        wheel_meta = whl.read(metadata).decode()
    for name in ("resetwatch/py.typed", "resetwatch/assets/resetwatch.service",
                 "resetwatch/assets/resetwatch.rules.test.yml", "resetwatch/demo/lab.mmdb"):
        assert name in names, name
    for meta in (sdist_meta, wheel_meta):
        assert "License-Expression: Apache-2.0" in meta
        assert "License-File: LICENSE" in meta
        assert "Classifier: License ::" not in meta and "Classifier: Typing :: Typed" in meta

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
    assets = tmp_path / "assets"
    out = run(venv / "bin" / "resetwatch", "assets", "write", assets, cwd=tmp_path)
    assert out.count("wrote ") == len(ASSETS)
    for written, repo in (
        ("prometheus/resetwatch.rules.yml", "deploy/prometheus/resetwatch.rules.yml"),
        ("prometheus/resetwatch.rules.test.yml", "deploy/prometheus/resetwatch.rules.test.yml"),
        ("grafana/resetwatch.json", "deploy/grafana/resetwatch.json"),
        ("systemd/resetwatch.service", "systemd/resetwatch.service"),
        ("resetwatch.toml", "deploy/resetwatch.toml"),
    ):
        assert (assets / written).read_text() == (clone / repo).read_text(), written
    # It ran from the wheel, not from a checkout.
    where = run(venv / "bin" / "python", "-c", "import resetwatch; print(resetwatch.__file__)",
                cwd=tmp_path)
    assert where.startswith(str(venv)), where
