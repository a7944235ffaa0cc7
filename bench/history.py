"""What the 15-minute history costs per retained day, in memory and on disk. Prints numbers.

    PYTHONPATH=agent python3 bench/history.py [CAPTURE ...]

A bucket's cost depends only on how many distinct keys (family and whole verdict) it holds,
never on how many flows it counted. The keys are taken from real verdicts: those `replay`
gives for the captures named (default: the committed lab fixture), and, as the worst case,
every distinct key of all of them in every bucket. A day is 96 buckets. Memory is measured
with tracemalloc (Python objects only: enum members and shared verdicts are not counted, they
exist once per process); disk is the history file's JSON text.

With an IP database the history splits each verdict by the client's network and country
labels (the metrics' top `network_top`, default 50, plus `other`): the rows "x N networks"
spread the same verdicts over N networks (each with its own country) and `other`, every
verdict in every network, which is the most a bucket can hold. A bucket never holds more
distinct keys than the flows it counted, so a quiet server stays far below these rows.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from pathlib import Path

from resetwatch.classify import Verdict
from resetwatch.engine import Engine
from resetwatch.history import BUCKET_SECONDS, History, to_document
from resetwatch.replay import replay
from resetwatch.summary import Summary
from resetwatch.tally import JudgedKey, Tally

ROOT = Path(__file__).resolve().parents[1]
BUCKETS_PER_DAY = 86400 // BUCKET_SECONDS


def verdict_keys(paths: list[str]) -> Tally:
    summary = Summary()
    replay(paths, Engine([summary], idle_timeout=5.0, close_linger=1.0))
    return summary.tally


def spread(keys: Tally, networks: int) -> Tally:
    """`keys` under each of `networks` labels (AS and country) and `other`."""
    labels = [(str(64500 + i), f"{chr(65 + i // 26 % 26)}{chr(65 + i % 26)}")
              for i in range(networks)] + [("other", "other")]
    out = Tally()
    for key, count in keys.judged.items():
        for asn, country in labels:
            out.add_judged(JudgedKey(key.family, key.verdict, asn, country), count)
    for reason_key, count in keys.excluded.items():
        out.add_excluded(reason_key, count)
    return out


def day(keys: Tally) -> tuple[int, int]:
    """Bytes of memory and of file for one day of buckets that each hold `keys`."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History()
    for index in range(BUCKETS_PER_DAY):
        # Fresh key and verdict objects per bucket, as the packet loop makes them (one per
        # flow); the history shares equal keys between buckets (History._intern).
        fresh = Tally()
        for key, count in keys.judged.items():
            verdict = Verdict(*key.verdict[:3], tuple(key.verdict.tags))
            fresh.add_judged(JudgedKey(key.family, verdict, key.asn, key.country), count)
        fresh.excluded = dict(keys.excluded)
        history.merge({index * BUCKET_SECONDS: fresh})
        del fresh
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    memory = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    disk = len(json.dumps(to_document(history.snapshot(), 0.0), separators=(",", ":")))
    return memory, disk


def main(argv: list[str]) -> int:
    paths = argv or [str(ROOT / "tests" / "fixtures" / "lab_mixed_v4v6.pcap")]
    keys = verdict_keys(paths)
    typical = Tally()
    # A typical bucket: the ten most common keys (most flows share a handful of verdicts).
    for key, count in sorted(keys.judged.items(), key=lambda kv: -kv[1])[:10]:
        typical.add_judged(key, count)
    for reason_key, count in keys.excluded.items():
        typical.add_excluded(reason_key, count)
    print(f"captures: {', '.join(paths)}")
    print(f"{'bucket holds':<34}{'keys':>6}{'memory/day':>14}{'disk/day':>12}")
    rows = [("typical (10 commonest verdicts)", typical), ("every distinct key seen", keys)]
    for networks in (10, 50):
        rows += [(f"typical x {networks} networks", spread(typical, networks)),
                 (f"every key x {networks} networks", spread(keys, networks))]
    for name, tally in rows:
        memory, disk = day(tally)
        count = len(tally.judged) + len(tally.excluded)
        print(f"{name:<34}{count:>6}{memory / 1024:>12.1f} KiB{disk / 1024:>8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
