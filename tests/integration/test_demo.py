"""`resetwatch demo` end to end: the real command, as a newcomer runs it, with real traffic
through a real NFQUEUE middlebox into the real agent.

- A short demo (30 s of traffic) as a subprocess with --records and --traffic-log: every
  category appears; the middlebox's injected resets are Post-PSH resets with `ttl_mismatch` and
  the shape each name was given; zero-rated (dropped) connections are Post-ACK timeouts (the
  server saw only SYN and ACK); ZMap probes carry `zmap`; the forwarder serves the agent's
  /metrics on the host's loopback while the demo runs; afterwards no `rwdemo-` namespace or
  demo process is left, and the host's interfaces, routes and rulesets are as before.
- Ctrl-C (SIGINT) in the middle: exit 130 and the same clean host.
- Leftovers of a crashed demo (creator gone) are removed; a running demo's are not.

Needs root, iproute2, zmap, nft or iptables, pyroute2 and netfilterqueue; skips otherwise.
Waits are limits, never asserted on.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.lab.requirements import lab_marks, skip_reason

ROOT = Path(__file__).resolve().parents[2]
DURATION_S = 30
RUN_LIMIT_S = 150.0
"""Longest a 30 s demo may take from start to exit (a limit, not an expectation)."""


pytestmark = lab_marks(
    skip_reason(
        "network namespaces, netfilter rules, NFQUEUE",
        tools=("ip", "zmap"),
        modules=("pyroute2", "netfilterqueue"),
        also_missing=[] if shutil.which("nft") or shutil.which("iptables") else ["nft or iptables"],
    )
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "agent"), env.get("PYTHONPATH")) if p
    )
    return env


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30).stdout


def host_state() -> dict[str, str]:
    """The host namespace's interfaces, routes and rulesets, without counters and comments."""
    state = {
        "links": "\n".join(sorted(
            line.split(":")[1].strip() for line in _run(["ip", "-o", "link"]).splitlines()
        )),
        "routes4": _run(["ip", "-4", "route", "show", "table", "all"]),
        "routes6": _run(["ip", "-6", "route", "show", "table", "all"]),
    }  # fmt: skip
    if shutil.which("nft"):
        state["nft"] = _run(["nft", "-s", "list", "ruleset"])
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            lines = [
                re.sub(r"\[\d+:\d+\]", "", line)
                for line in _run([tool]).splitlines()
                if not line.startswith("#")
            ]
            state[tool] = "\n".join(lines)
    return state


def demo_namespaces(pid: int) -> list[str]:
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"rwdemo-{pid}-")]


def demo_processes(pid: int) -> list[str]:
    """Command lines of processes still carrying this demo's lab name (its programs do)."""
    marker = f"rwdemo-{pid}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@dataclass
class DemoRun:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    stderr: str = ""

    def read_until(self, pattern: str, limit: float) -> re.Match[str]:
        """Read stdout lines until one matches `pattern` (fail after `limit` seconds)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}:\n{''.join(self.lines)}")

    def finish(self, limit: float) -> int:
        out, err = self.proc.communicate(timeout=limit)
        self.lines.append(out)
        self.stderr = err
        return int(self.proc.returncode)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def start_demo(*args: str) -> DemoRun:
    proc = subprocess.Popen(
        [sys.executable, "-m", "resetwatch", "demo", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,  # a signal for the demo only, as from its own terminal
    )
    return DemoRun(proc)


@dataclass
class Finished:
    code: int
    output: str
    stderr: str
    pid: int
    metrics: str
    records: list[dict[str, Any]]
    events: list[dict[str, Any]]
    before: dict[str, str]
    after: dict[str, str]

    def flows(self, action: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(client event, agent record) of each connection of one client behaviour."""
        by_key = {(r["src"], r["sport"]): r for r in self.records}
        pairs = []
        for event in self.events:
            if event["action"] == action:
                record = by_key.get((event["src"], event["sport"]))
                assert record is not None, f"no record for {event}"
                pairs.append((event, record))
        assert pairs, f"the demo made no {action} connection:\n{self.output}"
        return pairs


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    tmp = tmp_path_factory.mktemp("demo")
    records, traffic = tmp / "records.jsonl", tmp / "traffic.jsonl"
    before = host_state()
    run = start_demo("--duration", str(DURATION_S), "--records", str(records),
                     "--traffic-log", str(traffic), "--seed", "7")  # fmt: skip
    try:
        url = run.read_until(r"metrics\s+(http://\S+/metrics)", 60.0)[1]
        run.read_until(r"\[traffic", 30.0)  # traffic flows and the agent has judged some
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        code = run.finish(RUN_LIMIT_S)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    yield Finished(
        code=code,
        output=run.output,
        stderr=run.stderr,
        pid=run.proc.pid,
        metrics=metrics,
        records=[json.loads(line) for line in records.read_text().splitlines()],
        events=[json.loads(line) for line in traffic.read_text().splitlines()],
        before=before,
        after=host_state(),
    )


def test_demo_ends_cleanly_with_the_summary(finished: Finished) -> None:
    assert finished.code == 0, finished.output + finished.stderr
    assert "resetwatch demo: the agent's verdicts" in finished.output
    assert "what the clients did" in finished.output
    assert finished.output.rstrip().endswith("lab removed")


