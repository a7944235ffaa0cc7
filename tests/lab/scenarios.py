"""Named client behaviours, each with the verdict resetwatch must give it, run in one lab.

Why one lab and one capture for all: building a lab, starting the server and tcpdump, and
waiting out the replay deadlines cost seconds; paid once, they keep the integration suite short.
Each scenario uses its own client source port, which is how its flow is found again.

Timing, and why the run ends with a "clock mover": `resetwatch replay` uses packet timestamps as
its clock and judges a flow only once its deadline (close linger after a RST or FIN, idle
timeout otherwise) is behind the LAST timestamp of the input; flows still waiting at the end are
excluded as `truncated`. So the run sends one last unrelated SYN after every deadline has passed
(that flow itself ends `truncated`). NFLOG timestamps in a tcpdump capture are read times: the
kernel hands packets over in batches (libpcap leaves nfnetlink_log at its defaults, flushed
every second), so a packet's timestamp can lag its sending by up to a second; the waits below
add that second, and tcpdump is stopped only after the last batch has been flushed (stopping it
earlier loses that batch).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .capture import NflogCapture, install_sampling_rules
from .netns import Lab, LabError
from .traffic import (
    HOLD_PORT,
    HTTP_PORT,
    Forgery,
    Rst,
    abort_after_connect,
    abort_after_send,
    connect_and_hang,
    fastopen_then_abort,
    fin_then_abort,
    forged_rsts,
    http_get,
    send_twice_then_abort,
    session,
    start_server,
    syn_only,
    zmap_modern_syn,
    zmap_scan,
)

CLOSE_LINGER_S = 1.0
IDLE_TIMEOUT_S = 5.0
NFLOG_BATCH_S = 1.0
"""nfnetlink_log's default flush timeout: the most a capture timestamp lags the packet."""
MARGIN_S = 1.0
"""Slack for tcpdump reading a batch late on a busy machine (its timestamps are read times)."""
CLOSED_PORT = 9
"""Nothing listens here in the server namespace (the clock mover's target)."""

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Expect:
    """The record fields a scenario's flow must get from `resetwatch replay`."""

    stage: Optional[str] = None
    outcome: Optional[str] = None
    category: Optional[str] = None
    tags: tuple[str, ...] = ()
    excluded: Optional[str] = None

    def fields(self) -> dict[str, Any]:
        if self.excluded:
            return {"excluded": self.excluded}
        return {
            "stage": self.stage,
            "outcome": self.outcome,
            "category": self.category,
            "tags": list(self.tags),
        }


Action = Callable[[Lab, str, int], object]
"""(lab, server address, client source port): runs the scenario's traffic."""


@dataclass(frozen=True)
class Scenario:
    """One client behaviour: how to produce it (`action`, or `rsts` for a forgery), which
    source port it uses, and the record it must get."""

    name: str
    family: int
    sport: int
    expect: Expect
    wire: str
    """The ingress packets the server's rules logged in our runs (TCP flags in tcpdump
    notation: ``.`` ACK, ``R.`` RST+ACK; in order). Documentation only, never asserted (ACK
    timing varies); a failure message shows the packets really logged."""
    phase: str = "main"
    """"hang" runs first (its idle deadline is the longest), then "main", then "forge" (all
    forgeries in one scapy process), then "final" (the clock mover)."""
    action: Optional[Action] = None
    rsts: tuple[Rst, ...] = ()
    request: bool = False
    port: int = HTTP_PORT
    note: str = ""

    @property
    def id(self) -> str:
        return self.name


def _reset(stage: str, *shape: str) -> Expect:
    category = "later_in_flow" if stage == "later" else stage
    return Expect(stage, "reset", category, ("reset", *shape))


def _timeout(stage: str) -> Expect:
    return Expect(stage, "timeout", stage, ("timeout",))


_FORGED_ACK = 0x1234ABCD


