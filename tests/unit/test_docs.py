"""The docs are generated from the code: a stale table fails here."""

from __future__ import annotations

from pathlib import Path

from resetwatch import generate, reference

ROOT = Path(__file__).resolve().parents[2]


def test_every_generated_artifact_is_up_to_date() -> None:
    stale = [str(path.relative_to(ROOT)) for path, _ in generate.stale(ROOT)]
    assert stale == [], "run: python -m resetwatch.generate"


def test_the_check_mode_names_a_stale_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "docs").mkdir()
    block = "<!-- generated: stages -->\nold\n<!-- end generated -->\n"
    (tmp_path / "docs" / "x.md").write_text(block)
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of date: docs/x.md" in err and "deploy/resetwatch.toml" in err
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    assert "| `post_syn` |" in (tmp_path / "docs" / "x.md").read_text()


def test_every_generated_block_name_is_used() -> None:
    text = "".join(
        (ROOT / a.path).read_text() for a in generate.artifacts(ROOT) if a.path.endswith(".md")
    )
    for name in reference.BLOCKS:
        assert f"<!-- generated: {name} -->" in text, name


def test_every_metric_is_in_the_metrics_reference() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    from resetwatch.metrics import AgentCollector, AgentHealth, FlowCounts

    for family in AgentCollector(FlowCounts(), AgentHealth()).collect():
        assert f"`{family.name}" in text, family.name
