"""The flow table: rebuilds sampled connections from their ingress packets.

It owns time (the close-linger and idle clocks), the exclusion rules and capacity, and hands
every finished flow to a callback. It does no I/O and reads no clock: its clock is the newest
timestamp it has been given (by a packet, `sweep` or `drain`), and deadlines hold at every
packet: a packet arriving once its flow's deadline has passed on that clock never joins it
(the flow is judged first), so no verdict depends on how often `sweep` runs.

A `Flow` keeps an order-free summary of its packets instead of the packets themselves (every
update below commutes), so arrival order can never change a verdict, and a flow costs a few
hundred bytes whatever its packets (its RSTs are summarised too, see `Resets`). See
docs/methodology.md for the rules.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Callable, NamedTuple, Optional, Union

from .docenum import DocEnum
from .packet import ACK, CWR, ECE, FIN, PSH, RST, SYN, PacketFields, key_family

MAX_PACKETS = 10
"""The kernel logs at most this many ingress packets of a sampled connection."""


class Exclusion(DocEnum):
    """Why a flow was counted but not classified (a label of `resetwatch_flows_excluded_total`)."""

    NO_SYN = "no_syn", "Packets arrived for a connection whose SYN was never seen."
    MULTIPLE_SYN = "multiple_syn", "The SYN was retransmitted (same sequence number)."
    SUPERSEDED = "superseded", "A new SYN on the same ports replaced a flow that had not closed."
    TRUNCATED = "truncated", "Input ended or the agent stopped before the flow's deadline."
    EVICTED = "evicted", "The flow table was full and this was its least recently active flow."


class SynSignature(NamedTuple):
    """The SYN's header fields that fingerprint the client stack (shared between flows)."""

    ttl: int
    window: int
    df: bool
    ack: int
    options: str
    flags: int
    """The SYN's TCP flag bits (SYN alone, or with ECE and CWR when it asks for ECN, ...)."""
    data: bool
    """The SYN carried payload (TCP Fast Open, or a scanner's request)."""


class Resets(int):
    """A flow's packets with RST set, as the classifier needs them: order-free, and bounded.

    One int (about 75 bytes at most, where a tuple of every RST cost about 100 bytes per RST,
    and a tuple of these fields 150): bits 0-4 `shape`, 5-36 `ack`, 37-69 `ids`, 70 and up
    `ttls`. It unpacks like the tuple `(shape, ack, ids, ttls)`.
    """

    __slots__ = ()

    @property
    def shape(self) -> int:
        """RSTs with ACK clear, counted up to 2 (bits 0-1); RST+ACKs, counted up to 2 (bits
        2-3); `ACKS_DIFFER` (bit 4) when the RSTs with ACK clear carry different ack numbers."""
        return self & 31

    @property
    def ack(self) -> int:
        """The lowest ack number of the RSTs with ACK clear; 0 when there is none."""
        return self >> 5 & 0xFFFFFFFF

    @property
    def ids(self) -> int:
        """The lowest and highest offsets from the SYN's IP ID (see `_ID_OFFSET`) of the
        non-zero IP IDs of the packets with RST set, packed by `_rst_ids_after`; 0: none."""
        return self >> 37 & _IDS_MASK

    @property
    def ttls(self) -> int:
        """Bit t set: some packet with RST set had TTL or hop limit t."""
        return self >> 70

    @property
    def rsts(self) -> int:
        """RSTs with ACK clear: 0, 1 or 2 (two or more)."""
        return self & 3

    @property
    def rstacks(self) -> int:
        """RST+ACKs: 0, 1 or 2 (two or more)."""
        return self >> 2 & 3

    def __iter__(self) -> Iterator[int]:
        return iter((self & 31, self >> 5 & 0xFFFFFFFF, self >> 37 & _IDS_MASK, self >> 70))


ACKS_DIFFER = 16
_IDS_MASK = (1 << 33) - 1
_new_resets = int.__new__


def _resets(shape: int, ack: int, ttls: int, ids: int = 0) -> Resets:
    return _new_resets(Resets, shape | ack << 5 | ids << 37 | ttls << 70)


