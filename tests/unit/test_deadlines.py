"""Deadlines hold at every packet (docs/methodology.md, "Two clocks"): in the live table with an
injected clock, and in replay, whatever the sweeps and whatever unrelated traffic there is."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from resetwatch.classify import Category, Outcome, Stage, Tag, classify
from resetwatch.cli import main
from resetwatch.flows import Exclusion, Flow, FlowTable
from resetwatch.packet import Packet

from .factory import Collected, pkt
from .test_properties import summary

CLIENT = ("198.51.100.7", 40000, "203.0.113.1", 443)


class Clock:
    """A monotonic clock the test moves: what the daemon's NFLOG source stamps packets with."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The two examples of issue 14: (packets as (flags, seconds after the SYN), table settings,
# expected stage, outcome, tags).
EXAMPLES: list[tuple[str, list[tuple[str, float]], dict[str, float], Stage, Outcome, set[Tag]]] = [
    ("rst-then-ack-after-the-linger", [("S", 0), ("R", 1), ("A", 16)],
     {"close_linger": 10.0}, Stage.POST_SYN, Outcome.RESET, {Tag.RESET, Tag.SINGLE_RST}),
    ("pause-beyond-the-idle-timeout", [("S", 0), ("A", 1), ("PA", 52), ("PA", 53)],
     {"idle_timeout": 30.0}, Stage.POST_ACK, Outcome.TIMEOUT, {Tag.TIMEOUT}),
]
IDS = [e[0] for e in EXAMPLES]


@pytest.mark.parametrize(("steps", "settings_", "stage", "outcome", "tags"),
                         [e[1:] for e in EXAMPLES], ids=IDS)
@pytest.mark.parametrize("pack_above", [65536, 0], ids=["small-table", "packed-syns"])
def test_live_table_with_an_injected_clock(
    steps: list[tuple[str, float]], settings_: dict[str, float], stage: Stage,
    outcome: Outcome, tags: set[Tag], pack_above: int,
) -> None:
    # As the daemon runs it: packets stamped by the clock, no sweep between them.
    clock = Clock()
    got = Collected()
    table = FlowTable(got, pack_above=pack_above, **settings_)
    start = clock()
    for flags, after in steps:
        clock.now = start + after
        table.add_many([pkt(flags, clock(), tuple_=CLIENT)])
    assert len(got.judged) == 1, "judged at the packet that came after its deadline"
    ((flow, verdict),) = got.judged
    assert (verdict.stage, verdict.outcome, set(verdict.tags)) == (stage, outcome, tags)
    assert table.stats.late_packets == len(steps) - flow.packets
    table.drain(clock())
    assert got.excluded == []


def _pcap(path: Path, packets: list[tuple[float, bytes]]) -> Path:
    parts = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for ts, frame in packets:
        sec, usec = int(ts), round((ts - int(ts)) * 1e6)
        parts.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(parts))
    return path


def _ip(flags: str, sport: int = 40000, src: str = "198.51.100.7", dst: str = "203.0.113.1",
        dport: int = 443, seq: int = 1000, ack: int = 0) -> bytes:
    # SYNs with an MSS option, as an OS stack sends them (none would add `no_options`).
    options = [("MSS", 1460)] if "S" in flags else []
    return bytes(IP(src=src, dst=dst, ttl=57) / TCP(sport=sport, dport=dport, flags=flags,
                                                  seq=seq, ack=ack, options=options))


def _unrelated(start: float, stop: float, count: int) -> list[tuple[float, bytes]]:
    step = (stop - start) / max(count, 1)
    return [(start + i * step, _ip("S", sport=1024 + i % 30000, src=f"192.0.2.{1 + i // 30000}"))
            for i in range(count)]


