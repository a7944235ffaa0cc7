"""What the 15-minute history costs per retained day, in memory and on disk. Prints numbers.

    PYTHONPATH=agent python3 bench/history.py [CAPTURE ...]

A bucket's cost depends only on how many distinct keys (family and whole verdict) it holds,
never on how many flows it counted. The keys are taken from real verdicts: those `replay`
gives for the captures named (default: the committed lab fixture), and, as the worst case,
every distinct key of all of them in every bucket. A day is 96 buckets. Memory is measured
with tracemalloc (Python objects only: enum members and shared verdicts are not counted, they
exist once per process); disk is the history file's JSON text.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from pathlib import Path

from resetwatch.engine import Engine
from resetwatch.history import BUCKET_SECONDS, History, to_document
from resetwatch.replay import replay
from resetwatch.summary import Summary
from resetwatch.tally import Tally

ROOT = Path(__file__).resolve().parents[1]
BUCKETS_PER_DAY = 86400 // BUCKET_SECONDS


def verdict_keys(paths: list[str]) -> Tally:
    summary = Summary()
    replay(paths, Engine([summary], idle_timeout=5.0, close_linger=1.0))
    return summary.tally


def day(keys: Tally) -> tuple[int, int]:
    """Bytes of memory and of file for one day of buckets that each hold `keys`."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    history = History()
    for index in range(BUCKETS_PER_DAY):
        history.merge({index * BUCKET_SECONDS: keys})
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
    for name, tally in (("typical (10 commonest verdicts)", typical),
                        ("every distinct key seen", keys)):
        memory, disk = day(tally)
        count = len(tally.judged) + len(tally.excluded)
        print(f"{name:<34}{count:>6}{memory / 1024:>12.1f} KiB{disk / 1024:>8.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
