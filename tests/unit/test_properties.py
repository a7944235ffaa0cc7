"""Invariants that must hold for every flow, whatever its packets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resetwatch.classify import ACKNUM_TAGS, RESET_SHAPES, Category, Outcome, Tag, classify
from resetwatch.flows import (
    MAX_PACKETS,
    NO_IDS,
    Flow,
    FlowTable,
    pack_syn,
    packed_ts,
    unpack_syn,
)
from resetwatch.packet import CWR, ECE, SYN, Packet

from .factory import CLIENT6, pkt, run

FLAG_SETS = ["A", "PA", "R", "RA", "FA", "FPA", "RPA", "A"]

# IP IDs near the SYN's, across the 16-bit wrap from it, far from it, and zero.
IP_IDS = [0, 1, 2, 65535, 4242, 4243, 30000, 9000]
later_packet = st.builds(
    lambda flags, ack, ttl, ts, ip_id: pkt(flags, ts, ack=ack, ttl=ttl, ip_id=ip_id),
    st.sampled_from(FLAG_SETS),
    st.sampled_from([0, 1, 77, 2**32 - 1]),
    st.sampled_from([57, 58, 250]),
    st.floats(min_value=0.0, max_value=5.0),
    st.sampled_from(IP_IDS),
)
syn_packet = st.builds(
    lambda ip_id, window, df, options, ttl, payload: pkt(
        "S", 0.0, ip_id=ip_id, window=window, df=df, options=options, ttl=ttl, payload=payload
    ),
    st.sampled_from([54321, 1, 4242, 0, 65535]),
    st.sampled_from([65535, 64240]),
    st.booleans(),
    st.sampled_from(["M1460", "M1460,N,W8,N,N,S", "M1460,S,T,N,W7", "M1460,S,Tu,N,W7", ""]),
    st.sampled_from([57, 255]),
    st.sampled_from([0, 120]),
)
flows = st.tuples(syn_packet, st.lists(later_packet, max_size=MAX_PACKETS - 1))


def summary(flow: Flow) -> tuple:
    return tuple(getattr(flow, name) for name in Flow.__slots__ if name != "resets") + (
        sorted(flow.resets or ()),
    )


@settings(max_examples=300, deadline=None)
@given(flows, st.randoms(use_true_random=False))
def test_packet_order_never_changes_the_summary_or_the_verdict(flow_packets, rnd) -> None:
    syn, rest = flow_packets
    shuffled = list(rest)
    rnd.shuffle(shuffled)
    a = Flow(syn)
    b = Flow(syn)
    for p in rest:
        a.absorb(p)
    for p in shuffled:
        b.absorb(p)
    assert summary(a) == summary(b)
    assert classify(a) == classify(b)


@settings(max_examples=300, deadline=None)
@given(flows, st.randoms(use_true_random=False))
def test_table_order_after_the_syn_never_changes_the_verdict(flow_packets, rnd) -> None:
    syn, rest = flow_packets
    shuffled = list(rest)
    rnd.shuffle(shuffled)
    # NFLOG timestamps are batch times: give the permuted packets the same times in order.
    times = sorted(p.ts for p in rest)
    retimed = [p._replace(ts=t) for p, t in zip(shuffled, times)]
    inorder = [p._replace(ts=t) for p, t in zip(rest, times)]
    one = run([syn, *inorder], end=1e6)
    two = run([syn, *retimed], end=1e6)
    assert one.verdicts == two.verdicts
    assert one.reasons == two.reasons


def absorbed(packets: list[Packet]) -> Flow:
    """The summary as `Flow` and `Flow.absorb` build it, one packet at a time."""
    flow = Flow(packets[0])
    for p in packets[1:]:
        flow.absorb(p)
    return flow


@settings(max_examples=300, deadline=None)
@given(flows)
def test_the_table_summarises_as_flow_absorb_does(flow_packets) -> None:
    # The table inlines `Flow.absorb` in its per-packet loop, and `Flow` shortcuts a lone SYN:
    # both must build exactly the summary of the plain rules.
    syn, rest = flow_packets
    syn = syn._replace(ts=2.5)  # some packets before it: first_ts moves back
    ended: list[Flow] = []
    table = FlowTable(lambda flow, reason: ended.append(flow))
    table.add_many([syn, *rest])
    table.drain(1e6)
    assert [summary(f) for f in ended] == [summary(absorbed([syn, *rest]))]
    general = Flow.__new__(Flow)  # a lone SYN the long way: an empty summary, then absorb
    general.key, general.first_ts, general.last_ts = syn.key, syn.ts, syn.ts
    general.packets = general.marks = general.ttls = 0
    general.resets = None
    general.syn_seqid, general.syn = syn.seq | syn.ip_id << 32, Flow(syn).syn
    general.ids = 0 if syn.ip_id else NO_IDS
    general.absorb(syn)
    assert summary(general) == summary(Flow(syn))


@settings(max_examples=200, deadline=None)
@given(st.lists(flows, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_feeding_a_run_equals_feeding_one_by_one(many, rnd) -> None:
    # Several flows' packets interleaved (the ACK-only ones of a flow may come before its SYN,
    # then they are strays), a SYN repeated now and then: every path of the table.
    packets: list[Packet] = []
    for n, (syn, rest) in enumerate(many):
        port = 40000 + n % 2  # flows 0 and 2 share ports: a new SYN supersedes
        key = syn.key[:-4] + port.to_bytes(2, "big") + syn.key[-2:]
        own = [syn._replace(seq=1000 + n), *rest, *([syn] if n == 1 else [])]
        packets += [p._replace(key=key, ts=p.ts + n) for p in own]
    rnd.shuffle(packets)
    one: list[tuple] = []
    run: list[tuple] = []
    by_one = FlowTable(lambda flow, reason: one.append((summary(flow), reason)), close_linger=1)
    in_run = FlowTable(lambda flow, reason: run.append((summary(flow), reason)), close_linger=1)
    for p in packets:
        by_one.add(p)
    newest = in_run.add_many(packets, -1.0)
    assert newest == max(-1.0, *(p.ts for p in packets))
    for table in (by_one, in_run):
        table.sweep(3.0)
        table.drain(1e6)
    assert one == run


@settings(max_examples=500, deadline=None)
@given(flows)
def test_every_judged_flow_has_one_category_and_a_consistent_tag_tree(flow_packets) -> None:
    syn, rest = flow_packets
    flow = Flow(syn)
    for p in rest:
        flow.absorb(p)
    verdict = classify(flow)
    assert isinstance(verdict.category, Category)
    tags = set(verdict.tags)
    assert len(verdict.tags) == len(tags)
    for tag in tags:
        assert tag.parent is None or tag.parent in tags, tag
    assert (Tag.RESET in tags) == (verdict.outcome is Outcome.RESET)
    assert (Tag.TIMEOUT in tags) == (verdict.outcome is Outcome.TIMEOUT)
    if Tag.RESET in tags:
        assert len(tags & set(RESET_SHAPES)) == 1
    else:
        assert not tags & set(RESET_SHAPES)
    assert len(tags & set(ACKNUM_TAGS)) == (1 if Tag.MULTIPLE_RSTS in tags else 0)
    assert not {Tag.ZMAP, Tag.ZMAP_MODERN} <= tags
    anomalous = verdict.category is not Category.NO_MATCH
    assert anomalous == (
        verdict.outcome is Outcome.RESET
        or (verdict.outcome is Outcome.TIMEOUT and verdict.stage.value != "later")
    )


@settings(max_examples=300, deadline=None)
@given(flows)
def test_tags_come_in_the_order_of_the_tag_enum(flow_packets) -> None:
    syn, rest = flow_packets
    flow = Flow(syn)
    for p in rest:
        flow.absorb(p)
    order = list(Tag)
    tags = classify(flow).tags
    assert list(tags) == sorted(tags, key=order.index)


syn_any = st.builds(
    lambda ts, seq, ip_id, window, ttl, df, ack, options, ecn, v6: pkt(
        "S", ts, seq=seq, ip_id=ip_id, window=window, ttl=ttl, df=df, ack=ack, options=options,
        **({"tuple_": CLIENT6} if v6 else {}),
    )._replace(flags=SYN | ecn),
    st.floats(min_value=0, max_value=2e9, allow_nan=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(0, 255),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["M1460", "M1460,N,W8,N,N,S", ""]),
    st.sampled_from([0, ECE | CWR]),
    st.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(syn_any)
def test_a_packed_syn_stands_for_exactly_the_flow_of_its_syn(syn) -> None:
    packed = pack_syn(syn)
    assert packed is not None
    assert packed_ts(packed) == syn.ts
    rebuilt = unpack_syn(syn.key, packed)
    assert summary(rebuilt) == summary(Flow(syn))
    assert classify(rebuilt) == classify(Flow(syn))


def test_only_a_plain_syn_is_packed() -> None:
    assert pack_syn(pkt("S")) is not None
    assert pack_syn(pkt("SF")) is None  # a FIN starts the close linger: needs a Flow
    assert pack_syn(pkt("SR")) is None
