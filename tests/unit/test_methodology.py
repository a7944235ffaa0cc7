"""Every row of every table in docs/methodology.md, as a table of cases."""

from __future__ import annotations

import pytest

from resetwatch.classify import ACKNUM_TAGS, RESET_SHAPES, Category, Outcome, Stage, Tag
from resetwatch.flows import Exclusion, FlowTable

from .factory import CLIENT6, Collected, handshake, pkt, run

T = Tag
C = Category

# (id, packets after the SYN at t=0 as (flags, ts, extra), stage, outcome, category, tags)
CASES = [
    # Stage x outcome, through the category table.
    ("syn-timeout", [], Stage.POST_SYN, Outcome.TIMEOUT, C.POST_SYN, {T.TIMEOUT}),
    ("syn-rst", [("R", 1, {})], Stage.POST_SYN, Outcome.RESET, C.POST_SYN,
     {T.RESET, T.SINGLE_RST}),
    ("syn-fin", [("F", 1, {})], Stage.POST_SYN, Outcome.CLOSED, C.NO_MATCH, set()),
    ("ack-timeout", [("A", 1, {})], Stage.POST_ACK, Outcome.TIMEOUT, C.POST_ACK, {T.TIMEOUT}),
    ("ack-rstack", [("A", 1, {}), ("RA", 2, {"ack": 9})], Stage.POST_ACK, Outcome.RESET,
     C.POST_ACK, {T.RESET, T.SINGLE_RSTACK}),
    ("ack-fin", [("A", 1, {}), ("FA", 2, {})], Stage.POST_ACK, Outcome.CLOSED, C.NO_MATCH,
     set()),
    ("psh-timeout", [("A", 1, {}), ("PA", 2, {})], Stage.POST_PSH, Outcome.TIMEOUT,
     C.POST_PSH, {T.TIMEOUT}),
    ("psh-rst", [("A", 1, {}), ("PA", 2, {}), ("R", 3, {"ack": 7})], Stage.POST_PSH,
     Outcome.RESET, C.POST_PSH, {T.RESET, T.SINGLE_RST}),
    ("psh-fin", [("A", 1, {}), ("PA", 2, {}), ("FA", 3, {})], Stage.POST_PSH,
     Outcome.CLOSED, C.NO_MATCH, set()),
    ("later-timeout-is-no-match", [("A", 1, {}), ("PA", 2, {}), ("PA", 3, {})], Stage.LATER,
     Outcome.TIMEOUT, C.NO_MATCH, {T.TIMEOUT}),
    ("later-rst", [("A", 1, {}), ("PA", 2, {}), ("PA", 3, {}), ("RA", 4, {})], Stage.LATER,
     Outcome.RESET, C.LATER_IN_FLOW, {T.RESET, T.SINGLE_RSTACK}),
    ("later-fin", [("A", 1, {}), ("PA", 2, {}), ("PA", 3, {}), ("FA", 4, {})], Stage.LATER,
     Outcome.CLOSED, C.NO_MATCH, set()),
    # Stage from flags only: a split first message (only the last segment has PSH) stays Post-PSH.
    ("split-hello", [("A", 1, {}), ("A", 2, {"payload": 1448}), ("PA", 3, {"payload": 300}),
                     ("R", 4, {})], Stage.POST_PSH, Outcome.RESET, C.POST_PSH,
     {T.RESET, T.SINGLE_RST}),
    # A RST+ACK does not count as establishing; neither does a PSH on a RST.
    ("rstack-not-established", [("RA", 1, {})], Stage.POST_SYN, Outcome.RESET, C.POST_SYN,
     {T.RESET, T.SINGLE_RSTACK}),
    ("psh-rst-not-data", [("A", 1, {}), ("RPA", 2, {})], Stage.POST_ACK, Outcome.RESET,
     C.POST_ACK, {T.RESET, T.SINGLE_RSTACK}),
    # Reset shapes.
    ("rst-and-rstacks", [("A", 1, {}), ("R", 2, {}), ("RA", 2.1, {})], Stage.POST_ACK,
     Outcome.RESET, C.POST_ACK, {T.RESET, T.RST_AND_RSTACKS}),
    ("multiple-rstacks", [("A", 1, {}), ("RA", 2, {}), ("RA", 2.1, {})], Stage.POST_ACK,
     Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTACKS}),
    ("fin-then-rst", [("A", 1, {}), ("FA", 2, {}), ("RA", 3, {})], Stage.POST_ACK,
     Outcome.RESET, C.POST_ACK, {T.RESET, T.FIN, T.SINGLE_RSTACK}),
    # The four ack-number patterns of multiple RSTs.
    ("acknumsame", [("A", 1, {}), ("R", 2, {"ack": 77}), ("R", 2.1, {"ack": 77})],
     Stage.POST_ACK, Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMSAME}),
    ("acknumsame0", [("A", 1, {}), ("R", 2, {"ack": 0}), ("R", 2.1, {"ack": 0})],
     Stage.POST_ACK, Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMSAME0}),
    ("acknumdiff", [("A", 1, {}), ("R", 2, {"ack": 77}), ("R", 2.1, {"ack": 78})],
     Stage.POST_ACK, Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMDIFF}),
    ("acknumdiff0", [("A", 1, {}), ("R", 2, {"ack": 0}), ("R", 2.1, {"ack": 78})],
     Stage.POST_ACK, Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMDIFF0}),
    ("three-rsts-diff", [("R", 2, {"ack": 5}), ("R", 2.1, {"ack": 5}), ("R", 2.2, {"ack": 6})],
     Stage.POST_SYN, Outcome.RESET, C.POST_SYN, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMDIFF}),
    # ttl_mismatch: an injected RST whose TTL no other packet had.
    ("ttl-mismatch", [("A", 1, {}), ("PA", 2, {}), ("R", 2.1, {"ttl": 250})], Stage.POST_PSH,
     Outcome.RESET, C.POST_PSH, {T.RESET, T.SINGLE_RST, T.TTL_MISMATCH}),
    ("ttl-match", [("A", 1, {}), ("PA", 2, {}), ("R", 2.1, {"ttl": 57})], Stage.POST_PSH,
     Outcome.RESET, C.POST_PSH, {T.RESET, T.SINGLE_RST}),
    ("ttl-mismatch-one-of-two", [("A", 1, {}), ("R", 2, {"ttl": 57, "ack": 1}),
                                 ("R", 2.1, {"ttl": 40, "ack": 1})], Stage.POST_ACK,
     Outcome.RESET, C.POST_ACK, {T.RESET, T.MULTIPLE_RSTS, T.ACKNUMSAME, T.TTL_MISMATCH}),
]


