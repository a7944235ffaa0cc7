"""What the live agent survives, against the real kernel in a lab (tests/lab): a records disk
that fills up mid-run (a 16 KiB tmpfs) or always fails (/dev/full), the xtables lock held by
another program for 25 s (iptables-legacy), a slow `nft`, and an NFLOG buffer limit below the
start size changed on reload. In each case the agent keeps reading packets, counts what went
wrong, and a SIGTERM still removes the rules and saves the history (exit 0).

Needs root, iproute2, iptables(-legacy), nft, curl, flock; skips with the reason otherwise.
Waits poll with generous limits; nothing asserts on elapsed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.lab import Lab
from tests.lab.agent import RunningAgent, agent_env, agent_flags, start_agent, wait_until
from tests.lab.requirements import lab_marks, skip_reason
from tests.lab.traffic import HTTP_PORT, http_get, start_server

TOOLS = ("ip", "iptables-legacy", "ip6tables-legacy", "nft", "curl", "flock", "mount", "hping3")
BURST = 3000
"""SYNs sent at 1000/s while the lock is held: with a 64 KiB receive buffer, a loop blocked
for a check (5 s per tool call) would lose most of them."""
WAIT_S = 30.0
EXIT_WAIT_S = 30.0
"""A stop waits for a rules check in progress (at most the tools' 15 s timeout)."""
LOCK_HOLD_S = 25

pytestmark = lab_marks(
    skip_reason("network namespaces, netfilter rules, NFLOG", tools=TOOLS,
                modules=("prometheus_client",))
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(tag="survive") as the_lab:
        start_server(the_lab)
        yield the_lab


def ours(lab: Lab) -> list[str]:
    text = ""
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-save",
                 "ip6tables-save"):
        text += lab.run("server", [tool, "-t", "mangle"], check=False).stdout
    text += lab.run("server", ["nft", "list", "ruleset"]).stdout
    return [line for line in text.splitlines() if "resetwatch" in line.lower()]


def connections(lab: Lab, first_port: int, count: int) -> list[int]:
    """`count` HTTP GETs over IPv4, each from its own source port; their ports."""
    ports = list(range(first_port, first_port + count))
    for sport in ports:
        assert http_get(lab, lab.server4, HTTP_PORT, sport) == "200"
    return ports


def value(agent: RunningAgent, name: str, **labels: str) -> float:
    return agent.samples().get((name, frozenset(labels.items())), 0.0)


def saved_buckets(state_dir: Path) -> int:
    """Buckets in the saved history file, read by the agent's own loader."""
    from resetwatch.history import History, HistoryFile

    history = History()
    HistoryFile(str(state_dir), time.time).load(history)
    return len(history)


def stop_cleanly(lab: Lab, agent: RunningAgent, state_dir: Path) -> None:
    """SIGTERM: exit 0, no rule of ours left, the history saved."""
    code = agent.stop(EXIT_WAIT_S)
    assert code == 0, agent.log_text()
    assert ours(lab) == [], agent.log_text()
    assert (state_dir / "history.json").exists(), agent.log_text()
    assert "Traceback" not in agent.log_text(), agent.log_text()


# ---------------------------------------------------------------- records on a failing disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_records_disk_fills_mid_run_then_sigterm(
    lab: Lab, tmp_path: Path, tiny_disk: Path
) -> None:
    records, state = tiny_disk / "records.jsonl", tmp_path / "state"
    flags = agent_flags(lab, backend="nft", records=records, state_dir=state)
    agent = start_agent(lab, flags, tmp_path / "agent.log", records=records)
    assert oct(records.stat().st_mode & 0o777) == oct(0o640)
    connections(lab, 41000, 3)
    wait_until(lambda: len(agent.records()) == 3, WAIT_S, "three records on the tiny disk")
    # Kill the disk: fill what is left of it.
    subprocess.run(["dd", "if=/dev/zero", f"of={tiny_disk / 'fill'}", "bs=1k", "count=64"],
                   capture_output=True, check=False)
    connections(lab, 41100, 40)
    wait_until(lambda: value(agent, "resetwatch_output_errors_total", output="records") >= 1,
               WAIT_S, "the records errors counted", details=agent.log_text)
    wait_until(lambda: value(agent, "resetwatch_connections_total", category="no_match",
                             family="4") >= 43, WAIT_S, "every flow counted in the metrics")
    assert agent.running, agent.log_text()
    assert agent.get("/healthz").strip().startswith("output records failing: No space left")
    assert value(agent, "resetwatch_output_events_dropped_total", output="records") >= 1
    failing = [line for line in agent.log_text().splitlines() if "output records failing" in line]
    assert len(failing) == 1, agent.log_text()  # once per episode, not once per flow
    stop_cleanly(lab, agent, state)
    assert saved_buckets(state) >= 1