# Flow.marks bits (one int instead of several slots: a flow is held by the hundred thousand).
ESTABLISHED = 1  # some packet had ACK set and neither SYN nor RST
FIN_SEEN = 2  # some packet had FIN set
SYN_REPEATED = 4  # a second SYN with the first one's sequence number arrived
DATA_ONE = 8  # a data packet (PSH, neither SYN nor RST) arrived
DATA_MORE = 16  # a second data packet arrived (the count saturates: stages need 0, 1, 2+)


def _marks_after(marks: int, flags: int) -> int:
    """A flow's marks after one more packet with these TCP flags (all but SYN_REPEATED)."""
    if not flags & (RST | SYN):
        if flags & ACK:
            marks |= ESTABLISHED
        if flags & PSH:
            marks |= DATA_MORE if marks & DATA_ONE else DATA_ONE
    if flags & FIN:
        marks |= FIN_SEEN
    return marks


# Per-packet tests as lookups by the packet's TCP flags (and marks): an index costs a fraction
# of a bit operation, which CPython does not specialise. Built from the rules above.
_MARKS_AFTER = tuple(
    tuple(_marks_after(marks, flags) for flags in range(256)) for marks in range(32)
)
"""By marks (below 32), then flags."""
_OPENS = tuple(flags & (SYN | ACK) == SYN for flags in range(256))
"""A SYN without ACK: the packet that opens a connection."""
_RESETS = tuple(bool(flags & RST) for flags in range(256))
_CLOSES = tuple(bool(flags & (RST | FIN)) for flags in range(256))
"""RST or FIN: the first one starts a flow's close linger."""

# Shared int objects, so that a flow holding common values costs a pointer, not a new int.
_TTL_BITS = tuple(1 << ttl for ttl in range(256))
_U16_INTS = tuple(range(65536))
# An IP ID's offset from the SYN's, in -32768..32767, by `ip_id - syn_ipid` (a negative
# difference indexes from the end, which is the same offset modulo 2**16: the wrap is free).
_ID_OFFSET = tuple(range(32768)) + tuple(range(-32768, 0))
NO_IDS = -1
"""`Flow.ids` of a flow whose SYN had IP ID 0 (or that has no SYN): no origin, no evidence."""


def _rst_ids_after(rst_ids: int, offset: int) -> int:
    """`Resets.ids` after one more packet with RST set whose IP ID is at `offset` (from the
    SYN's): the lowest and highest such offsets, packed (0: none yet). Commutes: min, max."""
    if not rst_ids:
        return 1 << 32 | (offset + 32768) * 65537
    low = (rst_ids & 0xFFFF) - 32768
    high = (rst_ids >> 16 & 0xFFFF) - 32768
    if offset < low:
        low = offset
    elif offset > high:
        high = offset
    else:
        return rst_ids
    return 1 << 32 | (high + 32768) << 16 | (low + 32768)


def _ids_after(ids: int, offset: int) -> int:
    """`Flow.ids` (not `NO_IDS`) after one more non-zero IP ID at `offset`: min and max, so
    it commutes. The common range, low 0 and high under 2**16, is a shared int."""
    high = ids & 0xFFFF
    below = ids >> 16
    if offset > high:
        high = offset
    elif -offset > below:
        below = -offset
    else:
        return ids
    return _U16_INTS[high] if not below else below << 16 | high


# The summary of a lone RST+ACK (the most common reset) by TTL, shared between flows.
_ONE_RSTACK = tuple(_resets(4, 0, bit) for bit in _TTL_BITS)


