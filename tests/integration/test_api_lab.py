"""The local API and ``resetwatch status`` against the live agent in a lab, and the history
surviving a restart.

One lab and one agent for the module (sampling every connection, a state_dir in tmp): a few
client behaviours of both families, then the API's answers are compared with the agent's own
records file; the agent is stopped with SIGTERM and started again on the same state_dir, and
its API must still hold the counts. A test database (mmdb-writer) puts the lab client's IPv4
address in AS64600 (DE) and its IPv6 address in AS64601 (JP), so the network filters, their
exclusions and the top lists can be checked against the records too, before and after the
restart. Needs root, iproute2, iptables, curl; skips otherwise.
Waits poll with generous limits; nothing asserts on elapsed time.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
from tests.lab import Lab
from tests.lab.agent import RunningAgent, agent_flags, cli, start_agent, wait_until
from tests.lab.requirements import lab_marks, skip_reason
from tests.lab.traffic import (
    HOLD_PORT,
    HTTP_PORT,
    abort_after_connect,
    abort_after_send,
    connect_and_hang,
    http_get,
    send_twice_then_abort,
    start_server,
)

from resetwatch.summary import percent_shares

TOOLS = ("ip", "iptables", "ip6tables", "iptables-save", "curl")
SUMMARY = "/api/v1/tcp_resets_timeouts/summary"
TIMESERIES = "/api/v1/tcp_resets_timeouts/timeseries_groups"
TAGS = "/api/v1/tags"
TOP = "/api/v1/tcp_resets_timeouts/top"
FIELDS = ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")
RECORD_WAIT_S = 40.0
EXIT_WAIT_S = 5.0


pytestmark = lab_marks(
    skip_reason(
        "network namespaces, netfilter rules, NFLOG", tools=TOOLS, modules=("prometheus_client",)
    )
)

# (source port, what the client does): flows of several categories, both families.
Action = Callable[[Lab], Any]
ACTIONS: dict[int, Action] = {
    46001: lambda lab: http_get(lab, lab.server_addr(4), HTTP_PORT, 46001),
    46002: lambda lab: http_get(lab, lab.server_addr(6), HTTP_PORT, 46002),
    46003: lambda lab: abort_after_connect(lab, lab.server_addr(4), HTTP_PORT, 46003),
    46004: lambda lab: abort_after_send(lab, lab.server_addr(6), HOLD_PORT, 46004),
    46005: lambda lab: send_twice_then_abort(lab, lab.server_addr(4), HTTP_PORT, 46005),
    46006: lambda lab: connect_and_hang(lab, lab.server_addr(6), HOLD_PORT, 46006),
}


def fetch(agent: RunningAgent, path: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET from inside the agent's namespace."""
    proc = agent.lab.run(
        agent.ns,
        [
            "curl",
            "--silent",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "--write-out",
            "\n%{http_code}",
            agent.url(path),
        ],
        check=False,
        timeout=15,
    )
    body, _, code = str(proc.stdout).rpartition("\n")
    return int(code or 0), body