def _build(family: int, base: int) -> list[Scenario]:
    """The scenarios of one address family; source ports are `base` + a fixed number."""
    out: list[Scenario] = []

    def add(n: int, name: str, expect: Expect, wire: str, **kw: Any) -> None:
        out.append(Scenario(f"{name}_v{family}", family, base + n, expect, wire, **kw))

    add(
        1,
        "curl_get",
        Expect("post_psh", "closed", "no_match"),
        "S . P. . F. .",
        action=lambda lab, dst, sp: http_get(lab, dst, HTTP_PORT, sp),
        note="curl closes first after the reply: its FIN, then the ACK of the server's FIN",
    )
    add(
        2,
        "abort_after_connect",
        _reset("post_ack", "single_rstack"),
        "S . R.",
        action=lambda lab, dst, sp: abort_after_connect(lab, dst, HTTP_PORT, sp),
        note="Linux's abortive close (SO_LINGER 0) sends RST with ACK set, not a bare RST",
    )
    add(
        3,
        "abort_after_send",
        _reset("post_psh", "single_rstack"),
        "S . P. R.",
        action=lambda lab, dst, sp: abort_after_send(lab, dst, HOLD_PORT, sp),
        port=HOLD_PORT,
        note="the hold port never replies and the abort waits for the ACK of the request, "
        "so nothing can cross the RST",
    )
    add(
        4,
        "send_twice_then_abort",
        _reset("later", "single_rstack"),
        "S . P. . P. R.",
        action=lambda lab, dst, sp: send_twice_then_abort(lab, dst, HTTP_PORT, sp),
    )
    add(
        5,
        "ten_packets_ongoing",
        Expect("later", "ongoing", "no_match"),
        "S . P. . P. P. P. P. P. P. (later ACKs ride on the requests)",
        action=lambda lab, dst, sp: session(lab, dst, HTTP_PORT, sp, requests=8, end="close"),
        note="the 10th logged packet ends the flow at once; the close is never logged",
    )
    add(
        6,
        "fin_then_abort",
        _reset("post_psh", "fin", "single_rstack"),
        "S . P. F. R.",
        action=lambda lab, dst, sp: fin_then_abort(lab, dst, HOLD_PORT, sp),
        port=HOLD_PORT,
    )
    add(
        7,
        "hang_after_connect",
        _timeout("post_ack"),
        "S .",
        phase="hang",
        action=lambda lab, dst, sp: connect_and_hang(lab, dst, HTTP_PORT, sp),
    )
    add(
        8,
        "hang_after_request",
        _timeout("post_psh"),
        "S . P.",
        phase="hang",
        action=lambda lab, dst, sp: connect_and_hang(lab, dst, HOLD_PORT, sp, True),
        port=HOLD_PORT,
    )
    add(
        9,
        "syn_only",
        _reset("post_syn", "single_rst", "no_options"),
        "S R",
        action=lambda lab, dst, sp: syn_only(lab, dst, HTTP_PORT, sp),
        note="hping3 (IPv4) or scapy (IPv6) sends the SYN from a raw socket; the server "
        "answers SYN-ACK and the client's kernel, having no socket, answers a bare RST "
        "(ACK clear, seq = the SYN-ACK's ack); neither tool's SYN has TCP options, and "
        "that RST has IP ID 0 (Linux, DF, no socket): no ipid_jump",
    )
    add(
        20,
        "fastopen_then_abort",
        _reset("post_psh", "single_rstack", "syn_data"),
        "S(data) . P. . R.",
        action=lambda lab, dst, sp: fastopen_then_abort(lab, dst, HTTP_PORT, sp),
        note="TCP Fast Open without a cookie: the request rides in the SYN; the server takes "
        "no TFO data, so the request comes again with PSH after the handshake",
    )
    forged = (
        (11, "forged_acknumsame", (Rst(_FORGED_ACK), Rst(_FORGED_ACK)), "acknumsame"),
        (12, "forged_acknumsame0", (Rst(0), Rst(0)), "acknumsame0"),
        (13, "forged_acknumdiff", (Rst(1111), Rst(2222)), "acknumdiff"),
        (14, "forged_acknumdiff0", (Rst(0), Rst(3333)), "acknumdiff0"),
    )
    for n, name, rsts, acktag in forged:
        add(
            n,
            name,
            _reset("post_ack", "multiple_rsts", acktag),
            "S . R R",
            phase="forge",
            rsts=rsts,
        )
    add(
        15,
        "forged_ttl_mismatch",
        _reset("post_ack", "single_rst", "ttl_mismatch"),
        "S . R(ttl 50)",
        phase="forge",
        rsts=(Rst(0, ttl=50),),
    )
    add(
        16,
        "forged_rst_and_rstack",
        _reset("post_ack", "rst_and_rstacks"),
        "S . R R.",
        phase="forge",
        rsts=(Rst(0), Rst(None, flags="RA")),
    )
    add(
        17,
        "forged_rstacks_after_request",
        _reset("post_psh", "multiple_rstacks"),
        "S . P. . R. R.",
        phase="forge",
        rsts=(Rst(None, flags="RA"), Rst(None, flags="RA")),
        request=True,
    )
    if family == 4:
        add(
            10,
            "zmap",
            _reset("post_syn", "single_rst", "zmap", "ttl_mismatch", "scanner_ttl",
                   "no_options"),
            "S(ttl 255, id 54321, win 65535) R(ttl 64)",
            action=lambda lab, dst, sp: zmap_scan(lab, dst, HTTP_PORT, sp),
            note="ZMap 2.1.1's SYN has TTL 255, the kernel's RST TTL 64: so every ZMap "
            "probe of an open port also gets the ttl_mismatch extension tag",
        )
        add(
            18,
            "zmap_modern",
            _reset("post_syn", "single_rst", "ttl_mismatch", "zmap_modern", "scanner_ttl"),
            "S(ttl 255, win 65535, M1460,S,T,N,W7) R(ttl 64)",
            action=lambda lab, dst, sp: zmap_modern_syn(lab, dst, HTTP_PORT, sp),
            note="a scapy SYN in ZMap 4.1's linux template, TSval the Unix time; the kernel's "
            "RST has TTL 64",
        )
        add(
            19,
            "forged_injector_random_ipid",
            _reset("post_psh", "single_rst", "ipid_jump"),
            "S . P. . R(random IP ID)",
            phase="forge",
            rsts=(Rst(0, ip_id="random"),),
            request=True,
            note="an injector writing its own IP ID: far from the client's counter",
        )
        add(
            99,
            "clock_mover",
            Expect(excluded="truncated"),
            "S",
            phase="final",
            action=lambda lab, dst, sp: syn_only(lab, dst, CLOSED_PORT, sp),
            port=CLOSED_PORT,
            note="last packet of the capture; its own deadline lies beyond the input",
        )
    return out


