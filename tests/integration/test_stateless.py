"""The stateless sampler (nft, no conntrack) against the real kernel, in namespaces of its own.

Like `test_rules`, every command runs through `netns_runner` inside namespaces the test
creates (deleted at teardown, also on failure), and all traffic stays on their veth pair:

- it installs, checks, repairs (keeping its hash seed) and removes like the other rules,
  idempotently, leaving foreign rules alone; no `ct` expression in what it installs;
- a connection's first 10 client packets are logged, and conntrack stays empty;
- a retransmitted SYN gets the same decision; a new SYN on the same 4-tuple (port reuse)
  starts a fresh window;
- a full set is counted, never silent;
- a spoofed SYN flood leaves the conntrack table empty (and fills it with the conntrack rules,
  which shows the check can fail).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from typing import Callable

import pytest
from tests.integration import test_rules
from tests.integration.test_rules import (
    ADDRESSES,
    PORT,
    SPECS,
    add_foreign_rules,
    connect,
    packet_counters,
    require,
    ruleset,
    sh,
    veth_pair,
)

from resetwatch.rules import NftBackend, RulesError, RuleSpec, backend_for, netns_runner
from resetwatch.rules.spec import ID_LOG, ID_SAMPLE
from resetwatch.rules.stateless import ID_FULL

pytestmark = pytest.mark.root
make_netns = test_rules.make_netns  # the fixtures, shared
netns = test_rules.netns

STATELESS = RuleSpec(sampler="stateless")
FLOOD_S = 3
"""Seconds the SYN flood runs (bounded by `timeout`)."""


def nft_backend(namespace: str, set_size: int = 65536) -> NftBackend:
    require("nft")
    return NftBackend(netns_runner(namespace), set_size=set_size)


def conntrack_count(namespace: str) -> int:
    """Entries in the namespace's conntrack table (`conntrack -C`)."""
    require("conntrack")
    return int(sh(namespace, "conntrack", "-C").strip())


def hping(client: str, *args: str) -> None:
    """hping3 from the client namespace (raw packets to the lab's server address only)."""
    if shutil.which("hping3") is None:
        pytest.skip("missing binaries: hping3")
    argv = ["ip", "netns", "exec", client, "timeout", "20", "hping3", "-q", *args]
    subprocess.run([*argv, ADDRESSES[4][0]], capture_output=True, check=False, timeout=30)


def set_elements(namespace: str, family: int = 4) -> list[object]:
    listing = json.loads(sh(namespace, "nft", "-j", "list", "set", "inet", "resetwatch",
                            f"sampled{family}"))  # fmt: skip
    for item in listing["nftables"]:
        if "set" in item:
            return list(item["set"].get("elem", []))
    return []


def test_no_conntrack_expression_is_rendered() -> None:
    for spec in (STATELESS, RuleSpec(sampler="stateless", families=(6,), dports=(443,))):
        text = NftBackend().render(spec)
        assert " ct " not in text and "numgen" not in text
        assert "jhash ip" in text and "seed 0x" in text


def test_iptables_refuses_the_stateless_sampler() -> None:
    with pytest.raises(RulesError, match="--backend nft"):
        backend_for("iptables").render(STATELESS)


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_every_spec_installs_and_checks_clean(spec_name: str, netns: str) -> None:
    spec = dataclasses.replace(SPECS[spec_name], sampler="stateless")
    backend = nft_backend(netns)
    backend.install(spec)
    assert backend.check(spec) == []
    assert backend.set_full() == 0


def test_install_check_repair_remove(netns: str) -> None:
    backend = nft_backend(netns)
    add_foreign_rules("nft", netns)
    before = ruleset("nft", netns)
    assert backend.check(STATELESS) != []

    backend.install(STATELESS)
    backend.install(STATELESS)  # twice: still one table, one copy of each rule
    listing = sh(netns, "nft", "list", "ruleset")
    assert listing.count("table inet resetwatch") == 1
    assert listing.count(f'"{ID_SAMPLE}"') == listing.count(f'"{ID_FULL}"') == 2
    assert listing.count(f'"{ID_LOG}"') == 2
    assert " ct " not in listing.split("table inet resetwatch", 1)[1]
    assert 'udp dport 5353 counter packets 0 bytes 0 comment "foreign"' in listing
    assert backend.check(STATELESS) == []
    # Another process (`resetwatch rules check`) accepts whichever seed is installed.
    assert nft_backend(netns).check(STATELESS) == []
    seed = backend.seed

    sh(netns, "nft", "flush", "chain", "inet", "resetwatch", "prerouting")
    assert any("rule 1 is missing" in d for d in backend.check(STATELESS))
    sh(netns, "nft", "delete", "set", "inet", "resetwatch", "sampled6")
    assert "set sampled6 is missing" in backend.check(STATELESS)
    backend.install(STATELESS)
    assert backend.check(STATELESS) == [] and backend.seed == seed

    # A table re-installed with another seed changes decisions: this agent's check sees it.
    other = nft_backend(netns)
    other.seed = (seed or 0) ^ 1
    other.install(STATELESS)
    assert any("another seed" in d for d in backend.check(STATELESS))
    # A different set size or the conntrack rules are differences too.
    assert nft_backend(netns, set_size=8).check(STATELESS) != []
    assert backend.check(RuleSpec()) != []

    backend.remove()
    assert ruleset("nft", netns) == before
    backend.remove()
    assert ruleset("nft", netns) == before