def test_records_to_dev_full_then_sigterm(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "state"
    flags = agent_flags(lab, backend="nft", records=Path("/dev/full"), state_dir=state)
    agent = start_agent(lab, flags, tmp_path / "agent.log")
    connections(lab, 42000, 20)
    wait_until(lambda: value(agent, "resetwatch_output_errors_total", output="records") >= 1,
               WAIT_S, "the records errors counted", details=agent.log_text)
    assert agent.running
    stop_cleanly(lab, agent, state)
    assert saved_buckets(state) >= 1
    assert oct(os.stat("/dev/full").st_mode & 0o777) == oct(0o666)  # a device is never chmod'ed


# ------------------------------------------------------------ rules checks off the packet path


def records_of(agent: RunningAgent, ports: list[int]) -> list[int]:
    by_sport = agent.records_by_sport()
    return [port for port in ports if port in by_sport]


def test_held_xtables_lock_neither_stalls_the_loop_nor_hides(lab: Lab, tmp_path: Path) -> None:
    """iptables-legacy waits for the lock at every check; the lock file is the one the
    agent's tools use (XTABLES_LOCKFILE, given to the agent and taken here). The smallest
    NFLOG buffer makes a stalled loop lose packets at once."""
    lock, records, state = tmp_path / "xtables.lock", tmp_path / "records.jsonl", tmp_path / "st"
    lock.touch()
    env = {**agent_env(), "XTABLES_LOCKFILE": str(lock)}
    flags = agent_flags(lab, backend="iptables-legacy", records=records, state_dir=state)
    flags += ["--nflog-buffer-max", str(64 << 10)]
    agent = start_agent(lab, flags, tmp_path / "agent.log", records=records, env=env)
    holder = subprocess.Popen(["flock", str(lock), "sleep", str(LOCK_HOLD_S)],
                              start_new_session=True)
    try:
        wait_until(lambda: value(agent, "resetwatch_rules_check_timeouts_total") >= 1,
                   WAIT_S, "a check that gave up waiting, counted", details=agent.log_text)
        # The lock is still held: the loop reads and judges every connection meanwhile.
        ports = connections(lab, 43000, 30)
        lab.run("client", ["hping3", "-q", "-S", "-p", str(HTTP_PORT), "-i", "u1000",
                           "-c", str(BURST), lab.server4], check=False, timeout=120)
        assert holder.poll() is None, "the lock holder ended too early for this test"
        wait_until(lambda: records_of(agent, ports) == ports, WAIT_S,
                   "a record of every connection made while the lock was held")
        wait_until(lambda: value(agent, "resetwatch_nflog_packets_total") >= BURST, WAIT_S,
                   "the burst received")
        assert value(agent, "resetwatch_nflog_lost_total", reason="seq_gap") == 0
        assert value(agent, "resetwatch_nflog_overruns_total") == 0
        assert agent.get("/healthz").strip() == "ok"
        assert value(agent, "resetwatch_rules_present") == 1  # unknown, not missing
    finally:
        os.killpg(holder.pid, signal.SIGTERM)  # flock and its sleep, which holds the lock too
        holder.wait(10)
    stop_cleanly(lab, agent, state)
    assert "rules check gave up waiting" in agent.log_text()


def test_slow_nft_neither_stalls_the_loop_nor_hides(lab: Lab, tmp_path: Path) -> None:
    """A wrapper first in PATH makes every `nft` call take 20 s while a flag file exists
    (longer than the tools' 15 s timeout)."""
    real = subprocess.run(["sh", "-c", "command -v nft"], capture_output=True, text=True)
    bin_dir, slow = tmp_path / "bin", tmp_path / "slow"
    bin_dir.mkdir()
    wrapper = bin_dir / "nft"
    wrapper.write_text(f'#!/bin/sh\n[ -e "{slow}" ] && sleep 20\nexec {real.stdout.strip()} "$@"\n')
    wrapper.chmod(0o755)
    env = agent_env()
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin')}"
    records, state = tmp_path / "records.jsonl", tmp_path / "state"
    flags = agent_flags(lab, backend="nft", records=records, state_dir=state)
    agent = start_agent(lab, flags, tmp_path / "agent.log", records=records, env=env)
    slow.touch()
    try:
        ports = connections(lab, 44000, 30)
        wait_until(lambda: records_of(agent, ports) == ports, WAIT_S,
                   "a record of every connection made while nft was slow")
        wait_until(lambda: value(agent, "resetwatch_rules_check_timeouts_total") >= 1,
                   WAIT_S, "a check with no answer, counted", details=agent.log_text)
        assert agent.get("/healthz").strip() == "ok"
    finally:
        slow.unlink()
    stop_cleanly(lab, agent, state)


# ------------------------------------------------------------------ NFLOG buffer limit


def test_nflog_buffer_max_below_the_start_size_and_on_reload(lab: Lab, tmp_path: Path) -> None:
    config, state = tmp_path / "resetwatch.toml", tmp_path / "state"

    def write(limit: int) -> None:
        config.write_text(
            f"nflog_buffer_max = {limit}\nbackend = \"nft\"\nprobability = 1.0\n"
            f"interfaces = [\"{lab.server_if}\"]\nstate_dir = \"{state}\"\n"
            "listen = \"127.0.0.1:9824\"\n"
        )

    write(1 << 20)
    agent = start_agent(lab, ["--config", str(config)], tmp_path / "agent.log")
    # The kernel reports twice the size asked for (its bookkeeping share).
    wait_until(lambda: value(agent, "resetwatch_nflog_receive_buffer_bytes") == 2 << 20,
               WAIT_S, "a 1 MiB buffer (below the 8 MiB start size)", details=agent.log_text)
    write(256 << 10)
    agent.send(signal.SIGHUP)
    wait_until(lambda: value(agent, "resetwatch_config_reloads_total") == 1, WAIT_S, "reload")
    wait_until(lambda: value(agent, "resetwatch_nflog_receive_buffer_bytes") == 512 << 10,
               WAIT_S, "the smaller limit applied on reload")
    stop_cleanly(lab, agent, state)
