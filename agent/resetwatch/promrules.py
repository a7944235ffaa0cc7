"""Prometheus recording and alerting rules for resetwatch, rendered from one definition.

`python -m resetwatch.generate` writes the shipped deploy/prometheus/resetwatch.rules.yml
(the test command checks it is current); tests render a variant with short windows so a real
Prometheus can fire an alert in a minute instead of an hour.

Why three conditions on a spike alert: with 1-in-10,000 sampling a quiet server yields a few
sampled connections per window, and one or two early resets among them are a large share by
chance. An alert therefore needs the share above `factor` times its own 7-day baseline, AND
above an absolute floor, AND at least `min_samples` sampled connections in the window.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

SPIKE_CATEGORIES = ("post_ack", "post_psh")

CAUSES = {
    "post_ack": "a middlebox dropping or resetting after the handshake (tampering, "
    "zero-rating), or a broken path",
    "post_psh": "a middlebox resetting or dropping right after the client's first data packet "
    "(filtering by server name or Host, tampering), or a path losing large packets (MTU)",
}
"""The typical causes each spike alert's description names: the two stages differ."""


@dataclass(frozen=True)
class Windows:
    short: str = "15m"
    """The window of the shares an alert looks at."""
    long: str = "1h"
    baseline: str = "7d"
    """The history the baseline share is averaged over."""
    spike_for: str = "15m"
    health_for: str = "5m"
    evaluation: str = "1m"
    factor: float = 3.0
    floor: float = 0.05
    """Absolute share (0..1) below which no spike pages anyone."""
    min_samples: int = 100
    """Sampled connections needed in the short window before a spike can fire."""
    baseline_min: float = 0.01
    """A baseline share below this counts as this (a category that was ~0 is not a spike at
    every single occurrence)."""


def _share(window: str) -> str:
    # Divide only where the total is above zero: a window with no sampled connection would
    # record 0/0 = NaN, and one NaN makes avg_over_time (the baseline) NaN for its whole range,
    # which would silence the spike alerts for a week after a quiet hour.
    return (
        f"sum by (instance, category) (rate(resetwatch_connections_total[{window}]))\n"
        f"  / ignoring (category) group_left ()\n"
        f"(sum by (instance) (rate(resetwatch_connections_total[{window}])) > 0)"
    )


def rules(w: Windows = Windows()) -> dict[str, Any]:
    recording = [
        {
            "record": f"resetwatch:connections:increase{w.short}",
            "expr": f"sum by (instance) (increase(resetwatch_connections_total[{w.short}]))",
        },
        {"record": f"resetwatch:category_share:ratio{w.short}", "expr": _share(w.short)},
        {"record": f"resetwatch:category_share:ratio{w.long}", "expr": _share(w.long)},
        {
            "record": f"resetwatch:category_share:ratio{w.long}_avg{w.baseline}",
            "expr": f"avg_over_time(resetwatch:category_share:ratio{w.long}[{w.baseline}])",
        },
        {
            "record": "resetwatch:connections_estimated:rate5m",
            "expr": "sum by (instance) (rate(resetwatch_connections_total[5m]))\n"
            "  / on (instance) max by (instance) (resetwatch_sampling_probability)",
        },
    ]
    alerts = []
    for category in SPIKE_CATEGORIES:
        name = "ResetwatchPostAckSpike" if category == "post_ack" else "ResetwatchPostPshSpike"
        share = f'resetwatch:category_share:ratio{w.short}{{category="{category}"}}'
        base = f'resetwatch:category_share:ratio{w.long}_avg{w.baseline}{{category="{category}"}}'
        alerts.append(
            {
                "alert": name,
                "expr": (
                    f"{share}\n"
                    f"  > on (instance, category) ({w.factor:g} * clamp_min({base}, "
                    f"{w.baseline_min:g}))\n"
                    f"and {share} > {w.floor:g}\n"
                    f"and on (instance) resetwatch:connections:increase{w.short} "
                    f">= {w.min_samples}"
                ),
                "for": w.spike_for,
                "labels": {"severity": "page", "category": category},
                "annotations": {
                    "summary": f"{category} connections spiking on {{{{ $labels.instance }}}}",
                    "description": (
                        f"{{{{ $value | humanizePercentage }}}} of sampled connections ended "
                        f"{category.replace('_', '-')} over {w.short}, over {w.factor:g}x the "
                        f"{w.baseline} baseline. Typical causes: {CAUSES[category]}. See "
                        "docs/operations.md."
                    ),
                },
            }
        )
    alerts += [
        {
            "alert": "ResetwatchDown",
            "expr": 'up{job="resetwatch"} == 0',
            "for": w.health_for,
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "resetwatch on {{ $labels.instance }} is not scraped"},
        },
        {
            # `up == 0` needs a target; a scrape config that lost the job has none.
            "alert": "ResetwatchAbsent",
            "expr": 'absent(up{job="resetwatch"})',
            "for": w.health_for,
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "Prometheus scrapes no resetwatch target at all"},
        },
        {
            "alert": "ResetwatchRulesMissing",
            "expr": "resetwatch_rules_present == 0 and resetwatch_rules_managed == 1",
            "for": w.health_for,
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Sampling rules missing on {{ $labels.instance }}: nothing is sampled"
            },
        },
        {
            "alert": "ResetwatchRulesFlapping",
            "expr": "increase(resetwatch_rules_repairs_total[1h]) > 3",
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "Something keeps removing resetwatch's rules on {{ $labels.instance }}"
            },
        },
        {
            "alert": "ResetwatchLosingPackets",
            "expr": (
                f"sum by (instance) (increase(resetwatch_nflog_lost_total[{w.short}])) > 0\n"
                f"or sum by (instance) (increase(resetwatch_nflog_socket_drops_total[{w.short}]))"
                " > 0"
            ),
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "resetwatch on {{ $labels.instance }} is losing NFLOG packets"
            },
        },
        {
            "alert": "ResetwatchFlowTableFull",
            "expr": (
                "resetwatch_flows_active / resetwatch_flows_max > 0.9\n"
                f'or increase(resetwatch_flows_excluded_total{{reason="evicted"}}[{w.short}]) > 0'
            ),
            "for": w.health_for,
            "labels": {"severity": "ticket"},
            "annotations": {
                "summary": "resetwatch's flow table on {{ $labels.instance }} is full"
            },
        },
    ]
    return {
        "groups": [
            {"name": "resetwatch-recording", "interval": w.evaluation, "rules": recording},
            {"name": "resetwatch-alerts", "interval": w.evaluation, "rules": alerts},
        ]
    }


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML writer for the shapes above: dicts, lists, strings, numbers.

    Strings go out as JSON strings (valid YAML) or, when multi-line, as literal blocks."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines.append(f"{pad}{key}:")
                lines += _yaml(item, indent + 2)
            elif isinstance(item, str) and "\n" in item:
                lines.append(f"{pad}{key}: |-")
                lines += [f"{pad}  {line}" for line in item.splitlines()]
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            inner = _yaml(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
    return lines


def render(w: Windows = Windows()) -> str:
    header = (
        "# Generated by `python -m resetwatch.promrules`; edit that, not this file.\n"
        "# Recording rules for category shares and a 7-day baseline, and alerts for\n"
        "# Post-ACK / Post-PSH spikes and agent health. See docs/operations.md.\n"
    )
    return header + "\n".join(_yaml(rules(w))) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
