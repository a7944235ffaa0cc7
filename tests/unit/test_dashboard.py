"""The Grafana dashboard: generated, well-formed, and every query valid PromQL over metrics
the agent or the shipped recording rules produce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from resetwatch import dashboard, promrules
from resetwatch.metrics import AgentCollector, AgentHealth, FlowCounts

FILE = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "resetwatch.json"


def exprs() -> list[str]:
    return [t["expr"] for p in dashboard.dashboard()["panels"] for t in p["targets"]]


def test_shipped_dashboard_is_generated() -> None:
    assert FILE.read_text() == dashboard.render()


def test_layout_is_well_formed() -> None:
    board = json.loads(FILE.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps"
                cells.add((x, y))


def test_queries_use_existing_metrics() -> None:
    exported = set()
    for family in AgentCollector(FlowCounts(), AgentHealth()).collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        exported.add(family.name + suffix)
    recorded = {r["record"] for g in promrules.rules()["groups"] for r in g["rules"]
                if "record" in r}
    for expr in exprs():
        for name in re.findall(r"\b(resetwatch[:_][a-z0-9_:]+)", expr):
            assert name in exported | recorded, name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(exprs()):
        concrete = (expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
                    .replace("$family", ".*"))
        rules.append({"record": f"dashboard:query{i}", "expr": concrete})
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
