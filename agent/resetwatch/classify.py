"""Judge a finished flow: stage, outcome, category and tags (docs/methodology.md).

`classify` is a pure function of a `Flow`'s summary. The enums below are the single source of
every name and description: docs, README tables and metric HELP texts are generated from them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .docenum import DocEnum
from .flows import (
    ACKS_DIFFER,
    DATA_MORE,
    DATA_ONE,
    ESTABLISHED,
    FIN_SEEN,
    MAX_PACKETS,
    Flow,
    Resets,
)
from .packet import SYN


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
        "IPv4 SYN shaped like ZMap 4.1+: window 65535, no DF, flags SYN alone, ack 0, IP ID "
        "not 54321, one of ZMap's option templates, and a timestamps option (if any) whose "
        "TSval is the Unix time in seconds and TSecr 0.",
        None,
        True,
    )
    IPID_JUMP = (
        "ipid_jump",
        "An IPv4 RST's IP ID is more than 4096 (modulo 2^16) from every non-zero IP ID of the "
        "flow's other packets; zero IDs never count.",
        None,
        True,
    )
    SCANNER_TTL = "scanner_ttl", "The SYN's TTL or hop limit is 200 or more.", None, True
    NO_OPTIONS = "no_options", "The SYN carries no TCP options.", None, True
    SYN_DATA = "syn_data", "The SYN carries payload (TCP Fast Open, or a request).", None, True


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
        "M1460,S,Tu,W7",  # linux
        "M1460,W6,Tu,S",  # bsd
        "M1460",  # smallest-probes
    )
)
"""ZMap 4.1+ SYN option templates, written without NOP and EOL padding (see `_unpadded`).
`Tu`: ZMap's TSval is the Unix time in seconds at scan start, TSecr 0 (see
`packet.options_fingerprint`); a real stack's random-offset TSval gives `T`."""

IPID_JUMP_DISTANCE = 4096
"""An RST's IP ID further than this from every other packet's of its flow is `ipid_jump`:
well above what a per-host counter (Windows) advances between two packets of a connection,
and 1/16 of the ID space, so a random injected ID jumps 7 times in 8."""
SCANNER_TTL = 200
"""A SYN with a TTL or hop limit of at least this is `scanner_ttl` (raw-socket tools default
to 255; OS stacks to 64 or 128, less the hops)."""


class Verdict(NamedTuple):
    stage: Stage
    outcome: Outcome
    category: Category
    tags: tuple[Tag, ...]
    """In the order of the `Tag` enum."""


_new_verdict = tuple.__new__

# Members as module constants: `Stage.POST_SYN` is a lookup through the enum's metaclass that
# costs more than the test it serves, and `classify` runs once per flow.
_POST_SYN, _POST_ACK, _POST_PSH, _LATER = (
    Stage.POST_SYN,
    Stage.POST_ACK,
    Stage.POST_PSH,
    Stage.LATER,
)
_RESET, _ONGOING, _CLOSED, _TIMEOUT = (
    Outcome.RESET,
    Outcome.ONGOING,
    Outcome.CLOSED,
    Outcome.TIMEOUT,
)
_NO_MATCH = Category.NO_MATCH
_STAGE_CATEGORY = {
    _POST_SYN: Category.POST_SYN,
    _POST_ACK: Category.POST_ACK,
    _POST_PSH: Category.POST_PSH,
    _LATER: Category.LATER_IN_FLOW,
}
_TAG_TIMEOUT, _TAG_RESET, _TAG_FIN = Tag.TIMEOUT, Tag.RESET, Tag.FIN
_TAG_ZMAP, _TAG_ZMAP_MODERN, _TAG_TTL_MISMATCH = Tag.ZMAP, Tag.ZMAP_MODERN, Tag.TTL_MISMATCH
_TAG_IPID_JUMP, _TAG_SCANNER_TTL = Tag.IPID_JUMP, Tag.SCANNER_TTL
_TAG_NO_OPTIONS, _TAG_SYN_DATA = Tag.NO_OPTIONS, Tag.SYN_DATA
_NO_TAGS: tuple[Tag, ...] = ()
_ONLY_TIMEOUT = (_TAG_TIMEOUT,)


def _unpadded(options: str) -> str:
    return ",".join(t for t in options.split(",") if t not in ("N", "E"))


_MODERN_TEMPLATE: dict[str, bool] = {}
"""Whether an options fingerprint is one of ZMap's templates, by fingerprint (they are few and
interned, see `options_fingerprint`; cleared if a flood of odd options fills it)."""


def _is_modern_template(options: str) -> bool:
    known = _MODERN_TEMPLATE.get(options)
    if known is None:
        if len(_MODERN_TEMPLATE) >= 4096:
            _MODERN_TEMPLATE.clear()
        known = _MODERN_TEMPLATE[options] = _unpadded(options) in ZMAP_MODERN_OPTIONS
    return known