@pytest.mark.parametrize("family", [4, 6])
def test_first_packets_logged_and_conntrack_stays_off(
    family: int, make_netns: Callable[[], str]
) -> None:
    server, client = make_netns(), make_netns()
    veth_pair(server, client, family)
    spec = RuleSpec(probability=1.0, families=(family,), sampler="stateless")
    nft_backend(server).install(spec)

    connect(server, client, family, rounds=15)

    counters = packet_counters("nft", server, family)
    assert counters[ID_SAMPLE] == 1  # the SYN, logged by its own rule
    assert counters[ID_SAMPLE] + counters[ID_LOG] == spec.max_packets
    assert counters[ID_FULL] == 0
    assert conntrack_count(server) == 0


def test_same_decision_for_a_retransmitted_syn_and_port_reuse_restarts(
    make_netns: Callable[[], str],
) -> None:
    server, client = make_netns(), make_netns()
    veth_pair(server, client, 4)
    backend = nft_backend(server)
    backend.install(RuleSpec(probability=0.5, families=(4,), sampler="stateless"))
    for _ in range(2):  # every SYN twice, from 100 source ports
        hping(client, "-S", "-s", "41000", "-p", str(PORT), "-c", "100", "-i", "u2000")
    counters = packet_counters("nft", server, 4)
    sampled = len(set_elements(server))
    assert 10 < sampled < 90, sampled  # about half (binomial 100, 0.5)
    assert counters[ID_SAMPLE] == 2 * sampled  # each sampled 4-tuple: both of its SYNs

    backend.install(RuleSpec(probability=1.0, families=(4,), sampler="stateless"))
    for _ in range(2):  # SYN and 14 ACKs, twice on the same 4-tuple
        hping(client, "-S", "-s", "42000", "-k", "-p", str(PORT), "-c", "1")
        hping(client, "-A", "-s", "42000", "-k", "-p", str(PORT), "-c", "14", "-i", "u2000")
    counters = packet_counters("nft", server, 4)
    assert counters[ID_SAMPLE] == 2
    assert counters[ID_LOG] == 2 * 9  # each SYN opened a fresh window of 10
    assert conntrack_count(server) == 0


def test_a_full_set_is_counted(make_netns: Callable[[], str]) -> None:
    server, client = make_netns(), make_netns()
    veth_pair(server, client, 4)
    backend = nft_backend(server, set_size=4)
    backend.install(RuleSpec(probability=1.0, families=(4,), sampler="stateless"))
    assert backend.set_full() == 0
    hping(client, "-S", "-s", "43000", "-p", str(PORT), "-c", "10", "-i", "u2000")
    assert len(set_elements(server)) == 4
    assert backend.set_full() == 6
    assert packet_counters("nft", server, 4)[ID_SAMPLE] == 4


@pytest.mark.parametrize("sampler", ["stateless", "conntrack"])
def test_a_spoofed_syn_flood_and_the_conntrack_table(
    sampler: str, make_netns: Callable[[], str]
) -> None:
    """The stateless rules keep conntrack empty under a flood; the conntrack rules track
    every spoofed SYN (so this check can fail)."""
    server, client = make_netns(), make_netns()
    veth_pair(server, client, 4)
    nft_backend(server).install(RuleSpec(sampler=sampler))
    if shutil.which("hping3") is None:
        pytest.skip("missing binaries: hping3")
    flood = ["ip", "netns", "exec", client, "timeout", str(FLOOD_S), "hping3", "-q", "-S",
             "--flood", "--rand-source", "-p", str(PORT), ADDRESSES[4][0]]  # fmt: skip
    subprocess.run(flood, capture_output=True, check=False, timeout=FLOOD_S + 10)
    count = conntrack_count(server)
    if sampler == "stateless":
        assert count == 0
    else:
        assert count > 1000, count