def _feed(rest: list[tuple[str, float, dict[str, int]]], **syn: object) -> list:
    return [pkt("S", 0.0, **syn)] + [pkt(f, ts, **kw) for f, ts, kw in rest]  # type: ignore


@pytest.mark.parametrize(
    "rest,stage,outcome,category,tags", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdict_table(rest, stage, outcome, category, tags) -> None:
    out = run(_feed(rest))
    assert out.reasons == []
    [verdict] = out.verdicts
    assert (verdict.stage, verdict.outcome, verdict.category) == (stage, outcome, category)
    assert set(verdict.tags) == tags


@pytest.mark.parametrize(
    "rest,stage,outcome,category,tags", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdicts_are_the_same_when_syn_only_flows_are_packed(
    rest, stage, outcome, category, tags
) -> None:
    """A big table holds SYN-only flows packed (flows.pack_syn); nothing may change."""
    [verdict] = run(_feed(rest), pack_above=0).verdicts
    assert (verdict.stage, verdict.outcome, verdict.category) == (stage, outcome, category)
    assert set(verdict.tags) == tags


def test_packed_flows_are_evicted_swept_and_drained_like_others() -> None:
    a = ("198.51.100.1", 1, "203.0.113.1", 443)
    b = ("198.51.100.2", 2, "203.0.113.1", 443)
    c = ("198.51.100.3", 3, "203.0.113.1", 443)
    zmap = {"ip_id": 54321, "window": 65535, "df": False, "options": "M1460"}
    packets = [pkt("S", 0, tuple_=a, **zmap), pkt("S", 1, tuple_=b), pkt("S", 2, tuple_=c)]
    out = run(packets, max_flows=2, pack_above=0, end=None)
    assert [r for _, r in out.excluded] == [Exclusion.EVICTED, Exclusion.TRUNCATED,
                                             Exclusion.TRUNCATED]
    evicted = out.excluded[0][0]
    assert evicted.key == packets[0].key and evicted.first_ts == 0
    swept = run(packets[:1], pack_above=0, end=1e6)
    [verdict] = swept.verdicts
    assert verdict.category is C.POST_SYN and set(verdict.tags) == {T.TIMEOUT, T.ZMAP}


# Evidence tags (extensions): (id, SYN fields, packets after it as in CASES, the evidence
# tags expected among ipid_jump, scanner_ttl, no_options, syn_data), IPv4 unless `v6`.
# SYN IP ID 1000 (the factory's default IDs are 1): every packet names its ID.
EVIDENCE = [
    ("ipid-jump", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}), ("PA", 2, {"ip_id": 1002}),
                                    ("R", 3, {"ip_id": 40000})], {T.IPID_JUMP}),
    ("ipid-jump-rstack", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}),
                                           ("RA", 2, {"ip_id": 9000})], {T.IPID_JUMP}),
    ("ipid-jump-one-of-two", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}),
                                               ("R", 2, {"ip_id": 1002}),
                                               ("R", 2.1, {"ip_id": 60000})], {T.IPID_JUMP}),
    ("ipid-jump-below", {"ip_id": 30000}, [("A", 1, {"ip_id": 30001}),
                                           ("R", 2, {"ip_id": 20000})], {T.IPID_JUMP}),
    # Nearest shapes without it: the counter's next value, a global counter's step, the
    # distance exactly, across the 16-bit wrap, zero IDs (Linux DF packets), no RST, IPv6.
    ("ipid-next", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}), ("R", 2, {"ip_id": 1002})],
     set()),
    ("ipid-global-counter", {"ip_id": 1000}, [("A", 1, {"ip_id": 1300}),
                                              ("PA", 2, {"ip_id": 1750}),
                                              ("R", 3, {"ip_id": 2300})], set()),
    ("ipid-at-the-distance", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}),
                                               ("R", 2, {"ip_id": 1001 + 4096})], set()),
    ("ipid-one-past-the-distance", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}),
                                                     ("R", 2, {"ip_id": 1002 + 4096})],
     {T.IPID_JUMP}),
    ("ipid-wrap", {"ip_id": 65534}, [("A", 1, {"ip_id": 65535}), ("PA", 2, {"ip_id": 1}),
                                     ("R", 3, {"ip_id": 2})], set()),
    ("ipid-wrap-back", {"ip_id": 3}, [("A", 1, {"ip_id": 4}), ("R", 2, {"ip_id": 65530})],
     set()),
    ("ipid-rst-zero", {"ip_id": 1000}, [("A", 1, {"ip_id": 1001}), ("R", 2, {"ip_id": 0})],
     set()),
    ("ipid-others-zero", {"ip_id": 0}, [("A", 1, {"ip_id": 0}), ("R", 2, {"ip_id": 40000})],
     set()),
    ("ipid-syn-zero", {"ip_id": 0}, [("A", 1, {"ip_id": 5000}), ("R", 2, {"ip_id": 5001})],
     set()),
    # No origin when the SYN's ID is 0: no evidence (a choice: such flows are rare).
    ("ipid-syn-zero-no-evidence", {"ip_id": 0}, [("A", 1, {"ip_id": 5000}),
                                                 ("R", 2, {"ip_id": 50000})], set()),
    ("ipid-no-rst", {"ip_id": 1000}, [("A", 1, {"ip_id": 40000})], set()),
    ("ipid-v6", {"v6": 1}, [("A", 1, {}), ("R", 2, {})], set()),
    # Scanner heuristics and data in the SYN.
    ("scanner-ttl", {"ttl": 200}, [], {T.SCANNER_TTL}),
    ("scanner-ttl-255-v6", {"ttl": 255, "v6": 1}, [("R", 1, {})], {T.SCANNER_TTL}),
    ("ttl-199", {"ttl": 199}, [], set()),
    ("ttl-128-windows", {"ttl": 128}, [], set()),
    ("no-options", {"options": ""}, [("RA", 1, {})], {T.NO_OPTIONS}),
    ("no-options-v6", {"options": "", "v6": 1}, [], {T.NO_OPTIONS}),
    ("only-mss", {"options": "M1460"}, [], set()),
    ("only-nop", {"options": "N"}, [], set()),
    ("syn-data", {"payload": 120, "options": "M1460,S,T,N,W7,N,N,F"}, [("A", 1, {})],
     {T.SYN_DATA}),
    ("syn-data-v6", {"payload": 1, "v6": 1}, [], {T.SYN_DATA}),
    ("syn-no-data", {"payload": 0, "options": "M1460,S,T,N,W7,N,N,F"}, [], set()),
    ("data-after-syn", {}, [("A", 1, {}), ("PA", 2, {"payload": 300})], set()),
    ("scanner-all-three", {"ttl": 255, "options": "", "payload": 40}, [("R", 1, {})],
     {T.SCANNER_TTL, T.NO_OPTIONS, T.SYN_DATA}),
]
EVIDENCE_TAGS = {T.IPID_JUMP, T.SCANNER_TTL, T.NO_OPTIONS, T.SYN_DATA}


