"""Benchmark: a burst of SYNs while another program holds the xtables lock. Prints numbers.

Run as root from the repository root (serialised with the other heavy runs)::

    flock /tmp/rw-heavy.lock env PYTHONPATH=agent:. python3 bench/held_lock.py \\
        [--agent-tree agent] [--count 60000] [--interval u50] [--buffer-max 8388608]

A lab (`tests.lab.Lab`, namespaces only, no route out) runs `resetwatch run` with the
iptables-legacy backend, probability 1 and a rules check every second. The agent's tools use
a lock file of the benchmark's own (XTABLES_LOCKFILE), held with `flock ... sleep 25`; once
the checks wait for it, hping3 sends `--count` SYNs to the lab server (each one a new
connection: a SYN, then the client's RST, both logged). The numbers: packets the agent
received of those logged, NFLOG overruns, rules check timeouts, /healthz. `--agent-tree`
points at another checkout's agent/ to compare versions. It never passes or fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.lab import Lab
from tests.lab.agent import agent_env, agent_flags, start_agent
from tests.lab.traffic import HTTP_PORT, start_server

HOLD_S = 25
SETTLE_S = 12.0
"""Seconds after the burst before reading the counters (the loop catches up meanwhile)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent-tree", default="agent", help="the agent/ directory to run")
    parser.add_argument("--count", type=int, default=60000, help="SYNs in the burst")
    parser.add_argument("--interval", default="u50", help="hping3 -i (u50: one per 50 µs)")
    parser.add_argument("--buffer-max", type=int, default=8 << 20, help="nflog_buffer_max")
    args = parser.parse_args()
    tree = str(Path(args.agent_tree).resolve())
    with tempfile.TemporaryDirectory() as tmp, Lab(tag="lockbench") as lab:
        start_server(lab)
        lock = Path(tmp) / "xtables.lock"
        lock.touch()
        env = {**agent_env(), "XTABLES_LOCKFILE": str(lock), "PYTHONPATH": tree}
        flags = agent_flags(lab, backend="iptables-legacy", records=None)
        flags += ["--nflog-buffer-max", str(args.buffer_max)]
        agent = start_agent(lab, flags, Path(tmp) / "agent.log", env=env)
        holder = subprocess.Popen(["flock", str(lock), "sleep", str(HOLD_S)],
                                  start_new_session=True)
        try:
            time.sleep(6)  # a check is now waiting for the lock
            started = time.monotonic()
            lab.run("client", ["hping3", "-q", "-S", "-p", str(HTTP_PORT), "-i", args.interval,
                               "-c", str(args.count), lab.server4], check=False, timeout=300)
            sent_s = time.monotonic() - started
            time.sleep(SETTLE_S)
            samples = agent.samples()
            health = agent.get("/healthz").strip()
        finally:
            os.killpg(holder.pid, signal.SIGTERM)
            holder.wait(10)
        code = agent.stop(30)

    def get(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), float("nan"))

    logged = 2 * args.count  # the SYN and the client's RST of each connection
    received = get("resetwatch_nflog_packets_total")
    result = {
        "agent": tree,
        "syns": args.count,
        "send_seconds": round(sent_s, 1),
        "logged": logged,
        "received": received,
        "lost_share": round(1 - received / logged, 3),
        "overruns": get("resetwatch_nflog_overruns_total"),
        "check_timeouts": get("resetwatch_rules_check_timeouts_total"),
        "healthz": health,
        "exit": code,
    }
    print(f"{args.count} SYNs in {sent_s:.1f} s with the xtables lock held: received "
          f"{received:.0f} of {logged} logged packets ({result['lost_share']:.1%} lost), "
          f"{result['overruns']:.0f} overruns, {result['check_timeouts']} check timeouts, "
          f"/healthz {health!r}, exit {code}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
