"""The deploy assets, from an installed package: `resetwatch assets write DIR`.

A wheel holds no deploy/ folder, so the package carries everything an operator needs next to
the agent: the Prometheus rules and the Grafana dashboard are rendered from the code that
generates the repository's copies (promrules.py, dashboard.py), the example config from the
settings (config.py); the systemd unit and the promtool tests of the rules have no generator and
ship as package data in this folder. The repository's files equal these (a unit test checks).
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any, Callable


def _static(name: str) -> Callable[[], str]:
    def read() -> str:
        return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")

    return read


def _rules() -> str:
    from ..promrules import render

    return render()


def _spike_tests() -> str:
    from ..promtests import render_spikes

    return render_spikes()


def _noise_tests() -> str:
    from ..promtests import render_noise

    return render_noise()


def _inhibition() -> str:
    from ..inhibit import render

    return render()


def _dashboard() -> str:
    from ..dashboard import render

    return render()


def _config() -> str:
    from ..config import example_toml

    return example_toml()


ASSETS: dict[str, tuple[str, Callable[[], str]]] = {
    "prometheus/resetwatch.rules.yml": ("deploy/prometheus/resetwatch.rules.yml", _rules),
    "prometheus/resetwatch.rules.test.yml": (
        "deploy/prometheus/resetwatch.rules.test.yml",
        _static("resetwatch.rules.test.yml"),
    ),
    "prometheus/resetwatch.spikes.test.yml": (
        "deploy/prometheus/resetwatch.spikes.test.yml", _spike_tests
    ),
    "prometheus/resetwatch.noise.test.yml": (
        "deploy/prometheus/resetwatch.noise.test.yml", _noise_tests
    ),
    "alertmanager/resetwatch.inhibit.yml": (
        "deploy/alertmanager/resetwatch.inhibit.yml", _inhibition
    ),
    "grafana/resetwatch.json": ("deploy/grafana/resetwatch.json", _dashboard),
    "systemd/resetwatch.service": ("systemd/resetwatch.service", _static("resetwatch.service")),
    "resetwatch.toml": ("deploy/resetwatch.toml", _config),
}
"""Each asset's name under DIR: (its path in the repository, what gives its text)."""


class AssetsError(Exception):
    """The assets cannot be written; the message is one line."""


def content(name: str) -> str:
    return ASSETS[name][1]()


def write(directory: Path, force: bool = False) -> list[tuple[Path, bool]]:
    """Write every asset under `directory`; returns (path, changed) for each. A file already
    there with other content (someone's edit) is kept, and nothing is written, unless `force`."""
    texts = {directory / name: content(name) for name in ASSETS}
    if not force:
        for path, text in texts.items():
            if path.is_file() and path.read_text(encoding="utf-8") != text:
                raise AssetsError(f"{path} exists and differs (--force replaces it)")
    done = []
    for path, text in texts.items():
        changed = not (path.is_file() and path.read_text(encoding="utf-8") == text)
        try:
            if changed:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        except OSError as error:
            raise AssetsError(f"{path}: {error.strerror}") from None
        done.append((path, changed))
    return done


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "assets",
        help="write the deploy assets: Prometheus rules, Grafana dashboard, unit, config",
        description=(
            "Write the files to deploy next to the agent, from this installed version: "
            "prometheus/resetwatch.rules.yml (recording and alerting rules) with its promtool "
            "tests, grafana/resetwatch.json (the dashboard), systemd/resetwatch.service (the "
            "unit deploy/install.sh installs; it runs /opt/resetwatch/bin/resetwatch) and "
            "resetwatch.toml (every setting at its default, commented out)."
        ),
    )
    p.add_argument("action", choices=("write",), help="write: write the files under DIR")
    p.add_argument("directory", metavar="DIR", help="where to write them (created if missing)")
    p.add_argument(
        "--force", action="store_true", help="replace files that exist with other content"
    )
    p.set_defaults(func=cmd_assets)


def cmd_assets(args: argparse.Namespace) -> int:
    from ..cli import UsageError

    try:
        done = write(Path(args.directory), force=args.force)
    except AssetsError as error:
        raise UsageError(str(error)) from None
    for path, changed in done:
        print(f"{'wrote' if changed else 'unchanged'} {path}")
    return 0