@pytest.mark.parametrize("packed", [False, True], ids=["flow", "packed"])
@pytest.mark.parametrize("syn,rest,expected", [c[1:] for c in EVIDENCE],
                         ids=[c[0] for c in EVIDENCE])
def test_evidence_tags(syn, rest, expected, packed) -> None:
    syn = dict(syn)
    where = {"tuple_": CLIENT6} if syn.pop("v6", 0) else {}
    packets = [pkt("S", 0.0, **where, **syn)]  # type: ignore[arg-type]
    packets += [pkt(f, ts, **where, **kw) for f, ts, kw in rest]  # type: ignore[arg-type]
    [verdict] = run(packets, pack_above=0 if packed else 65536).verdicts
    assert set(verdict.tags) & EVIDENCE_TAGS == expected


def test_data_in_the_syn_does_not_make_a_flow_post_psh() -> None:
    packets = [pkt("S", 0.0, payload=300), pkt("A", 1), pkt("R", 2)]
    [verdict] = run(packets).verdicts
    assert (verdict.stage, verdict.category) == (Stage.POST_ACK, C.POST_ACK)
    assert T.SYN_DATA in verdict.tags


def test_every_stage_outcome_and_tag_is_covered_by_the_table() -> None:
    """The table above is the spec: it must exercise every enum value."""
    seen_tags = set().union(*(c[5] for c in CASES)) | {T.ZMAP, T.ZMAP_MODERN}
    seen_tags |= set().union(*(c[3] for c in EVIDENCE))
    assert {c[2] for c in CASES} == set(Stage)
    assert {c[3] for c in CASES} | {Outcome.ONGOING} == set(Outcome)
    assert {c[4] for c in CASES} == set(Category)
    assert seen_tags == set(Tag)


