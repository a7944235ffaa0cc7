"""`resetwatch demo`: the agent at work in a throw-away lab, without touching the host's firewall.

Modules: `lab` (the namespaces, with pyroute2), `server` (the web server), `middlebox` (the
NFQUEUE tamperer), `traffic` (the clients), `forward` (reaching the agent from the host),
`wire` (packet bytes), `session` (one run from start to cleanup). Only `run` is public; the
programs are started as ``python -m resetwatch.demo.<module>`` inside the namespaces.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

EXIT_USAGE = 2

_TOOLS = (("ip", "iproute2"), ("zmap", "zmap"))
_PYTHON = ("pyroute2", "netfilterqueue", "maxminddb")


def _say(text: str) -> None:
    print(f"resetwatch demo: {text}", file=sys.stderr, flush=True)


def missing_requirements() -> Optional[str]:
    """One line naming what to install, or None when everything is there."""
    python = []
    broken = []
    for name in _PYTHON:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            python.append(name)
        except ImportError:  # present, but its C library is not
            broken.append(name)
    tools = [(tool, pkg) for tool, pkg in _TOOLS if shutil.which(tool) is None]
    if not (shutil.which("nft") or shutil.which("iptables")):
        tools.append(("nft or iptables", "nftables"))
    problems = []
    if python:
        problems.append(
            # The [demo] extra is not on PyPI: from a checkout it is `.[demo]`.
            f"Python packages {', '.join(python)}: pip install {' '.join(python)} (in a "
            "checkout: sudo ./dev demo; netfilterqueue builds with gcc, python3-dev and "
            "libnetfilter-queue-dev)"
        )
    if broken:
        problems.append(f"{', '.join(broken)} cannot load: apt install libnetfilter-queue1")
    if tools:
        names = ", ".join(tool for tool, _ in tools)
        problems.append(f"{names}: apt install {' '.join(pkg for _, pkg in tools)}")
    return "needs " + "; ".join(problems) if problems else None


def run(args: argparse.Namespace) -> int:
    """Run the demo for the parsed flags of `resetwatch demo`; the process exit code."""
    if os.geteuid() != 0:
        _say("needs root: it builds network namespaces and netfilter rules inside them "
             "(run it with sudo)")  # fmt: skip
        return EXIT_USAGE
    problem = missing_requirements()
    if problem:
        _say(problem)
        return EXIT_USAGE
    for flag, value in (("--records", args.records), ("--traffic-log", args.traffic_log)):
        # Checked now, not after minutes of traffic.
        if value and not Path(value).resolve().parent.is_dir():
            _say(f"{flag} {value}: no such directory")
            return EXIT_USAGE
    from .session import Demo, Options

    options = Options(
        duration=args.duration,
        keep_running=args.keep_running,
        listen=args.listen,
        records=Path(args.records) if args.records else None,
        seed=args.seed,
        traffic_log=Path(args.traffic_log) if args.traffic_log else None,
        ipdb=tuple(getattr(args, "ipdb", None) or ()),
    )
    return Demo(options).run()