def _reset_tags(flow: Flow, resets: Resets, tags: list[Tag]) -> None:
    # Counts saturate at 2 (all the shapes need); `ack` is the lowest ack number of the RSTs
    # with ACK clear, so one is zero exactly when it is (see `Resets`).
    shape = resets.shape
    rsts, with_ack = shape & 3, shape >> 2 & 3
    if flow.marks & FIN_SEEN:
        tags.append(_TAG_FIN)
    if rsts and with_ack:
        tags.append(Tag.RST_AND_RSTACKS)
    elif with_ack:
        tags.append(Tag.SINGLE_RSTACK if with_ack == 1 else Tag.MULTIPLE_RSTACKS)
    elif rsts == 1:
        tags.append(Tag.SINGLE_RST)
    else:
        tags.append(Tag.MULTIPLE_RSTS)
        zero = resets.ack == 0
        if not shape & ACKS_DIFFER:
            tags.append(Tag.ACKNUMSAME0 if zero else Tag.ACKNUMSAME)
        else:
            tags.append(Tag.ACKNUMDIFF0 if zero else Tag.ACKNUMDIFF)


def _zmap_tag(flow: Flow) -> Optional[Tag]:
    syn = flow.syn
    if syn is None or len(flow.key) != 12 or syn.window != ZMAP_WINDOW:
        return None
    if flow.syn_ipid == ZMAP_IP_ID:
        return _TAG_ZMAP
    if not syn.df and syn.flags == SYN and syn.ack == 0 and _is_modern_template(syn.options):
        return _TAG_ZMAP_MODERN
    return None


def _ipid_jump(flow: Flow, resets: Resets) -> bool:
    """Some packet with RST set has a non-zero IP ID more than `IPID_JUMP_DISTANCE` from the
    range of the flow's other non-zero IDs. Offsets are from the SYN's ID (see `Flow.ids`);
    a range reaching round to the far side of the SYN's ID is no evidence (the test would
    wrap), nor is a flow whose SYN has IP ID 0."""
    rst_ids = resets.ids
    ids = flow.ids
    if not rst_ids or ids < 0:
        return False
    low = -(ids >> 16) - IPID_JUMP_DISTANCE
    high = (ids & 0xFFFF) + IPID_JUMP_DISTANCE
    if low < -32768 or high > 32767:
        return False
    return (rst_ids & 0xFFFF) - 32768 < low or (rst_ids >> 16 & 0xFFFF) - 32768 > high


def classify(flow: Flow) -> Verdict:
    """The verdict on a finished flow."""
    marks = flow.marks
    # Stage: from the flags over the set of packets (data packets are counted up to 2).
    if not marks & ESTABLISHED:
        stage = _POST_SYN
    elif marks & DATA_MORE:
        stage = _LATER
    elif marks & DATA_ONE:
        stage = _POST_PSH
    else:
        stage = _POST_ACK
    # Outcome, first match wins. The table ends a flow only after a RST or FIN, a full window,
    # or the idle timeout: without the first three, it is the timeout.
    resets = flow.resets
    if resets is not None:
        outcome = _RESET
    elif flow.packets >= MAX_PACKETS:
        outcome = _ONGOING
    elif marks & FIN_SEEN:
        outcome = _CLOSED
    else:
        outcome = _TIMEOUT
    # Anomalous: a reset, or a timeout before stage `later`.
    if outcome is _RESET or (outcome is _TIMEOUT and stage is not _LATER):
        category = _STAGE_CATEGORY[stage]
    else:
        category = _NO_MATCH
    syn = flow.syn
    zmap = None
    scanner = no_options = data = False
    if syn is not None:
        if syn.window == ZMAP_WINDOW:  # the cheap test first: rarely true
            zmap = _zmap_tag(flow)
        scanner = syn.ttl >= SCANNER_TTL
        no_options = not syn.options
        data = syn.data
    if resets is None and zmap is None and not (scanner or no_options or data):
        # Most flows: no tag, or only `timeout`.
        tags = _ONLY_TIMEOUT if outcome is _TIMEOUT else _NO_TAGS
        return _new_verdict(Verdict, (stage, outcome, category, tags))
    # Tags are appended in the order of the Tag enum (a test checks), so no sort is needed.
    tag_list: list[Tag] = []
    if resets is not None:
        tag_list.append(_TAG_RESET)
        _reset_tags(flow, resets, tag_list)
    elif outcome is _TIMEOUT:
        tag_list.append(_TAG_TIMEOUT)
    if zmap is _TAG_ZMAP:
        tag_list.append(zmap)
    # Some RST's TTL that no non-RST packet had (bit t: TTL t, see `Flow.has_ttl`).
    if resets is not None and resets.ttls & ~flow.ttls:
        tag_list.append(_TAG_TTL_MISMATCH)
    if zmap is _TAG_ZMAP_MODERN:
        tag_list.append(zmap)
    if resets is not None and resets >> 37 & 1 << 32 and _ipid_jump(flow, resets):
        tag_list.append(_TAG_IPID_JUMP)
    if scanner:
        tag_list.append(_TAG_SCANNER_TTL)
    if no_options:
        tag_list.append(_TAG_NO_OPTIONS)
    if data:
        tag_list.append(_TAG_SYN_DATA)
    return _new_verdict(Verdict, (stage, outcome, category, tuple(tag_list)))
