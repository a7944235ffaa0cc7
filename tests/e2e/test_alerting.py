"""From packets to a page: a middlebox zero-rates some clients, the agent judges their
connections post_ack, Prometheus fires ``ResetwatchPostAckSpike`` and Alertmanager notifies a
webhook. All parts are real; nothing is mocked.

The lab (one per module, shared by both tests to save a minute)::

    client ns                      middlebox ns                   server ns
    loadgen.py (normal)   ---->    iptables FORWARD:       ---->  serverprog (HTTP :8080)
    loadgen.py (zero-rated)        DROP tcp to :8080 whose        resetwatch run (:9824)
                                   payload has "blocked.example"  prometheus (:9090)
                                                                  alertmanager (:9093)
                                                                  webhook.py (:9099)

Prometheus, Alertmanager and the webhook receiver run in the server namespace and talk over its
loopback (the agent samples only the lab interface, so scrapes are never counted). Prometheus
loads the short-window variant of the shipped rules (`RULES`), evaluated every second.

Phases:

1. Warm-up: normal clients only (curl-like GETs closed with a FIN, judged ``no_match``), about
   five new connections a second. Prometheus evaluates the rules from its first second, when
   no connection has been judged yet: this also checks that a window with no sampled
   connection records no share (rather than 0/0 = NaN, which would keep the baseline NaN for
   its whole range and the alert off; deploy/prometheus has a promtool case for it too).
2. Control (`BASELINE_S`): normal clients only. Polled every two seconds: no Post-ACK or
   Post-PSH spike alert is ever pending or firing, and no notification for one reaches the
   webhook, although the minimum-samples condition is met (`test_no_spike_alert_...`).
3. Spike: zero-rated clients join at `ZERO_RATED_RATE` next to the normal ones. Their request
   carries ``Host: blocked.example``; the middlebox drops it (and its retransmissions), so they
   complete the handshake, hang, give up after `GIVE_UP_S` and abort (RST): post_ack resets.
   The post_ack share rises to about a third, not to 100 %. The alert must reach ``firing``
   in Prometheus within `FIRING_WAIT_S`, and the webhook must get a firing notification for
   it with ``category=post_ack`` and ``severity=page`` within `NOTIFY_WAIT_S`. The server's
   own alert (``level=instance``, a ticket) fires too, and Alertmanager, loaded with the
   shipped inhibition rules, holds it: only the page is notified.

The baseline (`promrules`) sums the counts of whole `long` windows ending at least `long` before
now, so the spike does not raise its own baseline before the alert fires; the control phase
gives it more than `min_samples` sampled connections, so it is used rather than the default
share. The test waits for the fleet level's page (one agent: its fleet is that server).

Needs root, the Debian binaries /usr/bin/prometheus and /usr/bin/prometheus-alertmanager,
iproute2, iptables and curl; skips with the reason otherwise. Every wait polls with a limit and
fails with the last /api/v1/alerts answer, the PromQL values and the logs; nothing asserts on
elapsed time. The lab's removal stops every process, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from resetwatch import promrules
from tests.e2e.monitoring import ALERTMANAGER, LOADGEN_PROG, PROMETHEUS, Monitoring, finite, tail
from tests.lab import Lab
from tests.lab.agent import RunningAgent, agent_flags, start_agent, wait_until
from tests.lab.netns import LabError
from tests.lab.requirements import lab_marks, skip_reason

WINDOWS = promrules.Windows(
    short="30s",
    long="30s",
    baseline="10m",
    spike_for="5s",
    health_for="30s",
    evaluation="1s",
    min_samples=10,
    factor=3,
    floor=0.05,
)
RULES = promrules.render(WINDOWS)
RULE_COUNT = sum(len(group["rules"]) for group in promrules.rules(WINDOWS)["groups"])
NAMES = promrules.Names(WINDOWS)
LEVEL = "fleet"
"""The level whose page the test waits for (one agent: the fleet is that server; its own
level-"instance" alert is a ticket, held by the page's inhibition)."""
SHARE = f'{NAMES.share}{{level="{LEVEL}"}}'
BASELINE = f'{NAMES.baseline}{{level="{LEVEL}"}}'
BAR = f'{NAMES.bar}{{level="{LEVEL}"}}'
SAMPLES = f'{NAMES.samples}{{level="{LEVEL}"}}'

SPIKE_ALERTS = ("ResetwatchPostAckSpike", "ResetwatchPostPshSpike")
ALERT = "ResetwatchPostAckSpike"

HTTP_PORT = 8080
AGENT_PORT = 9824
NORMAL_HOST = "www.example"
BLOCKED_HOST = "blocked.example"
ZERO_RATED_SPORTS = (20000, 29999)
"""Zero-rated clients bind these source ports (the middlebox's fallback match, see
`_zero_rate`); normal clients use the kernel's ephemeral range (32768 and up)."""

NORMAL_RATE = 5.0
ZERO_RATED_RATE = 2.5
"""New connections per second: the post_ack share settles near 2.5 / 7.5 = 1/3."""
GIVE_UP_S = 2.0
BASELINE_S = 60.0
WARMUP_WAIT_S = 30.0
FIRING_WAIT_S = 180.0
NOTIFY_WAIT_S = 60.0
RECORD_WAIT_S = 30.0
POLL_S = 2.0
LOAD_MAX_S = 420.0
"""Load generators stop by themselves after this, whatever happens to the test."""

TOOLS = ("ip", "iptables", "curl")


pytestmark = [
    *lab_marks(
        skip_reason(
            "network namespaces, netfilter rules, NFLOG",
            tools=TOOLS,
            modules=("prometheus_client",),
            also_missing=[
                f"{p} (Debian package {p.name}; `sudo ./dev test` installs it)"
                for p in (PROMETHEUS, ALERTMANAGER)
                if not os.access(p, os.X_OK)
            ],
        )
    ),
    pytest.mark.timeout(600),
]


# ----------------------------------------------------------------------------- the stack


@dataclass
class Load:
    """A running loadgen.py in the client namespace; its summary lands in `out`."""

    name: str
    proc: subprocess.Popen[Any]
    out: Path

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait for the summary it prints on the way out, and return it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        try:
            return dict(json.loads(self.out.read_text().strip().splitlines()[-1]))
        except (ValueError, IndexError, FileNotFoundError):
            return {"error": f"no summary (exit {self.proc.poll()}): {tail(self.out)}"}


@dataclass
class Control:
    """What the control phase saw (normal traffic only, rules loaded)."""

    polls: int = 0
    spike_alerts_seen: list[dict[str, Any]] = field(default_factory=list)
    samples: Optional[float] = None
    share: Optional[float] = None
    baseline: Optional[float] = None
    notifications: list[dict[str, Any]] = field(default_factory=list)
    report: str = ""


@dataclass
class Stack:
    lab: Lab
    tmp: Path
    agent: RunningAgent
    mon: Monitoring
    middlebox_match: str
    loads: dict[str, Load] = field(default_factory=dict)
    control: Control = field(default_factory=Control)
    marks: dict[str, float] = field(default_factory=dict)
    """When each phase began (`time.monotonic`), for the printed timeline only."""

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def timeline(self) -> str:
        start = min(self.marks.values(), default=0.0)
        return ", ".join(f"{name} +{at - start:.1f}s" for name, at in self.marks.items())

    def start_load(self, name: str, *args: str) -> Load:
        if not self.lab.owns(self.lab.server4):
            raise LabError("the load must target the lab's own server")
        out = self.tmp / f"load-{name}.json"
        with open(out, "w", encoding="utf-8") as handle:
            proc = self.lab.popen(
                "client",
                [
                    sys.executable, str(LOADGEN_PROG), "--dst", self.lab.server4,
                    "--port", str(HTTP_PORT), "--duration", str(LOAD_MAX_S), *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        load = Load(name, proc, out)
        self.loads[name] = load
        return load

    def agent_count(self, category: str) -> float:
        """resetwatch_connections_total for `category`, summed over the families, as the
        agent's /metrics shows it now."""
        return sum(
            value
            for (name, labels), value in self.agent.samples().items()
            if name == "resetwatch_connections_total" and ("category", category) in labels
        )

    def middlebox_counters(self) -> str:
        proc = self.lab.run(
            "middlebox", ["iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"], check=False
        )
        return (proc.stdout + proc.stderr).strip()

    def diagnostics(self) -> str:
        """Everything a failure message needs: the last alerts answer, the PromQL values the
        alert is made of, the webhook's notifications and the logs."""
        mon = self.mon
        parts = [f"last /api/v1/alerts: {mon.last_alerts_body[:4000]}"]
        for expr in (SHARE, BASELINE, BAR, SAMPLES, "ALERTS", 'up{job="resetwatch"}'):
            parts.append(f"{expr} = {mon.query_text(expr)}")
        parts.append(
            "agent resetwatch_connections_total: "
            + ", ".join(
                f"{dict(labels)}={value:g}"
                for (name, labels), value in sorted(_safe_samples(self.agent).items())
                if name == "resetwatch_connections_total" and value
            )
        )
        parts.append(f"webhook notifications: {json.dumps(mon.notifications())[-3000:]}")
        parts.append(f"middlebox FORWARD ({self.middlebox_match}):\n{self.middlebox_counters()}")
        for name, load in self.loads.items():
            parts.append(f"load {name} (running={load.proc.poll() is None}): {tail(load.out)}")
        parts.append(f"--- agent log (last 30 lines) ---\n{tail(self.agent.log, 30)}")
        parts.append(mon.log_tails())
        return "\n".join(parts)


def _safe_samples(agent: RunningAgent) -> dict[Any, float]:
    try:
        return dict(agent.samples())
    except (LabError, ValueError):
        return {}


def _poll(
    stack: Stack, condition: Callable[[], Any], timeout: float, what: str, step: float = POLL_S
) -> Any:
    """`wait_until`, failing with the stack's diagnostics (last alerts, PromQL values, logs)."""
    return wait_until(condition, timeout, what, step, details=stack.diagnostics)


def _zero_rate(lab: Lab) -> str:
    """Make the middlebox drop the requests of the zero-rated clients (client->server TCP to
    the HTTP port): by the server name in the payload (``-m string``, as a DPI box matching a
    Host header or SNI would), or, where the kernel lacks the string match, by the zero-rated
    clients' source ports and the PSH flag. Their handshake and RST pass either way. Returns
    the match used."""
    base = [
        "iptables", "-w", "-A", "FORWARD", "-s", lab.client4, "-d", lab.server4,
        "-p", "tcp", "--dport", str(HTTP_PORT),
    ]  # fmt: skip
    string = ["-m", "string", "--algo", "bm", "--string", BLOCKED_HOST]
    if lab.run("middlebox", [*base, *string, "-j", "DROP"], check=False).returncode == 0:
        return f"string {BLOCKED_HOST!r}"
    ports = f"{ZERO_RATED_SPORTS[0]}:{ZERO_RATED_SPORTS[1]}"
    lab.run("middlebox", [*base, "--sport", ports, "--tcp-flags", "PSH", "PSH", "-j", "DROP"])
    return f"source ports {ports} with PSH (no string match in this kernel)"


def _is_spike(alert: dict[str, Any]) -> bool:
    return alert.get("labels", {}).get("alertname") in SPIKE_ALERTS


def _notified_spikes(notifications: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        alert
        for body in notifications
        for alert in body.get("alerts", [])
        if alert.get("labels", {}).get("alertname") in SPIKE_ALERTS
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The lab with every service running, after the warm-up and the control phase (whose
    observations are in ``stack.control``). Removed, with every process, afterwards."""
    tmp = tmp_path_factory.mktemp("e2e")
    with Lab(middlebox=True, tag="e2e") as lab:
        mon = Monitoring(lab, tmp, agent_port=AGENT_PORT)
        mon.start_server(HTTP_PORT)
        records = tmp / "records.jsonl"
        flags = agent_flags(lab, backend="auto", records=records, port=AGENT_PORT)
        agent = start_agent(lab, flags, tmp / "agent.log", records=records, port=AGENT_PORT)
        match = _zero_rate(lab)
        mon.start_webhook()
        mon.start_alertmanager()
        # The rules are evaluated from the first second, before any connection is judged:
        # the shares must not record 0/0 = NaN then (promrules._share), or the baseline would
        # stay NaN for its whole window and the alert could never fire.
        mon.start_prometheus(RULES)
        loaded = mon.rules_loaded()
        stack = Stack(lab, tmp, agent, mon, match)
        assert loaded == RULE_COUNT, f"{loaded} rules loaded\n{stack.diagnostics()}"
        stack.mark("services up, rules loaded")
        stack.start_load("normal", "--host", NORMAL_HOST, "--rate", str(NORMAL_RATE))

        def warm() -> bool:
            value = mon.value(f'sum(increase(resetwatch_connections_total{{job="resetwatch"}}'
                              f"[{WINDOWS.short}]))")
            return value is not None and value >= 5

        _poll(stack, warm, WARMUP_WAIT_S, "judged connections in Prometheus", step=0.5)
        stack.mark("warm")
        _control_phase(stack)
        stack.mark("control done")
        yield stack
        for load in stack.loads.values():
            load.stop()


def _control_phase(stack: Stack) -> None:
    """Normal traffic only, for `BASELINE_S`: record every spike alert Prometheus shows."""
    control, mon = stack.control, stack.mon
    deadline = time.monotonic() + BASELINE_S
    while time.monotonic() < deadline:
        control.polls += 1
        control.spike_alerts_seen += [a for a in mon.alerts() if _is_spike(a)]
        time.sleep(POLL_S)
    control.samples = mon.value(SAMPLES)
    control.share = mon.value(SHARE, category="post_ack")
    control.baseline = mon.value(BASELINE, category="post_ack")
    control.notifications = _notified_spikes(mon.notifications())
    control.report = stack.diagnostics()


# ----------------------------------------------------------------------------- the tests


def test_no_spike_alert_with_normal_traffic(stack: Stack) -> None:
    control = stack.control
    why = f"\n{control.report}"
    assert control.polls >= 10, why
    assert control.spike_alerts_seen == [], f"spike alerts during the control phase{why}"
    assert control.notifications == [], f"spike notifications during the control phase{why}"
    # The minimum-samples condition was met, so only the share conditions kept the alert off:
    assert control.samples is not None and control.samples >= WINDOWS.min_samples, why
    # and the baseline is a number (a NaN baseline would keep any alert off; module docstring).
    assert finite(control.baseline), f"post_ack baseline {control.baseline}{why}"
    assert control.baseline is not None and control.baseline < WINDOWS.floor, why
    assert finite(control.share) and control.share is not None, why
    assert control.share < WINDOWS.floor, why
    print(
        f"\ncontrol: {control.polls} polls, no spike alert; {SAMPLES}={control.samples:g}, "
        f"post_ack share {control.share:g}, baseline {control.baseline:g}"
    )


def test_post_ack_spike_fires_and_notifies(stack: Stack) -> None:
    mon = stack.mon
    before = stack.agent_count("post_ack")
    zero_rated = stack.start_load(
        "zero-rated",
        "--host", BLOCKED_HOST,
        "--rate", str(ZERO_RATED_RATE),
        "--give-up", str(GIVE_UP_S),
        "--sport-base", str(ZERO_RATED_SPORTS[0]),
    )  # fmt: skip
    states: list[str] = []

    def firing() -> Optional[dict[str, Any]]:
        for alert in mon.alerts():
            if alert["labels"].get("alertname") == ALERT and alert["labels"].get("level") == LEVEL:
                if not states or states[-1] != alert["state"]:
                    states.append(str(alert["state"]))
                if alert["state"] == "firing":
                    return alert
        return None

    stack.mark("spike")
    alert = _poll(stack, firing, FIRING_WAIT_S, f"{ALERT} firing in Prometheus")
    stack.mark("firing")
    at_fire = (mon.value(SHARE, category="post_ack"), mon.value(BASELINE, category="post_ack"))
    assert alert["labels"]["category"] == "post_ack", alert
    assert alert["labels"]["severity"] == "page", alert
    assert states[0] == "pending", f"states seen: {states}"

    def notified() -> Optional[dict[str, Any]]:
        for sent in _notified_spikes(mon.notifications()):
            labels = sent["labels"]
            if (labels.get("alertname"), labels.get("level")) == (ALERT, LEVEL) and sent.get(
                "status"
            ) == "firing":
                return sent
        return None

    sent = _poll(stack, notified, NOTIFY_WAIT_S, f"a webhook notification for {ALERT}")
    stack.mark("notified")
    assert sent["labels"].get("category") == "post_ack", sent
    assert sent["labels"].get("severity") == "page", sent
    body = next(b for b in mon.notifications() if sent in b.get("alerts", []))
    assert body.get("status") == "firing", body
    assert body.get("receiver") == "webhook", body
    # The server's own alert (a ticket) fired with the page, and the shipped inhibition
    # rules held it in Alertmanager: one incident, one notification.
    def ticket_held() -> Optional[dict[str, Any]]:
        for held in mon.alertmanager_alerts():
            if (held["labels"].get("alertname"), held["labels"].get("level")) == (
                ALERT, "instance"
            ):
                return held
        return None

    ticket = _poll(stack, ticket_held, NOTIFY_WAIT_S, "the server's ticket in Alertmanager")
    assert ticket["labels"].get("severity") == "ticket", ticket
    assert ticket["status"]["inhibitedBy"], f"the ticket is not inhibited: {ticket}"
    others = [n for n in _notified_spikes(mon.notifications())
              if n["labels"].get("level") != LEVEL]
    assert others == [], f"notified besides the {LEVEL} page: {others}\n{stack.diagnostics()}"

    # The agent counted the zero-rated connections as post_ack, and only the Post-ACK alert
    # fired (their requests never reached the server: no Post-PSH).
    after = stack.agent_count("post_ack")
    assert after > before, f"post_ack {before} -> {after}\n{stack.diagnostics()}"
    post_psh = [
        a for a in mon.alerts()
        if a["labels"].get("alertname") == "ResetwatchPostPshSpike" and a["state"] == "firing"
    ]  # fmt: skip
    assert post_psh == [], stack.diagnostics()

    summary = zero_rated.stop()
    assert summary.get("zero_rated_gave_up", 0) > 0, summary
    assert summary.get("zero_rated_answered", 0) == 0, f"middlebox let requests by: {summary}"
    assert summary["zero_rated_gave_up"] == summary["started"], summary
    share, baseline = at_fire
    assert share is not None and share > WINDOWS.floor, at_fire
    assert share < 1.0, f"the share must rise, not take over: {at_fire}"

    # Every zero-rated connection, and nothing else, ends as post_ack in the agent's counters
    # (the last ones once their close linger has passed).
    _poll(
        stack,
        lambda: stack.agent_count("post_ack") - before == summary["zero_rated_gave_up"],
        RECORD_WAIT_S,
        f"post_ack grown by the {summary['zero_rated_gave_up']} zero-rated connections "
        f"(from {before:g}; now {stack.agent_count('post_ack'):g})",
        step=0.5,
    )
    print(
        f"\n{ALERT} states {states}; at firing: post_ack share {share:.3f}, baseline "
        f"{baseline}; agent post_ack {before:g} -> {after:g} at firing; zero-rated "
        f"{summary}; middlebox match: {stack.middlebox_match}\ntimeline: {stack.timeline()}"
    )