def test_ongoing_after_ten_packets_ends_at_once() -> None:
    packets = handshake() + [pkt("PA", 1 + i) for i in range(8)]
    assert len(packets) == 10
    out = run(packets, end=None)  # drain at the 10th packet's time: it ended before
    [verdict] = out.verdicts
    assert verdict.outcome is Outcome.ONGOING
    assert verdict.category is C.NO_MATCH
    assert verdict.stage is Stage.LATER
    assert verdict.tags == ()


def test_rst_within_ten_packets_beats_ongoing() -> None:
    packets = handshake() + [pkt("PA", 1 + i) for i in range(7)] + [pkt("R", 9)]
    [verdict] = run(packets).verdicts
    assert verdict.outcome is Outcome.RESET
    assert verdict.category is C.LATER_IN_FLOW


def test_packets_after_the_tenth_are_late_not_no_syn() -> None:
    packets = handshake() + [pkt("PA", 1 + i) for i in range(8)] + [pkt("R", 20)]
    out = run(packets)
    assert [v.outcome for v in out.verdicts] == [Outcome.ONGOING]
    assert out.reasons == []


@pytest.mark.parametrize(
    "ip_id,window,df,ack,options,family,expected",
    [
        (54321, 65535, False, 0, "M1460", 4, {T.ZMAP}),
        (54321, 65535, True, 0, "M1460,S,T,N,W7", 4, {T.ZMAP}),  # published test: id+window
        (54321, 64240, False, 0, "M1460", 4, set()),
        (54321, 65535, False, 0, "M1460", 6, set()),  # IPv6 has no IP ID: never zmap
        (4242, 65535, False, 0, "M1460,N,W8,N,N,S", 4, {T.ZMAP_MODERN}),  # windows template
        (4242, 65535, False, 0, "M1460,S,Tu,N,W7", 4, {T.ZMAP_MODERN}),  # linux
        (4242, 65535, False, 0, "M1460,N,W6,N,N,Tu,S,E", 4, {T.ZMAP_MODERN}),  # bsd
        # A real stack's TSval (random offset, milliseconds) is not the Unix time: `T`.
        (4242, 65535, False, 0, "M1460,S,T,N,W7", 4, set()),
        (4242, 65535, False, 0, "M1460,N,W6,N,N,T,S,E", 4, set()),  # macOS, DF clear
        (4242, 65535, False, 0, "M1460", 4, {T.ZMAP_MODERN}),  # smallest-probes
        (4242, 65535, True, 0, "M1460,N,W8,N,N,S", 4, set()),  # DF set: a real stack
        (4242, 65535, False, 5, "M1460,N,W8,N,N,S", 4, set()),  # ack set
        (4242, 65535, False, 0, "M1400,N,W8,N,N,S", 4, set()),  # other MSS
        (4242, 65535, False, 0, "M1460,N,W8,N,N,S,T", 4, set()),  # extra option
        (4242, 29200, False, 0, "M1460", 4, set()),  # other window
    ],
)
def test_zmap_tags(ip_id, window, df, ack, options, family, expected) -> None:
    where = CLIENT6 if family == 6 else None
    extra = {"tuple_": where} if where else {}
    syn = pkt("S", 0, ip_id=ip_id, window=window, df=df, ack=ack, options=options, **extra)
    rst = pkt("RA", 0.1, **extra)
    [verdict] = run([syn, rst]).verdicts
    assert {t for t in verdict.tags if t in (T.ZMAP, T.ZMAP_MODERN)} == expected


