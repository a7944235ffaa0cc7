"""`ipid_jump` on real Linux clients: the false-positive rate on ordinary aborting clients
(SO_LINGER 0 sockets in the lab's client namespace), through the real sampling rules and the
real ``resetwatch replay``. Prints the rate; the injector with random IP IDs is a lab scenario
(`forged_injector_random_ipid`, checked with the others).

Needs root (namespaces, iptables), iproute2, iptables, tcpdump, hping3 and scapy.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.lab import Lab
from tests.lab.capture import NflogCapture, install_sampling_rules
from tests.lab.requirements import lab_marks, skip_reason
from tests.lab.scenarios import (
    CLOSE_LINGER_S,
    CLOSED_PORT,
    MARGIN_S,
    NFLOG_BATCH_S,
    replay,
)
from tests.lab.traffic import HTTP_PORT, many_aborts, start_server, syn_only

pytestmark = lab_marks(
    skip_reason("network namespaces, iptables rules, NFLOG",
                tools=("ip", "iptables", "tcpdump", "hping3"), modules=("scapy",))
)  # fmt: skip

CLIENTS = 300
BASE_PORT = 43000


def test_ordinary_aborting_clients_have_no_ipid_jump(tmp_path: Path) -> None:
    with Lab(tag="ipid") as lab:
        start_server(lab)
        install_sampling_rules(lab, "server", group=10)
        dst = lab.server_addr(4)
        with NflogCapture(lab, tmp_path / "aborts.pcap", "server", group=10):
            many_aborts(lab, dst, HTTP_PORT, BASE_PORT, CLIENTS)
            time.sleep(CLOSE_LINGER_S + NFLOG_BATCH_S + MARGIN_S)
            syn_only(lab, dst, CLOSED_PORT, BASE_PORT + CLIENTS + 1)  # moves replay's clock
            time.sleep(NFLOG_BATCH_S + MARGIN_S)
    records, _ = replay(tmp_path / "aborts.pcap", tmp_path / "records.jsonl")
    flows = [r for p, r in records.items() if BASE_PORT <= p < BASE_PORT + CLIENTS]
    judged = [r for r in flows if "tags" in r]
    assert len(judged) == CLIENTS, [r for r in flows if "tags" not in r][:3]
    assert all(r["outcome"] == "reset" for r in judged)
    jumped = [r for r in judged if "ipid_jump" in r["tags"]]
    rate = len(jumped) / len(judged)
    print(f"\nipid_jump on {len(judged)} real Linux aborting clients: {rate:.2%} false positives")
    assert rate <= 0.01, jumped[:3]
