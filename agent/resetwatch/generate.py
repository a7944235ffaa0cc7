"""Every generated artifact of the repository, from one list, with a check mode.

    python -m resetwatch.generate            # rewrite what is out of date, name each file
    python -m resetwatch.generate --check    # exit 1 naming each stale file (the test command)

An artifact is a file whose whole text is made by code (the Prometheus rules and their
generated promtool tests, the Alertmanager inhibition rules, the dashboard, the example
config), or a document whose `<!-- generated: NAME -->` blocks are (docs/*.md
and the README; see reference.py). Nothing generated is ever edited by hand: change the
code, run this, commit both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, NamedTuple


class Artifact(NamedTuple):
    path: str
    """Relative to the repository root."""
    fresh: Callable[[str], str]
    """The file's up-to-date text, given its current text ("" when it does not exist)."""


def _whole(render: Callable[[], str]) -> Callable[[str], str]:
    return lambda _current: render()


def _prometheus_rules() -> str:
    from . import promrules

    return promrules.render()


def _spike_tests() -> str:
    from . import promtests

    return promtests.render_spikes()


def _noise_tests() -> str:
    from . import promtests

    return promtests.render_noise()


def _inhibition() -> str:
    from . import inhibit

    return inhibit.render()


def _dashboard() -> str:
    from . import dashboard

    return dashboard.render()


def _example_config() -> str:
    from .config import example_toml

    return example_toml()


def _blocks(current: str) -> str:
    from .reference import refresh

    return refresh(current)


def artifacts(root: Path) -> list[Artifact]:
    """Everything generated, in the order it is written."""
    items = [
        Artifact("deploy/prometheus/resetwatch.rules.yml", _whole(_prometheus_rules)),
        Artifact("deploy/prometheus/resetwatch.spikes.test.yml", _whole(_spike_tests)),
        Artifact("deploy/prometheus/resetwatch.noise.test.yml", _whole(_noise_tests)),
        Artifact("deploy/alertmanager/resetwatch.inhibit.yml", _whole(_inhibition)),
        Artifact("deploy/grafana/resetwatch.json", _whole(_dashboard)),
        Artifact("deploy/resetwatch.toml", _whole(_example_config)),
    ]
    documents = sorted(p.relative_to(root).as_posix() for p in root.glob("docs/*.md"))
    items += [Artifact(path, _blocks) for path in [*documents, "README.md"]]
    return items


def stale(root: Path) -> list[tuple[Path, str]]:
    """The artifacts whose text differs from what the code makes, with the fresh text."""
    out = []
    for artifact in artifacts(root):
        path = root / artifact.path
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        fresh = artifact.fresh(current)
        if fresh != current:
            out.append((path, fresh))
    return out


def main(argv: Sequence[str] = ()) -> int:
    args = list(argv)
    check = "--check" in args
    root = Path(args[args.index("--root") + 1]) if "--root" in args else Path.cwd()
    if not (root / "pyproject.toml").exists():
        print(f"resetwatch.generate: {root} is not the repository root (no pyproject.toml)",
              file=sys.stderr)
        return 2
    out_of_date = stale(root)
    for path, fresh in out_of_date:
        if check:
            print(f"out of date: {path.relative_to(root)}", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fresh, encoding="utf-8")
            print(f"regenerated: {path.relative_to(root)}")
    if check and out_of_date:
        print("run: python -m resetwatch.generate (then commit the result)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
