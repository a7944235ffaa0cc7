"""The 19 tampering signatures of the SIGCOMM '23 paper behind the published method.

Sundara Raman et al., "Global, Passive Detection of Connection Tampering" (ACM SIGCOMM 2023,
Table 1) write each signature as <packets before -> packets after>. Every judged flow has
exactly one `Signature`, derived from its verdict alone (stage and tags, methodology section
9); `NONE` for every shape the table does not list and for any flow with the `fin` tag. An
empty "after" in the paper (more than 3 s of silence) is the `timeout` outcome here, at
whatever `idle_timeout` is set: `--preset paper` reproduces the paper's 3 s.
"""

from __future__ import annotations

from typing import Optional

from .classify import Category, Stage, Tag, Verdict
from .docenum import DocEnum


class Signature(DocEnum):
    """A flow's tampering signature; each value's description is the paper's notation."""

    SYN_TIMEOUT = "syn_timeout", "SYN -> (nothing)"
    SYN_RST = "syn_rst", "SYN -> RST"
    SYN_RSTACK = "syn_rstack", "SYN -> RST+ACK"
    SYN_RST_RSTACK = "syn_rst_rstack", "SYN -> RST; RST+ACK"
    ACK_TIMEOUT = "ack_timeout", "SYN; ACK -> (nothing)"
    ACK_RST = "ack_rst", "SYN; ACK -> RST"
    ACK_RST_RST = "ack_rst_rst", "SYN; ACK -> RST; RST"
    ACK_RSTACK = "ack_rstack", "SYN; ACK -> RST+ACK"
    ACK_RSTACK_RSTACK = "ack_rstack_rstack", "SYN; ACK -> RST+ACK; RST+ACK"
    PSH_TIMEOUT = "psh_timeout", "PSH+ACK -> (nothing)"
    PSH_RST = "psh_rst", "PSH+ACK -> RST"
    PSH_RSTACK = "psh_rstack", "PSH+ACK -> RST+ACK"
    PSH_RST_RSTACK = "psh_rst_rstack", "PSH+ACK -> RST; RST+ACK"
    PSH_RSTACK_RSTACK = "psh_rstack_rstack", "PSH+ACK -> RST+ACK; RST+ACK"
    PSH_RST_SAME = "psh_rst_same", "PSH+ACK -> RST = RST (same ack numbers)"
    PSH_RST_DIFF = "psh_rst_diff", "PSH+ACK -> RST != RST (ack numbers differ)"
    PSH_RST_RST0 = "psh_rst_rst0", "PSH+ACK -> RST; RST0 (an ack number is zero)"
    DATA_RST = "data_rst", "PSH+ACK; Data -> RST"
    DATA_RSTACK = "data_rstack", "PSH+ACK; Data -> RST+ACK"
    NONE = "none", "No signature: not tampering-shaped, a FIN was seen, or a shape not listed."


_T = Tag
_S = Signature
_RULES: dict[Stage, tuple[tuple[frozenset[Tag], Signature], ...]] = {
    # Per stage: (tags that must all be present, signature), most specific first.
    Stage.POST_SYN: (
        (frozenset({_T.TIMEOUT}), _S.SYN_TIMEOUT),
        (frozenset({_T.SINGLE_RST}), _S.SYN_RST),
        (frozenset({_T.MULTIPLE_RSTS}), _S.SYN_RST),
        (frozenset({_T.SINGLE_RSTACK}), _S.SYN_RSTACK),
        (frozenset({_T.MULTIPLE_RSTACKS}), _S.SYN_RSTACK),
        (frozenset({_T.RST_AND_RSTACKS}), _S.SYN_RST_RSTACK),
    ),
    Stage.POST_ACK: (
        (frozenset({_T.TIMEOUT}), _S.ACK_TIMEOUT),
        (frozenset({_T.SINGLE_RST}), _S.ACK_RST),
        (frozenset({_T.MULTIPLE_RSTS}), _S.ACK_RST_RST),
        (frozenset({_T.SINGLE_RSTACK}), _S.ACK_RSTACK),
        (frozenset({_T.MULTIPLE_RSTACKS}), _S.ACK_RSTACK_RSTACK),
    ),
    Stage.POST_PSH: (
        (frozenset({_T.TIMEOUT}), _S.PSH_TIMEOUT),
        (frozenset({_T.SINGLE_RST}), _S.PSH_RST),
        (frozenset({_T.SINGLE_RSTACK}), _S.PSH_RSTACK),
        (frozenset({_T.RST_AND_RSTACKS}), _S.PSH_RST_RSTACK),
        (frozenset({_T.MULTIPLE_RSTACKS}), _S.PSH_RSTACK_RSTACK),
        (frozenset({_T.MULTIPLE_RSTS, _T.ACKNUMSAME}), _S.PSH_RST_SAME),
        (frozenset({_T.MULTIPLE_RSTS, _T.ACKNUMDIFF}), _S.PSH_RST_DIFF),
        (frozenset({_T.MULTIPLE_RSTS, _T.ACKNUMDIFF0}), _S.PSH_RST_RST0),
    ),
    Stage.LATER: (
        (frozenset({_T.SINGLE_RST}), _S.DATA_RST),
        (frozenset({_T.MULTIPLE_RSTS}), _S.DATA_RST),
        (frozenset({_T.SINGLE_RSTACK}), _S.DATA_RSTACK),
        (frozenset({_T.MULTIPLE_RSTACKS}), _S.DATA_RSTACK),
    ),
}

_BY_VERDICT: dict[Verdict, Signature] = {}
"""Verdicts are a few dozen distinct values: each is derived once (bounded, like the
classifier's own caches)."""


def _derive(verdict: Verdict) -> Signature:
    tags = frozenset(verdict.tags)
    # Only anomalous flows have a signature: `later` counts resets only (its timeout is not
    # anomalous), and a FIN means the client closed the connection itself.
    if verdict.category is Category.NO_MATCH or Tag.FIN in tags:
        return Signature.NONE
    for needed, signature in _RULES[verdict.stage]:
        if needed <= tags:
            return signature
    return Signature.NONE


def signature_of(verdict: Optional[Verdict]) -> Optional[Signature]:
    """The flow's signature; None for an excluded flow (no verdict)."""
    if verdict is None:
        return None
    known = _BY_VERDICT.get(verdict)
    if known is None:
        if len(_BY_VERDICT) >= 4096:
            _BY_VERDICT.clear()
        known = _BY_VERDICT[verdict] = _derive(verdict)
    return known
