"""`resetwatch replay`: run the engine over capture files, with their timestamps as the clock."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from typing import Callable, Optional, Union

from .engine import Engine
from .packet import Invalid, PacketFields
from .pcap import CaptureError, read_batches

SWEEP_EVERY = 4096
"""Packets between two sweeps: often enough to keep the table small, rarely enough that the
sweep's scan for the front of the table costs nothing per packet. Sweeps only free memory:
the table holds every deadline at every packet, so no verdict depends on this number."""

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def ingress_filter(servers: Sequence[str]) -> Optional[Callable[[bytes], bool]]:
    """A test on a flow key: is the packet going *to* one of these addresses or networks?

    Raises ValueError naming the bad value. None when no server is given: every packet is
    then ingress, as in an NFLOG capture.
    """
    if not servers:
        return None
    exact: set[bytes] = set()
    ranges: list[tuple[int, int, int]] = []  # (key length, mask, network)
    for text in servers:
        try:
            net: Network = ipaddress.ip_network(text, strict=False)
        except ValueError as error:
            raise ValueError(f"--server {text!r}: not an address or CIDR ({error})") from None
        alen = 4 if net.version == 4 else 16
        if net.prefixlen == net.max_prefixlen:
            exact.add(net.network_address.packed)
        else:
            # A key is source, destination and 4 bytes of ports: 12 bytes (IPv4) or 36 (IPv6).
            ranges.append((2 * alen + 4, int(net.netmask), int(net.network_address)))

    def is_ingress(key: bytes) -> bool:
        alen = 4 if len(key) == 12 else 16
        dst = key[alen : 2 * alen]
        if dst in exact:
            return True
        if ranges:
            value = int.from_bytes(dst, "big")
            for key_len, mask, network in ranges:
                if key_len == len(key) and value & mask == network:
                    return True
        return False

    return is_ingress


class ReplayStats:
    def __init__(self) -> None:
        self.files = 0
        self.records = 0
        self.packets = 0
        """Valid ingress packets fed to the engine."""
        self.egress = 0
        self.clock = 0.0
        self.errors: list[str] = []
        """One line per file that could not be read to its end."""


def replay(
    paths: Iterable[Union[str, os.PathLike[str]]],
    engine: Engine,
    is_ingress: Optional[Callable[[bytes], bool]] = None,
) -> ReplayStats:
    """Feed every packet of the files, in order, as one stream; then drain the table.

    The clock is the newest packet timestamp seen, egress packets' included: each moves it
    where it lies in the stream. A file that cannot be read to its end (not a capture, cut
    short) adds a line to `errors`; what came before the damage counts, and the other files
    are still read.
    """
    stats = ReplayStats()
    clock = float("-inf")
    countdown = SWEEP_EVERY  # packets to feed until the next sweep
    feed_many = engine.feed_many
    count_invalid = engine.count_invalid

    def feed(packets: list[PacketFields]) -> None:
        # In runs that end where a sweep is due: as if fed packet by packet.
        nonlocal clock, countdown
        start, end = 0, len(packets)
        while start < end:
            stop = min(end, start + countdown)
            run = packets if stop - start == end else packets[start:stop]
            clock = feed_many(run, clock)
            countdown -= stop - start
            start = stop
            if not countdown:
                countdown = SWEEP_EVERY
                engine.sweep(clock, budget=1 << 30)

    try:
        for path in paths:
            stats.files += 1
            records = invalid = egress = 0
            try:
                for batch in read_batches(path):
                    records += len(batch)
                    packets = [item for item in batch if not isinstance(item, Invalid)]
                    if len(packets) != len(batch):
                        for item in batch:
                            if isinstance(item, Invalid):
                                count_invalid(item)
                                invalid += 1
                    if is_ingress is None:
                        feed(packets)
                        continue
                    # Egress packets are not fed, but move the clock where they lie.
                    run: list[PacketFields] = []
                    for p in packets:
                        if is_ingress(p[1]):
                            run.append(p)
                            continue
                        egress += 1
                        if p[0] > clock:
                            if run:
                                feed(run)
                                run = []
                            clock = max(clock, p[0])
                    feed(run)
            except CaptureError as error:
                stats.errors.append(str(error))
            except OSError as error:
                stats.errors.append(f"{os.fspath(path)}: {error.strerror or error}")
            finally:
                stats.records += records
                stats.packets += records - invalid - egress
                stats.egress += egress
    finally:
        stats.clock = clock if clock != float("-inf") else 0.0
        engine.drain(stats.clock)
    return stats
