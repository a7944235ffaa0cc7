"""One incident, one page: the shipped inhibition rules (deploy/alertmanager/
resetwatch.inhibit.yml) in a real Alertmanager, delivering to a webhook.

The alerts a middlebox in one client network raises at every level (its network, its
country, the site, the fleet, and the servers' tickets) are posted as Prometheus would post
them, with a Post-PSH fleet page of an unrelated incident beside them. Alertmanager, routing
by [alertname, category] as the docs advise, must leave exactly the network's page for the
first incident and the fleet's for the second: every other alert is inhibited, and the
webhook is sent only those two.

Alertmanager and the webhook run in the lab's server namespace, on its loopback. Needs root,
iproute2, curl and /usr/bin/prometheus-alertmanager; skips with the reason otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.monitoring import ALERTMANAGER, Monitoring
from tests.lab import Lab
from tests.lab.agent import wait_until
from tests.lab.requirements import lab_marks, skip_reason

pytestmark = [
    *lab_marks(
        skip_reason(
            "a network namespace for Alertmanager",
            tools=("ip", "curl"),
            also_missing=[f"{ALERTMANAGER} (Debian package prometheus-alertmanager)"]
            if not os.access(ALERTMANAGER, os.X_OK) else [],
        )
    ),
    pytest.mark.timeout(180),
]

WAIT_S = 60.0
ACK, PSH = "ResetwatchPostAckSpike", "ResetwatchPostPshSpike"


def _alert(name: str, level: str, **labels: str) -> dict[str, Any]:
    category = "post_ack" if name == ACK else "post_psh"
    severity = "ticket" if level == "instance" else "page"
    return {
        "labels": {"alertname": name, "job": "resetwatch", "level": level,
                   "category": category, "severity": severity, **labels},
        "annotations": {"summary": f"{category} {level}"},
    }


INCIDENT = [
    _alert(ACK, "asn", asn="64501"),
    _alert(ACK, "country", country="NL"),
    _alert(ACK, "site", site="ams"),
    _alert(ACK, "fleet"),
    _alert(ACK, "instance", instance="edge-a1", site="ams"),
    _alert(ACK, "instance", instance="edge-a2", site="ams"),
]
OTHER = [_alert(PSH, "fleet")]


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels["alertname"], labels["level"]


def test_one_incident_leaves_one_page(tmp_path: Path) -> None:
    with Lab(tag="inhibit") as lab:
        mon = Monitoring(lab, tmp_path, agent_port=9824)
        mon.start_webhook()
        mon.start_alertmanager(group_by=("alertname", "category"))
        mon.post_alerts(INCIDENT + OTHER)

        def settled() -> list[dict[str, Any]]:
            held = mon.alertmanager_alerts()
            return held if len(held) == len(INCIDENT + OTHER) else []

        held = wait_until(settled, WAIT_S, "Alertmanager holding every alert", 0.5,
                          details=mon.log_tails)
        active = {_key(a["labels"]) for a in held if not a["status"]["inhibitedBy"]}
        assert active == {(ACK, "asn"), (PSH, "fleet")}, held

        def delivered() -> list[dict[str, Any]]:
            bodies = mon.notifications()
            names = {b.get("groupLabels", {}).get("alertname") for b in bodies}
            return bodies if {ACK, PSH} <= names else []

        bodies = wait_until(delivered, WAIT_S, "a notification per incident", 0.5,
                            details=lambda: f"{mon.notifications()}\n{mon.log_tails()}")
        sent = [_key(a["labels"]) for b in bodies for a in b["alerts"]]
        # Each group's notification carries only its alerts that are not inhibited.
        assert sorted(set(sent)) == [(ACK, "asn"), (PSH, "fleet")], bodies
        print(f"\nheld {len(held)} alerts, active {sorted(active)}, notified {sent}")