def test_every_category_appears(finished: Finished) -> None:
    categories = {r.get("category") for r in finished.records}
    assert {"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"} <= categories


@pytest.mark.parametrize(
    "action,shape",
    [
        ("blocked_tls", ["rst_and_rstacks"]),
        ("forbidden_http", ["multiple_rsts", "acknumdiff0"]),
    ],
)
def test_injected_resets_are_post_psh_with_ttl_mismatch(
    finished: Finished, action: str, shape: list[str]
) -> None:
    for event, record in finished.flows(action):
        assert event["result"] == "reset", event  # the client was reset too
        got = {k: record[k] for k in ("stage", "outcome", "category", "tags")}
        assert got == {
            "stage": "post_psh",
            "outcome": "reset",
            "category": "post_psh",
            # IPv4: the middlebox's own IP IDs, far from the client's (see its docstring).
            "tags": ["reset", *shape, "ttl_mismatch", *(["ipid_jump"] * (record["family"] == 4))],
        }, record


def test_zero_rated_connections_are_post_ack_timeouts(finished: Finished) -> None:
    for event, record in finished.flows("zero_rated"):
        assert event["result"] == "timeout", event
        got = {k: record[k] for k in ("stage", "outcome", "category", "tags")}
        # The server saw the SYN and the handshake's ACK, then nothing.
        assert got == {
            "stage": "post_ack",
            "outcome": "timeout",
            "category": "post_ack",
            "tags": ["timeout"],
        }, record


def test_the_tampered_network_stands_out(finished: Finished) -> None:
    """The clients come from three lab networks (the demo's own database); the middlebox is
    on one's path only: its connections alone carry the injected and dropped verdicts, and
    the demo's last table shows its Post-ACK and Post-PSH shares far above the others'."""
    tampered = 64512
    for action in ("blocked_tls", "forbidden_http", "zero_rated"):
        for _, record in finished.flows(action):
            assert record["asn"] == tampered and record["country"] == "DE", record
    anomalous: dict[Any, list[int]] = {}
    for record in finished.records:
        if "category" in record:
            counts = anomalous.setdefault(record["asn"], [0, 0])
            counts[0] += record["category"] in ("post_ack", "post_psh")
            counts[1] += 1
    share = {asn: bad / total for asn, (bad, total) in anomalous.items() if asn is not None}
    assert set(share) == {64512, 64513, 64514}, share
    assert all(share[tampered] > 2 * share[asn] for asn in share if asn != tampered), share
    table = finished.output.split("per client network", 1)[1]
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()[:2] == "AS"}
    assert set(rows) >= {"AS64512", "AS64513", "AS64514"} and "Demo Mobile" in rows["AS64512"]
    assert re.search(r'^resetwatch_network_connections_total\{[^}]*asn="64512"', finished.metrics,
                     re.MULTILINE)


def test_zmap_probes_are_tagged(finished: Finished) -> None:
    for _, record in finished.flows("zmap"):
        assert record["category"] == "post_syn" and "zmap" in record["tags"], record


def test_metrics_reach_the_host_through_the_forwarder(finished: Finished) -> None:
    assert "resetwatch_connections_total" in finished.metrics
    assert "resetwatch_sampling_probability 1.0" in finished.metrics


def test_nothing_is_left_on_the_host(finished: Finished) -> None:
    assert demo_namespaces(finished.pid) == []
    assert demo_processes(finished.pid) == []
    assert finished.after == finished.before


def test_ctrl_c_in_the_middle_removes_everything() -> None:
    before = host_state()
    run = start_demo("--duration", "120")
    try:
        run.read_until(r"traffic for", 60.0)
        time.sleep(3.0)  # connections in flight, the middlebox and agent busy
        assert demo_namespaces(run.proc.pid), "the lab should exist while the demo runs"
        run.proc.send_signal(signal.SIGINT)
        code = run.finish(60.0)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    assert code == 130, run.output + run.stderr
    assert "interrupted" in run.output and run.output.rstrip().endswith("lab removed")
    assert demo_namespaces(run.proc.pid) == []
    assert demo_processes(run.proc.pid) == []
    assert host_state() == before


def test_leftovers_of_a_dead_demo_are_removed_and_a_live_ones_kept() -> None:
    from resetwatch.demo import lab

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "resetwatch-demo-stand-in"]
    )
    stale, kept = f"rwdemo-{dead.pid}-beef-server", f"rwdemo-{live.pid}-beef-server"
    try:
        for name in (stale, kept):
            subprocess.run(["ip", "netns", "add", name], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
        deadline = time.monotonic() + 10
        while not lab.namespace_pids(stale) and time.monotonic() < deadline:
            time.sleep(0.05)
        removed = lab.cleanup_stale()
        assert stale in removed and kept not in removed
        names = _run(["ip", "netns", "list"])
        assert stale not in names and kept in names
        assert sleeper.wait(timeout=10) != 0  # the process inside was stopped
    finally:
        live.kill()
        live.wait()
        for name in (stale, kept):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
