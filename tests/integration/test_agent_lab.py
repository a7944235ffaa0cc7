"""The live agent (``resetwatch run``) against the real kernel, with real traffic in a lab.

Each test builds its own namespaces (`tests.lab.Lab`, removed on exit even when the test fails),
starts the lab server and ``resetwatch run`` as a subprocess inside the server namespace, drives
traffic from the client namespace only, and reads the agent's records file and its /metrics
(fetched from inside the namespace). See `tests.lab.agent` for why the agent samples only the
lab interface (the test's own scrapes on loopback would be sampled too).

- The scenarios of `tests.lab.scenarios` (both families; iptables, nft and nft with the
  stateless sampler; one lab and one agent each): every flow's record, and the /metrics
  counters summed from the expectations; no client address in /metrics; with the stateless
  sampler the server namespace's conntrack table stays empty.
- Rules flushed while the agent runs come back, and new connections are sampled again.
- SIGTERM with flows in flight: exit 0, those flows recorded as truncated (never timeout), rules
  removed (or kept with --keep-rules).
- SIGHUP reloads the config file; a bad value is refused and the running config kept.
- ``resetwatch rules`` install twice / show / check / remove through the CLI: the tables end
  exactly as before, foreign rules intact.
- Bad flags or config, and an NFLOG group already taken, stop ``run`` with one line.

Needs root, iproute2, iptables, nft, curl (and for the scenarios hping3, zmap and scapy); skips
with the reason otherwise. Waits poll with generous limits; nothing asserts on elapsed time.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.lab import Lab
from tests.lab.agent import (
    RunningAgent,
    Samples,
    agent_flags,
    cli,
    parse_samples,
    rule_flags,
    start_agent,
    wait_until,
)
from tests.lab.requirements import lab_marks, skip_reason
from tests.lab.scenarios import (
    IDLE_TIMEOUT_S,
    SCENARIOS,
    Run,
    Scenario,
    check,
    run_traffic,
)
from tests.lab.traffic import (
    HTTP_PORT,
    abort_after_connect,
    connect_and_hang,
    http_get,
    start_server,
)

BACKENDS = ("iptables", "nft")
SAMPLING = {
    "iptables": ("iptables", "conntrack"),
    "nft": ("nft", "conntrack"),
    "stateless": ("nft", "stateless"),
}
"""The lab agent's ways of sampling: (--backend, --sampler)."""
TOOLS = (
    "ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "nft", "curl", "conntrack",
)  # fmt: skip
SCENARIO_TOOLS = ("hping3", "zmap")
REPAIR_WAIT_S = 15.0
EXIT_WAIT_S = 5.0
RECORD_WAIT_S = 30.0
"""Longest wait for a flow's record once its deadline has passed (a limit, not asserted)."""


pytestmark = lab_marks(
    skip_reason(
        "network namespaces, netfilter rules, NFLOG", tools=TOOLS, modules=("prometheus_client",)
    )
)


