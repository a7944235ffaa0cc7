"""The nfnetlink_log parser on hand-built netlink bytes (no socket, no root).

The messages mimic what kernel 6.x sends for an iptables NFLOG rule: PACKET_HDR, an empty
PREFIX, IFINDEX_INDEV, HWADDR, HWTYPE, HWLEN, HWHEADER, TIMESTAMP, SEQ, SEQ_GLOBAL, PAYLOAD,
each attribute padded to 4 bytes, and an NLMSG_DONE closing a batch of more than one packet.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from resetwatch import nflog
from resetwatch.nflog import NflogError, NflogParser, config_message, nlattr
from resetwatch.packet import SYN, Invalid, Packet, make_key, parse_fields, parse_ip

NLMSGHDR = struct.Struct("=IHHII")


def nlmsg(msg_type: int, body: bytes, flags: int = 0, seq: int = 0) -> bytes:
    """One netlink message, padded to 4 bytes (the padding is outside nlmsg_len)."""
    length = 16 + len(body)
    return NLMSGHDR.pack(length, msg_type, flags, seq, 0) + body + bytes(-length % 4)


def tcp_syn(sport: int = 40000, dport: int = 8080, extra: int = 0) -> bytes:
    """An IPv4 TCP SYN with an MSS option, followed by `extra` payload bytes."""
    tcp = struct.pack("!HHIIHHHH", sport, dport, 1000, 0, (6 << 12) | SYN, 64240, 0, 0)
    tcp += struct.pack("!BBH", 2, 4, 1460)
    total = 20 + len(tcp) + extra
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0x4000,
        64,
        6,
        0,
        socket.inet_aton("10.78.0.1"),
        socket.inet_aton("10.78.0.2"),
    )
    return ip + tcp + bytes(extra)


def packet_msg(
    payload: bytes | None,
    seq: int | None,
    *,
    prefix: bytes = b"\x00",
    flag_bits: int = 0,
) -> bytes:
    """A NFULNL_MSG_PACKET message; `flag_bits` is OR-ed into every attribute type."""
    f = flag_bits
    attrs = [
        nlattr(nflog.NFULA_PACKET_HDR | f, struct.pack("!HBx", 0x0800, 0)),
        nlattr(nflog.NFULA_PREFIX | f, prefix),
        nlattr(nflog.NFULA_IFINDEX_INDEV | f, struct.pack("!I", 2)),
        nlattr(nflog.NFULA_HWADDR | f, struct.pack("!H2x6s2x", 6, b"\xde\x9c\x65\xb6\x77\xa1")),
        nlattr(nflog.NFULA_HWTYPE | f, struct.pack("!H", 1)),
        nlattr(nflog.NFULA_HWLEN | f, struct.pack("!H", 14)),
        nlattr(nflog.NFULA_HWHEADER | f, bytes(14)),
        nlattr(nflog.NFULA_TIMESTAMP | f, struct.pack("!QQ", 1_700_000_000, 123_456)),
    ]
    if seq is not None:
        attrs.append(nlattr(nflog.NFULA_SEQ | f, struct.pack("!I", seq)))
        attrs.append(
            nlattr(nflog.NFULA_SEQ_GLOBAL | f, struct.pack("!I", (seq + 1000) % (1 << 32)))
        )
    if payload is not None:
        attrs.append(nlattr(nflog.NFULA_PAYLOAD | f, payload))
    body = struct.pack("!BBH", socket.AF_INET, 0, 33) + b"".join(attrs)
    return nlmsg(nflog.NFULNL_PACKET_TYPE, body)


DONE = nlmsg(nflog.NLMSG_DONE, struct.pack("!BBH", 0, 0, 0))


def error_msg(err: int, seq: int) -> bytes:
    return nlmsg(
        nflog.NLMSG_ERROR, struct.pack("=i", -err) + NLMSGHDR.pack(36, 0x401, 5, seq, 0), seq=seq
    )


def payloads(data: bytes, parser: NflogParser) -> list[bytes]:
    return [data[start:stop] for start, stop in parser.parse(data, len(data))]


def test_batch_spans_point_at_payloads() -> None:
    p1, p2, p3 = tcp_syn(40001), tcp_syn(40002)[:41], tcp_syn(40003, extra=500)[:128]
    m1, m2, m3 = packet_msg(p1, 0), packet_msg(p2, 1), packet_msg(p3, 2)
    data = m1 + m2 + m3 + DONE
    parser = NflogParser()
    spans = parser.parse(data, len(data))
    # The payload attribute is the last one of each message, followed only by its padding.
    expected = []
    offset = 0
    for msg, payload in ((m1, p1), (m2, p2), (m3, p3)):
        stop = offset + len(msg) - (-len(payload) % 4)
        expected.append((stop - len(payload), stop))
        offset += len(msg)
    assert spans == expected
    assert [data[s:e] for s, e in spans] == [p1, p2, p3]
    assert parser.packets == 3
    assert parser.seq_gaps == 0
    assert parser.truncated_messages == 0
    assert parser.other_messages == 0
    assert parser.expected_seq == 3


def test_odd_lengths_are_padded_to_four_bytes() -> None:
    # A 5-byte prefix and a 61-byte payload both need padding; a parser that forgot to align
    # would land inside the padding and misread the next attribute or message.
    first = tcp_syn(40001)[:40] + b"\x01"
    second = tcp_syn(40002)
    data = packet_msg(first, 0, prefix=b"abcd\x00") + packet_msg(second, 1, prefix=b"x\x00")
    parser = NflogParser()
    assert payloads(data, parser) == [first, second]
    assert parser.truncated_messages == 0


def test_attribute_flag_bits_are_masked() -> None:
    payload = tcp_syn()
    bits = nflog.NLA_F_NESTED | nflog.NLA_F_NET_BYTEORDER
    data = packet_msg(payload, 0, flag_bits=bits) + packet_msg(payload, 2, flag_bits=bits)
    parser = NflogParser()
    assert payloads(data, parser) == [payload, payload]
    assert parser.seq_gaps == 1


def test_seq_gaps_count_missing_packets() -> None:
    parser = NflogParser()
    parser.expected_seq = 0  # as NflogSource sets it for a group it just created
    batch1 = packet_msg(tcp_syn(), 2) + packet_msg(tcp_syn(), 3) + DONE  # 0 and 1 lost
    batch2 = packet_msg(tcp_syn(), 4) + packet_msg(tcp_syn(), 10) + DONE  # 5..9 lost
    parser.parse(batch1, len(batch1))
    parser.parse(batch2, len(batch2))
    assert parser.packets == 4
    assert parser.seq_gaps == 2 + 5
    assert parser.expected_seq == 11


def test_seq_wraps_around_without_a_gap() -> None:
    parser = NflogParser()
    data = packet_msg(tcp_syn(), 0xFFFFFFFE) + packet_msg(tcp_syn(), 0xFFFFFFFF)
    data += packet_msg(tcp_syn(), 0) + packet_msg(tcp_syn(), 2)
    parser.parse(data, len(data))
    assert parser.seq_gaps == 1
    assert parser.seq_resets == 0


def test_seq_going_backwards_is_a_reset_not_loss() -> None:
    parser = NflogParser()
    data = packet_msg(tcp_syn(), 500) + packet_msg(tcp_syn(), 0) + packet_msg(tcp_syn(), 1)
    parser.parse(data, len(data))
    assert parser.seq_gaps == 0
    assert parser.seq_resets == 1


def test_packets_without_seq_are_not_tracked() -> None:
    parser = NflogParser()
    data = packet_msg(tcp_syn(), None) + packet_msg(tcp_syn(), None)
    assert len(parser.parse(data, len(data))) == 2
    assert parser.seq_gaps == 0
    assert parser.expected_seq is None


def test_packet_without_payload_gives_an_empty_span() -> None:
    data = packet_msg(None, 0) + packet_msg(tcp_syn(), 1)
    parser = NflogParser()
    found = payloads(data, parser)
    assert found == [b"", tcp_syn()]
    assert parse_ip(found[0], 0.0) is Invalid.TRUNCATED
    assert parser.packets == 2


def test_error_and_ack_messages() -> None:
    data = error_msg(0, 7) + packet_msg(tcp_syn(), 0) + error_msg(errno.EPERM, 8)
    parser = NflogParser()
    assert payloads(data, parser) == [tcp_syn()]
    assert parser.acks == 1
    assert parser.error_messages == 1
    assert parser.last_error == (8, errno.EPERM)


def test_other_message_types_are_ignored_and_counted() -> None:
    noop = nlmsg(nflog.NLMSG_NOOP, b"")
    config = nlmsg(nflog.NFULNL_CONFIG_TYPE, struct.pack("!BBH", 0, 0, 33))
    data = noop + packet_msg(tcp_syn(), 0) + config + DONE
    parser = NflogParser()
    assert payloads(data, parser) == [tcp_syn()]
    assert parser.other_messages == 2


def test_message_longer_than_the_datagram_is_truncated() -> None:
    good = packet_msg(tcp_syn(), 0)
    cut = packet_msg(tcp_syn(), 1)[:50]  # nlmsg_len claims more bytes than follow
    data = good + cut
    parser = NflogParser()
    assert payloads(data, parser) == [tcp_syn()]
    assert parser.truncated_messages == 1
    assert parser.packets == 1


def test_impossible_lengths_are_truncated() -> None:
    parser = NflogParser()
    tiny = NLMSGHDR.pack(8, nflog.NFULNL_PACKET_TYPE, 0, 0, 0)  # shorter than its own header
    assert parser.parse(tiny, len(tiny)) == []
    tail = packet_msg(tcp_syn(), 0) + b"\x01\x02\x03"  # leftover bytes after the last message
    assert len(parser.parse(tail, len(tail))) == 1
    no_nfgenmsg = nlmsg(nflog.NFULNL_PACKET_TYPE, b"\x02\x00")
    assert parser.parse(no_nfgenmsg, len(no_nfgenmsg)) == []
    assert parser.truncated_messages == 3


def test_bad_attribute_length_skips_only_that_message() -> None:
    bad = bytearray(packet_msg(tcp_syn(), 0))
    struct.pack_into("=H", bad, 20, 200)  # first attribute claims to run past the message
    data = bytes(bad) + packet_msg(tcp_syn(40009), 1)
    parser = NflogParser()
    assert payloads(data, parser) == [tcp_syn(40009)]
    assert parser.truncated_messages == 1
    assert parser.packets == 1


def test_only_the_first_length_bytes_are_read() -> None:
    # The receive buffer is larger than the datagram; stale bytes after it must be ignored.
    data = packet_msg(tcp_syn(), 0) + DONE
    buf = bytearray(4096)
    buf[: len(data)] = data
    buf[len(data) : len(data) + 200] = packet_msg(tcp_syn(40001), 1)[:200]
    parser = NflogParser()
    assert len(parser.parse(memoryview(buf), len(data))) == 1
    assert parser.packets == 1
    assert parser.truncated_messages == 0


def test_spans_parse_in_place_without_reading_past_the_capture() -> None:
    # What NflogSource.batches does: parse_fields on each span of the datagram, no copy.
    syn = tcp_syn(40123, extra=1000)[:128]  # headers-only copy of a big packet
    data = packet_msg(syn, 0) + packet_msg(tcp_syn(40124)[:30], 1) + DONE
    parser = NflogParser()
    (s1, e1), (s2, e2) = parser.parse(data, len(data))
    first = parse_fields(data, 5.0, s1, e1)
    assert first == parse_ip(data[s1:e1], 5.0)
    assert isinstance(first, tuple)
    packet = Packet(*first)
    assert packet.key == make_key("10.78.0.1", 40123, "10.78.0.2", 8080)
    assert isinstance(packet.key, bytes)
    assert packet.payload_len == 1000
    assert packet.options == "M1460"
    assert packet.ts == 5.0
    # The second capture ends inside the TCP header: truncated, although the buffer goes on.
    assert parse_fields(data, 5.0, s2, e2) is Invalid.TRUNCATED


def test_config_message_layout() -> None:
    attrs = [
        nlattr(nflog.NFULA_CFG_CMD, bytes((nflog.NFULNL_CFG_CMD_BIND,))),
        nlattr(nflog.NFULA_CFG_MODE, struct.pack("!IBx", 128, nflog.NFULNL_COPY_PACKET)),
        nlattr(nflog.NFULA_CFG_FLAGS, struct.pack("!H", nflog.NFULNL_CFG_F_SEQ)),
    ]
    msg = config_message(7, socket.AF_UNSPEC, 33, attrs)
    length, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(msg)
    assert (length, msg_type, seq, pid) == (len(msg), 0x0401, 7, 0)
    assert flags == nflog.NLM_F_REQUEST | nflog.NLM_F_ACK
    assert msg[16:20] == b"\x00\x00\x00\x21"  # family, version, group 33 big endian
    # CMD: len 5 padded to 8; MODE: len 10 padded to 12; FLAGS: len 6 padded to 8.
    assert struct.unpack_from("=HH", msg, 20) == (5, nflog.NFULA_CFG_CMD)
    assert struct.unpack_from("=HH", msg, 28) == (10, nflog.NFULA_CFG_MODE)
    assert msg[32:38] == b"\x00\x00\x00\x80\x02\x00"
    assert struct.unpack_from("=HH", msg, 40) == (6, nflog.NFULA_CFG_FLAGS)
    assert len(msg) == 48


def test_error_is_one_line_with_step_and_errno() -> None:
    exc = NflogError("BIND group 33", errno.EPERM, "group 33 is already bound")
    text = str(exc)
    assert "\n" not in text
    assert text.startswith("NFLOG BIND group 33: EPERM")
    assert exc.errno == errno.EPERM


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"copy_range": 0}, "copy_range"),
        ({"nlbufsiz": 200_000}, "nlbufsiz"),
        ({"qthresh": 0}, "qthresh"),
        ({"rcvbuf": 1 << 20, "rcvbuf_max": 1 << 10}, "rcvbuf"),
    ],
)
def test_bad_settings_are_refused_before_any_socket(kwargs: dict[str, int], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        nflog.NflogSource(33, **kwargs)  # type: ignore[arg-type]


def walk_only() -> NflogParser:
    """A parser that never uses learned layouts: the reference for the fast path."""
    parser = NflogParser()
    parser.MAX_LAYOUTS = 0
    return parser


def with_mark(payload: bytes, seq: int) -> bytes:
    """A packet message with an NFULA_MARK attribute: same kind, different layout."""
    body = struct.pack("!BBH", socket.AF_INET, 0, 33)
    body += nlattr(nflog.NFULA_PACKET_HDR, struct.pack("!HBx", 0x0800, 0))
    body += nlattr(nflog.NFULA_MARK, struct.pack("!I", 7))
    body += nlattr(nflog.NFULA_SEQ, struct.pack("!I", seq))
    body += nlattr(nflog.NFULA_PAYLOAD, payload)
    return nlmsg(nflog.NFULNL_PACKET_TYPE, body)


def payload_not_last(payload: bytes, seq: int) -> bytes:
    """Same headers as `packet_msg` up to the payload, then one more attribute after it."""
    msg = packet_msg(payload, seq)
    extra = nlattr(nflog.NFULA_UID, struct.pack("!I", 1000))
    length = struct.unpack_from("=I", msg)[0] + len(extra)
    return struct.pack("=I", length) + msg[4:] + extra


def counters(parser: NflogParser) -> dict[str, object]:
    return {k: v for k, v in vars(parser).items() if k not in ("layouts", "MAX_LAYOUTS")}


def test_learned_layouts_give_what_the_walk_gives() -> None:
    # Mixed layouts, payload lengths, a payload that is not last, a missing payload, seq
    # gaps: the cached fast path and the plain walk must agree on everything.
    data = b"".join(
        [
            packet_msg(tcp_syn(40001), 0),
            packet_msg(tcp_syn(40002, extra=9)[:57], 1),
            with_mark(tcp_syn(40003), 2),
            packet_msg(tcp_syn(40004), 5),
            payload_not_last(tcp_syn(40005), 6),
            packet_msg(None, 7),
            with_mark(tcp_syn(40006)[:21], 8),
            packet_msg(tcp_syn(40007), 9, prefix=b"rw\x00"),
            packet_msg(tcp_syn(40008), 10),
            packet_msg(tcp_syn(40009), 11, flag_bits=nflog.NLA_F_NET_BYTEORDER),
            DONE,
        ]
    )
    fast, slow = NflogParser(), walk_only()
    fast_spans = fast.parse(data, len(data)) + fast.parse(data, len(data))
    slow_spans = slow.parse(data, len(data)) + slow.parse(data, len(data))
    assert fast_spans == slow_spans
    assert len(fast_spans) == 20
    assert counters(fast) == counters(slow)
    assert fast.seq_gaps == 2 + 2  # 3 and 4 missing in each pass; 11 -> 0 is a restart
    assert fast.seq_resets == 1
    assert fast.layouts  # something was learned and used
    assert not slow.layouts


def test_a_layout_is_not_trusted_past_its_message() -> None:
    # A short message whose leading bytes match a learned layout must not be read with it.
    full = packet_msg(tcp_syn(40001), 0)
    short = packet_msg(None, 1)  # same attributes but no payload: ends before the layout does
    parser = NflogParser()
    data = full + short + full
    assert payloads(data, parser) == [tcp_syn(40001), b"", tcp_syn(40001)]
    assert parser.seq_resets == 1
