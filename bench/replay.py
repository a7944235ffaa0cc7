"""Benchmark `resetwatch replay` on a large, realistic NFLOG capture. Prints numbers; never fails.

What it does, in order:

1. Generates (or reuses from `bench/out/`, keyed by every generator parameter) a pcap file with
   link type 239 (NFLOG), laid out byte for byte as `tcpdump -i nflog:10 -w` writes it on a
   little-endian host: a 4-byte nfgenmsg (family, version 0, resource id big-endian), then the
   TLVs the kernel emits at PREROUTING for a packet from an Ethernet device, in the kernel's
   order, each with a little-endian u16 length and type and padded to 4 bytes:
   PACKET_HDR(1), PREFIX(10) "resetwatch", IFINDEX_INDEV(4), HWADDR(8), HWTYPE(15), HWLEN(17),
   HWHEADER(16), TIMESTAMP(3), PAYLOAD(9) holding the IP packet cut to its first 128 bytes (the
   agent's copy range). Records are written with `struct` directly. IP and TCP checksums are
   left zero: none of the readers compared here verifies them.

   The traffic is a seeded random mix of flows. Shares of flows (each flow's packets are the at
   most 10 ingress packets the sampling rule logs, client to server):

   ======================  =====  ========================================================
   normal HTTPS-like        54%   SYN, ACK, ClientHello (PSH, or a full segment + PSH),
                                  ACKs and requests; 65% reach 10 packets, 35% end on FIN
   scanner probes (SYN)     15%   ZMap <= 4.0 (IP ID 54321, window 65535, MSS-only) 35%,
                                  ZMap 4.1+ templates 20%, masscan 25%, nmap 20%; 70% are
                                  followed by the scanner kernel's RST (other TTL), 30% not
   post-ACK resets           8%   SYN, ACK, then RST+ACK / RST / 2-3 RSTs with same, zero or
                                  different ack numbers, mostly with a foreign TTL
   post-PSH resets           8%   SYN, ACK, ClientHello, then 1-4 RSTs (injected multiple
                                  RSTs with various acks and foreign TTLs, RST+ACK mixes)
   idle (timeouts)           6%   silent after the SYN / the ACK / the first PSH / 2 PSHs
                                  (1.5% each)
   SYN retransmissions       3%   the SYN again after 1 s (and 3 s), then a normal flow
   port reuse                2%   a closed flow, then a new SYN (new ISN) on the same ports;
                                  a quarter reuse the ports of a still-open flow
   later-in-flow resets      2%   several data packets, then RST+ACK
   no SYN seen               2%   1-4 ACK/PSH packets of a connection whose SYN was missed
   ======================  =====  ========================================================

   About 20% of flows are IPv6 (22.5% of non-scanner flows, 5% of scanner probes). Client
   stacks (Linux, Windows, Apple, Android) set the SYN window, options and initial TTL. New
   flows arrive as a Poisson process (`--flow-rate`, default 2,000 per simulated second);
   RTTs are 5-250 ms and flows last 0.05-30 s (log-uniform), so thousands are in flight at
   once and their packets interleave in timestamp order as on the wire (about 6.4 packets per
   flow, so 2M packets span about 200 simulated seconds). Idle flows simply go silent;
   replay ends them after its default 300 s idle timeout -- or, when the file spans less
   than that, as `truncated` at the end of input.

2. Measures resetwatch on that file:

   a. in-process: `replay([file], Engine([Summary()]))` on one pinned core (`--cpu`), timed
      with `perf_counter` (wall) and `process_time` (CPU), best of `--repeat` by CPU time;
      packets/s and flows/s (judged + excluded flows), per wall second and per CPU second
      (the CPU figure is what one dedicated core does, and holds up when other processes
      share the machine; CPU/wall < 1 shows they did). The engine subclass only records the
      table size at each sweep (one call per 4,096 packets), for the memory analysis. Also
      `read_batches` alone (capture reader + `parse_fields`, what `replay` reads with; no
      table) to split the cost, the full pipeline with the cyclic GC disabled (what the
      collector costs), and the smaller captures (how the cost per packet moves as the table
      fills).
   b. peak RSS of `python3 -m resetwatch replay FILE --format json` in a subprocess, for a
      10,000-packet floor, the `--rss-sizes` captures and the main one, from `/usr/bin/time
      -v` (not `os.wait4` on a child of this process: Linux carries the forked image's
      high-water mark across exec, so every child would report at least this process's
      RSS), with the child's CPU time vs wall. RSS growth is compared with the growth of
      the flows held: the table holds idle flows for the 300 s idle timeout, so memory can
      only be flat between captures that both span more than ~300 s (e.g. `--packets
      6000000 --rss-sizes 4500000`).
   c. bytes per flow held: a `FlowTable` with a no-op callback is fed the SYN and the ACK of
      N distinct flows (packets built inside the traced region, each with its own key bytes
      as `parse_ip` makes them); tracemalloc's traced-memory delta / N, for IPv4 only, IPv6
      only and the 80/20 mix; plus the mix with the ACK sharing the SYN's key object. Then
      the worst case, measured the same way: hostile flows of a SYN and 8 RSTs (the most a
      flow holds before its 10th packet ends it), RST and RST+ACK alternating, every ack
      number, TTL and (IPv4) IP ID different (TTLs near 255, the largest bit sets), all
      within their close linger; and the same after a flood of SYNs has taken every shared
      SYN signature, each SYN with its own window, ack number and 40 bytes of options of
      unknown kinds.

3. Peers on the same file in the same invocation: `tcpdump -nn -r FILE -w /dev/null` (C,
   read and copy), `tcpdump -nn -r FILE` printing to /dev/null (C, decode), `tshark -r FILE -q
   -z io,stat,0` when installed, and scapy's `PcapReader` over the first `--scapy-packets`
   records (rate extrapolated; scapy has no NFLOG dissector, so it yields Raw packets).

4. If the in-process rate misses 200,000 packets/s (or `--profile always`), cProfile over a
   `--profile-packets` capture, top 15 by tottime.

Output: tables on stdout (progress on stderr), then one JSON line with every number.
Run: `cd /work/main && PYTHONPATH=agent python3 bench/replay.py` (`--help` for the flags).
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import gc
import hashlib
import heapq
import io
import itertools
import json
import math
import os
import platform
import pstats
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "agent") not in sys.path:
    sys.path.insert(0, str(ROOT / "agent"))

from resetwatch.engine import Engine  # noqa: E402
from resetwatch.flows import FlowTable  # noqa: E402
from resetwatch.packet import ACK, FIN, PSH, RST, SYN, Packet, options_fingerprint  # noqa: E402
from resetwatch.pcap import read_batches  # noqa: E402
from resetwatch.replay import replay  # noqa: E402
from resetwatch.summary import Summary  # noqa: E402

GEN_VERSION = 1
"""Bump when the generator's output changes, so cached captures are rebuilt."""

TARGET_PPS = 200_000
TARGET_FLOW_BYTES = 300
TARGET_WORST_FLOW_BYTES = 500
STEADY_SPAN_S = 340
"""Simulated seconds after which the table stops growing: idle timeout 300 s, plus the
longest flow (30 s) and the close linger (10 s)."""
OUT_DIR = ROOT / "bench" / "out"

# ---------------------------------------------------------------------------------------------
# Capture generator
# ---------------------------------------------------------------------------------------------

LINKTYPE_NFLOG = 239
COPY_RANGE = 128
NFLOG_GROUP = 10
AF_INET, AF_INET6 = 2, 10
RA = RST | ACK
PA = PSH | ACK
FA = FIN | ACK
U32 = 0xFFFFFFFF

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
# From the NFULA_TIMESTAMP value (big-endian sec, usec) through the TCP header. The payload
# TLV's header sits in between and is little-endian: its fields are passed byte-swapped.
_BODY4 = struct.Struct("!QQHHBBHHHBBH12sIIBBHHH")
_BODY6 = struct.Struct("!QQHHIHBB36sIIBBHHH")
_SWAP16 = tuple(((v & 0xFF) << 8) | (v >> 8) for v in range(1 << 16))
_PAYLOAD_TYPE_SWAPPED = 0x0900  # type 9 as little-endian bytes 09 00
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # by captured IP length & 3
_FILL = bytes.fromhex("1603010200010001fc0303") + bytes(
    random.Random(0).randrange(256) for _ in range(117)
)
_ROUTER_MAC = bytes.fromhex("020000000001")
_UPSTREAM_MAC = bytes.fromhex("0200000000fe")


