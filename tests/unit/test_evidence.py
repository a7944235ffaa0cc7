"""The evidence tags on packets built as bytes and parsed: ZMap 4.1+'s templates against real
stacks' SYN layouts, and the `ipid_jump` false-positive and detection rates."""

from __future__ import annotations

import random
import socket
import struct
from typing import Optional

import pytest
from scapy.layers.inet import IP, TCP

from resetwatch.classify import Tag, Verdict
from resetwatch.packet import Packet, parse_ip

from .factory import run

T0 = 1_764_000_000.0
"""The capture time of the SYNs below (Unix seconds)."""
SRC, DST = "198.51.100.7", "203.0.113.1"


def _stamps(tsval: int) -> bytes:
    return bytes.fromhex("080a") + struct.pack("!II", tsval, 0)


# The options bytes of ZMap 4.1+'s probe templates, as its source writes them.
def zmap_windows(_: int) -> bytes:
    return bytes.fromhex("020405b4010303080101" "0402")


def zmap_linux(tsval: int) -> bytes:
    return bytes.fromhex("020405b40402") + _stamps(tsval) + bytes.fromhex("01030307")


def zmap_bsd(tsval: int) -> bytes:
    return bytes.fromhex("020405b4010303060101") + _stamps(tsval) + bytes.fromhex("04020000")


def zmap_smallest(_: int) -> bytes:
    return bytes.fromhex("020405b4")


# Real stacks' SYN layouts: Linux (MSS, SACK, TS, NOP, WS 7), Windows (MSS, NOP, WS 8, NOP,
# NOP, SACK), macOS (MSS, NOP, WS 6, NOP, NOP, TS, SACK, EOL, EOL).
linux_layout = zmap_linux
windows_layout = zmap_windows
macos_layout = zmap_bsd


_FLAG_BITS = {"S": 0x02, "E": 0x40, "C": 0x80}


def syn_bytes(
    options: bytes,
    *,
    window: int,
    df: bool,
    flags: str = "S",
    ip_id: int = 4242,
    ttl: int = 64,
    ack: int = 0,
) -> bytes:
    """An IPv4 SYN with exactly these options bytes (scapy would lay them out its own way)."""
    bits = sum(_FLAG_BITS[f] for f in flags)
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1000, ack, (20 + len(options)) // 4 << 4,
                      bits, window, 0, 0) + options  # fmt: skip
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000 if df else 0, ttl,
                     6, 0, socket.inet_aton(SRC), socket.inet_aton(DST))  # fmt: skip
    return ip + tcp


def verdict_of(packets: list[bytes], ts: float = T0) -> Verdict:
    parsed = [parse_ip(p, ts + n * 0.01) for n, p in enumerate(packets)]
    assert all(isinstance(p, Packet) for p in parsed), parsed
    [verdict] = run(parsed, end=ts + 1e4).verdicts  # type: ignore[arg-type]
    return verdict


def rst_bytes(ip_id: int = 4243, flags: str = "RA") -> bytes:
    return bytes(IP(src=SRC, dst=DST, id=ip_id, flags="DF") / TCP(sport=40000, dport=443,
                                                                     flags=flags, seq=1001))


def modern(syn: bytes, ts: float = T0) -> bool:
    return Tag.ZMAP_MODERN in verdict_of([syn, rst_bytes()], ts).tags


SCAN_START = int(T0) - 3 * 3600  # ZMap stamps its template once: hours into a long scan


@pytest.mark.parametrize("template", [zmap_windows, zmap_linux, zmap_bsd, zmap_smallest])
def test_every_zmap_template_matches(template) -> None:
    syn = syn_bytes(template(SCAN_START), window=65535, df=False, ip_id=31337, ttl=255)
    assert modern(syn)


@pytest.mark.parametrize(
    "name,syn",
    [
        ("linux", syn_bytes(linux_layout(2_876_543_210), window=64240, df=True)),
        ("windows-64240", syn_bytes(windows_layout(0), window=64240, df=True, ttl=128)),
        ("windows-65535", syn_bytes(windows_layout(0), window=65535, df=True, ttl=128)),
        ("macos-ecn", syn_bytes(macos_layout(1_234_567_890), window=65535, df=False,
                                flags="SEC")),
        ("macos-no-ecn", syn_bytes(macos_layout(1_234_567_890), window=65535, df=False)),
        ("linux-layout-df-clear", syn_bytes(linux_layout(2_876_543_210), window=65535,
                                            df=False)),
        # Each of ZMap's other fixed fields, one at a time.
        ("zmap-df", syn_bytes(zmap_linux(SCAN_START), window=65535, df=True)),
        ("zmap-ecn", syn_bytes(zmap_windows(0), window=65535, df=False, flags="SEC")),
        ("zmap-ack", syn_bytes(zmap_windows(0), window=65535, df=False, ack=5)),
        ("zmap-window", syn_bytes(zmap_bsd(SCAN_START), window=65534, df=False)),
        ("zmap-tsecr", syn_bytes(zmap_linux(SCAN_START)[:10] + b"\0\0\0\1" +
                                 zmap_linux(0)[14:], window=65535, df=False)),
        ("zmap-old-stamp", syn_bytes(zmap_linux(SCAN_START - 2 * 86400), window=65535,
                                     df=False)),
    ],
)  # fmt: skip
def test_real_stacks_and_near_misses_do_not_match(name: str, syn: bytes) -> None:
    assert not modern(syn), name