def _after_reset(
    resets: Optional[Resets], flags: int, ack: int, ttl: int, offset: int = 0, ip_id: int = 0
) -> Resets:
    """`resets` after one more packet with RST set, whose IP ID (if `ip_id` is not 0) is at
    `offset` from the SYN's. Every update commutes with every other: counts saturate, the ack
    number kept is the lowest, "differ" only ever gets set, the IP IDs kept are min and max."""
    if resets is None:
        if not ip_id:
            if flags & ACK:
                return _ONE_RSTACK[ttl]
            return _resets(1, ack, _TTL_BITS[ttl])
        if flags & ACK:
            return _resets(4, 0, _TTL_BITS[ttl], _rst_ids_after(0, offset))
        return _resets(1, ack, _TTL_BITS[ttl], _rst_ids_after(0, offset))
    shape, low, ttls = resets & 31, resets >> 5 & 0xFFFFFFFF, resets >> 70
    ids = old_ids = resets >> 37 & _IDS_MASK
    if ip_id:
        ids = _rst_ids_after(ids, offset)
    if flags & ACK:
        if shape & 12 != 8:  # fewer than 2 RST+ACKs
            shape += 4
    else:
        count = shape & 3
        if count == 0:
            low = ack
        else:
            if ack != low:
                shape |= ACKS_DIFFER
            if ack < low:
                low = ack
        if count < 2:
            shape += 1
    bit = _TTL_BITS[ttl]
    if ttls & bit and shape == resets & 31 and low == resets >> 5 & 0xFFFFFFFF and ids == old_ids:
        return resets  # nothing new: keep the object
    return _resets(shape, low, ttls | bit, ids)
# SYN signatures seen, shared between flows and numbered for packed SYNs (below). Bounded: a
# flood of random windows must not grow it; beyond it flows keep signatures of their own.
_SIGNATURE_LIST: list[SynSignature] = []
_SIGNATURE_INDEX: dict[tuple[int, int, bool, int, str, int, bool], int] = {}
_SIGNATURES_MAX = 4096


def _signature_index(fields: tuple[int, int, bool, int, str, int, bool]) -> int:
    """The number of a shared signature with these fields; -1 when the list is full."""
    index = _SIGNATURE_INDEX.get(fields)
    if index is None:
        if len(_SIGNATURE_LIST) >= _SIGNATURES_MAX:
            return -1
        index = len(_SIGNATURE_LIST)
        _SIGNATURE_LIST.append(SynSignature(*fields))
        _SIGNATURE_INDEX[fields] = index
    return index


# A flow that has seen only its SYN (nearly every flow of a scan or a SYN flood) is held as
# one int until its second packet: timestamp bits, sequence number, IP ID and signature
# number. About 130 bytes a flow with its key and dict slot, against about 250 as a `Flow`.
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_PLAIN_SYN = ~(ECE | CWR) & 0xFF


def pack_syn(packet: PacketFields) -> Optional[int]:
    """The packed form of a flow that has only this SYN, or None if it needs a `Flow`."""
    ts, _, flags, seq, ack, window, ttl, ip_id, df, payload_len, options = packet
    if flags & _PLAIN_SYN != SYN:
        return None
    index = _signature_index((ttl, window, df, ack, options, flags, payload_len > 0))
    if index < 0:
        return None
    ts_bits: int = _U64.unpack(_F64.pack(ts))[0]
    return ts_bits << 64 | seq << 32 | ip_id << 16 | index


def packed_ts(packed: int) -> float:
    ts: float = _F64.unpack(_U64.pack(packed >> 64))[0]
    return ts


def unpack_syn(key: bytes, packed: int) -> Flow:
    """The `Flow` a packed SYN stands for: the summary `Flow(syn)` gives, built directly
    (a shutdown may unpack a million of them; a property test checks they are equal)."""
    sig = _SIGNATURE_LIST[packed & 0xFFFF]
    flow = Flow.__new__(Flow)
    flow.key = key
    flow.first_ts = flow.last_ts = _F64.unpack(_U64.pack(packed >> 64))[0]
    flow.packets = 1
    ip_id = packed >> 16 & 0xFFFF
    flow.syn_seqid = packed >> 32 & 0xFFFFFFFF | ip_id << 32
    flow.syn = sig
    flow.marks = 0
    flow.ttls = _TTL_BITS[sig.ttl]
    flow.resets = None
    flow.ids = 0 if ip_id else NO_IDS
    return flow