SCENARIOS: list[Scenario] = sorted(_build(4, 41000) + _build(6, 42000), key=lambda s: s.sport)
BY_SPORT: dict[int, Scenario] = {s.sport: s for s in SCENARIOS}
assert len(BY_SPORT) == len(SCENARIOS), "source ports must be unique within a capture"


@dataclass
class Run:
    """What `run_scenarios` did: the capture and what the helpers reported."""

    capture: Path
    packets: Optional[int]
    results: dict[int, Any] = field(default_factory=dict)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_traffic(
    lab: Lab, run: Run, scenarios: Sequence[Scenario] = SCENARIOS, *, wait: bool = True
) -> float:
    """Run the scenarios' traffic phase by phase: "hang", "main", "forge" (every forgery in one
    scapy process), then, once every deadline has passed (waited for only when `wait`),
    "final". Stores what the helpers reported and each phase's duration in `run`, and returns
    the time the final phase started (`time.monotonic`).

    Observes nothing itself: the lab server must be running, and the caller watches the
    server (an NFLOG capture in `run_scenarios`, or the live agent)."""
    phases = {p: [s for s in scenarios if s.phase == p] for p in ("hang", "main", "forge", "final")}

    def timed(phase: str, began: float) -> float:
        now = time.monotonic()
        run.phase_seconds[phase] = round(now - began, 3)
        return now

    def act(phase: str) -> None:
        for scenario in phases[phase]:
            assert scenario.action is not None
            dst = lab.server_addr(scenario.family)
            run.results[scenario.sport] = scenario.action(lab, dst, scenario.sport)

    mark = time.monotonic()
    act("hang")
    idle_deadline = time.monotonic() + IDLE_TIMEOUT_S + NFLOG_BATCH_S + MARGIN_S
    mark = timed("hang", mark)
    act("main")
    mark = timed("main", mark)
    if phases["forge"]:
        forgeries = [
            Forgery(lab.server_addr(s.family), s.port, s.sport, s.rsts, s.request)
            for s in phases["forge"]
        ]
        for sent in forged_rsts(lab, forgeries):
            run.results[sent["sport"]] = sent
    mark = timed("forge", mark)
    if wait:
        linger_deadline = time.monotonic() + CLOSE_LINGER_S + NFLOG_BATCH_S + MARGIN_S
        _sleep_until(max(idle_deadline, linger_deadline))
        mark = timed("wait_deadlines", mark)
    act("final")
    return mark


