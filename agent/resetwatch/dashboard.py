"""The Grafana dashboard, rendered from code so its queries use the metric names we export.

`python -m resetwatch.generate` (deploy/grafana/resetwatch.json); a unit test checks the file
is current and that every query is valid PromQL over metrics that exist.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .classify import Category

SEL = 'instance=~"$instance", family=~"$family"'
RATE = "$__rate_interval"
COLORS = {
    "post_syn": "#8AB8FF",
    "post_ack": "#F2495C",
    "post_psh": "#FF9830",
    "later_in_flow": "#FADE2A",
    "no_match": "#73BF69",
}


def _target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }


def _panel(
    pid: int,
    title: str,
    targets: list[dict[str, Any]],
    grid: tuple[int, int, int, int],
    *,
    kind: str = "timeseries",
    unit: str = "short",
    description: str = "",
    stack: bool = False,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    custom: dict[str, Any] = {"lineWidth": 1, "fillOpacity": 60 if stack else 10}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom if kind == "timeseries" else {}},
            "overrides": overrides or [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "right"}}
        if kind == "timeseries"
        else {},
    }


def _color_overrides() -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": category},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
        }
        for category, color in COLORS.items()
    ]


def _share(category_filter: str = "") -> str:
    inner = f"{SEL}{category_filter}"
    return (
        f"sum by (category) (rate(resetwatch_connections_total{{{inner}}}[{RATE}]))\n"
        f"/ ignoring (category) group_left\n"
        f"sum(rate(resetwatch_connections_total{{{SEL}}}[{RATE}]))"
    )


def _share_panels() -> list[dict[str, Any]]:
    """Row one and two: what connections became, and what the spike alerts compare."""
    return [
        _panel(
            1,
            "Share of sampled connections by category",
            [_target(_share(), "{{category}}")],
            (0, 0, 16, 9),
            unit="percentunit",
            stack=True,
            description="The five buckets of the public dataset, as shares that sum to 100%. "
            + " ".join(f"{c.value}: {c.doc}" for c in Category),
            overrides=_color_overrides(),
        ),
        _panel(
            2,
            "Post-ACK and Post-PSH against their 7-day baseline",
            [
                _target(
                    'resetwatch:category_share:ratio15m{category=~"post_ack|post_psh", '
                    'level="instance", instance=~"$instance"}',
                    "{{category}} (15m)",
                ),
                _target(
                    'resetwatch:category_share:baseline7d{category=~"post_ack|post_psh", '
                    'level="instance", instance=~"$instance"}',
                    "{{category}} baseline (7d)",
                    "B",
                ),
            ],
            (16, 0, 8, 9),
            unit="percentunit",
            description="What the spike alerts compare (needs deploy/prometheus rules).",
        ),
        _panel(
            3,
            "Sampled connections judged per second",
            [
                _target(
                    f"sum by (category) (rate(resetwatch_connections_total{{{SEL}}}[{RATE}]))",
                    "{{category}}",
                )
            ],
            (0, 9, 12, 8),
            unit="cps",
            stack=True,
            overrides=_color_overrides(),
        ),
        _panel(
            4,
            "Estimated connections per second (sampled / probability)",
            [
                _target(
                    f"sum by (instance) (rate(resetwatch_connections_total{{{SEL}}}[{RATE}]))\n"
                    '/ on (instance) max by (instance) (resetwatch_sampling_probability'
                    '{instance=~"$instance"})',
                    "{{instance}}",
                )
            ],
            (12, 9, 12, 8),
            unit="cps",
        ),
        _panel(
            5,
            "Tags of anomalous connections",
            [
                _target(
                    "sum by (tag) (rate(resetwatch_connection_tags_total"
                    f'{{{SEL}, category!="no_match"}}[{RATE}]))',
                    "{{tag}}",
                )
            ],
            (0, 17, 12, 8),
            unit="cps",
            description="How anomalous connections ended: RST shapes, ack-number patterns, "
            "scanner fingerprints, TTL mismatches.",
        ),
        _panel(
            6,
            "Outcome by stage",
            [
                _target(
                    "sum by (stage, outcome) (rate(resetwatch_connection_outcomes_total"
                    f"{{{SEL}}}[{RATE}]))",
                    "{{stage}} {{outcome}}",
                )
            ],
            (12, 17, 12, 8),
            unit="cps",
        ),
    ]


def _health_panels() -> list[dict[str, Any]]:
    """The last row: whether the agents see what they should (the health tickets' inputs)."""
    return [
        _panel(
            7,
            "Agents up, rules present",
            [
                _target('sum(up{job="resetwatch", instance=~"$instance"})', "agents up"),
                _target('min(resetwatch_rules_present{instance=~"$instance"})', "rules", "B"),
            ],
            (0, 25, 4, 5),
            kind="stat",
        ),
        _panel(
            8,
            "NFLOG loss (1h)",
            [
                _target(
                    'sum(increase(resetwatch_nflog_lost_total{instance=~"$instance"}[1h]))',
                    "lost packets",
                ),
                _target(
                    "sum(increase(resetwatch_nflog_socket_drops_total"
                    '{instance=~"$instance"}[1h]))',
                    "socket drops",
                    "B",
                ),
            ],
            (4, 25, 4, 5),
            kind="stat",
            description="Packets the kernel logged but the agent never read (sequence gaps), "
            "and the socket's own drop count; ResetwatchLosingPackets fires on either.",
        ),
        _panel(
            9,
            "Flow table",
            [
                _target('sum by (instance) (resetwatch_flows_active{instance=~"$instance"})',
                        "held {{instance}}"),
                _target('sum by (instance) (resetwatch_flows_max{instance=~"$instance"})',
                        "max {{instance}}", "B"),
            ],
            (8, 25, 8, 5),
        ),
        _panel(
            10,
            "Excluded flows and invalid packets",
            [
                _target(
                    "sum by (reason) (rate(resetwatch_flows_excluded_total"
                    f'{{instance=~"$instance"}}[{RATE}]))',
                    "excluded {{reason}}",
                ),
                _target(
                    "sum by (reason) (rate(resetwatch_packets_invalid_total"
                    f'{{instance=~"$instance"}}[{RATE}]))',
                    "invalid {{reason}}",
                    "B",
                ),
            ],
            (16, 25, 8, 5),
            unit="ops",
        ),
    ]


def _variables() -> list[dict[str, Any]]:
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus",
         "label": "Data source"},
        {
            "name": "instance",
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": "label_values(resetwatch_build_info, instance)",
                      "refId": "instance"},
            "definition": "label_values(resetwatch_build_info, instance)",
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "refresh": 2,
        },
        {
            "name": "family",
            "type": "custom",
            "query": "4,6",
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
        },
    ]


def dashboard() -> dict[str, Any]:
    return {
        "uid": "resetwatch",
        "title": "resetwatch: TCP resets and timeouts",
        "description": "Sampled TCP connections by how they ended (see docs/methodology.md).",
        "tags": ["resetwatch", "tcp"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": _variables()},
        "panels": [*_share_panels(), *_health_panels()],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