class Flow:
    """What the table knows of one sampled connection: an order-free summary of its packets."""

    __slots__ = (
        "first_ts",
        "ids",
        "key",
        "last_ts",
        "marks",
        "packets",
        "resets",
        "syn",
        "syn_seqid",
        "ttls",
    )

    key: bytes
    first_ts: float
    last_ts: float
    packets: int
    syn_seqid: Optional[int]
    """The SYN's sequence number, and its IP ID above bit 32 (one int object for both: a
    sequence number costs one anyway); None without a SYN. See `syn_seq`, `syn_ipid`."""
    syn: Optional[SynSignature]
    marks: int
    ttls: int
    resets: Optional[Resets]
    ids: int
    """The range of the non-zero IP IDs of the flow's packets without RST, as offsets from
    the SYN's ID (see `_ID_OFFSET`): `-low << 16 | high`, low <= 0 <= high (the SYN's own
    offset is 0). Zero IDs carry no counter (Linux sends ID 0 on some packets with DF set;
    IPv6 has none) and are left out; `NO_IDS` when the SYN's ID is 0 (no origin). Those of
    the packets with RST set are in `Resets.ids`. Typically a small int, shared."""

    def __init__(self, packet: PacketFields) -> None:
        ts, key, flags, seq, ack, window, ttl, ip_id, df, payload_len, options = packet
        self.key = key
        self.first_ts = self.last_ts = ts
        self.resets = None
        if _OPENS[flags]:
            self.syn_seqid = seq | ip_id << 32
            fields = (ttl, _U16_INTS[window], df, ack, options, flags, payload_len > 0)
            index = _SIGNATURE_INDEX.get(fields)
            if index is None:
                index = _signature_index(fields)
            self.syn = _SIGNATURE_LIST[index] if index >= 0 else SynSignature(*fields)
            if not _CLOSES[flags]:
                # What `absorb` makes of a lone SYN, set directly: nearly every flow starts so.
                self.packets = 1
                self.marks = 0
                self.ttls = _TTL_BITS[ttl]
                self.ids = 0 if ip_id else NO_IDS
                return
            self.ids = 0 if ip_id else NO_IDS
        else:
            self.syn_seqid = None
            self.syn = None
            self.ids = NO_IDS
        self.packets = 0
        self.marks = 0
        self.ttls = 0
        self.absorb(packet)

    def absorb(self, packet: PacketFields) -> None:
        """Add one packet to the summary. Every update commutes with every other."""
        # One unpack instead of many attribute reads: this runs for every packet.
        ts, _, flags, _, ack, _, ttl, ip_id, _, _, _ = packet
        self.packets += 1
        if ts > self.last_ts:
            self.last_ts = ts
        elif ts < self.first_ts:
            self.first_ts = ts
        ids = self.ids
        if _RESETS[flags]:
            if ip_id and ids >= 0:
                offset = _ID_OFFSET[ip_id - ((self.syn_seqid or 0) >> 32)]
                self.resets = _after_reset(self.resets, flags, ack, ttl, offset, ip_id)
            else:
                self.resets = _after_reset(self.resets, flags, ack, ttl)
        else:
            bit = _TTL_BITS[ttl]
            ttls = self.ttls
            if not ttls & bit:
                self.ttls = ttls | bit if ttls else bit
            if ip_id and ids >= 0:
                self.ids = _ids_after(ids, _ID_OFFSET[ip_id - ((self.syn_seqid or 0) >> 32)])
        self.marks = _MARKS_AFTER[self.marks][flags]

    @property
    def family(self) -> int:
        return key_family(self.key)

    @property
    def syn_seq(self) -> Optional[int]:
        """The SYN's sequence number; None without a SYN."""
        seqid = self.syn_seqid
        return None if seqid is None else seqid & 0xFFFFFFFF

    @property
    def syn_ipid(self) -> int:
        """The SYN's IP ID; 0 without a SYN (and for IPv6)."""
        return (self.syn_seqid or 0) >> 32

    @property
    def data_packets(self) -> int:
        """Packets with PSH and neither SYN nor RST, counted up to 2 (all a stage needs)."""
        marks = self.marks
        return 2 if marks & DATA_MORE else 1 if marks & DATA_ONE else 0

    @property
    def closing(self) -> bool:
        """A RST or FIN arrived: the flow waits out the close linger, then is judged."""
        return self.resets is not None or bool(self.marks & FIN_SEEN)

    def has_ttl(self, ttl: int) -> bool:
        """Whether some non-RST packet of the flow carried this TTL or hop limit."""
        return bool(self.ttls & _TTL_BITS[ttl])


