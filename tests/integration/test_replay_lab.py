"""Real traffic through the real sampling rules, judged by the real ``resetwatch replay``.

One lab, one NFLOG capture for every scenario (a module fixture: the deadlines the replay waits
out are paid once), then one parametrized test per scenario asserting its record exactly. The
scenarios and their expected verdicts live in `tests.lab.scenarios`, shared with
`tests.lab.make_fixtures`, which saves such a capture for the root-free unit suite.

Needs root (namespaces, iptables), iproute2, iptables, tcpdump, curl, hping3, zmap and scapy;
skips with the reason otherwise.
"""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest
from tests.lab import Lab, list_namespaces
from tests.lab.netns import PREFIX, cleanup_stale
from tests.lab.requirements import lab_marks, skip_reason
from tests.lab.scenarios import (
    BY_SPORT,
    SCENARIOS,
    Run,
    Scenario,
    check,
    replay,
    run_scenarios,
    wire_by_sport,
)
from tests.lab.traffic import HTTP_PORT, http_get, start_server

from resetwatch.pcap import LINKTYPE_NFLOG, ip_offset
from resetwatch.rules.spec import HEADER_COPY

TOOLS = ("ip", "iptables", "ip6tables", "tcpdump", "curl", "hping3", "zmap")


pytestmark = lab_marks(
    skip_reason("network namespaces, iptables rules, NFLOG", tools=TOOLS, modules=("scapy",))
)