def _replay(path: Path, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    out = tmp_path / "records.jsonl"
    assert main(["replay", str(path), "--records", str(out), "--format", "json", *args]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize(("steps", "settings_", "stage", "outcome", "tags"),
                         [e[1:] for e in EXAMPLES], ids=IDS)
@pytest.mark.parametrize("unrelated", [0, 5000], ids=["alone", "with-5000-unrelated-syns"])
def test_replay(
    steps: list[tuple[str, float]], settings_: dict[str, float], stage: Stage,
    outcome: Outcome, tags: set[Tag], unrelated: int, tmp_path: Path,
) -> None:
    t0 = 1_700_000_000.0
    packets = [(t0 + after, _ip(flags)) for flags, after in steps]
    # Unrelated SYNs within the capture's span, merged in time order (as mergecap would).
    packets = sorted(packets + _unrelated(t0, t0 + steps[-1][1], unrelated), key=lambda p: p[0])
    args = [f"--{k.replace('_', '-')}={v:g}" for k, v in settings_.items()]
    if "idle_timeout" in settings_:
        args.append("--close-linger=5")
    records = _replay(_pcap(tmp_path / "c.pcap", packets), tmp_path, *args)
    (flow,) = [r for r in records if r["sport"] == 40000]
    assert (flow["stage"], flow["outcome"], set(flow["tags"])) == (
        stage.value, outcome.value, {t.value for t in tags})


def test_replay_egress_packets_move_the_clock(tmp_path: Path) -> None:
    # The client's late ACK is stamped before its RST's linger ends (the capture is out of
    # order), but the server's packets have by then moved the clock 15 s on: the flow was
    # judged before the ACK arrived, whether or not egress packets are fed to the table.
    t0 = 1_700_000_000.0
    server_reply = _ip("RA", src="203.0.113.1", dst="198.51.100.9", sport=443, dport=50000)
    packets = [(t0, _ip("S")), (t0 + 1, _ip("R", seq=1001)), (t0 + 15, server_reply),
               (t0 + 5, _ip("A", seq=1001, ack=1)), (t0 + 30, server_reply)]
    path = _pcap(tmp_path / "c.pcap", packets)
    (flow,) = _replay(path, tmp_path, "--server", "203.0.113.1")
    assert (flow["packets"], flow["stage"], flow["tags"]) == (2, "post_syn",
                                                              ["reset", "single_rst"])


def test_at_capacity_flows_past_a_deadline_are_judged_not_evicted() -> None:
    got = Collected()
    table = FlowTable(got, max_flows=2, close_linger=10.0)
    table.add_many([pkt("S", 0.0, tuple_=CLIENT), pkt("R", 1.0, tuple_=CLIENT),
                    pkt("S", 2.0, tuple_=("198.51.100.8", 40000, "203.0.113.1", 443))])
    table.add(pkt("S", 20.0, tuple_=("198.51.100.9", 40000, "203.0.113.1", 443)))
    assert [v.category for v in got.verdicts] == [Category.POST_SYN]
    assert Exclusion.EVICTED not in got.reasons


# --- Properties ---------------------------------------------------------------------------------

FLAGS = ["S", "A", "PA", "R", "RA", "FA", "A", "PA"]
packet_step = st.tuples(
    st.integers(0, 3),  # which flow (its source port)
    st.sampled_from(FLAGS),
    st.floats(min_value=0.0, max_value=40.0),  # seconds to the next packet
    st.sampled_from([1000, 1000, 2000]),  # SYN sequence number (2000: port reuse)
)
traces = st.lists(packet_step, min_size=1, max_size=40)


def _packets(trace: list[tuple[int, str, float, int]], t0: float = 100.0) -> list[Packet]:
    out = []
    ts = t0
    for n, flags, gap, seq in trace:
        ts += gap
        out.append(pkt(flags, ts, seq=seq if "S" in flags else 1001, ack=n,
                       tuple_=("198.51.100.7", 40000 + n, "203.0.113.1", 443)))
    return out


Ended = list[tuple[bytes, tuple[Any, ...], Optional[Exclusion], Any]]


def _collector(ended: Ended) -> Callable[[Flow, Optional[Exclusion]], None]:
    def on_end(flow: Flow, reason: Optional[Exclusion]) -> None:
        ended.append((flow.key, summary(flow), reason, classify(flow) if reason is None else None))

    return on_end


def _run(packets: list[Packet], sweep_every: int, max_flows: int = 1_000_000) -> Ended:
    ended: Ended = []
    table = FlowTable(_collector(ended), idle_timeout=30.0, close_linger=10.0,
                      max_flows=max_flows)
    for i, p in enumerate(packets):
        table.add(p)
        if sweep_every and (i + 1) % sweep_every == 0:
            table.sweep(table.clock, budget=1 << 30)
    table.drain(table.clock)
    return ended


def _sort_key(item: tuple[Any, ...]) -> str:
    return repr(item)


@settings(max_examples=300, deadline=None)
@given(traces, st.integers(1, 7), st.randoms(use_true_random=False))
def test_a_verdict_is_the_same_whatever_the_sweep_interval(trace, every, rnd) -> None:
    packets = _packets(trace)
    if rnd.random() < 0.5:  # captures are not always in order (NFLOG batches, merges)
        rnd.shuffle(packets)
    never = sorted(_run(packets, 0), key=_sort_key)
    assert sorted(_run(packets, every), key=_sort_key) == never
    assert sorted(_run(packets, 1), key=_sort_key) == never


@settings(max_examples=300, deadline=None)
@given(traces, st.lists(st.tuples(st.integers(0, 200), st.sampled_from(FLAGS),
                                  st.floats(0.0, 1.0)), max_size=60))
def test_merging_unrelated_traffic_never_changes_another_flows_verdict(trace, others) -> None:
    packets = _packets(trace)
    start, end = packets[0].ts, packets[-1].ts
    # Unrelated flows (other client addresses), stamped within the capture's span.
    noise = [pkt(flags, start + where * (end - start), seq=1000,
                 tuple_=("192.0.2.1", 10000 + port, "203.0.113.1", 443))
             for port, flags, where in others]
    merged = sorted(packets + noise, key=lambda p: p.ts)  # stable: ties keep their order
    alone = [e for e in _run(packets, 0) if e[0] in {p.key for p in packets}]
    mixed = [e for e in _run(merged, 4096) if e[0] in {p.key for p in packets}]
    assert sorted(mixed, key=_sort_key) == sorted(alone, key=_sort_key)


def test_a_packed_syn_past_the_idle_timeout_is_judged_at_the_next_packet() -> None:
    got = Collected()
    table = FlowTable(got, idle_timeout=30.0, close_linger=10.0, pack_above=0)
    table.add(pkt("S", 0.0, tuple_=CLIENT))
    table.add(pkt("A", 31.0, tuple_=CLIENT))
    assert [(v.stage, v.outcome) for v in got.verdicts] == [(Stage.POST_SYN, Outcome.TIMEOUT)]
    assert table.stats.late_packets == 1 and len(table) == 0