def _tlv(kind: int, value: bytes) -> bytes:
    size = 4 + len(value)
    return struct.pack("<HH", size, kind) + value + b"\0" * (-size % 4)


def _nflog_head(family: int, ethertype: int) -> bytes:
    """Everything of an NFLOG record before the timestamp value (constant per family)."""
    eth = _ROUTER_MAC + _UPSTREAM_MAC + struct.pack("!H", ethertype)
    head = (
        struct.pack("!BBH", family, 0, NFLOG_GROUP)
        + _tlv(1, struct.pack("!HBx", ethertype, 0))  # PACKET_HDR: hw_protocol, hook PREROUTING
        + _tlv(10, b"resetwatch\0")  # PREFIX
        + _tlv(4, struct.pack("!I", 2))  # IFINDEX_INDEV
        + _tlv(8, struct.pack("!H2x8s", 6, _UPSTREAM_MAC))  # HWADDR
        + _tlv(15, struct.pack("!H", 1))  # HWTYPE: ARPHRD_ETHER
        + _tlv(17, struct.pack("!H", 14))  # HWLEN
        + _tlv(16, eth)  # HWHEADER
        + struct.pack("<HH", 20, 3)  # TIMESTAMP header; the value is in the body
    )
    assert len(head) % 4 == 0
    return head


_HEAD4 = _nflog_head(AF_INET, 0x0800)
_HEAD6 = _nflog_head(AF_INET6, 0x86DD)
_REC_FIXED = len(_HEAD4) + 16 + 4  # head, timestamp value, payload TLV header


def _options(spec: str, mss: int, tsval: int) -> bytes:
    """TCP options bytes from tokens: M mss, N nop, E end, S sack-ok, T timestamps, W<n>."""
    out = bytearray()
    for token in spec.split(","):
        if token == "M":
            out += struct.pack("!BBH", 2, 4, mss)
        elif token == "N":
            out.append(1)
        elif token == "E":
            out.append(0)
        elif token == "S":
            out += b"\x04\x02"
        elif token == "T":
            out += struct.pack("!BBII", 8, 10, tsval, (tsval * 7) & U32)
        elif token.startswith("W"):
            out += bytes((3, 3, int(token[1:])))
        elif token:
            raise ValueError(token)
    assert len(out) % 4 == 0, spec
    return bytes(out)


class _Stack:
    """A client operating system: SYN shape, initial TTL, later windows."""

    def __init__(
        self, name: str, ttl: int, win4: int, win6: int, syn: str, timestamps: bool, data_win: int
    ) -> None:
        self.name, self.ttl, self.win4, self.win6 = name, ttl, win4, win6
        self.syn, self.timestamps, self.data_win = syn, timestamps, data_win


_STACKS = (
    (_Stack("linux", 64, 64240, 64800, "M,S,T,N,W7", True, 502), 0.30),
    (_Stack("windows", 128, 64240, 64800, "M,N,W8,N,N,S", False, 1026), 0.30),
    (_Stack("apple", 64, 65535, 65535, "M,N,W6,N,N,T,S,E,E", True, 2058), 0.25),
    (_Stack("android", 64, 65535, 65535, "M,S,T,N,W9", True, 342), 0.15),
)

MIX = (
    ("normal", 0.54),
    ("scanner", 0.15),
    ("post_ack_reset", 0.08),
    ("post_psh_reset", 0.08),
    ("idle", 0.06),
    ("syn_retransmit", 0.03),
    ("port_reuse", 0.02),
    ("later_reset", 0.02),
    ("no_syn", 0.02),
)
_V6_SHARE, _V6_SHARE_SCANNERS = 0.225, 0.05
_RESETS_POST_ACK = (
    ("client_rstack", 0.40),
    ("single_rst", 0.20),
    ("acknumsame", 0.08),
    ("acknumsame0", 0.07),
    ("acknumdiff", 0.05),
    ("acknumdiff0", 0.05),
    ("rst_and_rstack", 0.10),
    ("multiple_rstacks", 0.05),
)
_RESETS_POST_PSH = (
    ("client_rstack", 0.25),
    ("single_rst", 0.10),
    ("acknumsame", 0.15),
    ("acknumsame0", 0.10),
    ("acknumdiff", 0.10),
    ("acknumdiff0", 0.08),
    ("rst_and_rstack", 0.12),
    ("multiple_rstacks", 0.10),
)
_SCANNERS = (("zmap", 0.35), ("zmap_modern", 0.20), ("masscan", 0.25), ("nmap", 0.20))
_ZMAP_TEMPLATES = ("M,N,W8,N,N,S", "M,S,T,N,W7", "M,N,W6,N,N,T,S,E,E", "M")


class _Chooser:
    """Weighted choice with one `random()` call."""

    def __init__(self, table: Any) -> None:
        self.items = [item for item, _ in table]
        weights = [w for _, w in table]
        total = sum(weights)
        self.cum = list(itertools.accumulate(w / total for w in weights))
        self.cum[-1] = 1.0

    def __call__(self, rng: random.Random) -> Any:
        return self.items[bisect.bisect_right(self.cum, rng.random())]


class _Conn:
    """One connection's constant fields, as the generator needs them."""

    __slots__ = ("data_opts", "df", "ip_id", "isn", "key", "sisn", "ttl", "v6", "v6word")

    def __init__(self, key: bytes, v6: bool, ttl: int, df: bool, ip_id: int) -> None:
        self.key, self.v6, self.ttl, self.df, self.ip_id = key, v6, ttl, df, ip_id
        self.isn = 0
        self.sisn = 0
        self.data_opts = b""
        self.v6word = 0x60000000


