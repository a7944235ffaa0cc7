"""The systemd unit and the notify protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from resetwatch import cli
from resetwatch.config import Config
from resetwatch.daemon import Agent
from resetwatch.nflog import NflogStats
from resetwatch.notify import Notifier
from resetwatch.packet import ParseResult

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "resetwatch.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(timeout)
    return out


class IdleSource:
    """No traffic; `stuck` makes the next read block, as a wedged loop would."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def batches(self, timeout: float) -> Iterator[list[ParseResult]]:
        if self.stuck.is_set():
            self.release.wait(10)
        return iter(())

    def stats(self) -> NflogStats:
        return NflogStats()

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # every look at the clock is a second later: each step pings
        return self.now


def make_agent(path: str, source: IdleSource) -> Agent:
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    return Agent(Config(listen="127.0.0.1:0", no_rules=True, state_dir=""), clock=Clock(),
                 notifier=Notifier(env), open_source=lambda c, k: source)


def test_ready_only_after_start_then_watchdog_then_stopping(notify_socket) -> None:
    sock, path = notify_socket
    source = IdleSource()
    agent = make_agent(path, source)
    assert messages(sock) == []  # nothing before the socket is bound and rules are in
    agent.start()
    ready = messages(sock)
    assert len(ready) == 1 and ready[0].startswith("READY=1\nSTATUS=")
    agent.step(0)
    agent.step(0)
    pings = [m for m in messages(sock) if m == "WATCHDOG=1"]
    assert len(pings) == 2
    agent.stop()
    assert messages(sock)[0].startswith("STOPPING=1")


def test_ready_comes_after_the_group_is_bound_and_the_rules_are_installed(
    notify_socket,
) -> None:
    sock, path = notify_socket
    steps: list[str] = []

    class RecordingBackend:
        name = "recording"

        def install(self, spec: object) -> None:
            steps.append("rules" if not messages(sock) else "rules after a message")

        def remove(self) -> None:
            steps.append("removed")

        def label_users(self, spec: object) -> list[str]:
            return []

    def bind(config: object, clock: object) -> IdleSource:
        steps.append("bound" if not messages(sock) else "bound after a message")
        return IdleSource()

    env = {"NOTIFY_SOCKET": path}
    agent = Agent(Config(listen="127.0.0.1:0", state_dir=""), clock=Clock(),
                  notifier=Notifier(env), open_source=bind,
                  rules_backend=lambda name: RecordingBackend())  # type: ignore
    agent.start()
    assert steps == ["bound", "rules"]
    assert messages(sock)[0].startswith("READY=1")
    agent.stop()
    assert steps[-1] == "removed"


def test_watchdog_pings_stop_when_the_loop_is_stuck(notify_socket) -> None:
    sock, path = notify_socket
    source = IdleSource()
    agent = make_agent(path, source)
    agent.start()
    messages(sock)
    source.stuck.set()
    worker = threading.Thread(target=agent.step, args=(0,))
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()
    assert "WATCHDOG=1" not in messages(sock)
    source.release.set()
    worker.join(10)
    assert "WATCHDOG=1" in messages(sock)
    agent.stop()


def test_start_and_stop_each_log_one_line_naming_what_a_newcomer_looks_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="resetwatch")
    agent = Agent(Config(listen="127.0.0.1:0", no_rules=True, state_dir=str(tmp_path)),
                  open_source=lambda c, k: IdleSource())
    agent.start()
    port = agent.http.port if agent.http else 0
    agent.stop()
    started, stopped = (r.getMessage() for r in caplog.records)
    assert f"metrics on http://127.0.0.1:{port}/metrics" in started
    assert f"API on http://127.0.0.1:{port}/api/v1" in started
    assert f"state in {tmp_path}" in started
    assert stopped == "stopped: 0 flows judged, 0 excluded, rules not managed (no_rules)"


def test_the_unit_passes_its_state_directory_explicitly() -> None:
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(" --state-dir ${STATE_DIRECTORY}")
    assert "\nStateDirectory=resetwatch\n" in text
    args = cli.build_parser().parse_args(["run", "--state-dir", "/var/lib/resetwatch"])
    assert args.state_dir == "/var/lib/resetwatch"  # the flag the unit gives exists