# ---- flows: exclusions, port reuse, clocks -----------------------------------------------


def test_no_syn_is_excluded_once_per_connection() -> None:
    out = run([pkt("A", 1), pkt("PA", 2), pkt("RA", 3)])
    assert out.verdicts == []
    assert out.reasons == [Exclusion.NO_SYN]


def test_syn_retransmission_is_multiple_syn() -> None:
    out = run([pkt("S", 0, seq=5), pkt("S", 1, seq=5), pkt("A", 2), pkt("RA", 3)])
    assert out.verdicts == []
    assert out.reasons == [Exclusion.MULTIPLE_SYN]


def test_port_reuse_after_close_judges_old_flow_and_starts_new() -> None:
    out = run([pkt("S", 0, seq=5), pkt("A", 1), pkt("RA", 2), pkt("S", 3, seq=9), pkt("A", 4)])
    assert [v.category for v in out.verdicts] == [C.POST_ACK, C.POST_ACK]
    assert [v.outcome for v in out.verdicts] == [Outcome.RESET, Outcome.TIMEOUT]
    assert out.reasons == []


def test_port_reuse_without_close_supersedes_old_flow() -> None:
    out = run([pkt("S", 0, seq=5), pkt("A", 1), pkt("S", 3, seq=9)])
    assert out.reasons == [Exclusion.SUPERSEDED]
    [verdict] = out.verdicts
    assert verdict.stage is Stage.POST_SYN