class Generator:
    """Writes the capture: flows start in a Poisson stream, their packets merge by time."""

    def __init__(self, seed: int, flow_rate: float) -> None:
        self.rng = random.Random(seed)
        self.flow_rate = flow_rate
        rng = self.rng
        self.kind = _Chooser(MIX)
        self.stack = _Chooser(_STACKS)
        self.scanner = _Chooser(_SCANNERS)
        self.resets_ack = _Chooser(_RESETS_POST_ACK)
        self.resets_psh = _Chooser(_RESETS_POST_PSH)
        self.clients4 = [
            rng.randrange(0x01000000, 0xDF000000).to_bytes(4, "big") for _ in range(50_000)
        ]
        self.clients6 = [
            bytes.fromhex("2a0" + format(rng.getrandbits(52), "013x"))
            + rng.getrandbits(64).to_bytes(8, "big")
            for _ in range(20_000)
        ]
        self.scanners4 = [
            rng.randrange(0x01000000, 0xDF000000).to_bytes(4, "big") for _ in range(300)
        ]
        self.scanners6 = self.clients6[:50]
        self.servers4 = [bytes((203, 0, 113, i)) for i in (1, 2, 3, 4)]
        self.servers6 = [
            bytes.fromhex("20010db8000000000000000000000001"),
            bytes.fromhex("20010db8000000000000000000000002"),
        ]
        self.opts_cache: dict[tuple[str, int, int], bytes] = {}
        self.heap: list[tuple[int, int, bytes]] = []
        self.counter = itertools.count()
        self.pushed = 0
        self.kinds: dict[str, int] = {name: 0 for name, _ in MIX}
        self.flows = 0
        self.flows6 = 0
        self.packets6 = 0

    # -- packets ------------------------------------------------------------------------------

    def _opts(self, spec: str, mss: int) -> bytes:
        variant = self.rng.getrandbits(4)
        key = (spec, mss, variant)
        opts = self.opts_cache.get(key)
        if opts is None:
            opts = self.opts_cache[key] = _options(spec, mss, self.rng.getrandbits(32))
        return opts

    def _push(
        self,
        t: int,
        c: _Conn,
        flags: int,
        seq: int,
        ack: int,
        window: int,
        plen: int = 0,
        opts: bytes = b"",
        ttl: int = -1,
        ip_id: int = -1,
        df: Optional[bool] = None,
    ) -> None:
        """Queue one packet at time `t` (integer microseconds)."""
        if ttl < 0:
            ttl = c.ttl
        sec, usec = divmod(t, 1_000_000)
        tcp_len = 20 + len(opts)
        if c.v6:
            ip_len = 40 + tcp_len + plen
            cap = ip_len if ip_len < COPY_RANGE else COPY_RANGE
            body = _BODY6.pack(
                sec,
                usec,
                _SWAP16[cap + 4],
                _PAYLOAD_TYPE_SWAPPED,
                c.v6word,
                tcp_len + plen,
                6,
                ttl,
                c.key,
                seq,
                ack,
                tcp_len << 2,
                flags,
                window,
                0,
                0,
            )
            head = _HEAD6
            fill = cap - 60 - len(opts)
            self.packets6 += 1
        else:
            if ip_id < 0:
                ip_id = c.ip_id = (c.ip_id + 1) & 0xFFFF
            if df is None:
                df = c.df
            ip_len = 20 + tcp_len + plen
            cap = ip_len if ip_len < COPY_RANGE else COPY_RANGE
            body = _BODY4.pack(
                sec,
                usec,
                _SWAP16[cap + 4],
                _PAYLOAD_TYPE_SWAPPED,
                0x45,
                0,
                ip_len,
                ip_id,
                0x4000 if df else 0,
                ttl,
                6,
                0,
                c.key,
                seq,
                ack,
                tcp_len << 2,
                flags,
                window,
                0,
                0,
            )
            head = _HEAD4
            fill = cap - 40 - len(opts)
        pad = _PADS[cap & 3]
        caplen = _REC_FIXED + cap + len(pad)
        record = b"".join(
            (_PCAP_RECORD.pack(sec, usec, caplen, caplen), head, body, opts, _FILL[:fill], pad)
        )
        heapq.heappush(self.heap, (t, next(self.counter), record))
        self.pushed += 1

    # -- connections --------------------------------------------------------------------------

    def _conn(self, scanner: bool = False, key: Optional[bytes] = None) -> _Conn:
        rng = self.rng
        v6 = rng.random() < (_V6_SHARE_SCANNERS if scanner else _V6_SHARE)
        if key is None:
            if scanner:
                src = rng.choice(self.scanners6 if v6 else self.scanners4)
                r = rng.random()
                dport = 443 if r < 0.6 else 80 if r < 0.8 else rng.randrange(1, 65536)
            else:
                src = rng.choice(self.clients6 if v6 else self.clients4)
                dport = 443 if rng.random() < 0.85 else 80
            dst = rng.choice(self.servers6 if v6 else self.servers4)
            key = src + dst + struct.pack("!HH", rng.randrange(32768, 61000), dport)
        else:
            v6 = len(key) == 36
        self.flows += 1
        self.flows6 += v6
        c = _Conn(key, v6, 0, True, rng.getrandbits(16))
        c.isn = rng.getrandbits(32)
        c.sisn = rng.getrandbits(32)
        if v6:
            c.v6word = 0x60000000 | rng.getrandbits(20)
        return c

    def _client(self, key: Optional[bytes] = None) -> tuple[_Conn, _Stack, bytes, int]:
        """A client connection: (conn, stack, SYN options, SYN window)."""
        rng = self.rng
        c = self._conn(key=key)
        stack: _Stack = self.stack(rng)
        c.ttl = stack.ttl - rng.randrange(3, 31)
        mss = 1440 if c.v6 else 1460
        syn_opts = self._opts(stack.syn, mss)
        if stack.timestamps:
            c.data_opts = self._opts("N,N,T", mss)
        return c, stack, syn_opts, stack.win6 if c.v6 else stack.win4

    def _rtt(self) -> int:
        return int(math.exp(self.rng.uniform(math.log(5_000), math.log(250_000))))

    def _duration(self) -> int:
        return int(math.exp(self.rng.uniform(math.log(50_000), math.log(30_000_000))))

    def _foreign_ttl(self, c: _Conn) -> int:
        rng = self.rng
        while True:
            ttl = rng.choice((64, 64, 128, 255)) - rng.randrange(1, 9)
            if ttl != c.ttl:
                return ttl

    def _handshake(
        self, t: int, c: _Conn, stack: _Stack, syn_opts: bytes, syn_win: int, rtt: int
    ) -> int:
        """SYN at t, ACK one RTT later; returns the ACK's time."""
        self._push(t, c, SYN, c.isn, 0, syn_win, 0, syn_opts)
        t += rtt
        self._push(t, c, ACK, (c.isn + 1) & U32, (c.sisn + 1) & U32, stack.data_win, 0, c.data_opts)
        return t

    def _session(
        self, t: int, c: _Conn, stack: _Stack, count: int, end_by: int, ending: str
    ) -> tuple[int, int]:
        """After the ACK at `t`: a ClientHello, then data/ACK packets until `count` packets
        in all (`ending` "fin" adds FIN+ACK and maybe an ACK, "rst" a RST+ACK, within the
        count), spread until `end_by`. Returns (time, next seq) after the last packet."""
        rng = self.rng
        seq = (c.isn + 1) & U32
        ack = (c.sisn + 1) & U32
        win = stack.data_win
        opts = c.data_opts
        # The ClientHello: one PSH segment, or (large hellos) a full segment and a PSH.
        steps: list[tuple[int, int]] = []
        if rng.random() < 0.4:
            steps += [(ACK, 1448 if c.v6 else 1460), (PA, rng.randrange(200, 500))]
        else:
            steps.append((PA, rng.randrange(230, 600)))
        tail = 2 if ending == "fin" and rng.random() < 0.6 else 1 if ending != "ongoing" else 0
        while len(steps) < count - tail:
            if rng.random() < 0.6:
                steps.append((ACK, 0))
            else:
                steps.append((PA, rng.randrange(30, 900)))
        del steps[max(count - tail, 1) :]
        if ending == "fin":
            steps.append((FA, 0))
            if tail == 2:
                steps.append((ACK, 0))
        elif ending == "rst":
            steps.append((RA, 0))
        first = t + rng.randrange(50, 400)
        span = max(end_by - first, len(steps))
        times = sorted(first + int(rng.random() * span) for _ in range(len(steps) - 1))
        times.insert(0, first)
        last = first
        for when, (flags, plen) in zip(times, steps):
            when = max(when, last + 1)
            last = when
            self._push(when, c, flags, seq, ack, 0 if flags & RST else win, plen, opts)
            seq = (seq + plen + (1 if flags & FIN else 0)) & U32
            if plen == 0 and flags == ACK:
                ack = (ack + rng.randrange(1, 4) * 1400) & U32
        return last, seq

    def _resets(self, t: int, c: _Conn, seq: int, shape: str) -> None:
        """One to four RSTs from time `t`, shaped as the tags they should earn."""
        rng = self.rng
        ack = (c.sisn + 1 + rng.randrange(0, 3) * 1400) & U32 or 1
        foreign = self._foreign_ttl(c)
        injected_id = rng.getrandbits(16)
        n = rng.randrange(2, 4)
        packets: list[tuple[int, int, int]]  # flags, ack, ttl
        if shape == "client_rstack":
            packets = [(RA, ack, c.ttl)]
        elif shape == "single_rst":
            packets = [(RST, 0, foreign if rng.random() < 0.7 else c.ttl)]
        elif shape == "acknumsame":
            packets = [(RST, ack, foreign)] * n
        elif shape == "acknumsame0":
            packets = [(RST, 0, foreign)] * n
        elif shape == "acknumdiff":
            packets = [(RST, (ack + i * 1460) & U32 or 1, foreign) for i in range(n)]
        elif shape == "acknumdiff0":
            packets = [(RST, 0, foreign)] + [
                (RST, (ack + i * 1460) & U32 or 1, foreign) for i in range(n - 1)
            ]
        elif shape == "rst_and_rstack":
            packets = [(RST, ack, foreign), (RA, ack, c.ttl)]
        else:  # multiple_rstacks
            packets = [(RA, (ack + i * 1460) & U32, foreign) for i in range(n)]
        for i, (flags, rst_ack, ttl) in enumerate(packets):
            injected = ttl != c.ttl
            self._push(
                t,
                c,
                flags,
                (seq + i * 1460) & U32 if injected else seq,
                rst_ack,
                0,
                ttl=ttl,
                ip_id=(injected_id + i) & 0xFFFF if injected else -1,
            )
            t += rng.randrange(20, 2_000)

    def flow(self, t: int) -> None:
        """Start one flow at time `t` (microseconds): queue all its packets."""
        rng = self.rng
        kind: str = self.kind(rng)
        self.kinds[kind] += 1
        if kind == "scanner":
            self._scanner(t)
            return
        if kind == "no_syn":
            c, stack, _, _ = self._client()
            seq = c.isn
            for _ in range(rng.randrange(1, 5)):
                plen = rng.randrange(30, 900) if rng.random() < 0.4 else 0
                self._push(
                    t, c, PA if plen else ACK, seq, c.sisn, stack.data_win, plen, c.data_opts
                )
                seq = (seq + plen) & U32
                t += rng.randrange(1_000, 2_000_000)
            return
        c, stack, syn_opts, syn_win = self._client()
        rtt = self._rtt()
        if kind == "normal":
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            if rng.random() < 0.65:
                self._session(t, c, stack, 8, t + self._duration(), "ongoing")
            else:
                self._session(t, c, stack, rng.randrange(2, 8), t + self._duration(), "fin")
        elif kind in ("post_ack_reset", "post_psh_reset"):
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            seq = (c.isn + 1) & U32
            if kind == "post_ack_reset":
                delay = int(math.exp(rng.uniform(math.log(1_000), math.log(5_000_000))))
                self._resets(t + delay, c, seq, self.resets_ack(rng))
            else:
                t, seq = self._session(t, c, stack, 1, t + 1_000, "ongoing")
                self._resets(t + rng.randrange(1_000, 40_000), c, seq, self.resets_psh(rng))
        elif kind == "idle":
            stage = rng.randrange(4)
            if stage == 0:
                self._push(t, c, SYN, c.isn, 0, syn_win, 0, syn_opts)
            else:
                t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
                if stage >= 2:
                    self._session(t, c, stack, 1 if stage == 2 else 3, t + rtt * 3, "ongoing")
        elif kind == "syn_retransmit":
            self._push(t, c, SYN, c.isn, 0, syn_win, 0, syn_opts)
            t += 1_000_000
            if rng.random() < 0.3:
                self._push(t, c, SYN, c.isn, 0, syn_win, 0, syn_opts)
                t += 2_000_000
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            self._session(t, c, stack, rng.randrange(3, 7), t + self._duration(), "fin")
        elif kind == "port_reuse":
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            if rng.random() < 0.75:
                t, _ = self._session(
                    t, c, stack, rng.randrange(2, 5), t + rng.randrange(20_000, 2_000_000), "fin"
                )
            t += int(math.exp(rng.uniform(math.log(200_000), math.log(30_000_000))))
            c, stack, syn_opts, syn_win = self._client(key=c.key)
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            self._session(t, c, stack, rng.randrange(2, 8), t + self._duration(), "fin")
        else:  # later_reset
            t = self._handshake(t, c, stack, syn_opts, syn_win, rtt)
            self._session(t, c, stack, rng.randrange(4, 8), t + self._duration(), "rst")

    def _scanner(self, t: int) -> None:
        rng = self.rng
        c = self._conn(scanner=True)
        shape: str = self.scanner(rng)
        if c.v6 and shape.startswith("zmap"):
            shape = "masscan"
        hops = rng.randrange(5, 25)
        c.df = False
        if shape == "zmap":
            c.ttl, window, opts, ip_id = 255 - hops, 65535, _options("M", 1460, 0), 54321
        elif shape == "zmap_modern":
            template = rng.choice(_ZMAP_TEMPLATES)
            c.ttl, window, ip_id = 255 - hops, 65535, rng.getrandbits(16)
            opts = self._opts(template, 1460)
            if ip_id == 54321:
                ip_id = 1
        elif shape == "masscan":
            c.ttl, window, opts, ip_id = 255 - hops, 1024, b"", rng.getrandbits(16)
        else:
            c.ttl, window, ip_id = rng.randrange(37, 60) - hops // 4, 1024, rng.getrandbits(16)
            opts = _options("M", 1460, 0)
        self._push(t, c, SYN, c.isn, 0, window, 0, opts, ip_id=ip_id)
        if rng.random() < 0.7:
            # The scanner's own kernel answers our SYN-ACK with a RST: other TTL, DF, ID 0.
            self._push(
                t + self._rtt(), c, RST, (c.isn + 1) & U32, 0, 0, ttl=64 - hops, ip_id=0, df=True
            )

    # -- the file -----------------------------------------------------------------------------

    def write(self, path: Path, packets: int) -> dict[str, Any]:
        """Write at least `packets` packets to `path`; returns what was generated."""
        rng = self.rng
        heap = self.heap
        pop = heapq.heappop
        t = 1_700_000_000 * 1_000_000
        first_ts = t
        mean_gap = 1_000_000 / self.flow_rate
        written = 0
        last = t
        started = time.perf_counter()
        with open(path, "wb") as f:
            f.write(_PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_NFLOG))
            out: list[bytes] = []
            while self.pushed < packets:
                t += int(rng.expovariate(1.0) * mean_gap) + 1
                while heap and heap[0][0] <= t:
                    last, _, record = pop(heap)
                    out.append(record)
                if len(out) >= 16384:
                    written += len(out)
                    f.write(b"".join(out))
                    out.clear()
                self.flow(t)
            while heap:
                last, _, record = pop(heap)
                out.append(record)
            written += len(out)
            f.write(b"".join(out))
        return {
            "packets": written,
            "flows": self.flows,
            "flows_ipv6": self.flows6,
            "packets_ipv6": self.packets6,
            "kinds": self.kinds,
            "span_s": round((last - first_ts) / 1e6, 3),
            "flow_rate": self.flow_rate,
            "bytes": path.stat().st_size,
            "generate_s": round(time.perf_counter() - started, 2),
        }


