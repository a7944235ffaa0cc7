"""Whose connections: the client network on every judged flow, in records, metrics and
replay (`--ipdb`, `--by`), with bounded metric cardinality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resetwatch import cli
from resetwatch.classify import Category, Outcome, Stage, Verdict
from resetwatch.event import FlowEvent, judged_event
from resetwatch.flows import Flow
from resetwatch.ipdb import Network
from resetwatch.metrics import AgentHealth, FlowCounts, build_registry
from resetwatch.networks import NetworkCollector, NetworkLabels, Networks
from resetwatch.records import FIELDS, Record

from .factory import pkt

pytest.importorskip("maxminddb")
pytest.importorskip("mmdb_writer")
from .test_ipdb import write_db

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "tests" / "fixtures" / "lab_mixed_v4v6.pcap"  # clients 10.201.1.2, fd20:1::2
CLOCKS = ["--idle-timeout", "5", "--close-linger", "1"]


@pytest.fixture
def lab_db(tmp_path: Path) -> str:
    """A database mapping the fixture's two clients to two networks in two countries."""
    return write_db(tmp_path / "lab.mmdb", "ipinfo lite.mmdb", {
        "10.201.0.0/16": {"asn": "AS64501", "as_name": "Lab East", "country_code": "DE",
                          "continent_code": "EU"},
        "fd20:1::/32": {"asn": "AS64502", "as_name": "Lab West", "country_code": "JP",
                        "continent_code": "AS"},
    })  # fmt: skip


def replay(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["replay", str(CAPTURE), *CLOCKS, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_records_carry_the_clients_network(lab_db: str, tmp_path: Path, capsys: Any) -> None:
    records = tmp_path / "r.jsonl"
    code, _, _ = replay(capsys, "--ipdb", lab_db, "--records", str(records))
    assert code == 0
    rows = [Record.from_json(json.loads(line)) for line in records.read_text().splitlines()]
    judged = [r for r in rows if r.judged]
    assert judged and all(r.signature is not None for r in judged)
    for r in judged:
        want = (64501, "Lab East", "DE") if r.family == 4 else (64502, "Lab West", "JP")
        assert (r.asn, r.as_name, r.country) == want
    for r in rows:
        if not r.judged:  # excluded flows get no network
            assert r.asn is None and r.country is None


def test_without_an_ipdb_records_have_no_network_keys(tmp_path: Path, capsys: Any) -> None:
    records = tmp_path / "r.jsonl"
    assert replay(capsys, "--records", str(records))[0] == 0
    first = json.loads(records.read_text().splitlines()[0])
    assert not {"asn", "as_name", "country"} & set(first)


def test_a_miss_is_null_in_records(tmp_path: Path, capsys: Any) -> None:
    db = write_db(tmp_path / "other.mmdb", "ipinfo lite.mmdb",
                  {"192.0.2.0/24": {"asn": "AS1", "as_name": "x", "country_code": "US"}})
    records = tmp_path / "r.jsonl"
    assert replay(capsys, "--ipdb", db, "--records", str(records))[0] == 0
    judged = [json.loads(line) for line in records.read_text().splitlines()]
    judged = [r for r in judged if "excluded" not in r]
    assert all(r["asn"] is None and r["country"] is None for r in judged)


@pytest.mark.parametrize("by", ["asn", "country"])
def test_replay_by_network_table_and_json_agree(lab_db: str, capsys: Any, by: str) -> None:
    code, table, _ = replay(capsys, "--ipdb", lab_db, "--by", by)
    assert code == 0
    assert f"by {by}" in table and ("AS64501" in table if by == "asn" else " DE " in table)
    assert "Lab East" in table if by == "asn" else True
    code, out, _ = replay(capsys, "--ipdb", lab_db, "--by", by, "--format", "json")
    result = json.loads(out)["result"]
    rows = result[f"by_{by}"]
    assert {r[by] for r in rows} == ({64501, 64502} if by == "asn" else {"DE", "JP"})
    assert sum(r["classified"] for r in rows) == result["meta"]["counts"]["summary_0"][
        "classified"]
    for row in rows:
        assert row["tooSmallToTrust"] is True  # a lab capture: tens of flows
        assert sum(float(v) for v in row["shares"].values()) == pytest.approx(100)


def test_by_needs_an_ipdb_and_a_bad_ipdb_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    for argv in (["--by", "asn"], ["--ipdb", str(bad)], ["--ipdb", str(tmp_path / "none")]):
        result = subprocess.run(
            [sys.executable, "-m", "resetwatch", "replay", str(CAPTURE), *argv],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, argv
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr


# ---- metrics: bounded labels ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StubNetworks(Networks):
    """The real collector over a stub lookup (no file): AS n in country C<n % 40>."""

    def __init__(self) -> None:
        class _Db:
            files: tuple[Any, ...] = ()

        self.ipdb = _Db()  # type: ignore[assignment]


VERDICT = Verdict(Stage.POST_ACK, Outcome.TIMEOUT, Category.POST_ACK, ())


def event_for(asn: int) -> FlowEvent:
    flow = Flow(pkt("S", 1.0))
    country = "".join(chr(65 + (asn // 26) % 26) + chr(65 + asn % 26))
    return judged_event(flow, VERDICT)._replace(network=Network(asn, f"AS {asn}", country, "EU"))


def scrape(counts: FlowCounts) -> dict[str, dict[tuple[str, ...], float]]:
    registry = build_registry(counts, AgentHealth())
    registry.register(NetworkCollector(counts, StubNetworks()))
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith(("resetwatch_network_conn", "resetwatch_country_conn")):
                labels = tuple(sample.labels[k] for k in sorted(sample.labels))
                out.setdefault(sample.name, {})[labels] = sample.value
    return out


def test_series_stay_within_top_n_plus_other_under_thousands_of_networks() -> None:
    clock = FakeClock()
    counts = FlowCounts(NetworkLabels(5, clock))
    for i in range(20_000):
        # Five busy networks, then a long tail of thousands seen once or twice.
        asn = 64500 + (i % 5) if i % 2 else 70000 + i
        counts.write(event_for(asn))
        clock.now += 0.01
    samples = scrape(counts)
    for name, field_index in (("resetwatch_network_connections_total", 0),
                              ("resetwatch_country_connections_total", 1)):  # fmt: skip
        labels = {key[field_index] for key in samples[name]}
        assert len(labels) <= 6 and "other" in labels, labels
    asns = {key[0] for key in samples["resetwatch_network_connections_total"]}
    assert {str(64500 + i) for i in range(5)} <= asns
    total = sum(samples["resetwatch_network_connections_total"].values())
    assert total == counts.tally.classified == 20_000


def test_other_is_declared_before_any_flow() -> None:
    counts = FlowCounts(NetworkLabels(5, FakeClock()))
    samples = scrape(counts)
    keys = samples["resetwatch_network_connections_total"]
    assert ("other", "post_syn", "4") in keys and all(v == 0 for v in keys.values())


def test_every_record_field_is_documented_and_read_back() -> None:
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert set(names) == set(Record._fields)
