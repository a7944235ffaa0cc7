"""Markdown tables generated from the enums, settings and metrics: the docs' single source.

`python -m resetwatch.generate` refreshes every generated block in docs/ and the README
(with the other generated files); `--check`, run by the test command, fails on a stale one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .classify import Category, Outcome, Stage, Tag
from .config import SETTINGS, _toml_value
from .docenum import DocEnum
from .flows import Exclusion
from .packet import Invalid
from .promrules import sizing_table
from .signature import Signature


def _enum_table(members: Iterable[DocEnum], header: str = "value") -> str:
    rows = [f"| `{m.value}` | {m.doc} |" for m in members]
    return "\n".join([f"| {header} | meaning |", "|---|---|", *rows])


def tag_table() -> str:
    rows = []
    for tag in Tag:
        parent = f"`{tag.parent.value}`" if tag.parent else ""
        kind = "extension" if tag.extension else "published"
        rows.append(f"| `{tag.value}` | {parent} | {kind} | {tag.doc} |")
    return "\n".join(["| tag | parent | list | condition |", "|---|---|---|---|", *rows])


def signature_table() -> str:
    rows = [f"| `{s.value}` | {s.doc} |" for s in Signature]
    return "\n".join(["| signature | the paper's notation |", "|---|---|", *rows])


def settings_table() -> str:
    rows = []
    for s in SETTINGS:
        flag = "--" + s.key.replace("_", "-")
        rows.append(f"| `{s.key}` | `{flag}` | `{_toml_value(s.default)}` | {s.help} |")
    return "\n".join(["| key | flag | default | meaning |", "|---|---|---|---|", *rows])


def link_types() -> str:
    from .decode import supported

    return supported()


def record_table() -> str:
    from .records import FIELDS

    rows = [f"| `{f.name}` | {f.type} | {f.present} | {f.doc} |" for f in FIELDS]
    return "\n".join(["| field | type | present | meaning |", "|---|---|---|---|", *rows])


def _families() -> list[Any]:
    """Every metric family the agent can export, the per-network ones included."""
    from .metrics import AgentCollector, AgentHealth, FlowCounts
    from .networks import NetworkCollector, NetworkLabels, Networks

    class _NoFiles:
        files: tuple[Any, ...] = ()

    counts = FlowCounts(NetworkLabels(1, lambda: 0.0))
    networks = Networks.__new__(Networks)
    networks.ipdb = _NoFiles()  # type: ignore[assignment]
    return [*AgentCollector(counts, AgentHealth()).collect(),
            *NetworkCollector(counts, networks).collect()]  # fmt: skip


def metrics_table() -> str:
    rows = []
    for family in _families():
        labels = sorted({k for s in family.samples for k in s.labels})
        name = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "info":
            name = family.name + "_info"
        help_first = family.documentation.split(". ")[0].rstrip(".") + "."
        shown = ", ".join(f"`{label}`" for label in labels)
        rows.append(f"| `{name}` | {family.type} | {shown} | {help_first} |")
    return "\n".join(["| metric | type | labels | meaning |", "|---|---|---|---|", *rows])


BLOCKS = {
    "stages": lambda: _enum_table(Stage, "stage"),
    "outcomes": lambda: _enum_table(Outcome, "outcome"),
    "categories": lambda: _enum_table(Category, "category"),
    "tags": tag_table,
    "signatures": signature_table,
    "exclusions": lambda: _enum_table(Exclusion, "reason"),
    "invalid": lambda: _enum_table(Invalid, "reason"),
    "settings": settings_table,
    "records": record_table,
    "linktypes": link_types,
    "metrics": metrics_table,
    "sizing": sizing_table,
}
_BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def refresh(text: str) -> str:
    """`text` with every generated block rewritten from the code."""
    return _BLOCK.sub(lambda m: m[1] + BLOCKS[m["name"]]() + "\n" + m[4], text)
