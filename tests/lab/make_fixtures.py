"""Regenerate the lab captures that the root-free unit suite replays.

Run as root from the repository root::

    PYTHONPATH=agent:. python3 -m tests.lab.make_fixtures

Why: the integration test needs root and a dozen tools; unit tests run anywhere. So a lab run's
NFLOG capture is saved with the verdict every flow must get, and unit tests replay the file.
The fixtures are written only when every flow got exactly the verdict the integration test
asserts (the same `tests.lab.scenarios` table), so a saved expectation is one that real traffic
through the real kernel produced, never one typed by hand.

Writes ``<name>.pcap`` and ``<name>.expected.json`` (keyed by client source port) into
``tests/fixtures/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from .netns import Lab
from .scenarios import (
    BY_SPORT,
    CLOSE_LINGER_S,
    IDLE_TIMEOUT_S,
    SCENARIOS,
    check,
    replay,
    run_scenarios,
    wire_by_sport,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NAME = "lab_mixed_v4v6"
MAX_BYTES = 50_000


def expected_records(
    records: dict[int, dict[str, Any]], wire: dict[int, list[str]]
) -> dict[str, dict[str, Any]]:
    """Per client source port: the scenario, the flow's addresses and packet count as replayed,
    the logged packets (tcpdump flags/TTL, for humans), and the asserted verdict fields."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        record = records[scenario.sport]
        entry: dict[str, Any] = {
            "scenario": scenario.name,
            "family": scenario.family,
            "src": record["src"],
            "sport": scenario.sport,
            "dst": record["dst"],
            "dport": record["dport"],
            "packets": record["packets"],
            "wire": " ".join(wire.get(scenario.sport, [])),
        }
        entry.update(scenario.expect.fields())
        out[str(scenario.sport)] = entry
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="directory to write into")
    parser.add_argument("--name", default=NAME, help="file name stem")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rwlab-fixtures-") as tmp:
        capture = Path(tmp, "capture.pcap")
        with Lab(tag="fixtures") as lab:
            run = run_scenarios(lab, capture)
        print(f"lab run: {run.seconds:.1f} s, {run.packets} packets, phases {run.phase_seconds}")
        records, _summary = replay(capture, Path(tmp, "records.jsonl"))
        wire = wire_by_sport(capture)
        problems = {s.name: check(s, records.get(s.sport)) for s in SCENARIOS}
        problems = {name: p for name, p in problems.items() if p}
        extra = sorted(set(records) - set(BY_SPORT))
        size = capture.stat().st_size
        for scenario in SCENARIOS:
            logged = " ".join(wire.get(scenario.sport, []))
            print(f"  {scenario.sport} {scenario.name:34} {logged}")
        if problems or extra or size > MAX_BYTES:
            print(f"NOT writing fixtures: problems={problems} extra={extra} size={size}")
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        pcap = args.out / f"{args.name}.pcap"
        shutil.copyfile(capture, pcap)
        expected = args.out / f"{args.name}.expected.json"
        expected.write_text(json.dumps(expected_records(records, wire), indent=1) + "\n")
    print(f"wrote {pcap} ({size} bytes) and {expected}")
    print(f"replay them with --close-linger {CLOSE_LINGER_S} --idle-timeout {IDLE_TIMEOUT_S}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