def test_macos_with_random_tsvals_never_matches() -> None:
    # macOS: window 65535, DF clear, ZMap's bsd layout; TSval a millisecond clock from a
    # random per-connection offset. Even with its ECN flags cleared, none may match.
    rnd = random.Random(19)
    syns = [syn_bytes(macos_layout(rnd.getrandbits(32)), window=65535, df=False)
            for _ in range(2000)]  # fmt: skip
    matched = sum(modern(s) for s in syns)
    print(f"\nmacOS-layout SYNs with random TSvals matching zmap_modern: {matched}/2000")
    assert matched == 0


def test_the_live_clock_decides_the_stamp_not_the_flow_clock() -> None:
    # Live packets are stamped with a monotonic clock (`ts` small): the wall clock is passed.
    from resetwatch.packet import parse_fields

    syn = syn_bytes(zmap_linux(SCAN_START), window=65535, df=False)
    on_monotonic = parse_fields(syn, 1234.5, 0, len(syn))
    with_wall = parse_fields(syn, 1234.5, 0, len(syn), 0, T0)
    assert isinstance(on_monotonic, tuple) and isinstance(with_wall, tuple)
    assert (on_monotonic[-1], with_wall[-1]) == ("M1460,S,T,N,W7", "M1460,S,Tu,N,W7")


# ---- ipid_jump: rates on forged clients -------------------------------------------------


def flow_bytes(ids: list[int], rst_id: Optional[int], start: int = 40000) -> list[bytes]:
    """SYN, ACK, PSH+ACK, ACK... with these IP IDs, then a RST+ACK with `rst_id`."""
    out = [bytes(IP(src=SRC, dst=DST, id=ids[0]) / TCP(sport=start, dport=443, flags="S",
                                                       seq=1000, options=[("MSS", 1460)]))]
    for n, ip_id in enumerate(ids[1:]):
        flags = "PA" if n == 1 else "A"
        out.append(bytes(IP(src=SRC, dst=DST, id=ip_id) / TCP(sport=start, dport=443,
                                                              flags=flags, seq=1001)))
    if rst_id is not None:
        out.append(bytes(IP(src=SRC, dst=DST, id=rst_id) / TCP(sport=start, dport=443,
                                                               flags="RA", seq=1001)))
    return out  # fmt: skip


def jump_rate(flows: list[list[bytes]]) -> float:
    parsed = []
    for n, packets in enumerate(flows):
        for k, raw in enumerate(packets):
            p = parse_ip(raw, T0 + n * 0.001 + k * 0.0001)
            assert isinstance(p, Packet)
            # Each flow its own source port, so they can share one table.
            parsed.append(p._replace(key=p.key[:8] + (1024 + n).to_bytes(2, "big") + p.key[10:]))
    verdicts = run(parsed, max_flows=100_000, end=T0 + 1e4).verdicts
    assert len(verdicts) == len(flows)
    return sum(Tag.IPID_JUMP in v.tags for v in verdicts) / len(flows)


def global_counter_flow(rnd: random.Random) -> list[bytes]:
    # A host-wide counter (Windows): between two packets of one connection it moves by the
    # host's other traffic, here a few hundred; zero when the counter wraps through it.
    ids = [rnd.randrange(65536)]
    for _ in range(rnd.randrange(1, 5)):
        ids.append((ids[-1] + rnd.randrange(1, 700)) & 0xFFFF)
    return flow_bytes(ids, (ids[-1] + rnd.randrange(1, 700)) & 0xFFFF)


def injected_flow(rnd: random.Random) -> list[bytes]:
    # A client counting by one per packet; the RST is an injector's, with a random IP ID.
    first = rnd.randrange(65536)
    ids = [(first + k) & 0xFFFF for k in range(rnd.randrange(2, 5))]
    return flow_bytes(ids, rnd.randrange(65536))


def test_ipid_jump_rates_on_forged_clients() -> None:
    rnd = random.Random(1923)
    false_positive = jump_rate([global_counter_flow(rnd) for _ in range(2000)])
    detected = jump_rate([injected_flow(rnd) for _ in range(2000)])
    print(f"\nipid_jump on 2000 forged global-counter clients (steps 1-699): "
          f"{false_positive:.2%} false positives")
    print(f"ipid_jump on 2000 injected RSTs with random IP IDs: {detected:.2%} detected "
          f"(expected about 7/8: 8,193+ of 65,536 IDs lie within 4096 of the client's)")
    assert false_positive <= 0.01
    assert detected >= 0.80
