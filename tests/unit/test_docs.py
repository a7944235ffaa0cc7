"""The docs are generated from the code: a stale table fails here."""

from __future__ import annotations

from pathlib import Path

from resetwatch import reference

ROOT = Path(__file__).resolve().parents[2]


def test_generated_blocks_are_up_to_date() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path in reference.documents(ROOT)
        if path.exists() and reference.refresh(path.read_text()) != path.read_text()
    ]
    assert stale == [], "run: PYTHONPATH=agent python3 -m resetwatch.reference --write"


def test_every_generated_block_name_is_used() -> None:
    text = "".join(p.read_text() for p in reference.documents(ROOT) if p.exists())
    for name in reference.BLOCKS:
        assert f"<!-- generated: {name} -->" in text, name


def test_every_metric_is_in_the_metrics_reference() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    from resetwatch.metrics import AgentCollector, AgentHealth, FlowCounts

    for family in AgentCollector(FlowCounts(), AgentHealth()).collect():
        assert f"`{family.name}" in text, family.name
