"""The rules backends against the real kernel, each test inside network namespaces of its own.

Every rules command runs through `netns_runner`, so nothing here reads or writes the host's own
tables, and all traffic stays on a veth pair between two namespaces the test created. The
namespaces (and with them their rules, veths and conntrack tables) are deleted in fixture
teardown, also when a test fails. Tests that need root carry the `root` mark and skip, saying
why, without root or the tools; the few at the end check the rendered text, the validation and
the error messages and need neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Callable, Optional

import pytest

from resetwatch.rules import (
    RulesBackend,
    RulesError,
    RuleSpec,
    backend_for,
    netns_runner,
    run_local,
)
from resetwatch.rules.keeper import RulesKeeper
from resetwatch.rules.spec import CHAIN, ID_JUMP, ID_LOG, ID_LOG_SYN, ID_SAMPLE

ROOT = pytest.mark.root
"""Marks the tests that need root, namespaces and the real kernel (the rest are pure)."""

BACKENDS = ("iptables", "iptables-legacy", "nft")
""""iptables" is this host's default (nf_tables here); "iptables-legacy" exercises the other
flavour of the same backend, whose tools print rules slightly differently."""


def tool(backend: str, family: int, kind: str = "") -> str:
    """The iptables-family tool a backend uses, e.g. ("iptables-legacy", 6, "save") ->
    "ip6tables-legacy-save"."""
    base = {4: "iptables", 6: "ip6tables"}[family] + backend[len("iptables") :]
    return f"{base}-{kind}" if kind else base


def tools(backend: str) -> list[str]:
    if backend == "nft":
        return ["nft"]
    return [tool(backend, family, kind) for family in (4, 6) for kind in ("", "restore", "save")]


ADDRESSES = {4: ("10.77.0.1", "10.77.0.2", "24"), 6: ("fd77::1", "fd77::2", "64")}
PORT = 8080


def require(*tools: str) -> None:
    """Skip (with the reason) unless we are root and every tool is on PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and netfilter rules")
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing binaries: {', '.join(missing)}")


def sh(namespace: str, *argv: str, stdin: Optional[str] = None) -> str:
    """Run a command inside the namespace; fail the test with its stderr if it fails."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"
    return result.stdout


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Creates fresh network namespaces on demand and deletes them all at teardown."""
    require()
    created: list[str] = []

    def make() -> str:
        name = f"rwtest-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        created.append(name)
        return name

    try:
        yield make
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