class _CloseQueue:
    """Closing flows in order of their close-linger deadline.

    A deadline is the table's clock at the flow's first RST or FIN plus the linger: the clock
    never goes back, so the queue stays in deadline order and only its front is ever due.
    Deadlines are kept as raw doubles (8 bytes each, not a float object in a tuple), a
    closing flow being held by the hundred thousand in a flood of resets.
    """

    __slots__ = ("_flows", "_head", "_times")

    def __init__(self) -> None:
        self._flows: deque[Flow] = deque()
        self._times = array("d")
        self._head = 0

    def __len__(self) -> int:
        return len(self._flows)

    def push(self, deadline: float, flow: Flow) -> None:
        self._flows.append(flow)
        self._times.append(deadline)

    def front(self) -> float:
        """The first deadline; infinity when the queue is empty."""
        return self._times[self._head] if self._flows else math.inf

    def pop(self) -> Flow:
        flow = self._flows.popleft()
        self._head = head = self._head + 1
        if head >= 4096 and head * 2 >= len(self._times):  # drop the consumed half at once
            del self._times[:head]
            self._head = 0
        return flow

    def clear(self) -> None:
        self._flows.clear()
        self._times = array("d")
        self._head = 0


def _as_flow(key: bytes, held: Union[Flow, int]) -> Flow:
    return unpack_syn(key, held) if isinstance(held, int) else held


EndCallback = Callable[[Flow, Optional[Exclusion]], None]
"""Receives each finished flow: with None when it is to be classified, else why it is not."""


class TableStats:
    """Counters the table keeps about itself (exported as metrics)."""

    __slots__ = ("late_packets", "started")

    def __init__(self) -> None:
        self.started = 0
        self.late_packets = 0
        """Packets of a flow already judged (beyond the window, or after its linger)."""