@pytest.mark.parametrize(
    "end,judged", [(11.99, False), (12.0, True)], ids=["before-linger", "at-linger"]
)
def test_close_linger_waits_for_more_packets(end: float, judged: bool) -> None:
    # RST at t=2 with linger 10: the second RST at t=11 still counts; judged at t=12.
    packets = handshake() + [pkt("R", 2, ack=1), pkt("R", 11, ack=1)]
    out = run(packets, end=end)
    if judged:
        [verdict] = out.verdicts
        assert T.MULTIPLE_RSTS in verdict.tags
    else:
        assert out.verdicts == []


@pytest.mark.parametrize("end,judged", [(300.99, False), (301.0, True)])
def test_idle_timeout_counts_from_the_last_packet(end: float, judged: bool) -> None:
    out = run(handshake(0) + [pkt("PA", 1)], end=end)
    assert bool(out.verdicts) is judged
    if judged:
        assert out.verdicts[0].category is C.POST_PSH


def test_end_of_input_judges_past_deadlines_and_truncates_the_rest() -> None:
    late = ("198.51.100.8", 40001, "203.0.113.1", 443)
    packets = [
        pkt("S", 0),
        pkt("RA", 1),  # deadline 11: passed by the end at t=400
        pkt("S", 395, tuple_=late),
        pkt("RA", 400, tuple_=late),  # deadline 410: truncated
    ]
    out = run(packets, end=None)
    assert [v.category for v in out.verdicts] == [C.POST_SYN]
    assert out.reasons == [Exclusion.TRUNCATED]


def test_drain_never_counts_a_timeout_before_its_deadline() -> None:
    out = run(handshake(0), end=None)
    assert out.verdicts == []
    assert out.reasons == [Exclusion.TRUNCATED]


def test_eviction_counts_least_recently_active_flows() -> None:
    a = ("198.51.100.1", 1, "203.0.113.1", 443)
    b = ("198.51.100.2", 2, "203.0.113.1", 443)
    c = ("198.51.100.3", 3, "203.0.113.1", 443)
    packets = [pkt("S", 0, tuple_=a), pkt("S", 1, tuple_=b), pkt("A", 2, tuple_=a),
               pkt("S", 3, tuple_=c)]
    out = run(packets, max_flows=2, end=None)
    assert [(f.key, r) for f, r in out.excluded][:1] == [(packets[1].key, Exclusion.EVICTED)]


def test_a_packet_of_an_evicted_flow_is_a_no_syn_connection() -> None:
    # Evicted keys are not remembered as ended (docs/methodology.md, eviction).
    a = ("198.51.100.1", 1, "203.0.113.1", 443)
    b = ("198.51.100.2", 2, "203.0.113.1", 443)
    out = run([pkt("S", 0, tuple_=a), pkt("S", 1, tuple_=b), pkt("A", 2, tuple_=a)],
              max_flows=1, end=None)
    assert out.reasons == [Exclusion.EVICTED, Exclusion.NO_SYN, Exclusion.TRUNCATED]


def test_evictions_do_not_push_judged_flows_out_of_the_ended_memory() -> None:
    out = Collected()
    table = FlowTable(out, max_flows=2, ended_memory=2, close_linger=1.0)
    judged = ("198.51.100.1", 1, "203.0.113.1", 443)
    for p in [pkt("S", 0, tuple_=judged), pkt("R", 1, tuple_=judged)]:
        table.add(p)
    table.sweep(5.0)
    assert out.verdicts[0].outcome is Outcome.RESET
    for i in range(10):  # a flood at the cap: each SYN evicts the one before
        table.add(pkt("S", 6 + i, tuple_=("198.18.0.1", 1000 + i, "203.0.113.1", 80)))
    table.add(pkt("R", 20, tuple_=judged))  # a retransmitted RST of the judged flow
    assert table.stats.late_packets == 1
    assert Exclusion.NO_SYN not in out.reasons


def test_reset_shape_and_acknum_invariants_hold_for_the_table() -> None:
    for case in CASES:
        tags = case[5]
        if T.RESET in tags:
            assert len(tags & set(RESET_SHAPES)) == 1, case[0]
        if T.MULTIPLE_RSTS in tags:
            assert len(tags & set(ACKNUM_TAGS)) == 1, case[0]