def capture(
    out: Path,
    packets: int,
    seed: int,
    flow_rate: float,
    regenerate: bool,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """The cached capture for these parameters, generated when missing."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"nflog-{packets}-seed{seed}-rate{flow_rate:g}-g{GEN_VERSION}"
    path = out / f"{name}.pcap"
    meta_path = out / f"{name}.json"
    if not regenerate and path.exists() and meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("bytes") == path.stat().st_size:
            meta["cached"] = True
            return path, meta
    log(f"generating {path.name} ({packets:,} packets) ...")
    tmp = path.with_suffix(".tmp")
    meta = Generator(seed, flow_rate).write(tmp, packets)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    meta["cached"] = False
    log(
        f"  {meta['packets']:,} packets, {meta['flows']:,} flows, {meta['bytes'] / 1e6:.0f} MB "
        f"in {meta['generate_s']:.1f} s"
    )
    return path, meta


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


class PeakEngine(Engine):
    """An `Engine` that notes the largest table size seen at a sweep (every 4,096 packets)."""

    peak_flows = 0

    def sweep(self, now: float, budget: int = 1024) -> int:
        size = len(self.table)
        if size > self.peak_flows:
            self.peak_flows = size
        return super().sweep(now, budget)


def _timing(records: int, wall: float, cpu: Optional[float]) -> dict[str, Any]:
    """Rates from a record count, wall seconds and CPU seconds (None when unknown)."""
    out: dict[str, Any] = {
        "records": records,
        "wall_s": round(wall, 3),
        "packets_per_s": round(records / wall) if wall > 0 else None,
    }
    if cpu is not None:
        out["cpu_s"] = round(cpu, 3)
        out["packets_per_cpu_s"] = round(records / cpu) if cpu > 0 else None
        out["us_per_packet_cpu"] = round(cpu / max(records, 1) * 1e6, 3)
        out["cpu_over_wall"] = round(cpu / wall, 3) if wall > 0 else None
    return out


def run_inprocess(path: Path, gc_enabled: bool = True) -> dict[str, Any]:
    """Time `replay()` over the file with an Engine and a Summary sink."""
    summary = Summary()
    engine = PeakEngine([summary])
    gc.collect()
    was_enabled = gc.isenabled()
    if not gc_enabled:
        gc.disable()
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stats = replay([path], engine)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        if was_enabled:
            gc.enable()
    flows = summary.tally.classified + summary.tally.excluded_total
    return {
        **_timing(stats.records, wall, cpu),
        "packets": stats.packets,
        "flows": flows,
        "flows_per_s": round(flows / wall),
        "flows_per_cpu_s": round(flows / cpu) if cpu > 0 else None,
        "peak_table_flows": engine.peak_flows,
        "errors": stats.errors,
        "invalid": {k.value: v for k, v in engine.invalid.items()},
        "categories": {c.value: n for c, n in summary.tally.categories().items()},
        "excluded": {e.value: n for e, n in summary.tally.excluded_by().items()},
    }


def run_reader_only(path: Path) -> dict[str, Any]:
    """`read_batches` alone: the capture reader and `parse_fields` (as `replay` reads), no
    table."""
    gc.collect()
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for batch in read_batches(path):
        n += len(batch)
    return _timing(n, time.perf_counter() - wall0, time.process_time() - cpu0)


_GNU_TIME = "/usr/bin/time"
_TIME_FIELDS = {
    "Maximum resident set size (kbytes)": "max_rss_kb",
    "User time (seconds)": "user_s",
    "System time (seconds)": "sys_s",
    "Exit status": "exit",
}


def run_timed(
    cmd: list[str], stdout: Any = subprocess.DEVNULL, env: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """Run a command: wall time, and its CPU times and peak RSS.

    Through `/usr/bin/time -v` when present: `os.wait4` on a child forked from this (large)
    process would report at least this process's RSS, because the kernel carries the
    pre-exec image's high-water mark over. Without GNU time, `os.wait4` it is (flagged).
    """
    use_time = os.access(_GNU_TIME, os.X_OK)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        full = [_GNU_TIME, "-v", "-o", report.name, *cmd] if use_time else cmd
        wall0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=stdout, stderr=subprocess.PIPE, env=env)
        assert proc.stderr is not None
        err = proc.stderr.read()  # small; read before waiting so the pipe cannot fill
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - wall0
        proc.returncode = status >> 8 if os.WIFEXITED(status) else -1
        proc.stderr.close()
        result: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
            "exit": proc.returncode,
            "rss_source": "/usr/bin/time -v" if use_time else "wait4 (includes parent image)",
        }
        if use_time:
            for line in report.read().splitlines():
                name, _, value = line.strip().rpartition(": ")
                if name in _TIME_FIELDS:
                    result[_TIME_FIELDS[name]] = float(value) if "." in value else int(value)
    result["max_rss_mb"] = round(result.pop("max_rss_kb") / 1024, 1)
    result["user_s"] = round(result["user_s"], 3)
    result["sys_s"] = round(result["sys_s"], 3)
    result["stderr"] = err.decode(errors="replace").strip()[-300:]
    return result


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    agent = str(ROOT / "agent")
    env["PYTHONPATH"] = agent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(path: Path) -> dict[str, Any]:
    """`python3 -m resetwatch replay FILE --format json` in a subprocess."""
    with tempfile.TemporaryFile() as out:
        result = run_timed(
            [sys.executable, "-m", "resetwatch", "replay", str(path), "--format", "json"],
            stdout=out,
            env=_child_env(),
        )
        out.seek(0)
        try:
            meta = json.loads(out.read())["result"]["meta"]
            result["packets"] = meta["packets"]
            result["records"] = meta["records"]
            result["classified"] = meta["counts"]["summary_0"]["classified"]
        except (ValueError, KeyError) as error:
            result["json_error"] = str(error)
    records = result.get("records", 0)
    result.update(_timing(records, result["wall_s"], result["user_s"] + result["sys_s"]))
    return result


def run_peer(cmd: list[str], records: int) -> dict[str, Any]:
    """A peer tool over the whole file: its rates, taking the file's record count."""
    result = run_timed(cmd)
    result.update(_timing(records, result["wall_s"], result["user_s"] + result["sys_s"]))
    if result["exit"] != 0:
        result["packets_per_s"] = result["packets_per_cpu_s"] = None
    return result


def flow_bytes(n: int, v6_share: float, shared_key: bool = False, seed: int = 7) -> float:
    """tracemalloc's traced-memory growth per flow after feeding the SYN and ACK of `n` flows.

    Everything a held flow keeps is created inside the traced region, as `parse_ip` would:
    distinct key bytes per packet (unless `shared_key`), timestamps, sequence numbers.
    """
    rng = random.Random(seed)
    table = FlowTable(lambda flow, reason: None, max_flows=n + 1)
    opts = sys.intern("M1460,S,T,N,W7")
    t0 = 1_700_000_000.0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        src, dst, port = _random_client(rng, v6_share, 32768 + i % 28000)
        ts = t0 + i * 1e-4
        seq = rng.getrandbits(32)
        key = b"".join((src, dst, port))
        table.add(Packet(ts, key, SYN, seq, 0, 64240, 52, rng.getrandbits(16), True, 0, opts))
        ack_key = key if shared_key else b"".join((src, dst, port))
        table.add(
            Packet(
                ts + 0.03,
                ack_key,
                ACK,
                (seq + 1) & U32,
                rng.getrandbits(32),
                502,
                52,
                0,
                True,
                0,
                "",
            )
        )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(table) == n, len(table)
    return (after - before) / n


_SERVER4, _SERVER6 = bytes((203, 0, 113, 1)), bytes.fromhex("20010db8000000000000000000000001")
_PORTS = struct.Struct("!HH")


def _random_client(rng: random.Random, v6_share: float, sport: int) -> tuple[bytes, bytes, bytes]:
    """A random client address (IPv6 with probability `v6_share`), the lab server's address
    of that family, and the packed ports: the three parts of a flow key."""
    if rng.random() < v6_share:
        return rng.getrandbits(128).to_bytes(16, "big"), _SERVER6, _PORTS.pack(sport, 443)
    return rng.getrandbits(32).to_bytes(4, "big"), _SERVER4, _PORTS.pack(sport, 443)


def flow_bytes_hostile(
    n: int, v6_share: float, own_signatures: bool = False, seed: int = 11
) -> float:
    """tracemalloc's traced-memory growth per flow after a SYN and 8 RSTs for each of `n`
    flows (see the module docstring, c); `own_signatures` first fills the shared SYN
    signature list, as a flood of SYNs with random windows would."""
    rng = random.Random(seed)
    table = FlowTable(lambda flow, reason: None, max_flows=n + 1)
    opts = sys.intern("M1460,S,T,N,W7")
    t0 = 1_700_000_000.0
    if own_signatures:
        for i in range(5000):  # more distinct signatures than the list holds
            table.add(Packet(t0, bytes(12), SYN, i, 0, i % 65536, 7, 0, True, 0, str(i)))
        table.drain(t0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        src, dst, port = _random_client(rng, v6_share, 1024 + i % 64000)
        v6 = len(src) == 16
        ts = t0 + i * 1e-5  # all n flows within one close linger: every one is held
        window, ack, syn_opts = 64240, 0, opts
        if own_signatures:
            window, ack = rng.getrandbits(16), rng.getrandbits(32)
            kinds = bytes(b for _ in range(20) for b in (rng.randrange(100, 256), 2))
            syn_opts = options_fingerprint(kinds, 0, len(kinds))
        key = b"".join((src, dst, port))
        table.add(
            Packet(ts, key, SYN, rng.getrandbits(32), ack, window, 52, rng.getrandbits(16),
                   True, 0, syn_opts)
        )
        for j in range(8):
            table.add(
                Packet(ts + (j + 1) * 1e-3, b"".join((src, dst, port)),
                       RST | (ACK if j % 2 else 0), rng.getrandbits(32), rng.getrandbits(32),
                       0, 255 - 17 * j, 0 if v6 else rng.randrange(1, 65536), False, 0, "")
            )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(table) == n, len(table)
    return (after - before) / n


def run_scapy(path: Path, limit: int) -> dict[str, Any]:
    """scapy's PcapReader over the first `limit` records, rate extrapolated."""
    try:
        import logging

        logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
        from scapy.utils import PcapReader
    except ImportError as error:
        return {"skipped": f"scapy not importable: {error}"}
    n = 0
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with PcapReader(str(path)) as reader:
        for _ in reader:
            n += 1
            if n >= limit:
                break
    return _timing(n, time.perf_counter() - wall0, time.process_time() - cpu0)


def profile(path: Path, top: int = 15) -> tuple[str, list[dict[str, Any]]]:
    """cProfile of one in-process replay, top `top` by tottime."""
    engine = Engine([Summary()])
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    replay([path], engine)
    profiler.disable()
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    table = "\n".join(line.replace(str(ROOT) + "/", "") for line in lines[start:] if line.strip())
    rows = []
    entries = stats.stats  # type: ignore[attr-defined]
    ordered = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    total = sum(value[2] for value in entries.values())
    for (filename, lineno, func), (_cc, ncalls, tottime, cumtime, _callers) in ordered:
        short = filename.replace(str(ROOT) + "/", "")
        rows.append(
            {
                "function": f"{short}:{lineno}({func})",
                "ncalls": ncalls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
                "share": round(tottime / total, 3) if total else 0.0,
            }
        )
    header = lines[start - 2].strip() if start >= 2 else ""
    return (header + "\n" if header else "") + table, rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        title,
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines) + "\n"


def _sources() -> dict[str, str]:
    """Short hashes of the measured modules: the code may change between runs."""
    package = ROOT / "agent" / "resetwatch"
    names = ("packet", "pcap", "flows", "classify", "engine", "replay", "summary", "cli")
    return {
        name: hashlib.sha256((package / f"{name}.py").read_bytes()).hexdigest()[:12]
        for name in names
        if (package / f"{name}.py").exists()
    }


def _pin(cpu: int) -> Optional[int]:
    if not hasattr(os, "sched_setaffinity") or cpu == -1:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu < 0 or cpu not in allowed else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(float(part)) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated packet counts") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/replay.py",
        description="Benchmark `resetwatch replay` on a generated NFLOG capture of mixed flows "
        "(see the module docstring for the traffic mix) and compare with tcpdump, tshark and "
        "scapy. Prints tables and a final JSON line; never fails on time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--packets",
        type=int,
        default=2_000_000,
        help="packets in the main capture (at least this many are written)",
    )
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument(
        "--flow-rate",
        type=float,
        default=2000.0,
        help="new flows per simulated second (Poisson arrivals)",
    )
    p.add_argument(
        "--rss-sizes",
        type=_sizes,
        default="500000",
        help="extra capture sizes (packets, comma-separated) whose subprocess peak "
        "RSS is compared with the main capture's; a 10,000-packet floor is added",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="in-process timed runs on the main capture (the best is reported)",
    )
    p.add_argument(
        "--flow-bytes-n",
        type=int,
        default=200_000,
        help="distinct flows fed to the table for bytes per flow",
    )
    p.add_argument(
        "--scapy-packets",
        type=int,
        default=200_000,
        help="records scapy's PcapReader iterates (rate extrapolated); 0 skips",
    )
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile a run: auto = only when the rate misses 200,000 packets/s",
    )
    p.add_argument(
        "--profile-packets", type=int, default=300_000, help="size of the capture that is profiled"
    )
    p.add_argument(
        "--cpu",
        type=int,
        default=-2,
        help="pin this process and its children to this CPU (-2: the last allowed "
        "one, -1: do not pin)",
    )
    p.add_argument("--no-peers", action="store_true", help="skip tcpdump, tshark and scapy")
    p.add_argument("--regenerate", action="store_true", help="rebuild cached captures")
    p.add_argument("--generate-only", action="store_true", help="write the capture(s) and stop")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where captures are cached")
    return p