@dataclass
class Live:
    records: list[dict[str, Any]]
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Path and query -> (status, body), while the first agent ran."""
    after_restart: dict[str, tuple[int, str]] = field(default_factory=dict)
    status_out: str = ""
    status_by: str = ""
    status_code: int = -1
    first_exit: int = -1
    second_exit: int = -1
    history_file: str = ""
    logs: str = ""


QUERIES = [
    f"{SUMMARY}?dateRange=1h",
    f"{SUMMARY}?dateRange=1h&format=csv",
    f"{TIMESERIES}?dateRange=1h",
    f"{TAGS}?dateRange=1h",
    f"{SUMMARY}?dateRange=9x",
    f"{SUMMARY}?asn=cogent",
]
NETWORK_QUERIES = [
    f"{SUMMARY}?dateRange=1h&asn=64600",
    f"{SUMMARY}?dateRange=1h&asn=-64600",
    f"{SUMMARY}?dateRange=1h&location=JP",
    f"{SUMMARY}?dateRange=1h&continent=EU",
    f"{SUMMARY}?dateRange=1h&asn=3356",
    f"{TAGS}?dateRange=1h&asn=AS64601",
    f"{TOP}/ases?dateRange=1h&category=no_match",
    f"{TOP}/locations?dateRange=1h&category=no_match&format=csv",
    "/client/v4/radar/tcp_resets_timeouts/summary?dateRange=1h&location=DE",
    f"{SUMMARY}?dateRange=1h&location=Germany",
    f"{SUMMARY}?dateRange=1h&asn=-64600,-64601",
]
NETWORK_OF_FAMILY = {4: (64600, "DE"), 6: (64601, "JP")}
FIRST = (46001, 46002)
"""The first flow of each network, sent alone: a network gets its own label when the top
list is next recomputed, so these two count as `other` (a new member starts at 0)."""


def lab_database(path: Path, lab: Lab) -> Path:
    """The lab client's two addresses as two networks (IPinfo Lite's flat layout)."""
    mmdb_writer = pytest.importorskip("mmdb_writer")
    from netaddr import IPSet

    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True,
                                    database_type="ipinfo lite.mmdb", languages=["en"],
                                    description="resetwatch lab test database")  # fmt: skip
    for family, continent in ((4, "EU"), (6, "AS")):
        asn, country = NETWORK_OF_FAMILY[family]
        prefix = "/24" if family == 4 else "/64"
        writer.insert_network(IPSet([lab.client_addr(family) + prefix]), {
            "asn": f"AS{asn}", "as_name": f"Lab Net {asn}", "country_code": country,
            "country": {"DE": "Germany", "JP": "Japan"}[country], "continent_code": continent,
        })
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("api_lab")
    state, records = tmp / "state", tmp / "records.jsonl"
    with Lab(tag="api") as lab:
        start_server(lab)
        flags = agent_flags(lab, backend="iptables", records=records, state_dir=state)
        flags += ["--ipdb", str(lab_database(tmp / "lab.mmdb", lab))]
        agent = start_agent(lab, flags, tmp / "first.log", records=records)
        for sport in FIRST:
            ACTIONS[sport](lab)
        wait_until(
            lambda: set(FIRST) <= set(agent.records_by_sport()),
            RECORD_WAIT_S,
            "a record of each network's first flow",
            details=agent.log_text,
        )
        # Membership of the top networks is recomputed each second: the next flow sees both.
        time.sleep(1.5)
        for sport, action in ACTIONS.items():
            if sport not in FIRST:
                action(lab)
        wait_until(
            lambda: set(ACTIONS) <= set(agent.records_by_sport()),
            RECORD_WAIT_S,
            "a record for every client action",
            details=agent.log_text,
        )
        result = Live(records=agent.records())
        for path in QUERIES + NETWORK_QUERIES:
            result.answers[path] = fetch(agent, path)
        proc = cli(lab, "status", "--agent", agent.url(""), "--range", "1h")
        result.status_out, result.status_code = proc.stdout + proc.stderr, proc.returncode
        proc = cli(lab, "status", "--agent", agent.url(""), "--range", "1h", "--by", "asn")
        result.status_by = proc.stdout + proc.stderr
        result.first_exit = agent.stop(EXIT_WAIT_S)
        history = state / "history.json"
        result.history_file = history.read_text() if history.exists() else ""

        again = start_agent(lab, flags, tmp / "second.log", records=records)
        for path in QUERIES[:1] + NETWORK_QUERIES[:1]:
            result.after_restart[path] = fetch(again, path)
        result.second_exit = again.stop(EXIT_WAIT_S)
        result.logs = agent.log_text() + again.log_text()
    yield result


def _json(answer: tuple[int, str]) -> dict[str, Any]:
    status, body = answer
    assert status == 200, body
    doc = json.loads(body)
    assert doc["success"] is True and doc["errors"] == []
    return dict(doc["result"])


def _recorded(live: Live) -> Counter[str]:
    return Counter(r["category"] for r in live.records if "category" in r)


def test_every_action_was_judged_and_the_agents_stopped_cleanly(live: Live) -> None:
    assert sum(_recorded(live).values()) == len(ACTIONS), live.records
    assert len(_recorded(live)) >= 4, live.records  # several categories, not one
    assert (live.first_exit, live.second_exit) == (0, 0), live.logs


def test_summary_shares_match_the_records(live: Live) -> None:
    result = _json(live.answers[f"{SUMMARY}?dateRange=1h"])
    counts = result["meta"]["counts"]["summary_0"]
    recorded = _recorded(live)
    assert counts["categories"] == {f: recorded.get(f, 0) for f in FIELDS}
    assert counts["classified"] == len(ACTIONS)
    assert result["meta"]["samplingProbability"] == 1
    shares = result["summary_0"]
    assert list(shares) == list(FIELDS)
    assert shares == percent_shares({f: recorded.get(f, 0) for f in FIELDS})
    assert sum(Decimal(v) for v in shares.values()) == 100


def test_csv_parses_and_agrees_with_the_json(live: Live) -> None:
    status, body = live.answers[f"{SUMMARY}?dateRange=1h&format=csv"]
    assert status == 200
    (row,) = list(csv.DictReader(io.StringIO(body)))
    shares = _json(live.answers[f"{SUMMARY}?dateRange=1h"])["summary_0"]
    assert {f: row[f] for f in FIELDS} == shares
    assert int(row["classified"]) == len(ACTIONS)


def test_timeseries_and_tags_hold_the_same_flows(live: Live) -> None:
    series = _json(live.answers[f"{TIMESERIES}?dateRange=1h"])
    assert series["meta"]["aggInterval"] == "FIFTEEN_MINUTES"
    assert sum(series["meta"]["counts"]["serie_0"]["classified"]) == len(ACTIONS)
    assert len(series["serie_0"]["timestamps"]) == 4
    tags = {t["tag"]: t["count"] for t in _json(live.answers[f"{TAGS}?dateRange=1h"])["tags"]}
    recorded: Counter[str] = Counter(t for r in live.records for t in r.get("tags", ()))
    assert {t: n for t, n in tags.items() if n} == dict(recorded)


@pytest.mark.parametrize("path,parameter", [(QUERIES[4], "dateRange"), (QUERIES[5], "asn")])
def test_a_bad_parameter_is_400_naming_it(live: Live, path: str, parameter: str) -> None:
    status, body = live.answers[path]
    assert status == 400, body
    doc = json.loads(body)
    assert doc["success"] is False and doc["result"] is None
    assert doc["errors"][0]["message"].startswith(parameter + ": ")


def test_the_counts_survive_a_restart(live: Live) -> None:
    saved = json.loads(live.history_file)
    assert saved["format"] == "resetwatch-history"
    before = _json(live.answers[f"{SUMMARY}?dateRange=1h"])
    after = _json(live.after_restart[f"{SUMMARY}?dateRange=1h"])
    assert after["meta"]["counts"] == before["meta"]["counts"]
    assert after["summary_0"] == before["summary_0"]
    assert "history: loaded" in live.logs


def test_status_prints_the_table(live: Live) -> None:
    assert live.status_code == 0, live.status_out
    out = live.status_out
    assert f"classified flows:      {len(ACTIONS)}" in out
    for name in FIELDS:
        assert name in out
    assert "sampling probability:  1 (every connection)" in out
    assert "rules:                 present" in out
    assert "flows held:" in out and "last packet:" in out


# ---- per network ---------------------------------------------------------------------------


def _judged_by_family(live: Live, labelled: bool = True) -> dict[int, list[dict[str, Any]]]:
    """The judged records per family; `labelled`: without the networks' first flows (those
    count as `other` in the history, see FIRST)."""
    out: dict[int, list[dict[str, Any]]] = {4: [], 6: []}
    for record in live.records:
        if "category" in record and not (labelled and record["sport"] in FIRST):
            out[int(record["family"])].append(record)
    return out


def test_records_carry_the_lab_networks(live: Live) -> None:
    for family, records in _judged_by_family(live, labelled=False).items():
        assert records, family
        for record in records:
            assert (record["asn"], record["country"]) == NETWORK_OF_FAMILY[family], record


@pytest.mark.parametrize("query,families", [
    (NETWORK_QUERIES[0], (4,)), (NETWORK_QUERIES[1], (6,)), (NETWORK_QUERIES[2], (6,)),
    (NETWORK_QUERIES[3], (4,)), (NETWORK_QUERIES[4], ()), (NETWORK_QUERIES[8], (4,)),
])  # fmt: skip
def test_filters_and_exclusions_agree_with_the_records(
    live: Live, query: str, families: tuple[int, ...]
) -> None:
    by_family = _judged_by_family(live)
    kept = [r for f in families for r in by_family[f]]
    if "asn=-" in query:  # an exclusion keeps `other`: the networks' first flows
        kept += [r for r in live.records if r["sport"] in FIRST]
    result = _json(live.answers[query])
    counts = result["meta"]["counts"]["summary_0"]
    assert counts["classified"] == len(kept)
    assert counts["categories"] == {c: sum(r["category"] == c for r in kept) for c in FIELDS}
    assert result["summary_0"] == percent_shares(counts["categories"])
    if not families:
        assert any("AS3356" in note for note in result["meta"]["networks"]["notes"])


def test_first_flows_of_a_new_network_count_as_other(live: Live) -> None:
    """asn=-64600,-64601 keeps `other` only: the two first flows."""
    result = _json(live.answers[NETWORK_QUERIES[10]])
    first = [r for r in live.records if r["sport"] in FIRST]
    assert result["meta"]["counts"]["summary_0"]["classified"] == len(first) == 2
    assert any("'other'" in note for note in result["meta"]["networks"]["notes"])


def test_tags_filtered(live: Live) -> None:
    six = _judged_by_family(live)[6]
    rows = _json(live.answers[NETWORK_QUERIES[5]])["tags"]
    for row in rows:
        assert row["count"] == sum(row["tag"] in r["tags"] for r in six), row


def test_top_lists_rank_and_name_the_networks(live: Live) -> None:
    by_family = _judged_by_family(live)
    result = _json(live.answers[NETWORK_QUERIES[6]])
    rows = result["top_0"]
    share = {f: sum(r["category"] == "no_match" for r in rs) / len(rs)
             for f, rs in by_family.items()}
    # Every row too small to trust: by share, then sample size, then label (netquery.py).
    order = sorted((4, 6), key=lambda f: (-share[f], -len(by_family[f]),
                                          str(NETWORK_OF_FAMILY[f][0])))
    assert [r["clientASN"] for r in rows] == [NETWORK_OF_FAMILY[f][0] for f in order]
    assert {r["clientASName"] for r in rows} == {"Lab Net 64600", "Lab Net 64601"}
    assert all(r["tooSmallToTrust"] for r in rows)  # a handful of flows each
    assert {r["classified"] for r in rows} == {len(by_family[4]), len(by_family[6])}
    status, text = live.answers[NETWORK_QUERIES[7]]
    assert status == 200
    countries = {row["clientCountryAlpha2"]: row["clientCountryName"]
                 for row in csv.DictReader(io.StringIO(text))}
    assert countries == {"DE": "Germany", "JP": "Japan"}


def test_a_bad_filter_value_is_400_naming_it(live: Live) -> None:
    status, body = live.answers[NETWORK_QUERIES[9]]
    assert status == 400 and json.loads(body)["errors"][0]["message"].startswith("location: ")


def test_per_network_counts_survive_a_restart(live: Live) -> None:
    saved = json.loads(live.history_file)
    labels = {row[5] for bucket in saved["buckets"] for row in bucket["judged"]}
    assert labels == {"64600", "64601", "other"}
    assert saved["names"]["asName"] == {"64600": "Lab Net 64600", "64601": "Lab Net 64601"}
    query = NETWORK_QUERIES[0]
    before = _json(live.answers[query])["meta"]["counts"]
    assert _json(live.after_restart[query])["meta"]["counts"] == before


def test_status_by_asn_prints_the_networks(live: Live) -> None:
    out = live.status_by
    assert "by asn" in out and "Lab Net 64600" in out and "Lab Net 64601" in out, out