def backend_in(name: str, namespace: str, seen: Optional[list[list[str]]] = None) -> RulesBackend:
    """The named backend, running every command inside the namespace (and recording argv)."""
    require(*tools(name))
    if name == "iptables-legacy":
        probe = subprocess.run(
            ["ip", "netns", "exec", namespace, "iptables-legacy", "-t", "mangle", "-S"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            pytest.skip(f"kernel without legacy iptables: {probe.stderr.strip()}")

    def run(argv: list[str], stdin: Optional[str]) -> subprocess.CompletedProcess[str]:
        if seen is not None:
            seen.append(list(argv))
        return run_local(argv, stdin)

    return backend_for(name, netns_runner(namespace, run))


def ruleset(backend: str, namespace: str) -> str:
    """The namespace's whole ruleset as the backend's tool saves it, minus counters and the
    header comments that carry timestamps, so two snapshots compare as text."""
    if backend != "nft":
        text = "".join(sh(namespace, tool(backend, f, "save"), "-t", "mangle") for f in (4, 6))
        text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
    else:
        text = sh(namespace, "nft", "list", "ruleset")
        text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def copies(backend: str, namespace: str) -> dict[str, int]:
    """How many rules of each id (and, for nft, tables) the namespace holds."""
    if backend != "nft":
        text = "".join(sh(namespace, tool(backend, f), "-t", "mangle", "-S") for f in (4, 6))
    else:
        text = sh(namespace, "nft", "list", "ruleset")
    ids = (ID_JUMP, ID_SAMPLE, ID_LOG_SYN, ID_LOG)
    counts = {rule_id: text.count(f'"{rule_id}"') for rule_id in ids}
    counts["table"] = text.count("table inet resetwatch")
    counts["chain"] = text.count(f"-N {CHAIN}")
    return counts


# IPv4 + IPv6; the nft table is shared by both families, its log rules are per family.
IPTABLES_ONE_COPY = {ID_JUMP: 2, ID_SAMPLE: 2, ID_LOG_SYN: 2, ID_LOG: 2, "table": 0, "chain": 2}
ONE_COPY = {
    "iptables": IPTABLES_ONE_COPY,
    "iptables-legacy": IPTABLES_ONE_COPY,
    "nft": {ID_JUMP: 0, ID_SAMPLE: 1, ID_LOG_SYN: 2, ID_LOG: 2, "table": 1, "chain": 0},
}

SPECS = {
    "defaults": RuleSpec(),
    "filtered": RuleSpec(probability=0.01, dports=(443, 80), in_interfaces=("eth+", "lo")),
    "many-ports": RuleSpec(label=100, nflog_group=7, dports=tuple(range(1, 21))),
    "ipv6-only": RuleSpec(families=(6,), max_packets=3),
}


@ROOT
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_install_then_check_is_clean(backend_name: str, spec_name: str, netns: str) -> None:
    seen: list[list[str]] = []
    backend = backend_in(backend_name, netns, seen)
    spec = SPECS[spec_name]
    assert not backend.present()
    assert backend.check(spec) != []
    backend.install(spec)
    assert backend.present()
    assert backend.check(spec) == []
    assert "resetwatch:log" in backend.show()
    assert seen and all(argv[:4] == ["ip", "netns", "exec", netns] for argv in seen)


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_install_twice_leaves_one_copy(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    backend.install(RuleSpec())
    backend.install(RuleSpec())
    assert copies(backend_name, netns) == ONE_COPY[backend_name]
    assert backend.check(RuleSpec()) == []


def add_foreign_rules(backend: str, namespace: str) -> None:
    """Rules somebody else owns, beside ours: they must survive install and remove."""
    if backend != "nft":
        for family in (4, 6):
            for rule in (
                "-p udp --dport 5353 -m comment --comment foreign -j RETURN",
                "-p tcp --dport 22 -j MARK --set-mark 5",
            ):
                argv = [tool(backend, family), "-w", "-t", "mangle", "-A", "PREROUTING"]
                sh(namespace, *argv, *rule.split())
    else:
        sh(
            namespace,
            "nft",
            "-f",
            "-",
            stdin=(
                "table inet foreign {\n"
                "  chain pre { type filter hook prerouting priority -150; policy accept;\n"
                '    udp dport 5353 counter comment "foreign"\n  }\n}\n'
            ),
        )


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_remove_restores_ruleset_and_keeps_foreign_rules(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    add_foreign_rules(backend_name, netns)
    before = ruleset(backend_name, netns)
    assert "foreign" in before

    backend.install(RuleSpec())
    during = ruleset(backend_name, netns)
    assert "resetwatch:sample" in during
    for line in before.splitlines():
        if "foreign" in line or "dport 22" in line:
            assert line in during, f"foreign rule lost by install: {line}"
    assert backend.check(RuleSpec()) == []

    backend.remove()
    assert ruleset(backend_name, netns) == before
    assert not backend.present()
    backend.remove()  # removing what is absent is a no-op
    assert ruleset(backend_name, netns) == before


# (backend, name, commands run in the namespace, a phrase the check must report);
# {ip4} and {ip6} stand for the backend's iptables and ip6tables tools.
IPTABLES_DAMAGE = [
    ("flush", ["{ip4} -t mangle -F RESETWATCH"], "IPv4: RESETWATCH rule 1"),
    (
        "no-jump",
        ["{ip4} -t mangle -D PREROUTING -m comment --comment resetwatch:jump -j RESETWATCH"],
        "IPv4: no jump",
    ),
    ("extra", ["{ip6} -t mangle -A RESETWATCH -j RETURN"], "IPv6: RESETWATCH rule 5 is not wanted"),
    ("second-jump", ["{ip4} -t mangle -A PREROUTING -j RESETWATCH"], "IPv4: 2 jumps"),
    ("no-chain", ["{ip6} -t mangle -F", "{ip6} -t mangle -X RESETWATCH"], "IPv6: chain"),
    (
        "shadowed",
        ["{ip4} -t mangle -I PREROUTING 1 -p tcp -j ACCEPT"],
        "IPv4: the jump to RESETWATCH is below `-p tcp -j ACCEPT`",
    ),
]
DAMAGE = [
    (backend, *row) for backend in ("iptables", "iptables-legacy") for row in IPTABLES_DAMAGE
] + [
    ("nft", "flush", ["nft flush chain inet resetwatch prerouting"], "rule 1 is missing"),
    ("nft", "no-table", ["nft delete table inet resetwatch"], "table inet resetwatch is missing"),
    ("nft", "extra", ["nft add rule inet resetwatch prerouting counter"], "rule 7 is not wanted"),
    (
        "nft",
        "changed",
        [
            "nft delete chain inet resetwatch prerouting",
            "nft add chain inet resetwatch prerouting { type filter hook prerouting priority 0 ; }",
        ],
        "prio is 0",
    ),
]


@ROOT
@pytest.mark.parametrize(
    ("backend_name", "damage", "commands", "phrase"),
    DAMAGE,
    ids=[f"{row[0]}-{row[1]}" for row in DAMAGE],
)
def test_check_reports_damage_and_install_repairs_it(
    backend_name: str, damage: str, commands: list[str], phrase: str, netns: str
) -> None:
    backend = backend_in(backend_name, netns)
    backend.install(RuleSpec())
    for command in commands:
        text = command.replace("{ip4}", tool(backend_name, 4))
        text = text.replace("{ip6}", tool(backend_name, 6))
        sh(netns, *text.split())
    differences = backend.check(RuleSpec())
    assert differences, f"check missed the damage {damage}"
    assert any(phrase in d for d in differences), differences
    backend.install(RuleSpec())
    assert backend.check(RuleSpec()) == []
    assert copies(backend_name, netns) == ONE_COPY[backend_name]


def prerouting(backend: str, namespace: str, family: int = 4) -> list[str]:
    """The `-A PREROUTING` rules of table mangle, in order."""
    text = sh(namespace, tool(backend, family), "-w", "-t", "mangle", "-S", "PREROUTING")
    return [line for line in text.splitlines() if line.startswith("-A PREROUTING")]


@ROOT
@pytest.mark.parametrize("backend_name", ["iptables", "iptables-legacy"])
def test_a_rule_above_the_jump_is_a_counted_repair_back_to_the_top(
    backend_name: str, netns: str
) -> None:
    """`-p tcp -j ACCEPT` inserted above our jump hides every IPv4 connection: the keeper's
    check sees it and puts the jump back on top, counted as a repair."""
    backend = backend_in(backend_name, netns)
    keeper = RulesKeeper(lambda name: backend, interval=3600)
    keeper.install(backend_name, RuleSpec())
    try:
        assert f"-j {CHAIN}" in prerouting(backend_name, netns)[0]
        sh(netns, tool(backend_name, 4), "-w", "-t", "mangle", "-I", "PREROUTING", "1",
           "-p", "tcp", "-j", "ACCEPT")  # fmt: skip
        keeper.check()
        assert keeper.state.repairs == 1
        assert keeper.state.present
        rules = prerouting(backend_name, netns)
        assert f"-j {CHAIN}" in rules[0] and "-j ACCEPT" in rules[1], rules
        assert copies(backend_name, netns) == ONE_COPY[backend_name]
        keeper.check()
        assert keeper.state.repairs == 1  # on top again: nothing more to do
    finally:
        keeper.stop(remove=True)


@ROOT
@pytest.mark.parametrize("backend_name", ["iptables", "iptables-legacy"])
def test_a_rule_that_lets_packets_through_may_stay_above_the_jump(
    backend_name: str, netns: str
) -> None:
    """A MARK or a bare counter above our jump hides nothing: no repair, no fight."""
    backend = backend_in(backend_name, netns)
    backend.install(RuleSpec())
    for rule in ("-p tcp -j MARK --set-mark 5", "-p tcp"):
        sh(netns, tool(backend_name, 4), "-w", "-t", "mangle", "-I", "PREROUTING", "1",
           *rule.split())  # fmt: skip
    assert backend.check(RuleSpec()) == []


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_check_reports_changed_probability(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    backend.install(RuleSpec(probability=0.0001))
    differences = backend.check(RuleSpec(probability=0.5))
    wanted = "numgen random mod 2 == 0" if backend_name == "nft" else "--probability 0.5"
    assert differences and all(wanted in d for d in differences), differences
    assert backend.check(RuleSpec(probability=0.0001)) == []


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_narrowing_families_removes_the_other_family(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    backend.install(RuleSpec())
    backend.install(RuleSpec(families=(4,)))
    assert backend.check(RuleSpec(families=(4,))) == []
    assert backend.check(RuleSpec()) != []
    if backend_name != "nft":
        assert CHAIN not in sh(netns, tool(backend_name, 6), "-w", "-t", "mangle", "-S")
        assert CHAIN in sh(netns, tool(backend_name, 4), "-w", "-t", "mangle", "-S")
    else:
        assert "meta nfproto ipv4" in sh(netns, "nft", "list", "table", "inet", "resetwatch")


# -- real traffic -------------------------------------------------------------------------

SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
print("ready", flush=True)
conn, _ = server.accept()
while True:
    data = conn.recv(4096)
    if not data:
        break
    conn.sendall(data)
conn.close()
"""

CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(int(sys.argv[3])):  # ping-pong: every request is its own segment
    conn.sendall(b"x" * 10)
    assert conn.recv(4096)
conn.close()
"""


def veth_pair(server: str, client: str, family: int) -> None:
    """A veth between the two namespaces, created inside them (never in the host)."""
    suffix = uuid.uuid4().hex[:6]
    here, there = f"rws{suffix}", f"rwc{suffix}"
    sh(server, "ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", client)
    server_addr, client_addr, prefix = ADDRESSES[family]
    extra = ["nodad"] if family == 6 else []
    for namespace, device, address in ((server, here, server_addr), (client, there, client_addr)):
        sh(
            namespace,
            "ip",
            f"-{family}",
            "addr",
            "add",
            f"{address}/{prefix}",
            "dev",
            device,
            *extra,
        )
        sh(namespace, "ip", "link", "set", device, "up")
        sh(namespace, "ip", "link", "set", "lo", "up")


def connect(
    server: str, client: str, family: int, rounds: int, address: Optional[str] = None
) -> None:
    """One TCP connection from the client namespace to a listener in the server namespace."""
    address = address or ADDRESSES[family][0]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", SERVER, address, str(PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stderr is not None
        if listener.stdout.readline().strip() != "ready":
            listener.wait(timeout=60)
            pytest.fail(f"listener did not start: {listener.stderr.read().strip()}")
        sh(client, sys.executable, "-c", CLIENT, address, str(PORT), str(rounds))
        listener.wait(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def conntrack_labels(namespace: str, family: int) -> list[int]:
    """The labels (as one integer bitmap) of the namespace's conntrack entries to PORT.

    `conntrack -L -o labels` prints labels only through a name map (/etc/xtables/connlabel.conf,
    absent here: "nfct_labelmap_new: No such file or directory"), so we ask ctnetlink directly.
    """
    pyroute2 = pytest.importorskip("pyroute2")
    sock = pyroute2.NFCTSocket(
        nfgen_family=socket.AF_INET6 if family == 6 else socket.AF_INET, netns=namespace
    )
    labels = []
    try:
        for entry in sock.dump():
            orig = entry.get_attr("CTA_TUPLE_ORIG")
            destination = orig.get_attr("CTA_TUPLE_IP").get_attr(f"CTA_IP_V{family}_DST")
            dport = orig.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_DST_PORT")
            if destination == ADDRESSES[family][0] and dport == PORT:
                labels.append(int(entry.get_attr("CTA_LABELS") or 0))
    finally:
        sock.close()
    return labels


def packet_counters(backend: str, namespace: str, family: int) -> dict[str, int]:
    """Packets counted by each of our rules (by id comment)."""
    counts: dict[str, int] = {}
    if backend != "nft":
        listing = sh(namespace, tool(backend, family), "-w", "-t", "mangle", "-v", "-S", CHAIN)
        for line in listing.splitlines():
            found = re.search(r'--comment "?(resetwatch:[\w-]+)"?.* -c (\d+) \d+', line)
            if found:
                counts[found.group(1)] = counts.get(found.group(1), 0) + int(found.group(2))
    else:
        listing = json.loads(sh(namespace, "nft", "-j", "list", "table", "inet", "resetwatch"))
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule:
                for expr in rule["expr"]:
                    if "counter" in expr:
                        comment = rule["comment"]
                        counts[comment] = counts.get(comment, 0) + expr["counter"]["packets"]
    return counts


def conntrack_original_packets(namespace: str, family: int) -> int:
    listing = sh(
        namespace, "conntrack", "-L", "-f", f"ipv{family}", "-p", "tcp", "--dport", str(PORT)
    )
    found = re.search(r"dport=\d+ packets=(\d+)", listing)
    assert found, listing
    return int(found.group(1))


@ROOT
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_probability_one_labels_the_connection_and_logs_its_first_packets(
    backend_name: str, family: int, make_netns: Callable[[], str]
) -> None:
    require(*tools(backend_name), "conntrack")
    server, client = make_netns(), make_netns()
    veth_pair(server, client, family)
    spec = RuleSpec(probability=1.0, families=(family,))
    backend = backend_in(backend_name, server)
    backend.install(spec)

    connect(server, client, family, rounds=15)

    counters = packet_counters(backend_name, server, family)
    assert counters[ID_SAMPLE] == 1  # the one SYN
    assert counters[ID_LOG_SYN] == 1  # logged with its options, by the SYN's own rule
    # More than max_packets came in, and exactly the first max_packets were logged.
    assert conntrack_original_packets(server, family) > spec.max_packets
    assert counters[ID_LOG_SYN] + counters[ID_LOG] == spec.max_packets
    labels = conntrack_labels(server, family)
    assert len(labels) == 1, labels
    assert labels[0] >> spec.label & 1, f"label bit {spec.label} not set: {labels[0]:#x}"


@pytest.mark.parametrize("backend_name", ["iptables", "nft"])
@pytest.mark.parametrize("family,loopback", [(4, "127.0.0.1"), (6, "::1")])
def test_the_hosts_own_loopback_connections_are_never_sampled(
    backend_name: str, family: int, loopback: str, make_netns: Callable[[], str]
) -> None:
    """Both directions of a loopback connection pass PREROUTING; neither is a client's."""
    require(*tools(backend_name))
    server = make_netns()
    sh(server, "ip", "link", "set", "lo", "up")
    backend = backend_in(backend_name, server)
    backend.install(RuleSpec(probability=1.0, families=(family,)))
    connect(server, server, family, rounds=3, address=loopback)
    counters = packet_counters(backend_name, server, family)
    assert counters[ID_SAMPLE] == 0
    assert counters[ID_LOG_SYN] == counters[ID_LOG] == 0


# -- no kernel needed: the exact text fed to the tools, validation, error messages -----------

IPTABLES_FAMILY_DEFAULTS = """\
*mangle
:RESETWATCH - [0:0]
-F RESETWATCH
-A RESETWATCH ! -i lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN \
-m comment --comment "resetwatch:candidates"
-A RESETWATCH ! -i lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW \
-m statistic --mode random --probability 0.0001 -m connlabel --label 7 --set \
-m comment --comment "resetwatch:sample"
-A RESETWATCH -p tcp -m tcp --tcp-flags SYN,ACK SYN -m conntrack --ctdir ORIGINAL \
-m connlabel --label 7 -m connbytes ! --connbytes 11 \
--connbytes-mode packets --connbytes-dir original -m comment --comment "resetwatch:log-syn" \
-j NFLOG --nflog-prefix resetwatch --nflog-group 10 --nflog-size {syn}
-A RESETWATCH -p tcp -m tcp ! --tcp-flags SYN,ACK SYN -m conntrack --ctdir ORIGINAL \
-m connlabel --label 7 -m connbytes ! --connbytes 11 \
--connbytes-mode packets --connbytes-dir original -m comment --comment "resetwatch:log" \
-j NFLOG --nflog-prefix resetwatch --nflog-group 10 --nflog-size {other}
-I PREROUTING 1 -m comment --comment "resetwatch:jump" -j RESETWATCH
COMMIT
"""

NFT_DEFAULTS = """\
table inet resetwatch
delete table inet resetwatch
table inet resetwatch {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tiifname != "lo" tcp flags & (fin | syn | rst | ack) == syn counter \
comment "resetwatch:candidates"
\t\tiifname != "lo" tcp flags & (fin | syn | rst | ack) == syn ct state new \
numgen random mod 10000 == 0 counter ct label set 7 comment "resetwatch:sample"
\t\tmeta nfproto ipv4 tcp flags & (syn | ack) == syn ct direction original ct label 7 \
ct original packets < 11 counter log prefix "resetwatch" group 10 snaplen 80 \
comment "resetwatch:log-syn"
\t\tmeta nfproto ipv4 tcp flags & (syn | ack) != syn ct direction original ct label 7 \
ct original packets < 11 counter log prefix "resetwatch" group 10 snaplen 40 \
comment "resetwatch:log"
\t\tmeta nfproto ipv6 tcp flags & (syn | ack) == syn ct direction original ct label 7 \
ct original packets < 11 counter log prefix "resetwatch" group 10 snaplen 100 \
comment "resetwatch:log-syn"
\t\tmeta nfproto ipv6 tcp flags & (syn | ack) != syn ct direction original ct label 7 \
ct original packets < 11 counter log prefix "resetwatch" group 10 snaplen 60 \
comment "resetwatch:log"
\t}
}
"""


def test_render_defaults() -> None:
    assert backend_for("iptables").render(RuleSpec()) == (
        "# iptables-restore -w 5 --noflush\n"
        + IPTABLES_FAMILY_DEFAULTS.format(syn=80, other=40)
        + "# ip6tables-restore -w 5 --noflush\n"
        + IPTABLES_FAMILY_DEFAULTS.format(syn=100, other=60)
    )
    assert backend_for("nft").render(RuleSpec()) == NFT_DEFAULTS


def test_render_filters() -> None:
    spec = RuleSpec(dports=tuple(range(1, 17)), in_interfaces=("eth+",), families=(6,))
    text = backend_for("iptables").render(spec)
    assert "iptables-restore" not in text.replace("ip6tables-restore", "")
    assert text.count("resetwatch:sample") == 2  # 16 ports: multiport takes 15 per rule
    assert "-i eth+ -p tcp" in text and "--dports 16 " in text
    nft = backend_for("nft").render(spec)
    assert 'meta nfproto ipv6 iifname "eth*" tcp dport { 1, 2,' in nft


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"probability": 0.0}, "probability: 0.0 is not allowed"),
        ({"probability": 1.5}, "probability: 1.5"),
        ({"probability": "0.1"}, "probability: '0.1'"),
        ({"label": 128}, "label: 128 is not allowed; use an integer 0..127"),
        ({"label": True}, "label: True"),
        ({"nflog_group": 65536}, "nflog_group: 65536"),
        ({"max_packets": 0}, "max_packets: 0"),
        ({"dports": (0,)}, "dports: 0"),
        ({"dports": "443"}, "dports: '443' is not allowed; use a list"),
        ({"in_interfaces": ("eth 0",)}, "in_interfaces: 'eth 0'"),
        ({"in_interfaces": ("a" * 16,)}, "in_interfaces:"),
        ({"families": (4, 5)}, "families: (4, 5)"),
        ({"families": ()}, "families: ()"),
    ],
)
def test_spec_refuses_bad_values(fields: dict[str, object], phrase: str) -> None:
    with pytest.raises(ValueError, match=re.escape(phrase)):
        RuleSpec(**fields)  # type: ignore[arg-type]


def test_spec_normalises_sequences() -> None:
    spec = RuleSpec(dports=[443, 80, 443], families=[6, 4], probability=1)  # type: ignore[arg-type]
    assert spec == RuleSpec(dports=(80, 443), probability=1.0)


@pytest.mark.parametrize(
    "probability,numgen",
    [
        (0.0001, "numgen random mod 10000 == 0"),
        (1 / 3, "numgen random mod 3 == 0"),
        (1.0, "numgen random mod 1 == 0"),
        (0.3, "numgen random mod 10 < 3"),
        (0.00015, "numgen random mod 20000 < 3"),
    ],
)
def test_nft_samples_k_in_n(probability: float, numgen: str) -> None:
    assert f" {numgen} counter ct label set" in backend_for("nft").render(RuleSpec(probability))


@ROOT
def test_nft_k_in_n_installs_and_checks(netns: str) -> None:
    backend = backend_in("nft", netns)
    backend.install(RuleSpec(probability=0.3))
    assert backend.check(RuleSpec(probability=0.3)) == []
    differences = backend.check(RuleSpec(probability=0.4))
    assert differences and all("numgen random mod 5 < 2" in d for d in differences), differences


def test_backend_names() -> None:
    assert backend_for("iptables-legacy").name == "iptables-legacy"
    assert backend_for("nft").name == "nft"
    with pytest.raises(ValueError, match="rules backend: 'pf' is not allowed"):
        backend_for("pf")


def test_tool_failure_is_a_one_line_error_naming_command_and_stderr() -> None:
    seen: list[list[str]] = []

    def failing(argv: list[str], stdin: Optional[str]) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        if argv[-1] == "-S":
            return subprocess.CompletedProcess(argv, 0, "-P PREROUTING ACCEPT\n", "")
        stderr = (
            "Warning: cannot open /etc/xtables/connlabel.conf: No such file or directory\n"
            "iptables-restore: line 5 failed: No chain/target/match by that name.\nsecond\n"
        )
        return subprocess.CompletedProcess(argv, 1, "", stderr)

    with pytest.raises(RulesError) as caught:
        backend_for("iptables", failing).install(RuleSpec(families=(4,)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("`iptables-restore -w 5 --noflush` failed (exit 1): iptables-re")
    assert "line 5 failed" in message and "[line 5: -A RESETWATCH" in message
    assert ["iptables", "-w", "5", "-t", "mangle", "-S"] in seen


# -- other users of our conntrack label bit ---------------------------------------------------


def add_label_rule(backend: str, namespace: str, label: int = 7) -> None:
    """A foreign rule that sets the label bit on every TCP connection (raw PREROUTING or a
    table of its own)."""
    if backend != "nft":
        sh(namespace, tool(backend, 4), "-w", "-t", "raw", "-A", "PREROUTING", "-p", "tcp",
           "-m", "connlabel", "--label", str(label), "--set")  # fmt: skip
    else:
        sh(namespace, "nft", "-f", "-", stdin=(
            "table ip foreign {\n  chain pre {\n"
            "    type filter hook prerouting priority -150; policy accept;\n"
            f'    ct label set {label} comment "theirs"\n  }}\n}}\n'
        ))  # fmt: skip


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_install_refuses_a_label_bit_another_rule_sets(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    add_label_rule(backend_name, netns)
    keeper = RulesKeeper(lambda name: backend, interval=3600)
    with pytest.raises(RulesError) as caught:
        keeper.install(backend_name, RuleSpec())
    message = str(caught.value)
    assert "\n" not in message
    assert "conntrack label 7 is already set by another rule" in message
    assert ("table ip foreign chain pre" if backend_name == "nft" else "table raw") in message
    assert not backend.present()  # refused before touching any rule
    keeper.install(backend_name, RuleSpec(label=8))  # another bit is free
    try:
        assert keeper.state.present
    finally:
        keeper.stop(remove=True)


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_label_rule_added_while_running_is_reported(backend_name: str, netns: str) -> None:
    backend = backend_in(backend_name, netns)
    keeper = RulesKeeper(lambda name: backend, interval=3600)
    keeper.install(backend_name, RuleSpec())
    try:
        keeper.check()
        assert keeper.state.label_conflicts == 0
        add_label_rule(backend_name, netns)
        keeper.check()
        assert keeper.state.label_conflicts == 1
        add_label_rule(backend_name, netns, label=9)  # another bit: no conflict of ours
        keeper.check()
        assert keeper.state.label_conflicts == 1
    finally:
        keeper.stop(remove=True)


# -- sampling sanity: the candidate counter -------------------------------------------------


def add_notrack(backend: str, namespace: str) -> None:
    """NOTRACK on the service port: conntrack never sees those connections, so no label."""
    if backend != "nft":
        sh(namespace, tool(backend, 4), "-w", "-t", "raw", "-A", "PREROUTING", "-p", "tcp",
           "--dport", str(PORT), "-j", "CT", "--notrack")  # fmt: skip
    else:
        sh(namespace, "nft", "-f", "-", stdin=(
            "table ip foreign {\n  chain raw {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            f"    tcp dport {PORT} notrack\n  }}\n}}\n"
        ))  # fmt: skip


@ROOT
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_notrack_leaves_candidates_counted_and_nothing_sampled(
    backend_name: str, make_netns: Callable[[], str]
) -> None:
    """With p = 1 every candidate is sampled, until NOTRACK blinds the sample rule: the
    candidate counter (resetwatch_sampling_candidates_total) still grows."""
    require(*tools(backend_name))
    server, client = make_netns(), make_netns()
    veth_pair(server, client, 4)
    backend = backend_in(backend_name, server)
    keeper = RulesKeeper(lambda name: backend, interval=3600)
    keeper.install(backend_name, RuleSpec(probability=1.0, families=(4,)))
    try:
        connect(server, client, 4, rounds=1)
        keeper.check()
        assert keeper.state.candidates == 1
        assert packet_counters(backend_name, server, 4)[ID_SAMPLE] == 1
        add_notrack(backend_name, server)
        connect(server, client, 4, rounds=1)
        keeper.check()
        assert keeper.state.candidates == 2
        assert packet_counters(backend_name, server, 4)[ID_SAMPLE] == 1  # blind
    finally:
        keeper.stop(remove=True)
