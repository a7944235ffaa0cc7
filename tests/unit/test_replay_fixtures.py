"""Replay of real captures committed as fixtures (recorded in the namespace lab, see
tests/fixtures/*.README.md): runs without root, and pins every flow's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resetwatch.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CAPTURES = sorted(p for p in FIXTURES.glob("*.pcap*") if p.suffix in (".pcap", ".pcapng"))
RECORD_FIELDS = ("family", "src", "sport", "dst", "dport", "packets")


def expected_for(capture: Path) -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(
        capture.with_suffix(".expected.json").read_text()
    )
    return data


@pytest.mark.parametrize("capture", CAPTURES, ids=[p.name for p in CAPTURES])
def test_every_flow_gets_its_recorded_verdict(capture: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "records.jsonl"
    code = main(["replay", str(capture), "--close-linger", "1", "--idle-timeout", "5",
                 "--records", str(out), "--format", "json"])
    assert code == 0
    records = {str(r["sport"]): r for r in map(json.loads, out.read_text().splitlines())}
    expected = expected_for(capture)
    assert set(records) == set(expected)
    for port, want in expected.items():
        got = records[port]
        for key in (*RECORD_FIELDS, "stage", "outcome", "category", "tags", "excluded"):
            assert got.get(key) == want.get(key), (want["scenario"], key)
    summary = json.loads(capsys.readouterr().out)
    shares = summary["result"]["summary_0"]
    assert sum(float(v) for v in shares.values()) == pytest.approx(100)


def test_fixtures_exist() -> None:
    assert CAPTURES, "tests/fixtures holds no capture"