class FlowTable:
    """Sampled connections in flight, keyed by (addresses, ports).

    `add` feeds one packet; `sweep(now)` judges flows whose deadline has passed, doing at most
    `budget` flows of work per call; `drain(now)` ends everything (end of input or shutdown).
    Sweeps only free memory: a flow past its deadline is judged, at the latest, when the
    next packet arrives (of any flow, for the close linger; of its own, for the idle timeout),
    with the verdict a sweep would have given it.
    """

    def __init__(
        self,
        on_end: EndCallback,
        *,
        idle_timeout: float = 300.0,
        close_linger: float = 10.0,
        max_flows: int = 1_000_000,
        ended_memory: int = 65536,
        pack_above: int = 65536,
    ) -> None:
        if close_linger < 0 or idle_timeout <= 0 or close_linger >= idle_timeout:
            raise ValueError("need 0 <= close_linger < idle_timeout")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self._on_end = on_end
        self.idle_timeout = idle_timeout
        self.close_linger = close_linger
        self.max_flows = max_flows
        self.clock = -math.inf
        """The newest timestamp the table has been given: every deadline is held against it."""
        # Ordered by last activity: a flow is moved to the end on every packet, so the
        # least recently active flow is always first (idle sweeps and eviction read the front).
        self._flows: dict[bytes, Union[Flow, int]] = {}
        """A `Flow`, or an int from `pack_syn` while only the SYN has arrived."""
        self._closing = _CloseQueue()
        # Keys of flows recently ended (not evicted: see `_evict`), so that their stragglers
        # are not taken for connections whose SYN was missed (no_syn). Bounded; oldest
        # forgotten first.
        self._ended: OrderedDict[bytes, None] = OrderedDict()
        self._ended_memory = ended_memory
        self.pack_above = pack_above
        """Hold SYN-only flows packed (see `pack_syn`) once the table holds this many: packing
        halves their memory but costs a microsecond per flow, worth it only in a big table."""
        self.stats = TableStats()

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, key: bytes) -> Optional[Flow]:
        """The flow of this key (for a packed SYN, a `Flow` built for the asking)."""
        flow = self._flows.get(key)
        return unpack_syn(key, flow) if isinstance(flow, int) else flow

    def add(self, packet: PacketFields) -> None:
        """Feed one ingress packet of a sampled connection."""
        self.add_many((packet,))

    def add_many(self, packets: Iterable[PacketFields], newest: float = -math.inf) -> float:
        """Feed packets in order, exactly as `add` would one by one.

        `newest` moves the clock first (replay passes the time of packets it does not feed,
        such as egress ones). Returns the clock after the packets (replay's clock).
        """
        # The per-packet hot path, a loop here rather than a call per packet. `Flow.absorb`
        # is inlined (the call would cost as much as the update): keep the two in step.
        flows = self._flows
        clock = self.clock if self.clock > newest else newest
        idle = self.idle_timeout
        closing = self._closing
        next_close = closing.front()
        try:
            for packet in packets:
                ts, key, flags, seq, ack, _, ttl, ip_id, _, _, _ = packet
                if ts > clock:
                    clock = ts
                if clock >= next_close:  # close lingers ended: judge before going on
                    self.clock = clock
                    self._close_due(clock)
                    next_close = closing.front()
                flow = flows.pop(key, None)
                if flow is not None:
                    if isinstance(flow, int):
                        flow = unpack_syn(key, flow)
                    if flow.last_ts <= clock - idle:
                        # Idle past the timeout: judged as a sweep would have, before this
                        # packet, which is then a straggler or starts a new flow.
                        self._end(flow, None)
                        flow = None
                if flow is None:
                    if _OPENS[flags]:
                        self._start(packet, clock)
                        next_close = closing.front()
                    else:
                        self._stray(packet)
                    continue
                marks = flow.marks
                resets = flow.resets
                if _OPENS[flags]:
                    if seq != flow.syn_seqid & 0xFFFFFFFF:  # type: ignore[operator]
                        # Port reuse: a new connection on the same ports.
                        superseded = resets is None and not marks & FIN_SEEN
                        self._end(flow, Exclusion.SUPERSEDED if superseded else None)
                        self._start(packet, clock)
                        next_close = closing.front()
                        continue
                    marks |= SYN_REPEATED
                # Whether this packet starts the close linger: the flow's first RST or FIN.
                starts_closing = _CLOSES[flags] and resets is None and not marks & FIN_SEEN
                count = flow.packets + 1
                flow.packets = count
                if ts > flow.last_ts:
                    flow.last_ts = ts
                elif ts < flow.first_ts:
                    flow.first_ts = ts
                # A flow in the table has its SYN: `syn_seqid` is an int.
                if _RESETS[flags]:
                    flow.resets = _after_reset(
                        resets, flags, ack, ttl,
                        _ID_OFFSET[ip_id - (flow.syn_seqid >> 32)],  # type: ignore[operator]
                        ip_id if flow.ids >= 0 else 0,
                    )  # fmt: skip
                else:
                    bit = _TTL_BITS[ttl]
                    ttls = flow.ttls
                    if not ttls & bit:
                        flow.ttls = ttls | bit if ttls else bit
                    if ip_id:
                        ids = flow.ids
                        if ids >= 0:
                            syn_id = flow.syn_seqid >> 32  # type: ignore[operator]
                            offset = _ID_OFFSET[ip_id - syn_id]
                            if offset > ids:  # the common case: a new high, low still 0
                                flow.ids = _U16_INTS[offset]
                            elif offset > ids & 0xFFFF or -offset > ids >> 16:
                                flow.ids = _ids_after(ids, offset)
                flow.marks = _MARKS_AFTER[marks][flags]
                if count >= MAX_PACKETS:
                    self._end(flow, None)
                    continue
                # Re-insert (the most recently active last) under the flow's own key object:
                # the packet's equal copy would cost a second bytes object per flow while held.
                flows[flow.key] = flow
                if starts_closing:
                    closing.push(clock + self.close_linger, flow)
                    if next_close == math.inf:
                        next_close = closing.front()
        finally:
            self.clock = clock
        return clock

    def sweep(self, now: float, budget: int = 1024) -> int:
        """Judge flows whose close linger or idle timeout has passed by `now`.

        Does at most `budget` flows of work, so a caller can interleave sweeps with reading.
        Returns how many flows it ended.
        """
        if now > self.clock:
            self.clock = now
        done = self._close_due(now, budget)
        flows = self._flows
        if done < budget and flows:
            horizon = now - self.idle_timeout
            expired: list[tuple[bytes, Union[Flow, int]]] = []
            for key, held in flows.items():
                last = packed_ts(held) if isinstance(held, int) else held.last_ts
                if last > horizon or done + len(expired) >= budget:
                    break
                expired.append((key, held))
            for key, held in expired:
                del flows[key]
                self._end(_as_flow(key, held), None)
            done += len(expired)
        return done

    def drain(self, now: float) -> None:
        """End every flow: judge those past a deadline, exclude the rest as truncated."""
        while self.sweep(now, budget=1 << 30):
            pass
        # Straight to the callback: no flow comes after these, so nothing to remember.
        flows = self._flows
        on_end = self._on_end
        while flows:
            key, held = flows.popitem()
            on_end(_as_flow(key, held), Exclusion.TRUNCATED)
        self._closing.clear()

    def _close_due(self, now: float, budget: int = 1 << 62) -> int:
        """Judge the closing flows whose linger has ended by `now`; how many were ended."""
        done = 0
        closing = self._closing
        flows = self._flows
        while done < budget and closing.front() <= now:
            flow = closing.pop()
            if flows.get(flow.key) is flow:  # else it ended already (10th packet, reuse)
                del flows[flow.key]
                self._end(flow, None)
                done += 1
        return done

    def _start(self, packet: PacketFields, clock: float) -> None:
        flows = self._flows
        if len(flows) >= self.max_flows:
            # Flows past a deadline first: judged, not evicted, whenever sweeps last ran.
            self.sweep(clock, budget=1 << 62)
            if len(flows) >= self.max_flows:
                self._evict()
        key = packet[1]
        self._ended.pop(key, None)
        self.stats.started += 1
        if len(flows) >= self.pack_above:
            packed = pack_syn(packet)
            if packed is not None:
                flows[key] = packed
                return
        flow = Flow(packet)
        flows[key] = flow
        if flow.closing:
            self._closing.push(clock + self.close_linger, flow)

    def _evict(self) -> None:
        """Make room by ending the least recently active 1% of flows as evicted.

        In batches because finding the front of the dict costs a scan over the entries
        deleted since its last resize; one scan per batch keeps a SYN flood cheap.
        """
        flows = self._flows
        victims = list(islice(flows.items(), max(1, self.max_flows // 100)))
        for key, _ in victims:
            del flows[key]
        # Straight to the callback, not through `_end`: evicted keys are not remembered as
        # ended. Where evictions happen at scale (a flood at the cap, one per packet) they
        # would push the keys of flows really judged out of that bounded memory, and cost a
        # third of the eviction. A straggler of an evicted flow counts as `no_syn` instead.
        on_end = self._on_end
        evicted = Exclusion.EVICTED
        for key, held in victims:
            on_end(unpack_syn(key, held) if isinstance(held, int) else held, evicted)

    def _stray(self, packet: PacketFields) -> None:
        """A packet with no flow and no SYN."""
        key = packet[1]
        if key in self._ended:
            self.stats.late_packets += 1
            return
        self._remember_ended(key)
        self._on_end(Flow(packet), Exclusion.NO_SYN)

    def _end(self, flow: Flow, excluded: Optional[Exclusion]) -> None:
        if flow.marks & SYN_REPEATED and excluded is None:
            excluded = Exclusion.MULTIPLE_SYN
        self._remember_ended(flow.key)
        self._on_end(flow, excluded)

    def _remember_ended(self, key: bytes) -> None:
        ended = self._ended
        ended[key] = None
        if len(ended) > self._ended_memory:
            ended.popitem(last=False)
