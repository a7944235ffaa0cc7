"""Other users of our conntrack label bit: a foreign rule that sets it marks every connection
it matches as sampled, so the agent follows far more connections than the probability it
exports says (and reports a wrong p). Both readers take the whole ruleset as the tool prints it
and name each foreign rule that sets the bit, for a refusal at install and a gauge at check.
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

from .base import connlabel_bits

Json = Any


def _bit(value: object, labels: dict[str, int]) -> Optional[int]:
    """A label as printed (a number, its quoted digits or a connlabel.conf name) as a bit."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value) if value.isdigit() else labels.get(value)
    return None


def iptables_label_users(save_text: str, label: int, own_chain: str) -> list[str]:
    """Rules of `iptables-save` (every table) outside `own_chain` that `--set` our label."""
    labels = connlabel_bits()
    table = ""
    out = []
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) < 2 or words[0] != "-A" or words[1] == own_chain:
            continue
        for k in range(len(words) - 1):
            sets = words[k] == "--label" and "--set" in words[k + 2 : k + 4]
            if sets and _bit(words[k + 1], labels) == label:
                out.append(f"table {table}: `{line.strip()}`")
                break
    return out


def _sets_label(expr: Json, label: int, labels: dict[str, int]) -> bool:
    if isinstance(expr, list):
        return any(_sets_label(item, label, labels) for item in expr)
    if not isinstance(expr, dict):
        return False
    mangle = expr.get("mangle")
    if (
        isinstance(mangle, dict)
        and mangle.get("key") == {"ct": {"key": "label"}}
        and _bit(mangle.get("value"), labels) == label
    ):
        return True
    return any(_sets_label(value, label, labels) for value in expr.values())


def nft_label_users(objects: list[Json], label: int, own: tuple[str, str]) -> list[str]:
    """Rules of `nft -j list ruleset` outside our (family, table) that `ct label set` our bit."""
    labels = connlabel_bits()
    out = []
    for obj in objects:
        rule = obj.get("rule") if isinstance(obj, dict) else None
        if not isinstance(rule, dict) or (rule.get("family"), rule.get("table")) == own:
            continue
        if _sets_label(rule.get("expr", []), label, labels):
            where = f"table {rule.get('family')} {rule.get('table')} chain {rule.get('chain')}"
            comment = f' comment "{rule["comment"]}"' if rule.get("comment") else ""
            out.append(f"{where}: `ct label set {label}{comment}`")
    return out


def refusal(users: list[str], label: int) -> str:
    """The one-line message of an install that finds another user of the bit."""
    more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
    return (
        f"conntrack label {label} is already set by another rule, {users[0]}{more}: every "
        "connection it matches would look sampled; choose another `label` or remove that rule"
    )
