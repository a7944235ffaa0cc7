"""Human-readable tables for `replay` and `status`, in the spirit of the public dashboard."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from . import confidence
from .classify import Category, Tag
from .signature import Signature
from .summary import percent_shares, share_cell
from .tally import Tally


def _bar(share: float, width: int = 30) -> str:
    return "#" * round(share / 100 * width)


def signature_lines(tally: Tally) -> list[str]:
    """The paper's view: each signature seen, its share of judged and of anomalous flows."""
    counts = {s: n for s, n in tally.signatures().items() if n and s is not Signature.NONE}
    if not counts:
        return []
    classified, anomalous = tally.classified, tally.anomalous
    lines = ["", f"  {'signature':<20}{'flows':>8}{'of judged':>11}{'of anomalous':>14}  notation"]
    for signature, count in counts.items():
        judged = 100.0 * count / classified if classified else 0.0
        of_anomalous = 100.0 * count / anomalous if anomalous else 0.0
        lines.append(
            f"    {signature.value:<18}{count:>8,}{judged:>10.2f}%{of_anomalous:>13.2f}%"
            f"  {signature.doc}"
        )
    return lines


BY = ("asn", "country")
"""What `--by` splits a table by: the client network (AS number) or the client country."""


def network_rows(tally: Tally, by: str, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per network (or country), busiest first: the sample size, whether it is too small to
    trust (confidence.py), and the five shares; "" is the flows no database knew."""
    per: dict[str, Tally] = {}
    for key, count in tally.judged.copy().items():
        label = key.asn if by == "asn" else key.country
        per.setdefault(label, Tally()).add_judged(key, count)
    rows = []
    for label, part in sorted(per.items(), key=lambda kv: (-kv[1].classified, kv[0])):
        categories = part.categories()
        rows.append({
            # "other" (the agent's untracked networks) stays a string; "" is no answer.
            by: (int(label) if by == "asn" and label.isdigit() else label) if label else None,
            "name": names.get(label) if by == "asn" else None,
            "classified": part.classified,
            "tooSmallToTrust": confidence.too_small(part.classified),
            "shares": percent_shares({c.value: n for c, n in categories.items()}),
        })  # fmt: skip
    return rows


def network_table(tally: Tally, by: str, names: Mapping[str, str]) -> str:
    """The `--by` table: one line per network, shares with the too-small marker."""
    return rows_table(network_rows(tally, by, names), by)


def rows_table(rows: Iterable[Mapping[str, Any]], by: str) -> str:
    """The `--by` table of `network_rows` output (also as the agent's API serves it)."""
    head = f"  {by:<9}{'flows':>8}  " + "".join(f"{c.value:>14}" for c in Category)
    lines = ["", f"  by {by} (* fewer than {confidence.MIN_TRUSTED_SAMPLES} flows: "
                 "too small to trust)", head]  # fmt: skip
    for row in rows:
        value = row[by]
        label = "unknown" if value is None else (f"AS{value}" if isinstance(value, int) else value)
        mark = "*" if row["tooSmallToTrust"] else " "
        shares = "".join(f"{share_cell(row['shares'][c.value]):>14}" for c in Category)
        name = f"  {row['name']}" if row["name"] else ""
        lines.append(f"  {label:<9}{row['classified']:>7,}{mark}  {shares}{name}")
    return "\n".join(lines) + "\n"


def summary_table(
    tally: Tally,
    *,
    title: str,
    extra: Iterable[tuple[str, str]] = (),
    invalid: Optional[Mapping[str, int]] = None,
) -> str:
    lines = [title]
    for name, value in extra:
        lines.append(f"  {name + ':':<22}{value}")
    classified = tally.classified
    excluded_total = tally.excluded_total
    lines.append(f"  {'classified flows:':<22}{classified:,}")
    lines.append(f"  {'excluded flows:':<22}{excluded_total:,}")
    lines.append("")
    lines.append(f"  {'category':<15}{'share':>9}{'flows':>12}")
    categories = tally.categories()
    shares = percent_shares({c.value: n for c, n in categories.items()})
    for category in Category:
        share = shares[category.value]
        count = categories[category]
        lines.append(
            f"  {category.value:<15}{share_cell(share):>9}{count:>12,}  {_bar(float(share))}"
        )
    if excluded_total:
        lines.append("")
        lines.append("  excluded (not classified)")
        for reason, count in tally.excluded_by().items():
            if count:
                lines.append(f"    {reason.value:<18}{count:>10,}")
    tags = tally.tag_totals()
    if any(tags.values()):
        lines.append("")
        lines.append(f"  {'tag':<18}{'flows':>10}{'of classified':>15}")
        # A flow carries several tags, so tag ratios are of classified flows, not shares.
        for tag in Tag:
            count = tags[tag]
            if count:
                ratio = 100.0 * count / classified if classified else 0.0
                lines.append(f"    {tag.value:<16}{count:>10,}{ratio:>14.2f}%")
    lines.extend(signature_lines(tally))
    if invalid:
        bad = {k: v for k, v in invalid.items() if v}
        if bad:
            lines.append("")
            lines.append("  packets not parsed: " + ", ".join(f"{k} {v:,}" for k, v in bad.items()))
    return "\n".join(lines) + "\n"
