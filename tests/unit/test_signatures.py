"""The paper's 19 tampering signatures (methodology section 9): one forged flow each, the
nearest shapes that must be `none`, IPv4 and IPv6, and exactly one signature per flow."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from resetwatch.classify import Category, Stage, Tag, classify
from resetwatch.flows import Flow
from resetwatch.signature import Signature, signature_of

from .factory import CLIENT4, CLIENT6, pkt, run
from .test_properties import flows

S = Signature
A, P = ("A", 1.0, {}), ("PA", 2.0, {})
P2 = ("PA", 2.5, {})


def rst(flags: str, ack: int, ts: float = 3.0) -> tuple[str, float, dict[str, Any]]:
    return (flags, ts, {"ack": ack})


# (id, packets after the SYN at t=0 as (flags, ts, extra), signature)
CASES = [
    ("1", [], S.SYN_TIMEOUT),
    ("2-single", [rst("R", 0)], S.SYN_RST),
    ("2-multiple", [rst("R", 0), rst("R", 0, 3.1)], S.SYN_RST),
    ("3-single", [rst("RA", 5)], S.SYN_RSTACK),
    ("3-multiple", [rst("RA", 5), rst("RA", 5, 3.1)], S.SYN_RSTACK),
    ("4", [rst("R", 0), rst("RA", 5, 3.1)], S.SYN_RST_RSTACK),
    ("5", [A], S.ACK_TIMEOUT),
    ("6", [A, rst("R", 0)], S.ACK_RST),
    ("7", [A, rst("R", 5), rst("R", 6, 3.1)], S.ACK_RST_RST),
    ("8", [A, rst("RA", 5)], S.ACK_RSTACK),
    ("9", [A, rst("RA", 5), rst("RA", 5, 3.1)], S.ACK_RSTACK_RSTACK),
    ("10", [A, P], S.PSH_TIMEOUT),
    ("11", [A, P, rst("R", 9)], S.PSH_RST),
    ("12", [A, P, rst("RA", 9)], S.PSH_RSTACK),
    ("13", [A, P, rst("R", 9), rst("RA", 9, 3.1)], S.PSH_RST_RSTACK),
    ("14", [A, P, rst("RA", 9), rst("RA", 10, 3.1)], S.PSH_RSTACK_RSTACK),
    ("15", [A, P, rst("R", 9), rst("R", 9, 3.1)], S.PSH_RST_SAME),
    ("16", [A, P, rst("R", 9), rst("R", 10, 3.1)], S.PSH_RST_DIFF),
    ("17", [A, P, rst("R", 9), rst("R", 0, 3.1)], S.PSH_RST_RST0),
    ("18-single", [A, P, P2, rst("R", 9)], S.DATA_RST),
    ("18-multiple", [A, P, P2, rst("R", 9), rst("R", 10, 3.1)], S.DATA_RST),
    ("19-single", [A, P, P2, rst("RA", 9)], S.DATA_RSTACK),
    ("19-multiple", [A, P, P2, rst("RA", 9), rst("RA", 9, 3.1)], S.DATA_RSTACK),
    # The nearest shapes that the paper does not list: none.
    ("ack-rst-and-rstack", [A, rst("R", 5), rst("RA", 5, 3.1)], S.NONE),
    ("psh-acknumsame0", [A, P, rst("R", 0), rst("R", 0, 3.1)], S.NONE),
    ("later-rst-and-rstack", [A, P, P2, rst("R", 9), rst("RA", 9, 3.1)], S.NONE),
    ("later-timeout", [A, P, P2], S.NONE),
    ("syn-fin", [("F", 1.0, {})], S.NONE),
    ("ack-closed", [A, ("FA", 2.0, {})], S.NONE),
    ("psh-closed", [A, P, ("FA", 3.0, {})], S.NONE),
    ("fin-then-rst", [A, ("FA", 2.0, {}), rst("RA", 5)], S.NONE),
    ("psh-fin-then-rst", [A, P, ("FA", 2.6, {}), rst("R", 9)], S.NONE),
    ("ongoing", [A, P, *[("A", 3.0 + i, {}) for i in range(8)]], S.NONE),
]  # fmt: skip


@pytest.mark.parametrize("client", [CLIENT4, CLIENT6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("after,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_signature_from_a_forged_flow(client: Any, after: list[Any], want: Signature) -> None:
    packets = [pkt("S", 0.0, tuple_=client)]
    packets += [pkt(flags, ts, tuple_=client, **extra) for flags, ts, extra in after]
    (verdict,) = run(packets).verdicts
    assert signature_of(verdict) is want, verdict


def test_all_nineteen_are_covered() -> None:
    covered = {c[2] for c in CASES}
    assert covered == set(Signature)
    assert len(Signature) == 20  # the paper's 19 and none


def test_every_doc_string_is_the_papers_notation() -> None:
    for signature in Signature:
        if signature is not S.NONE:
            assert "->" in signature.doc, signature


_PREFIX = {Stage.POST_SYN: "syn_", Stage.POST_ACK: "ack_", Stage.POST_PSH: "psh_",
           Stage.LATER: "data_"}  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(flows)
def test_every_judged_flow_has_exactly_one_signature_agreeing_with_it(flow_packets: Any) -> None:
    syn, rest = flow_packets
    flow = Flow(syn)
    for packet in rest:
        flow.absorb(packet)
    verdict = classify(flow)
    signature = signature_of(verdict)
    assert isinstance(signature, Signature)
    if signature is S.NONE:
        return
    assert verdict.category is not Category.NO_MATCH
    assert Tag.FIN not in verdict.tags
    assert signature.value.startswith(_PREFIX[verdict.stage])
    assert (Tag.TIMEOUT in verdict.tags) == signature.value.endswith("_timeout")


def test_an_excluded_flow_has_no_signature() -> None:
    assert signature_of(None) is None


@pytest.mark.parametrize("client", [CLIENT4])
def test_records_metrics_and_api_agree_on_signatures(client: Any) -> None:
    from resetwatch import api
    from resetwatch.event import judged_event
    from resetwatch.history import History
    from resetwatch.metrics import FlowCounts

    history, counts = History(), FlowCounts()
    flows = run([pkt("S", 0.0, tuple_=client), pkt("A", 1.0, tuple_=client),
                 pkt("R", 2.0, ack=0, tuple_=client)]).judged  # fmt: skip
    for flow, verdict in flows:
        history.write(judged_event(flow, verdict))
        counts.write(judged_event(flow, verdict))
    assert counts.signatures()["4", S.ACK_RST] == 1
    import json

    _, _, body = api.signatures(history.snapshot(), {"dateStart": ["1970-01-01T00:00:00Z"],
                                                     "dateEnd": ["1970-01-02T00:00:00Z"]},
                                3600.0, 1.0, 10 * 86400)  # fmt: skip
    rows = {r["signature"]: r for r in json.loads(body)["result"]["signatures"]}
    assert rows["ack_rst"]["count"] == 1 and rows["ack_rst"]["anomalousShare"] == "100"
    assert rows["none"]["anomalousShare"] is None