def _f(value: Optional[float], spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _rel(value: Optional[float], base: Optional[float]) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def _timing_row(name: str, r: dict[str, Any], flows: bool = True) -> list[str]:
    return [
        name,
        _f(r.get("packets_per_s")),
        _f(r.get("packets_per_cpu_s")),
        _f(r.get("flows_per_cpu_s")) if flows else "-",
        _f(r.get("us_per_packet_cpu"), ".2f"),
        _f(r.get("wall_s"), ".2f"),
        _f(r.get("cpu_s"), ".2f"),
        _f(r.get("cpu_over_wall"), ".2f"),
    ]


TIMING_HEADER = [
    "run",
    "packets/s",
    "packets/CPU-s",
    "flows/CPU-s",
    "CPU us/packet",
    "wall s",
    "CPU s",
    "CPU/wall",
]


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    result: dict[str, Any] = {
        "bench": "replay",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "params": {
            "packets": args.packets,
            "seed": args.seed,
            "flow_rate": args.flow_rate,
            "generator": GEN_VERSION,
        },
    }
    cpu = _pin(args.cpu)
    result["pinned_cpu"] = cpu
    result["sources"] = _sources()

    main_path, meta = capture(
        args.out, args.packets, args.seed, args.flow_rate, args.regenerate, _log
    )
    shown = main_path.relative_to(ROOT) if ROOT in main_path.parents else main_path
    result["capture"] = {"path": str(shown), **meta}
    rss_sizes = sorted({10_000, *args.rss_sizes} - {args.packets})
    other_captures = {
        n: capture(args.out, n, args.seed, args.flow_rate, args.regenerate, _log) for n in rss_sizes
    }
    others = {n: path for n, (path, _) in other_captures.items()}
    spans = {n: m["span_s"] for n, (_, m) in other_captures.items()}
    spans[args.packets] = meta["span_s"]
    profile_path: Optional[Path] = None
    if args.profile != "never":
        profile_path = capture(
            args.out, args.profile_packets, args.seed, args.flow_rate, args.regenerate, _log
        )[0]
    if args.generate_only:
        print(json.dumps(result, separators=(",", ":")))
        return 0

    out = sys.stdout
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    result["loadavg_start"] = [round(x, 2) for x in load]
    origin = "cached" if meta["cached"] else f"generated in {meta['generate_s']:.1f} s"
    out.write(
        f"\nresetwatch replay benchmark: python {result['python']}, {result['cpus']} CPUs, "
        f"pinned to CPU {cpu}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
        f"capture {shown}: {meta['packets']:,} packets, {meta['flows']:,} flows "
        f"({meta['flows_ipv6'] / meta['flows']:.1%} of flows and "
        f"{meta['packets_ipv6'] / meta['packets']:.1%} of packets IPv6), "
        f"{meta['bytes'] / 1e6:,.0f} MB,\n  {meta['span_s']:,.0f} s simulated at "
        f"{args.flow_rate:,.0f} new flows/s ({origin})\n  flow mix: "
        + ", ".join(f"{k} {v / meta['flows']:.1%}" for k, v in meta["kinds"].items())
        + "\n  rates: packets/s = records / wall time; packets/CPU-s = records / CPU time of "
        "the process (what one\n  dedicated core does; robust to other load on the machine, "
        "which CPU/wall < 1 reveals)\n\n"
    )

    # (a) in-process
    runs = []
    for i in range(max(1, args.repeat)):
        _log(f"in-process replay of {main_path.name} (run {i + 1}/{max(1, args.repeat)}) ...")
        runs.append(run_inprocess(main_path))
    best = min(runs, key=lambda r: r["cpu_s"])
    result["inprocess"] = best
    result["inprocess_runs"] = [{k: r[k] for k in ("wall_s", "cpu_s")} for r in runs]
    _log("read_batches alone ...")
    reader = run_reader_only(main_path)
    result["reader_only"] = reader
    _log("in-process replay with the cyclic GC disabled ...")
    no_gc = run_inprocess(main_path, gc_enabled=False)
    result["inprocess_gc_disabled"] = {k: v for k, v in no_gc.items() if not isinstance(v, dict)}
    small: dict[int, dict[str, Any]] = {}
    for n, path in others.items():
        _log(f"in-process replay of {path.name} ...")
        small[n] = run_inprocess(path)
    result["inprocess_other_sizes"] = {
        str(n): {k: v for k, v in r.items() if not isinstance(v, dict)} for n, r in small.items()
    }

    rows = [
        _timing_row("replay(), Engine + Summary", best),
        _timing_row("  same, cyclic GC disabled", no_gc),
        _timing_row("  read_batches only (no table)", reader, flows=False),
    ]
    rows += [_timing_row(f"replay() on the {n:,}-packet file", r) for n, r in small.items()]
    out.write(
        _table(
            f"(a) in-process, one core: {best['records']:,} records, {best['flows']:,} flows "
            f"judged + excluded; best of {len(runs)} by CPU time (wall "
            + ", ".join(f"{r['wall_s']:.2f}" for r in runs)
            + " s; CPU "
            + ", ".join(f"{r['cpu_s']:.2f}" for r in runs)
            + " s)",
            TIMING_HEADER,
            rows,
        )
    )
    table_us = best["us_per_packet_cpu"] - reader["us_per_packet_cpu"]
    gc_us = best["us_per_packet_cpu"] - no_gc["us_per_packet_cpu"]
    result["split_us_per_packet_cpu"] = {
        "reader_parse": reader["us_per_packet_cpu"],
        "table_classify_sinks": round(table_us, 3),
        "cyclic_gc": round(gc_us, 3),
    }
    out.write(
        f"  CPU per packet: {best['us_per_packet_cpu']:.2f} us = read_batches "
        f"{reader['us_per_packet_cpu']:.2f} + table/classify/sinks {table_us:.2f} "
        f"(of the total, the cyclic GC: {gc_us:+.2f})\n"
        f"  peak flows held in the table: {best['peak_table_flows']:,}\n"
        "  verdicts: "
        + ", ".join(f"{k} {v:,}" for k, v in best["categories"].items())
        + "\n  excluded: "
        + ", ".join(f"{k} {v:,}" for k, v in best["excluded"].items())
        + (f"\n  invalid: {best['invalid']}" if best["invalid"] else "")
        + (f"\n  errors: {best['errors']}" if best["errors"] else "")
        + "\n\n"
    )

    # (b) subprocess RSS
    rss: dict[str, dict[str, Any]] = {}
    rss_rows = []
    for n, path in [*others.items(), (args.packets, main_path)]:
        _log(f"subprocess resetwatch replay on {path.name} ...")
        r = run_cli(path)
        r["peak_table_flows"] = small.get(n, best)["peak_table_flows"]
        r["span_s"] = spans[n]
        rss[str(n)] = r
        rss_rows.append(
            [
                f"{r.get('records', 0):,}",
                f"{path.stat().st_size / 1e6:,.0f}",
                f"{spans[n]:,.0f}",
                f"{r['max_rss_mb']:.1f}",
                f"{r['peak_table_flows']:,}",
                _f(r.get("packets_per_s")),
                _f(r.get("packets_per_cpu_s")),
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                _f(r["cpu_over_wall"], ".2f"),
                str(r["exit"]),
            ]
        )
    result["cli"] = rss
    source = next(iter(rss.values()))["rss_source"]
    out.write(
        _table(
            f"(b) subprocess `python3 -m resetwatch replay FILE --format json` (peak RSS from "
            f"{source})",
            [
                "packets",
                "file MB",
                "span s",
                "peak RSS MB",
                "peak flows held*",
                "packets/s",
                "packets/CPU-s",
                "wall s",
                "CPU s",
                "CPU/wall",
                "exit",
            ],
            rss_rows,
        )
    )
    for r in rss.values():
        if r["exit"] != 0 or r.get("json_error"):
            out.write(f"  !! exit {r['exit']}: {r.get('json_error', '')} {r['stderr']}\n")
    keys = sorted(rss, key=int)
    lo, hi = rss[keys[-2] if len(keys) > 1 else keys[0]], rss[keys[-1]]
    d_rss = (hi["max_rss_mb"] - lo["max_rss_mb"]) * 2**20
    d_flows = hi["peak_table_flows"] - lo["peak_table_flows"]
    d_packets = hi.get("records", 0) - lo.get("records", 0)
    per_flow = d_rss / d_flows if d_flows > 0 else None
    per_packet = d_rss / d_packets if d_packets > 0 else None
    result["memory"] = {
        "rss_mb_by_packets": {k: v["max_rss_mb"] for k, v in rss.items()},
        "peak_flows_by_packets": {k: v["peak_table_flows"] for k, v in rss.items()},
        "rss_growth_mb": round(d_rss / 2**20, 1),
        "rss_growth_per_extra_held_flow_bytes": round(per_flow) if per_flow else None,
        "rss_growth_per_extra_packet_bytes": round(per_packet, 2) if per_packet else None,
    }
    steady = min(lo["span_s"], hi["span_s"]) > STEADY_SPAN_S
    result["memory"]["both_past_steady_state"] = steady
    out.write(
        "  * flows held: the largest table size seen at a sweep in the in-process run of that "
        "file.\n"
        f"  {lo.get('records', 0):,} -> {hi.get('records', 0):,} packets "
        f"(x{hi.get('records', 0) / max(lo.get('records', 1), 1):.1f}): peak RSS "
        f"{lo['max_rss_mb']:.1f} -> {hi['max_rss_mb']:.1f} MB ({d_rss / 2**20:+.1f} MB), flows "
        f"held {lo['peak_table_flows']:,} -> {hi['peak_table_flows']:,}: "
        f"{_f(per_packet, ',.1f')} B per extra packet read, {_f(per_flow, ',.0f')} B per "
        "extra flow held.\n"
    )
    if steady:
        out.write(
            f"  Both captures span more than {STEADY_SPAN_S} s (idle timeout + longest flow + "
            "linger): the table is at its steady\n  state in both, so this difference is what "
            "a longer file costs.\n\n"
        )
    else:
        out.write(
            "  Idle flows stay in the table for the 300 s idle timeout, so the table keeps "
            f"growing until a capture spans\n  ~{STEADY_SPAN_S} s (these span "
            f"{lo['span_s']:,.0f} and {hi['span_s']:,.0f} s): growth that follows flows held, "
            "not packets read, is the table\n  filling up, not the file. For the plateau: "
            "--packets 6000000 --rss-sizes 4500000 (~380 and ~510 s).\n\n"
        )

    # (c) bytes per flow
    _log(f"bytes per flow ({args.flow_bytes_n:,} flows, 4 variants) ...")
    fb = {
        "ipv4": flow_bytes(args.flow_bytes_n, 0.0),
        "ipv6": flow_bytes(args.flow_bytes_n, 1.0),
        "mixed_20pct_v6": flow_bytes(args.flow_bytes_n, 0.2),
        "mixed_shared_key": flow_bytes(args.flow_bytes_n, 0.2, shared_key=True),
    }
    _log(f"worst-case bytes per flow ({args.flow_bytes_n:,} hostile flows, 4 variants) ...")
    worst = {
        "hostile_ipv4": flow_bytes_hostile(args.flow_bytes_n, 0.0),
        "hostile_ipv6": flow_bytes_hostile(args.flow_bytes_n, 1.0),
        "hostile_mixed_20pct_v6": flow_bytes_hostile(args.flow_bytes_n, 0.2),
        # Last: it fills the process's shared signature list for good.
        "hostile_ipv6_own_signatures": flow_bytes_hostile(args.flow_bytes_n, 1.0, True),
    }
    worst_rst = max(worst["hostile_ipv4"], worst["hostile_ipv6"])
    result["bytes_per_flow"] = {k: round(v, 1) for k, v in {**fb, **worst}.items()}
    out.write(
        _table(
            f"(c) bytes per flow held: tracemalloc delta / N after the SYN and ACK of "
            f"N={args.flow_bytes_n:,} flows",
            ["flows", "bytes/flow"],
            [
                ["IPv4 only", f"{fb['ipv4']:.0f}"],
                ["IPv6 only", f"{fb['ipv6']:.0f}"],
                ["mixed, 20% IPv6 (the target's measure)", f"{fb['mixed_20pct_v6']:.0f}"],
                ["mixed, if the ACK's key were the SYN's object", f"{fb['mixed_shared_key']:.0f}"],
                ["worst case: SYN + 8 RSTs, IPv4", f"{worst['hostile_ipv4']:.0f}"],
                ["worst case: SYN + 8 RSTs, IPv6", f"{worst['hostile_ipv6']:.0f}"],
                ["worst case: SYN + 8 RSTs, mixed 20% IPv6",
                 f"{worst['hostile_mixed_20pct_v6']:.0f}"],
                ["  same, IPv6, SYNs past the shared signatures (own options)",
                 f"{worst['hostile_ipv6_own_signatures']:.0f}"],
            ],
        )
    )
    out.write("\n")

    # Peers
    ours = best["packets_per_cpu_s"]
    peer_rows = [
        [
            "resetwatch replay() in-process (full pipeline)",
            _f(best["packets_per_s"]),
            _f(ours),
            "1.00x",
            "",
        ],
        [
            "resetwatch CLI subprocess (incl. startup, JSON)",
            _f(hi.get("packets_per_s")),
            _f(hi.get("packets_per_cpu_s")),
            _rel(hi.get("packets_per_cpu_s"), ours),
            "",
        ],
        [
            "resetwatch read_batches only (pcap.py+parse_fields)",
            _f(reader["packets_per_s"]),
            _f(reader["packets_per_cpu_s"]),
            _rel(reader["packets_per_cpu_s"], ours),
            "",
        ],
    ]
    if not args.no_peers:
        n_records = best["records"]
        tcpdump = shutil.which("tcpdump")
        if tcpdump:
            _log("tcpdump -w /dev/null ...")
            r = result["tcpdump_copy"] = run_peer(
                [tcpdump, "-nn", "-r", str(main_path), "-w", "/dev/null"], n_records
            )
            peer_rows.append(
                [
                    "tcpdump -nn -r FILE -w /dev/null (C, read+copy)",
                    _f(r["packets_per_s"]),
                    _f(r["packets_per_cpu_s"]),
                    _rel(r["packets_per_cpu_s"], ours),
                    f"exit {r['exit']}",
                ]
            )
            _log("tcpdump -nn -r FILE > /dev/null ...")
            r = result["tcpdump_print"] = run_peer(
                [tcpdump, "-nn", "-r", str(main_path)], n_records
            )
            peer_rows.append(
                [
                    "tcpdump -nn -r FILE >/dev/null (C, decode+print)",
                    _f(r["packets_per_s"]),
                    _f(r["packets_per_cpu_s"]),
                    _rel(r["packets_per_cpu_s"], ours),
                    f"exit {r['exit']}",
                ]
            )
        else:
            peer_rows.append(["tcpdump", "-", "-", "-", "not installed: skipped"])
        tshark = shutil.which("tshark")
        if tshark:
            _log("tshark ...")
            r = result["tshark"] = run_peer(
                [tshark, "-r", str(main_path), "-q", "-z", "io,stat,0"], n_records
            )
            peer_rows.append(
                [
                    "tshark -r FILE -q -z io,stat,0",
                    _f(r["packets_per_s"]),
                    _f(r["packets_per_cpu_s"]),
                    _rel(r["packets_per_cpu_s"], ours),
                    f"exit {r['exit']}",
                ]
            )
        else:
            result["tshark"] = {"skipped": "not installed"}
            peer_rows.append(
                ["tshark -r FILE -q -z io,stat,0", "-", "-", "-", "not installed: skipped"]
            )
        if args.scapy_packets > 0:
            _log(f"scapy PcapReader over {args.scapy_packets:,} records ...")
            r = result["scapy"] = run_scapy(main_path, args.scapy_packets)
            peer_rows.append(
                [
                    f"scapy PcapReader, first {r.get('records', 0):,} records",
                    _f(r.get("packets_per_s")),
                    _f(r.get("packets_per_cpu_s")),
                    _rel(r.get("packets_per_cpu_s"), ours),
                    r.get("skipped", "extrapolated; Raw (no NFLOG dissector)"),
                ]
            )
    out.write(
        _table(
            f"peers on the same file ({best['records']:,} records)",
            ["tool", "packets/s", "packets/CPU-s", "vs resetwatch (CPU)", "note"],
            peer_rows,
        )
    )

    # Targets
    mixed = fb["mixed_20pct_v6"]
    result["targets"] = {
        "packets_per_cpu_s": ours >= TARGET_PPS,
        "packets_per_s_wall": best["packets_per_s"] >= TARGET_PPS,
        "bytes_per_flow": mixed <= TARGET_FLOW_BYTES,
        "worst_bytes_per_flow": worst_rst <= TARGET_WORST_FLOW_BYTES,
    }
    out.write(
        "\ntargets (printed, never enforced):\n"
        f"  >= {TARGET_PPS:,} packets/s on one core: {ours:,} per CPU-second "
        f"({best['packets_per_s']:,}/s wall) -> {'met' if ours >= TARGET_PPS else 'MISSED'}"
        f" ({ours / TARGET_PPS:.0%} of target)\n"
        f"  <= {TARGET_FLOW_BYTES} bytes per flow held (mixed): {mixed:.0f} -> "
        f"{'met' if mixed <= TARGET_FLOW_BYTES else 'MISSED'} (IPv4 {fb['ipv4']:.0f}, "
        f"IPv6 {fb['ipv6']:.0f})\n"
        f"  <= {TARGET_WORST_FLOW_BYTES} bytes per flow held, worst case (SYN + 8 RSTs): "
        f"{worst_rst:.0f} -> {'met' if worst_rst <= TARGET_WORST_FLOW_BYTES else 'MISSED'} "
        f"(with SYN signatures of their own: {worst['hostile_ipv6_own_signatures']:.0f})\n"
        f"  memory flat in file size: {d_rss / 2**20:+.1f} MB peak RSS for "
        f"x{hi.get('records', 0) / max(lo.get('records', 1), 1):.1f} the packets, "
        f"{_f(per_packet, ',.1f')} B per extra packet -> "
        + (
            "judged here (both past the table's steady state)"
            if steady
            else "not judged by this pair: the table was still filling (see (b))"
        )
        + "\n"
    )

    # Profile
    if profile_path is not None and (args.profile == "always" or ours < TARGET_PPS):
        _log(f"cProfile over {profile_path.name} ...")
        text, prof_rows = profile(profile_path)
        result["profile"] = {"file": profile_path.name, "top": prof_rows}
        out.write(
            f"\ncProfile of replay() over {profile_path.name}, top 15 by tottime "
            "(cProfile's per-call overhead inflates small functions):\n" + text + "\n"
        )

    result["loadavg_end"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    out.write("\n" + json.dumps(result, separators=(",", ":"), default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