@dataclass
class LabRun:
    run: Run
    records: dict[int, dict[str, Any]]
    summary: dict[str, Any]
    wire: dict[int, list[str]]
    routes: dict[str, list[dict[str, Any]]]
    lab_nets: list[str]
    replay_seconds: float


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    tmp = tmp_path_factory.mktemp("replay_lab")
    with Lab(tag="replay") as lab:
        run = run_scenarios(lab, tmp / "mixed.pcap")
        routes = {role: lab.routes(role) for role in lab.namespaces}
        nets = [net for link in lab.links for net in (link.net4, link.net6)]
    began = time.monotonic()
    records, summary = replay(run.capture, tmp / "records.jsonl")
    return LabRun(
        run,
        records,
        summary,
        wire_by_sport(run.capture),
        routes,
        nets,
        time.monotonic() - began,
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_scenario_verdict(lab_run: LabRun, scenario: Scenario) -> None:
    record = lab_run.records.get(scenario.sport)
    problems = check(scenario, record)
    logged = " ".join(lab_run.wire.get(scenario.sport, [])) or "nothing"
    assert not problems, f"{scenario.name}: {problems}; logged packets (flags/ttl): {logged}"


def test_every_flow_is_a_scenario(lab_run: LabRun) -> None:
    """Nothing but the scenarios' own connections was sampled and logged: no stray traffic
    reached the server, and no scenario produced two flows."""
    assert set(lab_run.records) == set(BY_SPORT)
    assert set(lab_run.wire) == set(BY_SPORT)


def test_summary_counts_match_records(lab_run: LabRun) -> None:
    counts = lab_run.summary["result"]["meta"]["counts"]["summary_0"]
    judged = [s for s in SCENARIOS if not s.expect.excluded]
    assert counts["classified"] == len(judged)
    assert counts["excluded"]["truncated"] == len(SCENARIOS) - len(judged)
    for category in ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"):
        want = sum(1 for s in judged if s.expect.category == category)
        assert counts["categories"][category] == want, category


def test_capture_holds_at_most_ten_packets_per_flow(lab_run: LabRun) -> None:
    """The connbytes rule stops logging after 10 ingress packets (the ongoing scenario sends
    more), and every logged packet reached the capture."""
    assert max(len(packets) for packets in lab_run.wire.values()) == 10
    assert lab_run.run.packets == sum(len(p) for p in lab_run.wire.values())


def test_capture_holds_headers_and_no_payload(lab_run: LabRun) -> None:
    """The log rules copy the IP header and the TCP header (all 60 possible bytes of it for a
    SYN, the fixed 20 otherwise) and not one byte of payload, though the lab's clients send
    requests and ClientHellos. Read from the raw records, not through the agent's parser.

    One exception, by design of a fixed copy length: a SYN that carries data (TCP Fast Open)
    and fewer than 40 bytes of options has the start of its data inside the SYN's copy (the
    agent's parser never reads it). The lab's Fast Open SYNs are the only such packets."""
    data = lab_run.run.capture.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4  # written on this little-endian host
    assert struct.unpack_from("<I", data, 20)[0] == LINKTYPE_NFLOG
    pos, checked, with_payload, syn_data = 24, 0, 0, 0
    while pos < len(data):
        caplen = struct.unpack_from("<I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        start = ip_offset(LINKTYPE_NFLOG, frame)
        assert isinstance(start, int)
        copied = struct.unpack_from("<H", frame, start - 4)[0] - 4  # NFULA_PAYLOAD's length
        ip = frame[start : start + copied]
        family = ip[0] >> 4
        ip_header = 20 if family == 4 else 40  # the lab sends no IP options or extensions
        total = struct.unpack_from("!H", ip, 2)[0] if family == 4 else 40 + ip[4] * 256 + ip[5]
        syn = ip[ip_header + 13] & 0x12 == 0x02  # SYN without ACK
        headers = ip_header + (ip[ip_header + 12] >> 4) * 4
        assert copied == min(total, HEADER_COPY[family][syn]), (family, syn, total, copied)
        if syn and total > headers:
            sport = struct.unpack_from("!H", ip, ip_header)[0]
            assert BY_SPORT[sport].name.startswith("fastopen"), sport
            syn_data += 1
        else:
            assert copied <= headers, f"{copied - headers} payload bytes copied"
        checked += 1
        with_payload += total > headers
    assert checked == lab_run.run.packets
    assert with_payload >= 10  # requests and ClientHellos were logged: their payload was not
    assert syn_data == 2  # the Fast Open SYNs, IPv4 and IPv6


def test_lab_namespaces_have_only_lab_routes(lab_run: LabRun) -> None:
    """Traffic safety: no namespace had a default route or a route outside the lab's subnets
    (IPv6 link-local aside), so nothing a test sends can leave the lab."""
    allowed = [ipaddress.ip_network(n) for n in [*lab_run.lab_nets, "fe80::/64"]]
    for role, routes in lab_run.routes.items():
        for route in routes:
            assert route["dst"] != "default", (role, route)
            net = ipaddress.ip_network(route["dst"], strict=False)
            assert any(net.version == a.version and net.subnet_of(a) for a in allowed), (
                role,
                route,
            )


def test_lab_removes_namespaces_and_processes_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(tag="err") as lab:
        names = list(lab.namespaces.values())
        proc = lab.popen("server", ["sleep", "30"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not set(names) & set(list_namespaces())


def test_cleanup_stale_removes_only_dead_runs_namespaces() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-deadbe-client"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Lab(tag="live") as lab:
            removed = cleanup_stale()
            assert stale in removed
            assert set(lab.namespaces.values()) <= set(list_namespaces())
    finally:
        subprocess.run(["ip", "netns", "del", stale], check=False, capture_output=True)
    assert stale not in list_namespaces()


def test_middlebox_lab_forwards_both_families() -> None:
    with Lab(middlebox=True, tag="mb") as lab:
        start_server(lab)
        assert lab.mb_client4 and lab.mb_server6
        assert http_get(lab, lab.server4, HTTP_PORT, 43001) == "200"
        assert http_get(lab, lab.server6, HTTP_PORT, 43002) == "200"
        hops = lab.run("client", ["ip", "route", "get", lab.server4]).stdout
        assert f"via {lab.mb_client4}" in hops


def test_traffic_helpers_refuse_addresses_outside_the_lab() -> None:
    with Lab(tag="fence") as lab:
        for addr in ("192.0.2.1", "2001:db8::1", "127.0.0.1"):
            with pytest.raises(Exception, match="not an address of this lab"):
                http_get(lab, addr, HTTP_PORT, 43003)
