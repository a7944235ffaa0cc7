"""Judge a finished flow: stage, outcome, category and tags (docs/methodology.md).

`classify` is a pure function of a `Flow`'s summary. The enums below are the single source of
every name and description: docs, README tables and metric HELP texts are generated from them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .docenum import DocEnum
from .flows import ESTABLISHED, FIN_SEEN, MAX_PACKETS, Flow


class Stage(DocEnum):
    """How far the connection got, from TCP flags alone, over the set of its packets."""

    POST_SYN = "post_syn", "No packet completed the handshake: only the SYN (or SYNs and RSTs)."
    POST_ACK = "post_ack", "Handshake completed (an ACK arrived), but no packet carried PSH."
    POST_PSH = "post_psh", "Handshake completed and exactly one packet carried PSH (data)."
    LATER = "later", "Handshake completed and two or more packets carried PSH."


class Outcome(DocEnum):
    """How the flow ended (first match wins, in this order)."""

    RESET = "reset", "Some packet had RST set."
    ONGOING = "ongoing", "The 10-packet window filled with no RST: the connection went on."
    CLOSED = "closed", "Some packet had FIN set and none had RST."
    TIMEOUT = "timeout", "No RST, no FIN, under 10 packets, and no packet for the idle timeout."


class Category(DocEnum):
    """The five published buckets. Anomalous = reset, or timeout before stage `later`."""

    POST_SYN = "post_syn", "Anomalous, ended after the SYN, before the handshake completed."
    POST_ACK = "post_ack", "Anomalous, ended after the handshake, before any data."
    POST_PSH = "post_psh", "Anomalous, ended right after the first data packet."
    LATER_IN_FLOW = "later_in_flow", "Reset within the first 10 packets, after more data."
    NO_MATCH = "no_match", "Not anomalous: closed, ongoing, or timed out after data."


class Tag(DocEnum):
    """How the flow terminated. `parent` names the tag a child tag always comes with."""

    extension: bool
    """Not in the published list: our own addition (docs/methodology.md says why)."""
    _parent_value: Optional[str]

    def __init__(self, value: str, doc: str, parent: Optional[str] = None, ext: bool = False):
        self._parent_value = parent
        self.extension = ext

    @property
    def parent(self) -> Optional[Tag]:
        return next((tag for tag in Tag if tag.value == self._parent_value), None)

    TIMEOUT = "timeout", "Outcome timeout: no packet for the idle timeout."
    RESET = "reset", "Outcome reset: some packet had RST set."
    FIN = "fin", "Reset flow that also carried a FIN.", "reset"
    SINGLE_RST = "single_rst", "Exactly one RST (ACK clear) and no RST+ACK.", "reset"
    MULTIPLE_RSTS = "multiple_rsts", "Two or more RSTs (ACK clear) and no RST+ACK.", "reset"
    ACKNUMSAME = "acknumsame", "The RSTs' ack numbers are all equal and non-zero.", "multiple_rsts"
    ACKNUMSAME0 = "acknumsame0", "The RSTs' ack numbers are all zero.", "multiple_rsts"
    ACKNUMDIFF = "acknumdiff", "The RSTs' ack numbers differ and none is zero.", "multiple_rsts"
    ACKNUMDIFF0 = "acknumdiff0", "The RSTs' ack numbers differ, one or more zero.", "multiple_rsts"
    SINGLE_RSTACK = "single_rstack", "Exactly one RST+ACK and no RST.", "reset"
    MULTIPLE_RSTACKS = "multiple_rstacks", "Two or more RST+ACKs and no RST.", "reset"
    RST_AND_RSTACKS = "rst_and_rstacks", "At least one RST and at least one RST+ACK.", "reset"
    ZMAP = "zmap", "IPv4 SYN with IP ID 54321 and window 65535 (ZMap up to 4.0)."
    TTL_MISMATCH = (
        "ttl_mismatch",
        "A RST arrived with a TTL or hop limit that no other packet of the flow had.",
        None,
        True,
    )
    ZMAP_MODERN = (
        "zmap_modern",
        "IPv4 SYN shaped like ZMap 4.1+: window 65535, no DF, ack 0, IP ID not 54321, "
        "and one of ZMap's option templates.",
        None,
        True,
    )


RESET_SHAPES = (
    Tag.SINGLE_RST,
    Tag.MULTIPLE_RSTS,
    Tag.SINGLE_RSTACK,
    Tag.MULTIPLE_RSTACKS,
    Tag.RST_AND_RSTACKS,
)
"""Exactly one of these goes with every reset."""

ACKNUM_TAGS = (Tag.ACKNUMSAME, Tag.ACKNUMSAME0, Tag.ACKNUMDIFF, Tag.ACKNUMDIFF0)
"""Exactly one of these goes with every `multiple_rsts`."""

ZMAP_IP_ID = 54321
ZMAP_WINDOW = 65535
ZMAP_MODERN_OPTIONS = frozenset(
    (
        "M1460,W8,S",  # windows (the default layout)
        "M1460,S,T,W7",  # linux
        "M1460,W6,T,S",  # bsd
        "M1460",  # smallest-probes
    )
)
"""ZMap 4.1+ SYN option templates, written without NOP and EOL padding (see `_unpadded`)."""


class Verdict(NamedTuple):
    stage: Stage
    outcome: Outcome
    category: Category
    tags: tuple[Tag, ...]
    """In the order of the `Tag` enum."""


_new_verdict = tuple.__new__
_STAGE_CATEGORY = {
    Stage.POST_SYN: Category.POST_SYN,
    Stage.POST_ACK: Category.POST_ACK,
    Stage.POST_PSH: Category.POST_PSH,
    Stage.LATER: Category.LATER_IN_FLOW,
}


def stage_of(flow: Flow) -> Stage:
    if not flow.marks & ESTABLISHED:
        return Stage.POST_SYN
    if flow.data_packets == 0:
        return Stage.POST_ACK
    if flow.data_packets == 1:
        return Stage.POST_PSH
    return Stage.LATER


def outcome_of(flow: Flow) -> Outcome:
    """Only called on a flow the table has ended: without RST, FIN or a full window, the only
    way a flow ends is the idle timeout."""
    if flow.resets is not None:
        return Outcome.RESET
    if flow.packets >= MAX_PACKETS:
        return Outcome.ONGOING
    if flow.marks & FIN_SEEN:
        return Outcome.CLOSED
    return Outcome.TIMEOUT


def category_of(stage: Stage, outcome: Outcome) -> Category:
    if outcome is Outcome.RESET or (outcome is Outcome.TIMEOUT and stage is not Stage.LATER):
        return _STAGE_CATEGORY[stage]
    return Category.NO_MATCH


def _unpadded(options: str) -> str:
    return ",".join(t for t in options.split(",") if t not in ("N", "E"))


def _reset_tags(flow: Flow, tags: list[Tag]) -> None:
    resets = flow.resets or ()
    rst_acks = [r.ack for r in resets if not r.with_ack]
    with_ack = len(resets) - len(rst_acks)
    if flow.marks & FIN_SEEN:
        tags.append(Tag.FIN)
    if rst_acks and with_ack:
        tags.append(Tag.RST_AND_RSTACKS)
    elif with_ack:
        tags.append(Tag.SINGLE_RSTACK if with_ack == 1 else Tag.MULTIPLE_RSTACKS)
    elif len(rst_acks) == 1:
        tags.append(Tag.SINGLE_RST)
    else:
        tags.append(Tag.MULTIPLE_RSTS)
        zero = 0 in rst_acks
        if len(set(rst_acks)) == 1:
            tags.append(Tag.ACKNUMSAME0 if zero else Tag.ACKNUMSAME)
        else:
            tags.append(Tag.ACKNUMDIFF0 if zero else Tag.ACKNUMDIFF)


def _zmap_tag(flow: Flow) -> Optional[Tag]:
    syn = flow.syn
    if syn is None or len(flow.key) != 12 or syn.window != ZMAP_WINDOW:
        return None
    if flow.syn_ipid == ZMAP_IP_ID:
        return Tag.ZMAP
    if not syn.df and syn.ack == 0 and _unpadded(syn.options) in ZMAP_MODERN_OPTIONS:
        return Tag.ZMAP_MODERN
    return None


def classify(flow: Flow) -> Verdict:
    """The verdict on a finished flow."""
    stage = stage_of(flow)
    outcome = outcome_of(flow)
    # Tags are appended in the order of the Tag enum (a test checks), so no sort is needed.
    tags: list[Tag] = []
    if outcome is Outcome.RESET:
        tags.append(Tag.RESET)
        _reset_tags(flow, tags)
    elif outcome is Outcome.TIMEOUT:
        tags.append(Tag.TIMEOUT)
    zmap = _zmap_tag(flow)
    if zmap is Tag.ZMAP:
        tags.append(zmap)
    if outcome is Outcome.RESET and any(not flow.has_ttl(r.ttl) for r in flow.resets or ()):
        tags.append(Tag.TTL_MISMATCH)
    if zmap is Tag.ZMAP_MODERN:
        tags.append(zmap)
    return _new_verdict(Verdict, (stage, outcome, category_of(stage, outcome), tuple(tags)))