def run_scenarios(lab: Lab, capture: Path, scenarios: Sequence[Scenario] = SCENARIOS) -> Run:
    """Start the server and the sampling rules in `lab`, capture NFLOG while every scenario
    runs, and return once the capture file is complete."""
    started = time.monotonic()
    run = Run(capture=capture, packets=None)
    start_server(lab)
    install_sampling_rules(lab, "server", group=10)
    now = time.monotonic()
    run.phase_seconds["setup"] = round(now - started, 3)
    with NflogCapture(lab, capture, "server", group=10) as cap:
        run.phase_seconds["capture_start"] = round(time.monotonic() - now, 3)
        mark = run_traffic(lab, run, scenarios)
        time.sleep(NFLOG_BATCH_S + MARGIN_S)  # let the kernel flush the last NFLOG batch
    run.phase_seconds["final"] = round(time.monotonic() - mark, 3)
    run.packets = cap.packets
    run.seconds = round(time.monotonic() - started, 3)
    return run


def replay_argv(capture: Path, records: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resetwatch",
        "replay",
        str(capture),
        "--close-linger",
        str(CLOSE_LINGER_S),
        "--idle-timeout",
        str(IDLE_TIMEOUT_S),
        "--records",
        str(records),
        "--format",
        "json",
    ]


def replay(capture: Path, records: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Run ``resetwatch replay`` on a capture as a subprocess (the CLI a user runs); return
    the records keyed by client source port, and the JSON summary."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "agent"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        replay_argv(capture, records),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"resetwatch replay failed ({proc.returncode}): {proc.stderr}")
    by_sport: dict[int, dict[str, Any]] = {}
    for line in records.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        sport = int(record["sport"])
        if sport in by_sport:
            raise LabError(f"two records for source port {sport}: {by_sport[sport]} {record}")
        by_sport[sport] = record
    return by_sport, json.loads(proc.stdout)


_TCPDUMP_LINE = re.compile(
    r"(?:ttl|hlim) (?P<ttl>\d+).*?\.(?P<sport>\d+) > \S+: Flags \[(?P<flags>[^\]]*)\]"
)


def wire_by_sport(capture: Path) -> dict[int, list[str]]:
    """The logged packets of each flow as ``FLAGS/TTL`` strings (tcpdump's flag notation:
    ``.`` is ACK, ``R.`` RST+ACK), read with tcpdump as an independent parser."""
    proc = subprocess.run(
        ["tcpdump", "-nn", "-v", "-r", str(capture)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    joined: list[str] = []
    for line in proc.stdout.splitlines():
        if line[:1].isspace() and joined:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    wire: dict[int, list[str]] = {}
    for line in joined:
        match = _TCPDUMP_LINE.search(line)
        if match:
            wire.setdefault(int(match["sport"]), []).append(f"{match['flags']}/{match['ttl']}")
    return wire


def check(scenario: Scenario, record: Optional[dict[str, Any]]) -> list[str]:
    """Differences between a flow's record and the scenario's expectation (empty: as expected)."""
    if record is None:
        return [f"no record for source port {scenario.sport}"]
    problems = []
    if record.get("family") != scenario.family:
        problems.append(f"family {record.get('family')} != {scenario.family}")
    for key, want in scenario.expect.fields().items():
        if record.get(key) != want:
            problems.append(f"{key}: got {record.get(key)!r}, want {want!r}")
    return problems
