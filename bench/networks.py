"""What the client-network lookup costs replay: packets per CPU-second with and without
`--ipdb`, on a capture of mixed traffic and on a SYN-only flood (each packet a flow, the
worst case: a lookup per packet). Prints numbers; never fails.

    PYTHONPATH=agent python3 bench/networks.py [--mixed CAPTURE] [--syns N]

The mixed capture defaults to the one bench/replay.py generates (bench/out/, 500,000
packets; run that first). The database is written here with mmdb-writer (the [test] extra):
every IPv4 /8 and IPv6 /16 an AS of its own, in one of 40 countries, so every lookup answers.
"""

from __future__ import annotations

import argparse
import random
import resource
import struct
import sys
import tempfile
from pathlib import Path

from resetwatch.engine import Engine
from resetwatch.networks import Networks
from resetwatch.replay import replay
from resetwatch.summary import Summary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIXED = ROOT / "bench" / "out" / "nflog-500000-seed1-rate2000-g1.pcap"


def write_database(path: Path) -> None:
    import mmdb_writer
    from netaddr import IPSet

    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True,
                                    database_type="ipinfo lite.mmdb")  # fmt: skip
    countries = [f"{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(40)]
    for i in range(256):
        writer.insert_network(IPSet([f"{i}.0.0.0/8"]), {
            "asn": f"AS{64512 + i}", "as_name": f"Net {i}", "country_code": countries[i % 40]})
    for i in range(1, 256):  # ::/8 holds the IPv4 networks above
        writer.insert_network(IPSet([f"{i:02x}00::/8"]), {
            "asn": f"AS{65000 + i}", "as_name": f"Net6 {i}", "country_code": countries[i % 40]})
    writer.to_db_file(str(path))


def write_syn_flood(path: Path, count: int, seed: int = 1) -> None:
    """A raw-IP pcap (link type 101) of `count` SYNs from random IPv4 sources."""
    rnd = random.Random(seed)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for n in range(count):
            src = rnd.getrandbits(32)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, n & 0xFFFF, 0x4000, 64, 6, 0,
                             src.to_bytes(4, "big"), bytes((203, 0, 113, 1)))  # fmt: skip
            tcp = struct.pack("!HHIIBBHHH", rnd.randrange(1024, 65535), 443,
                              rnd.getrandbits(32), 0, 0x50, 0x02, 64240, 0, 0)  # fmt: skip
            ts = 1_700_000_000 + n / 20_000  # 20,000 SYNs a second
            frame = ip + tcp
            out.write(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(frame), len(frame)))
            out.write(frame)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(
    path: Path, database: str | None, repeat: int, idle: float
) -> tuple[float, int]:
    """Best packets per CPU-second over `repeat` runs, and the flows judged."""
    best, judged = 0.0, 0
    for _ in range(repeat):
        network_of = Networks.open([database]).of if database else None
        summary = Summary()
        engine = Engine([summary], idle_timeout=idle, close_linger=min(10.0, idle / 2),
                        network_of=network_of)  # fmt: skip
        start = cpu()
        stats = replay([path], engine)
        spent = cpu() - start
        best = max(best, stats.packets / spent if spent else 0.0)
        judged = summary.tally.classified
    return best, judged


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixed", type=Path, default=DEFAULT_MIXED)
    parser.add_argument("--syns", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "bench.mmdb"
        write_database(database)
        flood = Path(tmp) / "syns.pcap"
        write_syn_flood(flood, args.syns)
        # The flood's SYNs time out after 1 s, so nearly every one is judged (and looked up).
        captures = [("SYN flood (a flow per packet)", flood, 1.0)]
        if args.mixed.exists():
            captures.insert(0, ("mixed (bench/replay.py)", args.mixed, 300.0))
        else:
            print(f"({args.mixed} missing: run bench/replay.py first for the mixed figure)")
        print(f"{'capture':<32}{'without':>12}{'with --ipdb':>14}{'cost':>9}  judged")
        for name, path, idle in captures:
            plain, judged = timed(path, None, args.repeat, idle)
            looked_up, judged_too = timed(path, str(database), args.repeat, idle)
            assert judged == judged_too
            slower = (plain / looked_up - 1) * 100 if looked_up else float("nan")
            print(f"{name:<32}{plain:>12,.0f}{looked_up:>14,.0f}{slower:>8.1f}%  {judged:,}")
        print("packets per CPU-second, best of", args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