def _require_scenario_tools() -> None:
    missing = [tool for tool in SCENARIO_TOOLS if shutil.which(tool) is None]
    if importlib.util.find_spec("scapy") is None:
        missing.append("python3-scapy")
    if missing:
        pytest.skip(f"missing tools for the lab scenarios: {', '.join(missing)}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab with its server running; removed (with every process in it) afterwards."""
    with Lab(tag="agent") as the_lab:
        start_server(the_lab)
        yield the_lab


def ruleset(lab: Lab) -> str:
    """Everything netfilter holds in the server namespace that could be ours: both families'
    mangle tables (as iptables-save prints them) and the whole nft ruleset."""
    text = ""
    for tool in ("iptables-save", "ip6tables-save"):
        text += lab.run("server", [tool, "-t", "mangle"]).stdout
    return text + lab.run("server", ["nft", "list", "ruleset"]).stdout


def ours(lab: Lab) -> list[str]:
    """Lines of the server namespace's ruleset that belong to resetwatch."""
    return [line for line in ruleset(lab).splitlines() if "resetwatch" in line.lower()]


def sample_values(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The non-zero samples called `name`, by their labels."""
    return {labels: value for (n, labels), value in samples.items() if n == name and value}


# ------------------------------------------------------------------------- 1. the scenarios

LIVE_SCENARIOS = [s for s in SCENARIOS if s.phase != "final"]
"""Every scenario but the replay's clock mover: the live agent runs on real time, and a SYN to
a closed port would simply end as a post_syn timeout after the idle timeout."""


@dataclass
class AgentRun:
    backend: str
    records: dict[int, list[dict[str, Any]]]
    samples: Samples
    metrics: str
    lab_addresses: tuple[str, ...]
    exit_code: int
    log: str
    conntrack_entries: int


def conntrack_entries(lab: Lab) -> int:
    """Entries in the server namespace's conntrack table (`conntrack -C`)."""
    return int(lab.run("server", ["conntrack", "-C"]).stdout.strip())


@pytest.fixture(scope="module", params=list(SAMPLING))
def agent_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AgentRun:
    """One lab and one agent per backend: run every scenario, wait until each flow has its
    record, scrape /metrics once, then stop the agent."""
    _require_scenario_tools()
    backend, sampler = SAMPLING[request.param]
    tmp = tmp_path_factory.mktemp(f"agent_{request.param}")
    records = tmp / "records.jsonl"
    with Lab(tag=f"live-{request.param}") as lab:
        start_server(lab)
        flags = agent_flags(lab, backend=backend, records=records, sampler=sampler)
        agent = start_agent(lab, flags, tmp / "agent.log", records=records)
        run_traffic(lab, Run(capture=records, packets=None), LIVE_SCENARIOS, wait=False)
        wanted = {s.sport for s in LIVE_SCENARIOS}
        try:
            wait_until(
                lambda: wanted <= set(agent.records_by_sport()),
                IDLE_TIMEOUT_S + RECORD_WAIT_S,
                f"records for every scenario ({backend})",
            )
        except AssertionError as error:
            missing = sorted(wanted - set(agent.records_by_sport()))
            raise AssertionError(
                f"{error}; no record for source ports {missing}; agent log:\n{agent.log_text()}"
            ) from None
        text = agent.metrics_text()
        entries = conntrack_entries(lab)
        code = agent.stop(EXIT_WAIT_S)
        addresses = (lab.client4, lab.client6, lab.server4, lab.server6)
    return AgentRun(
        request.param,
        agent.records_by_sport(),
        parse_samples(text),
        text,
        addresses,
        code,
        agent.log_text(),
        entries,
    )


@pytest.mark.parametrize("scenario", LIVE_SCENARIOS, ids=lambda s: s.id)
def test_scenario_record(agent_run: AgentRun, scenario: Scenario) -> None:
    records = agent_run.records.get(scenario.sport, [])
    assert len(records) == 1, f"{scenario.name}: records {records}"
    problems = check(scenario, records[0])
    assert not problems, f"{scenario.name} ({agent_run.backend}): {problems}; {records[0]}"


def test_every_record_is_a_scenario_and_the_agent_stopped_cleanly(agent_run: AgentRun) -> None:
    """Only the scenarios' connections were sampled (the scrapes on loopback were not), each
    gave one record, none was left in flight at the stop, and the stop exited 0."""
    assert set(agent_run.records) == {s.sport for s in LIVE_SCENARIOS}
    assert agent_run.exit_code == 0, agent_run.log


def test_conntrack_stays_off_with_the_stateless_sampler(agent_run: AgentRun) -> None:
    """Every scenario's traffic went through the server namespace; with the stateless sampler
    nothing there tracked it (the conntrack rules track every connection: shown > 0)."""
    if agent_run.backend == "stateless":
        assert agent_run.conntrack_entries == 0
        assert "--sampler stateless" not in agent_run.log  # no hint: it is in use
    else:
        assert agent_run.conntrack_entries > 0
        assert "--sampler stateless" in agent_run.log  # the lab tracked nothing before


def _expected_counts(run: AgentRun) -> tuple[Counter[tuple[str, ...]], ...]:
    """The counters summed from the scenarios' expectations."""
    connections: Counter[tuple[str, ...]] = Counter()
    outcomes: Counter[tuple[str, ...]] = Counter()
    tags: Counter[tuple[str, ...]] = Counter()
    for scenario in LIVE_SCENARIOS:
        expect, family = scenario.expect, str(scenario.family)
        assert expect.stage and expect.outcome and expect.category, scenario.name
        connections[family, expect.category] += 1
        outcomes[family, expect.stage, expect.outcome] += 1
        for tag in expect.tags:
            tags[family, expect.category, tag] += 1
    return connections, outcomes, tags


COUNTERS = {
    "resetwatch_connections_total": ("family", "category"),
    "resetwatch_connection_outcomes_total": ("family", "stage", "outcome"),
    "resetwatch_connection_tags_total": ("family", "category", "tag"),
}


@pytest.mark.parametrize("index", range(len(COUNTERS)), ids=list(COUNTERS))
def test_metrics_counters_equal_the_expectations(agent_run: AgentRun, index: int) -> None:
    name, label_names = list(COUNTERS.items())[index]
    want = {
        frozenset(zip(label_names, key)): float(count)
        for key, count in _expected_counts(agent_run)[index].items()
    }
    got = sample_values(agent_run.samples, name)
    assert got == want, f"{name} ({agent_run.backend})"


def test_metrics_other_counters(agent_run: AgentRun) -> None:
    samples = agent_run.samples
    assert sample_values(samples, "resetwatch_flows_excluded_total") == {}
    assert samples["resetwatch_flows_started_total", frozenset()] == len(LIVE_SCENARIOS)
    assert samples["resetwatch_sampling_probability", frozenset()] == 1.0
    assert samples["resetwatch_rules_present", frozenset()] == 1.0
    assert samples["resetwatch_rules_repairs_total", frozenset()] == 0.0
    assert samples["resetwatch_sampler_set_full_total", frozenset()] == 0.0


def test_metrics_hold_no_lab_address(agent_run: AgentRun) -> None:
    for address in agent_run.lab_addresses:
        assert address not in agent_run.metrics
    assert not re.search(r"10\.201\.|fd20:", agent_run.metrics)


# ------------------------------------------------------------------ 2. rules flushed, repaired

DAMAGE = {
    "iptables": [
        ["iptables", "-w", "-t", "mangle", "-F"],
        ["ip6tables", "-w", "-t", "mangle", "-F", "RESETWATCH"],
        [
            "ip6tables", "-w", "-t", "mangle", "-D", "PREROUTING",
            "-m", "comment", "--comment", "resetwatch:jump", "-j", "RESETWATCH",
        ],
    ],
    "nft": [["nft", "delete", "table", "inet", "resetwatch"]],
    "stateless": [["nft", "flush", "chain", "inet", "resetwatch", "prerouting"]],
}  # fmt: skip


def _wait_record(agent: RunningAgent, sport: int) -> dict[str, Any]:
    found = wait_until(
        lambda: agent.records_by_sport().get(sport),
        RECORD_WAIT_S,
        f"a record for source port {sport}",
    )
    assert len(found) == 1, found
    return dict(found[0])


@pytest.mark.parametrize("mode", list(SAMPLING))
def test_rules_flushed_while_running_are_put_back(lab: Lab, tmp_path: Path, mode: str) -> None:
    backend, sampler = SAMPLING[mode]
    records = tmp_path / "records.jsonl"
    flags = agent_flags(lab, backend=backend, records=records, sampler=sampler)
    agent = start_agent(lab, flags, tmp_path / "agent.log", records=records)
    check = ["rules", "check", *rule_flags(lab, backend, sampler=sampler)]
    assert cli(lab, *check).returncode == 0
    seed = re.findall(r"seed (0x[0-9a-f]+)", lab.run("server", ["nft", "list", "ruleset"]).stdout)
    for argv in DAMAGE[mode]:
        lab.run("server", argv)

    def repaired() -> bool:
        if agent.value("resetwatch_rules_repairs_total") < 1:
            return False
        return cli(lab, *check).returncode == 0

    wait_until(repaired, REPAIR_WAIT_S, f"rules repaired by the agent ({mode})")
    # The stateless rules come back with the same hash seed: no decision changes.
    after = re.findall(r"seed (0x[0-9a-f]+)", lab.run("server", ["nft", "list", "ruleset"]).stdout)
    assert after == seed and (bool(seed) == (sampler == "stateless"))
    assert agent.value("resetwatch_rules_present") == 1
    assert agent.get("/healthz").strip() == "ok"

    # Connections made after the repair are sampled again, in both families.
    for sport, family in ((44001, 4), (44002, 6)):
        assert http_get(lab, lab.server_addr(family), HTTP_PORT, sport) == "200"
    for sport, family in ((44001, 4), (44002, 6)):
        record = _wait_record(agent, sport)
        assert (record["family"], record["stage"], record["outcome"]) == (
            family,
            "post_psh",
            "closed",
        ), record
    assert agent.stop(EXIT_WAIT_S) == 0, agent.log_text()
    assert "putting them back" in agent.log_text()


# -------------------------------------------------------------------------------- 3. SIGTERM


@pytest.mark.parametrize("keep_rules", [False, True], ids=["remove-rules", "keep-rules"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_with_flows_in_flight(
    lab: Lab, tmp_path: Path, backend: str, keep_rules: bool
) -> None:
    """Two flows in flight at the stop: one held idle, one reset (inside its close linger).
    Long clocks here (idle 60 s, linger 30 s) make sure neither deadline can pass before the
    signal on a slow machine; the stop must count both as truncated, never judge them."""
    records = tmp_path / "records.jsonl"
    flags = agent_flags(
        lab, backend=backend, records=records, idle_timeout=60.0, close_linger=30.0
    )
    if keep_rules:
        flags.append("--keep-rules")
    agent = start_agent(lab, flags, tmp_path / "agent.log", records=records)
    hang, reset = 45001, 45002
    connect_and_hang(lab, lab.server4, HTTP_PORT, hang)
    abort_after_connect(lab, lab.server6, HTTP_PORT, reset)

    def both_in_flight() -> bool:
        samples = agent.samples()
        # S . from the held flow, S . R. from the reset one.
        return (
            samples["resetwatch_nflog_packets_total", frozenset()] >= 5
            and samples["resetwatch_flows_active", frozenset()] == 2
        )

    wait_until(both_in_flight, RECORD_WAIT_S, "both flows held by the agent")
    timeouts = [
        value
        for (name, labels), value in agent.samples().items()
        if name == "resetwatch_connection_outcomes_total" and ("outcome", "timeout") in labels
    ]
    assert timeouts and not any(timeouts)
    assert agent.records() == []

    try:
        code = agent.stop(EXIT_WAIT_S)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the agent did not exit within {EXIT_WAIT_S} s of SIGTERM: {error}")
    assert code == 0, agent.log_text()

    got = {
        sport: [r.get("excluded") or r.get("outcome") for r in rs]
        for sport, rs in agent.records_by_sport().items()
    }
    assert got == {hang: ["truncated"], reset: ["truncated"]}
    assert not any(r.get("outcome") == "timeout" for r in agent.records())

    if not keep_rules:
        assert ours(lab) == []
        return
    assert cli(lab, "rules", "check", *rule_flags(lab, backend)).returncode == 0
    removed = cli(lab, "rules", "remove", "--config", "/dev/null", "--backend", backend)
    assert removed.returncode == 0, removed.stderr
    assert ours(lab) == []


# ------------------------------------------------------------------------- 4. SIGHUP reload


def _config(lab: Lab, records: Path, probability: object) -> str:
    return (
        f"probability = {probability}\n"
        "idle_timeout = 5.0\n"
        "close_linger = 1.0\n"
        'backend = "iptables"\n'
        'listen = "127.0.0.1:9824"\n'
        f'records = "{records}"\n'
        "rules_check_interval = 1.0\n"
        f'interfaces = ["{lab.server_if}"]\n'
        'state_dir = ""\n'  # the history in memory only: nothing written to the host
    )


def test_sighup_reloads_the_config_and_refuses_a_bad_one(lab: Lab, tmp_path: Path) -> None:
    config, records = tmp_path / "resetwatch.toml", tmp_path / "records.jsonl"
    config.write_text(_config(lab, records, 1))
    agent = start_agent(lab, ["--config", str(config)], tmp_path / "agent.log", records=records)
    assert agent.value("resetwatch_sampling_probability") == 1.0
    assert agent.value("resetwatch_config_reloads_total") == 0

    config.write_text(_config(lab, records, 0.5))
    agent.send(signal.SIGHUP)
    wait_until(
        lambda: agent.value("resetwatch_config_reloads_total") == 1,
        REPAIR_WAIT_S,
        "the reload counted",
    )
    assert agent.value("resetwatch_sampling_probability") == 0.5
    check_half = cli(lab, "rules", "check", *rule_flags(lab, "iptables", "0.5"))
    assert check_half.returncode == 0, check_half.stdout + check_half.stderr

    config.write_text(_config(lab, records, 7))
    agent.send(signal.SIGHUP)
    wait_until(lambda: "reload refused" in agent.log_text(), REPAIR_WAIT_S, "the refusal logged")
    time.sleep(1.5)  # one more loop pass: a second line or an exit would show by now
    assert agent.running, agent.log_text()
    refused = [line for line in agent.log_text().splitlines() if "reload refused" in line]
    assert len(refused) == 1, agent.log_text()
    assert "probability = 7 is not allowed" in refused[0], refused[0]
    assert agent.value("resetwatch_sampling_probability") == 0.5
    assert agent.value("resetwatch_config_reloads_total") == 1
    assert agent.get("/healthz").strip() == "ok"
    assert cli(lab, "rules", "check", *rule_flags(lab, "iptables", "0.5")).returncode == 0
    assert agent.stop(EXIT_WAIT_S) == 0, agent.log_text()
    assert ours(lab) == []


# ------------------------------------------------------------- 5. rules through the CLI


def _snapshot(lab: Lab) -> str:
    """The ruleset with counters and timestamped comment lines removed, to compare as text."""
    text = ruleset(lab)
    text = re.sub(r"\[\d+:\d+\]", "[0:0]", text)
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def _add_foreign_rules(lab: Lab, backend: str) -> None:
    if backend == "iptables":
        for tool in ("iptables", "ip6tables"):
            lab.run(
                "server",
                [
                    tool, "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport",
                    "5353", "-m", "comment", "--comment", "foreign", "-j", "RETURN",
                ],
            )  # fmt: skip
    else:
        lab.run(
            "server",
            ["nft", "-f", "-"],
            input=(
                "table inet foreign {\n"
                "  chain pre { type filter hook prerouting priority -150; policy accept;\n"
                '    udp dport 5353 counter comment "foreign"\n  }\n}\n'
            ),
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_rules_cli_install_twice_show_remove(lab: Lab, backend: str) -> None:
    _add_foreign_rules(lab, backend)
    before = _snapshot(lab)
    assert "foreign" in before and "resetwatch" not in before.lower()
    flags = rule_flags(lab, backend)
    for _ in range(2):
        installed = cli(lab, "rules", "install", *flags)
        assert installed.returncode == 0, installed.stderr
        assert f"installed ({backend})" in installed.stdout
        # Nothing in the fresh lab tracked connections: one line says what conntrack costs.
        hint = [line for line in installed.stderr.splitlines() if "--sampler stateless" in line]
        assert len(hint) == 1 and "conntrack" in hint[0], installed.stderr
    shown = cli(lab, "rules", "show", *flags)
    assert shown.returncode == 0, shown.stderr
    # iptables: a chain per family; nft: one table, log rules per family.
    copies = {
        '"resetwatch:sample"': 2 if backend == "iptables" else 1,
        '"resetwatch:log-syn"': 2,
        '"resetwatch:log"': 2,
    }
    for rule_id, count in copies.items():
        assert shown.stdout.count(rule_id) == count, shown.stdout
    during = _snapshot(lab)
    for rule_id, count in copies.items():
        assert during.count(rule_id) == count, during
    assert all(line in during for line in before.splitlines() if "foreign" in line)
    checked = cli(lab, "rules", "check", *flags)
    assert checked.returncode == 0, checked.stdout

    for _ in range(2):  # removing what is absent is a no-op
        removed = cli(lab, "rules", "remove", *flags)
        assert removed.returncode == 0, removed.stderr
        assert _snapshot(lab) == before
    assert cli(lab, "rules", "check", *flags).returncode == 1


# -------------------------------------------------------------- 6. bad flags and config


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_run_refuses_a_bad_probability(lab: Lab) -> None:
    proc = cli(lab, "run", "--config", "/dev/null", "--probability", "7", "--backend", "iptables")
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "probability" in line and "7" in line, line
    assert ours(lab) == []


def test_run_refuses_a_missing_config(lab: Lab, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    proc = cli(lab, "run", "--config", str(missing), "--backend", "iptables")
    assert proc.returncode == 2, proc.stderr
    assert "missing.toml" in _one_line(proc.stderr)
    assert ours(lab) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_with_the_nflog_group_taken(lab: Lab, tmp_path: Path, backend: str) -> None:
    first = start_agent(
        lab,
        [*agent_flags(lab, backend=backend, records=None), "--no-rules"],
        tmp_path / "first.log",
    )
    assert ours(lab) == []
    second = cli(
        lab, "run", *agent_flags(lab, backend=backend, records=None, port=9825), timeout=30
    )
    assert second.returncode == 1, second.stdout + second.stderr
    line = _one_line(second.stderr)
    assert "NFLOG group 10" in line, line
    assert ours(lab) == []
    assert first.running and first.get("/healthz").strip() == "ok"
    assert first.stop(EXIT_WAIT_S) == 0, first.log_text()