def test_notifier_is_a_no_op_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_sigterm_sends_stopping_and_exits_zero(notify_socket, tmp_path: Path) -> None:
    """The real `resetwatch run` process, with a test source: SIGTERM -> STOPPING=1, exit 0."""
    sock, path = notify_socket
    script = tmp_path / "agent.py"
    script.write_text(
        "import sys\n"
        "from resetwatch.config import Config\n"
        "from resetwatch.daemon import Agent\n"
        "class Idle:\n"
        "    def batches(self, timeout):\n"
        "        import time; time.sleep(min(timeout, 0.2)); return iter(())\n"
        "    def stats(self):\n"
        "        from resetwatch.nflog import NflogStats; return NflogStats()\n"
        "    def close(self): pass\n"
        "agent = Agent(Config(listen='127.0.0.1:0', no_rules=True, state_dir=''),"
        " open_source=lambda c, k: Idle())\n"
        "sys.exit(agent.run())\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": path, "PYTHONPATH": str(ROOT / "agent")}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        assert sock.recv(4096).decode().startswith("READY=1")
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        assert any(m.startswith("STOPPING=1") for m in messages(sock))
    finally:
        proc.kill()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies_and_rates_ok(tmp_path: Path) -> None:
    # Point ExecStart at this checkout's console script: verify checks that it exists.
    binary = shutil.which("resetwatch") or sys.executable
    unit = tmp_path / "resetwatch.service"
    unit.write_text(UNIT.read_text().replace("/opt/resetwatch/bin/resetwatch", binary))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    print(verify.stdout, verify.stderr)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True)
    print(security.stdout[-400:])
    last = next(line for line in security.stdout.splitlines() if "Overall exposure" in line)
    level = last.split(":")[1].split()
    assert float(level[0]) < 5.0 and level[1] in ("OK", "SAFE"), last


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in UNIT.read_text().splitlines()
            if line.startswith(key + "=")]


def test_unit_limits_leave_the_listener_cap_well_inside() -> None:
    from resetwatch.config import BY_KEY

    (nofile,) = unit_values("LimitNOFILE")
    soft, _, hard = nofile.partition(":")
    assert int(soft) == int(hard or soft)  # one number: soft and hard alike
    cap = BY_KEY["http_max_connections"].check(1024)  # the largest cap allowed ...
    with pytest.raises(ValueError):
        BY_KEY["http_max_connections"].check(1025)  # ... is 1024
    assert int(soft) >= 4 * (cap + 3)
    (tasks,) = unit_values("TasksMax")
    assert int(tasks) >= 32


def test_held_connections_cost_neither_threads_nor_descriptors_beyond_the_cap() -> None:
    """The running agent with 200 idle connections held: no new thread, at most the cap in
    descriptors, and /metrics answers (idle connections give way to it after a second)."""
    agent = Agent(Config(listen="127.0.0.1:0", no_rules=True, state_dir="",
                         http_max_connections=16),
                  clock=Clock(), notifier=Notifier({}), open_source=lambda c, k: IdleSource())
    agent.start()
    held: list[socket.socket] = []
    try:
        assert agent.http is not None
        threads = threading.active_count()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", agent.http.port), timeout=10))
        for _ in range(200):  # until every connection was seen by the listener
            if sum(agent.http.refused.values()) + agent.http.open_connections >= 200:
                break
            time.sleep(0.05)
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) - fds <= 200 + 16  # ours, and 16 of its own
        assert agent.http.open_connections <= 16
        url = f"http://127.0.0.1:{agent.http.port}/metrics"
        body = b""
        for _ in range(100):  # refused (503) while every held connection is new
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body = response.read()
                    break
            except urllib.error.HTTPError as error:
                assert error.code == 503
                time.sleep(0.2)
        assert b'resetwatch_http_connections_refused_total{reason="evicted"}' in body
    finally:
        for conn in held:
            conn.close()
        agent.stop()
