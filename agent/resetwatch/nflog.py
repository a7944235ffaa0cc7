"""Read packets logged by the kernel's NFLOG target, in pure Python (stdlib `socket`, `struct`).

The kernel's `nfnetlink_log` module gathers the packets one NFLOG group logs into batches (one
netlink datagram holds up to `qthresh` packet messages) and sends them to the single netlink
socket that bound the group. This module binds the group, configures it, and turns each batch
into `(timestamp, IP packet bytes)` pairs or straight into lists of parsed packet fields.

Why it is shaped like this:

- Speed: the agent must keep up with 100,000+ logged packets/s on a small machine. One
  `recv_into` into a preallocated buffer returns a whole batch; the netlink headers are walked
  with precompiled `struct.unpack_from` calls without slicing, and each captured IP packet is
  parsed where it lies (`parse_fields` takes its span, so it cannot read past the captured end
  into the next message). A batch goes to the flow table as one list, as in replay.
- Loss must be visible, never silent: the receive buffer is large and grows on ENOBUFS up to a
  maximum, ENOBUFS reporting stays on, and per-group sequence numbers (`NFULA_SEQ`) are
  requested so every missing packet is counted, also the ones the kernel dropped while the
  socket was not congested enough to report ENOBUFS again.
- Headers only: the copy range is set in the same message that binds the group, so not even the
  first packet is copied whole (a new group copies up to 64 KiB per packet by default).
- `NflogParser` holds all the byte handling and no socket, so it is tested on hand-built bytes.

Constants carry the kernel's names; each block says which UAPI header defines them.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Callable, NamedTuple, Optional, Union

from .packet import FieldsResult, parse_fields

# <linux/netlink.h>
NETLINK_NETFILTER = 12
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
NETLINK_NO_ENOBUFS = 5
# <linux/socket.h> (kernel-internal, but a fixed ABI value; Python's socket module lacks it)
SOL_NETLINK = 270
# <asm-generic/socket.h>
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
# <linux/sock_diag.h>: index of the drop counter in the SO_MEMINFO array
SK_MEMINFO_DROPS = 8

# <linux/capability.h>
CAP_NET_ADMIN = 12

# <linux/netfilter/nfnetlink.h>
NFNL_SUBSYS_ULOG = 4
NFNETLINK_V0 = 0

# <linux/netfilter/nfnetlink_log.h>: message types
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
# packet attributes (enum nfulnl_attr_type)
NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_IFINDEX_PHYSINDEV = 6
NFULA_IFINDEX_PHYSOUTDEV = 7
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_UID = 11
NFULA_SEQ = 12
NFULA_SEQ_GLOBAL = 13
NFULA_GID = 14
NFULA_HWTYPE = 15
NFULA_HWHEADER = 16
NFULA_HWLEN = 17
NFULA_CT = 18
NFULA_CT_INFO = 19
# config attributes (enum nfulnl_attr_config)
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6
# commands (enum nfulnl_msg_config_cmds)
NFULNL_CFG_CMD_NONE = 0
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4
# copy modes
NFULNL_COPY_NONE = 0x00
NFULNL_COPY_META = 0x01
NFULNL_COPY_PACKET = 0x02
# config flags (be16)
NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
NFULNL_CFG_F_CONNTRACK = 0x0004

# Message types as they appear in nlmsg_type: subsystem in the high byte.
NFULNL_PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
NFULNL_CONFIG_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG

# Limits the kernel enforces (net/netfilter/nfnetlink_log.c). It silently ignores an
# NLBUFSIZ outside its range and treats copy range 0 as "whole packet", so both are checked here.
NFULNL_COPY_RANGE_MAX = 0xFFFF - 4
NLBUFSIZ_MIN = 8192  # the kernel's minimum is NLMSG_GOODSIZE (under 8 KiB with any page size)
NLBUFSIZ_MAX = 131072

NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4
NLA_HDRLEN = 4
_ATTRS = NLMSG_HDRLEN + NFGENMSG_LEN  # attributes start here in a packet message

_NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
_NLMSGHEAD = struct.Struct("=IH")  # nlmsg_len, nlmsg_type
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type (host byte order)
_U16 = struct.Struct("=H")
_NFGENMSG = struct.Struct("!BBH")  # nfgen_family, version, res_id (big endian)
_NLMSGERR = struct.Struct("=i")  # struct nlmsgerr.error (negative errno, 0 for an ACK)
_BE16 = struct.Struct("!H")
_BE32 = struct.Struct("!I")
_MODE = struct.Struct("!IBx")  # struct nfulnl_msg_config_mode (packed): copy_range, copy_mode

_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31

DEFAULT_COPY_RANGE = 128
"""Most bytes of a packet the group copies (an upper bound: each rule's own NFLOG size, the
agent's headers-only sizes, applies below it). The agent passes its largest rule size."""
DEFAULT_QTHRESH = 64
"""Packets per batch: one datagram, one wake-up, one system call per 64 packets under load."""
DEFAULT_TIMEOUT_CS = 10
"""Flush a partial batch after 0.1 s (the kernel default is 1 s), bounding added latency."""
DEFAULT_NLBUFSIZ = 32768 - 512
"""Batch buffer the kernel allocates per batch: room for more than twice a full batch of
`DEFAULT_QTHRESH` headers-only messages (about 200 bytes each; the kernel's room check
reserves about 320), and within an order-3 allocation (32 KiB) once the kernel adds its skb
bookkeeping: the largest size the page allocator still treats as cheap in atomic context. A
failed allocation makes the kernel fall back to one packet per batch."""
DEFAULT_RCVBUF = 8 << 20
"""Initial socket receive buffer: about a second of bursts at 100k packets/s."""
DEFAULT_RCVBUF_MAX = 64 << 20
"""The receive buffer doubles on each ENOBUFS up to this size, as ulogd2 does."""
DEFAULT_RECV_SIZE = 1 << 20
"""Size of the preallocated receive buffer (a batch is at most 128 KiB; room to spare)."""
DEFAULT_MAX_BATCHES = 256
"""Most datagrams drained per `read`/`packets` call, so the caller's loop regains control."""

_Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class NflogStats:
    """A source's counters at one moment. Each exported field is named as its metric
    (`resetwatch_nflog_<field>`, `_total` for counters; `lost_<reason>` is
    `resetwatch_nflog_lost_total{reason}`), so no layer renames them."""

    packets: int = 0
    """Packets received (resetwatch_nflog_packets_total)."""
    lost_seq_gap: int = 0
    """Packets missing between sequence numbers (resetwatch_nflog_lost_total{seq_gap})."""
    lost_bad_message: int = 0
    """Datagrams cut short or damaged (resetwatch_nflog_lost_total{bad_message})."""
    overruns: int = 0
    """recv() said ENOBUFS (resetwatch_nflog_overruns_total)."""
    socket_drops: int = 0
    """Datagrams dropped at the socket, SO_MEMINFO; 0 when unknown
    (resetwatch_nflog_socket_drops_total)."""
    receive_buffer_bytes: int = 0
    """The socket's receive buffer now (resetwatch_nflog_receive_buffer_bytes)."""
    datagrams: int = 0
    """Not exported: datagrams received (one kernel batch each)."""
    buffer_grows: int = 0
    """Not exported: times the receive buffer was doubled after ENOBUFS."""
    seq_resets: int = 0
    """Not exported: sequence restarts (another reader rebound the group)."""
    other_messages: int = 0
    """Not exported: netlink messages that were not packets."""
    error_messages: int = 0
    """Not exported: netlink error messages seen between packets."""
Captured = tuple[float, bytes]
"""(timestamp on the source's clock, captured IP packet bytes)."""


class NflogError(Exception):
    """The kernel refused to set up NFLOG (one line: the step, the errno name and a hint)."""

    def __init__(self, step: str, err: int, hint: str = "") -> None:
        self.step = step
        self.errno = err
        name = errno.errorcode.get(err, str(err))
        text = f"NFLOG {step}: {name} ({os.strerror(err)})"
        super().__init__(f"{text}: {hint}" if hint else text)


class _Layout(NamedTuple):
    """The attribute headers of one kind of packet message, checked with one `unpack_from`.

    Consecutive messages of a batch nearly always carry the same attributes with the same
    lengths (only the payload length varies, and the payload attribute comes last). Comparing
    all attribute headers at once against a learned layout gives exactly what the
    attribute-by-attribute walk would, at a fraction of the cost in Python.
    """

    unpack: Callable[[_Buffer, int], tuple[int, ...]]
    """Unpacks (nla_len, nla_type) of every attribute before the payload, then its nla_type."""
    expected: tuple[int, ...]
    payload: int
    """Offset of the payload attribute header from the start of the message."""
    seq: int
    """Offset of the NFULA_SEQ value from the start of the message, or -1."""


class NflogParser:
    """Walks nfnetlink_log datagrams and counts what it sees. No socket, no clock.

    Kept apart from `NflogSource` so the byte handling is tested on hand-made messages.
    Counters only ever grow; a metrics collector reads them at scrape time.
    """

    MAX_LAYOUTS = 4
    """Layouts remembered (IPv4/IPv6 share one; a mark, a second rule prefix or local sockets'
    UID/GID add more)."""

    def __init__(self) -> None:
        self.packets = 0
        """Packet messages seen (with or without payload)."""
        self.seq_gaps = 0
        """Packets missing according to NFULA_SEQ: logged by the kernel, never received."""
        self.seq_resets = 0
        """NFULA_SEQ went backwards (the group was re-created): the baseline restarts."""
        self.truncated_messages = 0
        """A message or attribute length that does not fit its datagram: the rest is skipped."""
        self.other_messages = 0
        """Netlink messages of a type this reader does not use (ignored)."""
        self.error_messages = 0
        """NLMSG_ERROR messages carrying an error (not an ACK)."""
        self.acks = 0
        """NLMSG_ERROR messages with error 0 (ACKs to configuration requests)."""
        self.last_error: Optional[tuple[int, int]] = None
        """(netlink sequence, errno) of the last NLMSG_ERROR that was an error."""
        self.expected_seq: Optional[int] = None
        """The NFULA_SEQ the next packet should carry; None until a baseline is known."""
        self.layouts: list[_Layout] = []
        """Attribute layouts learned from recent messages, most recent first."""

    def parse(self, buf: _Buffer, length: int) -> list[tuple[int, int]]:
        """(start, end) offsets in `buf` of each captured packet in the first `length` bytes.

        Packet messages without a payload attribute give an empty span (start == end), so the
        caller still sees, and counts, one unparseable packet per logged packet.
        """
        spans: list[tuple[int, int]] = []
        append = spans.append
        unpack_head = _NLMSGHEAD.unpack_from
        unpack_u16 = _U16.unpack_from
        unpack_be32 = _BE32.unpack_from
        layouts = self.layouts
        pos = 0
        while pos < length:
            if length - pos < NLMSG_HDRLEN:
                self.truncated_messages += 1
                break
            msg_len, msg_type = unpack_head(buf, pos)
            if msg_len < NLMSG_HDRLEN or pos + msg_len > length:
                self.truncated_messages += 1
                break
            if msg_type == NFULNL_PACKET_TYPE:
                for unpack, expected, payload, seq_at in layouts:
                    if payload + NLA_HDRLEN > msg_len or unpack(buf, pos + _ATTRS) != expected:
                        continue
                    nla_len = unpack_u16(buf, pos + payload)[0]
                    # The payload must be the last attribute, as when the layout was learned.
                    if not NLA_HDRLEN <= nla_len <= msg_len - payload < (nla_len + 3 & ~3) + 4:
                        continue
                    append((pos + payload + NLA_HDRLEN, pos + payload + nla_len))
                    if seq_at >= 0:
                        seq = unpack_be32(buf, pos + seq_at)[0]
                        if seq == self.expected_seq:
                            self.expected_seq = (seq + 1) % _SEQ_MOD
                        else:
                            self._track_seq(seq)
                    break
                else:
                    self._walk(buf, pos, msg_len, spans)
            elif msg_type == NLMSG_DONE:
                pass  # the kernel ends every multi-packet batch with one
            elif msg_type == NLMSG_ERROR:
                if msg_len < NLMSG_HDRLEN + 4:
                    self.truncated_messages += 1
                    break
                err = -_NLMSGERR.unpack_from(buf, pos + NLMSG_HDRLEN)[0]
                if err == 0:
                    self.acks += 1
                else:
                    self.error_messages += 1
                    self.last_error = (_NLMSGHDR.unpack_from(buf, pos)[3], err)
            else:
                self.other_messages += 1
            pos += (msg_len + 3) & ~3
        self.packets += len(spans)
        return spans

    def _walk(self, buf: _Buffer, pos: int, msg_len: int, spans: list[tuple[int, int]]) -> None:
        """Walk one packet message attribute by attribute, and learn its layout."""
        end = pos + msg_len
        attr = pos + _ATTRS
        if attr > end:
            self.truncated_messages += 1
            return
        headers: list[tuple[int, int]] = []
        start = stop = -1
        seq_at = -1
        while attr + NLA_HDRLEN <= end:
            nla_len, raw_type = _NLATTR.unpack_from(buf, attr)
            if nla_len < NLA_HDRLEN or attr + nla_len > end:
                self.truncated_messages += 1
                return
            headers.append((nla_len, raw_type))
            nla_type = raw_type & NLA_TYPE_MASK
            if nla_type == NFULA_PAYLOAD:
                start = attr + NLA_HDRLEN
                stop = attr + nla_len
            elif nla_type == NFULA_SEQ and nla_len >= 8:
                seq_at = attr + NLA_HDRLEN - pos
            attr += (nla_len + 3) & ~3
        if seq_at >= 0:
            self._track_seq(_BE32.unpack_from(buf, pos + seq_at)[0])
        if start < 0:
            spans.append((end, end))
            return
        spans.append((start, stop))
        if headers[-1][1] & NLA_TYPE_MASK == NFULA_PAYLOAD:
            self._learn(headers, seq_at)

    def _learn(self, headers: list[tuple[int, int]], seq_at: int) -> None:
        fmt = ["="]
        expected: list[int] = []
        offset = _ATTRS
        for nla_len, raw_type in headers[:-1]:
            fmt.append(f"HH{((nla_len + 3) & ~3) - NLA_HDRLEN}x")
            expected += (nla_len, raw_type)
            offset += (nla_len + 3) & ~3
        fmt.append("2xH")
        expected.append(headers[-1][1])
        layout = _Layout(struct.Struct("".join(fmt)).unpack_from, tuple(expected), offset, seq_at)
        self.layouts.insert(0, layout)
        del self.layouts[self.MAX_LAYOUTS :]

    def _track_seq(self, seq: int) -> None:
        expected = self.expected_seq
        if expected is not None and seq != expected:
            gap = (seq - expected) % _SEQ_MOD
            if gap < _SEQ_HALF:
                self.seq_gaps += gap
            else:
                self.seq_resets += 1
        self.expected_seq = (seq + 1) % _SEQ_MOD


def nlattr(nla_type: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes (the padding is not counted in nla_len)."""
    nla_len = NLA_HDRLEN + len(payload)
    return _NLATTR.pack(nla_len, nla_type) + payload + bytes(-nla_len % 4)


def config_message(
    nl_seq: int, family: int, group: int, attrs: list[bytes], flags: int = NLM_F_ACK
) -> bytes:
    """An NFULNL_MSG_CONFIG request (the group travels big endian in nfgenmsg.res_id)."""
    body = _NFGENMSG.pack(family, NFNETLINK_V0, group) + b"".join(attrs)
    header = _NLMSGHDR.pack(
        NLMSG_HDRLEN + len(body), NFULNL_CONFIG_TYPE, NLM_F_REQUEST | flags, nl_seq, 0
    )
    return header + body


def _hint(step: str, err: int, group: int) -> str:
    if err == errno.EPERM:
        bound = f"group {group} is already bound by another netlink socket (another reader?)"
        capable = _has_net_admin()
        if capable is False:
            return "this process lacks CAP_NET_ADMIN (run as root or grant the capability)"
        if capable:
            return bound
        return f"{bound}, or this process lacks CAP_NET_ADMIN"
    if err == errno.EBUSY:
        return f"this socket already bound group {group}"
    if err == errno.ETIMEDOUT:
        return "the kernel did not answer"
    return ""


def _has_net_admin() -> Optional[bool]:
    """Whether this process holds CAP_NET_ADMIN, which nfnetlink demands (None: unknown).

    The kernel answers EPERM both without it and when another socket owns the group; knowing
    which one it is makes the error actionable.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_settings(
    group: int, copy_range: int, qthresh: int, timeout_cs: int, nlbufsiz: int, rcvbuf: int,
    rcvbuf_max: int,
) -> None:
    """ValueError for a setting the kernel would refuse or misread (before any socket)."""
    if not 0 <= group <= 0xFFFF:
        raise ValueError(f"NFLOG group must be 0..65535, got {group}")
    if not 1 <= copy_range <= NFULNL_COPY_RANGE_MAX:
        # 0 would mean "the whole packet" to the kernel.
        raise ValueError(f"copy_range must be 1..{NFULNL_COPY_RANGE_MAX}, got {copy_range}")
    if qthresh < 1:
        raise ValueError(f"qthresh must be at least 1, got {qthresh}")
    if timeout_cs < 0:
        raise ValueError(f"timeout_cs must be >= 0 (hundredths of a second), got {timeout_cs}")
    if not NLBUFSIZ_MIN <= nlbufsiz <= NLBUFSIZ_MAX:
        raise ValueError(f"nlbufsiz must be {NLBUFSIZ_MIN}..{NLBUFSIZ_MAX}, got {nlbufsiz}")
    if rcvbuf < 1 or rcvbuf_max < rcvbuf:
        raise ValueError(f"need 0 < rcvbuf <= rcvbuf_max, got {rcvbuf} and {rcvbuf_max}")


class NflogSource:
    """One NFLOG group, bound and configured, read in batches.

    Typical use::

        with NflogSource(33) as source:
            while running:
                for batch in source.batches(1.0):
                    ...  # a list of packet fields (tuples) or Invalid reasons

    `batches(timeout)` and `read(timeout, out)` wait at most `timeout` seconds, so the caller's
    loop runs at least that often even without traffic. Only one socket may bind a group:
    a second one gets `NflogError` (EPERM). Closing the socket also frees the group.
    """

    def __init__(
        self,
        group: int,
        *,
        copy_range: int = DEFAULT_COPY_RANGE,
        qthresh: int = DEFAULT_QTHRESH,
        timeout_cs: int = DEFAULT_TIMEOUT_CS,
        nlbufsiz: int = DEFAULT_NLBUFSIZ,
        rcvbuf: int = DEFAULT_RCVBUF,
        rcvbuf_max: int = DEFAULT_RCVBUF_MAX,
        clock: Callable[[], float] = time.monotonic,
        bind_pf: bool = False,
        seq_global: bool = True,
        recv_size: int = DEFAULT_RECV_SIZE,
        max_batches: int = DEFAULT_MAX_BATCHES,
        ack_timeout: float = 2.0,
    ) -> None:
        """Open, bind and configure. `bind_pf` also sends PF_UNBIND/PF_BIND for IPv4 and IPv6:
        the NFLOG target never needs them, and they replace the network namespace's default
        logger (net.netfilter.nf_log.*), so they are off unless asked for."""
        _check_settings(group, copy_range, qthresh, timeout_cs, nlbufsiz, rcvbuf, rcvbuf_max)
        self.group = group
        self.copy_range = copy_range
        self.rcvbuf_max = rcvbuf_max
        self.max_batches = max_batches
        self.parser = NflogParser()
        self.enobufs = 0
        """recv() reported ENOBUFS: the kernel dropped at least one batch since the last one."""
        self.buffer_grows = 0
        """Times the receive buffer was doubled after ENOBUFS."""
        self.datagrams = 0
        """Datagrams received (each one holds one kernel batch)."""
        self.rcvbuf = 0
        """Current receive buffer size in bytes, as the kernel reports it (twice the request)."""
        self.flags = 0
        """NFULNL_CFG_F_* flags the kernel accepted."""
        self._rcvbuf_request = rcvbuf
        self._clock = clock
        self._ack_timeout = ack_timeout
        self._buf = bytearray(recv_size)
        self._view = memoryview(self._buf)
        self._backlog: list[bytes] = []
        self._nl_seq = 0
        self._closed = False
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            self._set_rcvbuf(rcvbuf)
            self._sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(self._sock.fileno(), select.POLLIN)
            if bind_pf:
                for family, name in ((socket.AF_INET, "AF_INET"), (socket.AF_INET6, "AF_INET6")):
                    cmd = nlattr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_PF_UNBIND,)))
                    self._request(f"PF_UNBIND {name}", family, 0, [cmd], check=False)
                    cmd = nlattr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_PF_BIND,)))
                    self._request(f"PF_BIND {name}", family, 0, [cmd])
            settings = [
                nlattr(NFULA_CFG_MODE, _MODE.pack(copy_range, NFULNL_COPY_PACKET)),
                nlattr(NFULA_CFG_NLBUFSIZ, _BE32.pack(nlbufsiz)),
                nlattr(NFULA_CFG_TIMEOUT, _BE32.pack(timeout_cs)),
                nlattr(NFULA_CFG_QTHRESH, _BE32.pack(qthresh)),
            ]
            bind = nlattr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,)))
            step = (
                f"BIND group {group} (copy {copy_range} bytes, nlbufsiz {nlbufsiz}, "
                f"timeout {timeout_cs}/100 s, qthresh {qthresh}, flags %s)"
            )
            # Binding and configuring in one message is atomic: the first packet logged is
            # already headers-only and numbered (the kernel applies the attributes right after
            # creating the group). SEQ_GLOBAL is optional; retry without it if refused.
            flag_sets = [NFULNL_CFG_F_SEQ | NFULNL_CFG_F_SEQ_GLOBAL] if seq_global else []
            flag_sets.append(NFULNL_CFG_F_SEQ)
            for i, flags in enumerate(flag_sets):
                names = "SEQ|SEQ_GLOBAL" if flags & NFULNL_CFG_F_SEQ_GLOBAL else "SEQ"
                attrs = [bind, *settings, nlattr(NFULA_CFG_FLAGS, _BE16.pack(flags))]
                try:
                    self._request(step % names, socket.AF_UNSPEC, group, attrs)
                except NflogError as exc:
                    retry = exc.errno in (errno.EINVAL, errno.EOPNOTSUPP)
                    if retry and i + 1 < len(flag_sets):
                        continue
                    raise
                self.flags = flags
                break
            # A new group numbers its packets from 0: anything before the first received
            # sequence number was lost too.
            self.parser.expected_seq = 0
        except BaseException:
            self._sock.close()
            self._closed = True
            raise

    # -- configuration ---------------------------------------------------------------------

    def _set_rcvbuf(self, size: int) -> None:
        """SO_RCVBUFFORCE (root, ignores net.core.rmem_max), else SO_RCVBUF (capped)."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        self._rcvbuf_request = size
        self.rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _request(
        self, step: str, family: int, group: int, attrs: list[bytes], check: bool = True
    ) -> None:
        """Send one config message with NLM_F_ACK and wait for its answer.

        Packet batches that arrive meanwhile are kept for the next read, not dropped.
        """
        self._nl_seq += 1
        nl_seq = self._nl_seq
        self._sock.send(config_message(nl_seq, family, group, attrs))
        deadline = time.monotonic() + self._ack_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(max(1, int(left * 1000))):
                raise NflogError(step, errno.ETIMEDOUT, _hint(step, errno.ETIMEDOUT, group))
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._overrun()
                    continue
                raise
            err = _reply_error(self._buf, n, nl_seq)
            if err is None:
                self._backlog.append(bytes(self._view[:n]))
                continue
            if err and check:
                raise NflogError(step, err, _hint(step, err, group))
            return

    def _overrun(self) -> None:
        """ENOBUFS: count it, and double the receive buffer while under the maximum."""
        self.enobufs += 1
        if self._rcvbuf_request < self.rcvbuf_max:
            self._set_rcvbuf(min(self._rcvbuf_request * 2, self.rcvbuf_max))
            self.buffer_grows += 1

    # -- reading ---------------------------------------------------------------------------

    def fileno(self) -> int:
        """The netlink socket, for callers that multiplex it with other descriptors."""
        return self._sock.fileno()

    def _recv(self) -> Optional[bytes]:
        """One datagram as bytes, or None when nothing is queued. Handles ENOBUFS."""
        if self._backlog:
            return self._backlog.pop(0)
        while True:
            try:
                n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Reported once per congestion episode; data may still be queued behind it.
                self._overrun()
                continue
            self.datagrams += 1
            if n > len(self._buf):  # MSG_TRUNC gives the real size: the tail was cut off
                self.parser.truncated_messages += 1
                n = len(self._buf)
            return bytes(self._view[:n])

    def _wait(self, timeout: float) -> bool:
        if self._backlog:
            return True
        return bool(self._poll.poll(max(0, int(timeout * 1000))))

    def read(self, timeout: float, out: list[Captured]) -> int:
        """Wait up to `timeout` s, then append every queued packet (up to `max_batches`
        datagrams) to `out` as (timestamp, captured bytes). Returns how many were appended.

        The timestamp is read from the clock once per datagram: the agent's flow table runs on
        a monotonic clock. The kernel's own NFULA_TIMESTAMP is per packet but wall-clock time
        (it jumps with NTP steps), so it is not used. A batch waits in the kernel at most
        `timeout_cs`/100 s, plus however long it queues in the socket if the reader falls behind.
        """
        if not self._wait(timeout):
            return 0
        clock = self._clock
        parse = self.parser.parse
        count = 0
        for _ in range(self.max_batches):
            data = self._recv()
            if data is None:
                break
            ts = clock()
            for start, stop in parse(data, len(data)):
                out.append((ts, data[start:stop]))
                count += 1
        return count

    def batches(self, timeout: float) -> Iterator[list[FieldsResult]]:
        """Like `read`, but yields the packets of each datagram as one list, each parsed in
        place by `parse_fields` (a `Packet`'s fields as a tuple, or an `Invalid` reason): what
        `FlowTable.add_many` takes, as replay's reader hands it. Consume the iterator fully: a
        datagram half-consumed is lost with it."""
        if not self._wait(timeout):
            return
        clock = self._clock
        parse = self.parser.parse
        for _ in range(self.max_batches):
            data = self._recv()
            if data is None:
                return
            ts = clock()
            unix = time.time()  # the SYN options' Unix-time test (`Tu`) needs the wall clock
            yield [
                parse_fields(data, ts, start, stop, 0, unix)
                for start, stop in parse(data, len(data))
            ]

    # -- accounting ------------------------------------------------------------------------

    @property
    def packets_received(self) -> int:
        return self.parser.packets

    @property
    def seq_gaps(self) -> int:
        return self.parser.seq_gaps

    @property
    def truncated_messages(self) -> int:
        return self.parser.truncated_messages

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on this socket (SO_MEMINFO), or -1 if unavailable."""
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
        except OSError:
            return -1
        if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
            return -1
        return int(struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0])

    def stats(self) -> NflogStats:
        """Every counter, named as the metrics they become (see `NflogStats`)."""
        p = self.parser
        return NflogStats(
            packets=p.packets,
            lost_seq_gap=p.seq_gaps,
            lost_bad_message=p.truncated_messages,
            overruns=self.enobufs,
            socket_drops=max(0, self.kernel_drops()),
            receive_buffer_bytes=self.rcvbuf,
            datagrams=self.datagrams,
            buffer_grows=self.buffer_grows,
            seq_resets=p.seq_resets,
            other_messages=p.other_messages,
            error_messages=p.error_messages,
        )

    def set_rcvbuf_max(self, rcvbuf_max: int) -> None:
        """A new growth limit (a reload): the buffer shrinks to it at once if it is larger."""
        if rcvbuf_max < 1:
            raise ValueError(f"rcvbuf_max must be at least 1, got {rcvbuf_max}")
        self.rcvbuf_max = rcvbuf_max
        if self._rcvbuf_request > rcvbuf_max:
            self._set_rcvbuf(rcvbuf_max)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Unbind the group (closing the socket would too; this is explicit) and close."""
        if self._closed:
            return
        self._closed = True
        try:
            cmd = nlattr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_UNBIND,)))
            self._sock.send(
                config_message(self._nl_seq + 1, socket.AF_UNSPEC, self.group, [cmd], 0)
            )
        except OSError:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> NflogSource:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _reply_error(buf: _Buffer, length: int, nl_seq: int) -> Optional[int]:
    """The errno (0 for an ACK) if this datagram answers request `nl_seq`, else None.

    The kernel sends each answer in a datagram of its own, never inside a packet batch.
    """
    if length < NLMSG_HDRLEN + 4:
        return None
    msg_len, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(buf, 0)
    if msg_type != NLMSG_ERROR or seq != nl_seq or msg_len > length:
        return None
    return int(-_NLMSGERR.unpack_from(buf, NLMSG_HDRLEN)[0])
