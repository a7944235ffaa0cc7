"""Prometheus recording and alerting rules for resetwatch, rendered from one definition.

`python -m resetwatch.generate` writes the shipped deploy/prometheus/resetwatch.rules.yml
(the test command checks it is current); tests render a variant with short windows so a real
Prometheus can fire an alert in a minute instead of an hour.

How a spike is judged (docs/operations.md, "Spike alerts", says it for operators):

* Counts, never ratios, are aggregated: `increase` of the counters over the window, summed
  per level (the fleet, each site, each client network, each server), then divided. An
  average of per-server shares would weigh a quiet server like a busy one.
* Every level carries its `level` label, so one set of level-agnostic rules derives the
  shares, the Wilson bounds and the baselines for all of them.
* The baseline is the share over the `baseline` range (7 days) of hourly counts that stops at
  least `long` (1 h) before now: longer than the window plus `for`, so a spike has paged
  before it starts to raise its own baseline.
* A spike must be clearly large: the Wilson lower bound of the current share, at `z`, above
  the baseline's Wilson upper bound (a real difference), above `factor` times the baseline
  and above `floor` (a difference worth a page); and trusted: at least `min_samples`
  sampled connections in the window (the project's one too-small rule). Until the baseline
  itself holds `min_samples`, the bar is the conservative `default_share`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Optional

from .confidence import MIN_TRUSTED_SAMPLES

SPIKE_CATEGORIES = ("post_ack", "post_psh")
ALERT_NAMES = {"post_ack": "ResetwatchPostAckSpike", "post_psh": "ResetwatchPostPshSpike"}
FOLDED = "other"
"""The label value the agent gives the networks beyond its top N: a mix of many networks, so
never paged on (its share moves with whichever network happens to be folded in)."""

CAUSES = {
    "post_ack": "a middlebox dropping or resetting after the handshake (tampering, "
    "zero-rating), or a broken path",
    "post_psh": "a middlebox resetting or dropping right after the client's first data packet "
    "(filtering by server name or Host, tampering), or a path losing large packets (MTU)",
}
"""The typical causes each spike alert's description names: the two stages differ."""


@dataclass(frozen=True)
class Windows:
    """Windows and thresholds of the spike rules (every one a rule-generator parameter)."""

    short: str = "15m"
    """The window of the shares an alert looks at."""
    long: str = "1h"
    """The resolution of the baseline's counts, and how long before now the baseline stops."""
    baseline: str = "7d"
    """The history the baseline share is summed over."""
    spike_for: str = "15m"
    health_for: str = "5m"
    evaluation: str = "1m"
    factor: float = 3.0
    """The window's lower bound must exceed this many times the baseline (an effect size: at
    the fleet's sample sizes a rise of a tenth is significant, but nobody should be woken)."""
    floor: float = 0.05
    """Absolute share (0..1) the window's lower bound must exceed to page anyone."""
    min_samples: int = MIN_TRUSTED_SAMPLES
    """Sampled connections needed in the window, and in the baseline before it is used: the
    project's one "too small to trust" rule (confidence.py)."""
    z: float = 3.0
    """Standard scores of the Wilson intervals. It matters for a series whose usual share
    sits right at its bar: ~700 independent 15-minute looks a week give about one crossing
    at 3 (one-sided 0.13%), about 17 at 1.96 (2.5%)."""
    baseline_min: float = 0.01
    """A baseline share below this counts as this (a category that was ~0 is not a spike at
    every single occurrence)."""
    default_share: float = 0.05
    """The baseline assumed while the measured one holds fewer than `min_samples` (a young
    deployment, a quiet network): a share that only a real problem sustains for most
    networks, so a young deployment pages on a real spike and not on its noise."""


@dataclass(frozen=True)
class Scope:
    """Which labels make the levels an alert is judged at."""

    groups: tuple[str, ...] = ("site",)
    """Grouping labels attached at scrape time, narrowest first (("site", "region")): each is
    a level, and a level keeps the wider labels (a site's series carries its region)."""
    instance_labels: tuple[str, ...] = ("instance",)
    """Labels that name one server (add "pod" or "node" where relabelling keeps them)."""
    networks: tuple[tuple[str, str], ...] = (
        ("asn", "resetwatch_network_connections_total"),
        ("country", "resetwatch_country_connections_total"),
    )
    """Client-network levels: the label and the per-network counter that carries it."""


@dataclass(frozen=True)
class Level:
    name: str
    """The value of the `level` label on every series of this level."""
    metric: str
    drop: tuple[str, ...]
    """Labels summed away (`sum without`): labels not named here are kept, so series of
    different jobs or environments are never added together."""
    key: str
    """The label that names one member of the level ("" for the fleet)."""
    severity: str


def levels(scope: Scope = Scope()) -> list[Level]:
    """Every level, narrowest page first (the order inhibition follows), then the tickets."""
    servers = (*scope.instance_labels, "family")
    out = [Level(label, metric, (*servers, *scope.groups), label, "page")
           for label, metric in scope.networks]
    for i, group in enumerate(scope.groups):
        out.append(Level(group, "resetwatch_connections_total",
                         (*servers, *scope.groups[:i]), group, "page"))
    out.append(Level("fleet", "resetwatch_connections_total", (*servers, *scope.groups), "",
                     "page"))
    # Per server: tickets. One server rarely samples enough to trust (module docstring).
    out.append(Level("instance", "resetwatch_connections_total", ("family",), "instance",
                     "ticket"))
    return out


def seconds(duration: str) -> float:
    """A Prometheus duration ("30s", "15m", "1h", "7d", "1w") in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    match = re.fullmatch(r"(\d+)([smhdw])", duration)
    if not match:
        raise ValueError(f"not a simple duration: {duration!r}")
    return int(match[1]) * units[match[2]]


def wilson(x: float, n: float, z: float) -> tuple[float, float]:
    """The Wilson score interval (lower, upper) of x successes in n samples at z, in the
    count form the PromQL below uses: (x + z²/2 ± z·√(x(n-x)/n + z²/4)) / (n + z²)."""
    half = z * math.sqrt(x * (n - x) / n + z * z / 4)
    return (x + z * z / 2 - half) / (n + z * z), (x + z * z / 2 + half) / (n + z * z)


def _wilson_promql(x: str, n: str, z: float, sign: str) -> str:
    # x and n are vectors with the same labels; n > 0 (filtered by the caller).
    return (f"({x} + {z * z / 2:g} {sign} {z:g} * sqrt({x} * ({n} - {x}) / {n} + "
            f"{z * z / 4:g}))\n  / ({n} + {z * z:g})")


class Names:
    """The recorded series' names for windows `w` (the dashboard and tests use them)."""

    def __init__(self, w: Windows = Windows()) -> None:
        self.counts = f"resetwatch:category_connections:increase{w.short}"
        self.counts_long = f"resetwatch:category_connections:increase{w.long}"
        self.samples = f"resetwatch:connections:increase{w.short}"
        self.totals = f"resetwatch:category_totals:increase{w.short}"
        self.share = f"resetwatch:category_share:ratio{w.short}"
        self.lower = f"resetwatch:category_share:wilson_lower{w.short}"
        self.base_counts = f"resetwatch:category_connections:baseline{w.baseline}"
        self.base_samples = f"resetwatch:connections:baseline{w.baseline}"
        self.base_totals = f"resetwatch:category_totals:baseline{w.baseline}"
        self.baseline = f"resetwatch:category_share:baseline{w.baseline}"
        self.base_upper = f"resetwatch:category_share:baseline{w.baseline}_upper"
        self.bar = "resetwatch:category_share:spike_bar"


def _level_rules(w: Windows, level: Level) -> list[dict[str, Any]]:
    names = Names(w)
    drop = ", ".join(level.drop)
    # A grouping level needs its label: servers scraped without it are in the fleet only.
    where = f'{{{level.key}!=""}}' if level.key not in ("", "instance") else ""
    out = []
    for name, window in ((names.counts, w.short), (names.counts_long, w.long)):
        out.append({
            "record": name,
            "expr": f"sum without ({drop}) (increase({level.metric}{where}[{window}]))",
            "labels": {"level": level.name},
        })
    return out


def recording_rules(w: Windows = Windows(), scope: Scope = Scope()) -> list[dict[str, Any]]:
    n = Names(w)
    out: list[dict[str, Any]] = []
    for level in levels(scope):
        out += _level_rules(w, level)
    every = f"{w.baseline}:{w.long}"
    size = f"clamp_min({w.factor:g} * clamp_min({n.baseline}, {w.baseline_min:g}), {w.floor:g})"
    out += [
        {"record": n.samples, "expr": f"sum without (category) ({n.counts})"},
        {
            # The window's total on each category's series, so the ratios below are
            # one-to-one; divide only where it is above zero (0/0 = NaN poisons ranges).
            "record": n.totals,
            "expr": f"0 * {n.counts} + ignoring (category) group_left () ({n.samples} > 0)",
        },
        {"record": n.share, "expr": f"{n.counts} / {n.totals}"},
        {"record": n.lower, "expr": _wilson_promql(n.counts, n.totals, w.z, "-")},
        {
            # Hourly counts at whole hours, ending `long` before now: the baseline never
            # holds the window being judged, nor the `for` that follows it.
            "record": n.base_counts,
            "expr": f"sum_over_time({n.counts_long}[{every}] offset {w.long})",
        },
        {
            "record": n.base_samples,
            "expr": f"sum without (category) ({n.base_counts})",
        },
        {
            "record": n.base_totals,
            "expr": (f"0 * {n.base_counts} + ignoring (category) group_left () "
                     f"({n.base_samples} > 0)"),
        },
        {"record": n.baseline, "expr": f"{n.base_counts} / {n.base_totals}"},
        {
            "record": n.base_upper,
            "expr": _wilson_promql(n.base_counts, n.base_totals, w.z, "+"),
        },
        {
            # What the window's lower bound must clear: the baseline's upper bound (a real
            # difference), `factor` times the baseline and `floor` (a difference worth a
            # page). While the baseline is too small to trust: the default share.
            "record": n.bar,
            "expr": (f"(\n  ({n.base_upper} >= {size})\n  or {size}\n)\n"
                     f"and ignoring (category) {n.base_samples} >= {w.min_samples}\n"
                     f"or (0 * {n.share} + {max(w.default_share, w.floor):g})"),
        },
        {
            "record": "resetwatch:connections_estimated:rate5m",
            "expr": "sum by (instance) (rate(resetwatch_connections_total[5m]))\n"
            "  / on (instance) max by (instance) (resetwatch_sampling_probability)",
        },
    ]
    return out


_WHERE = {
    "fleet": "across the fleet",
    "instance": "on {{ $labels.instance }}",
    "asn": "in network AS{{ $labels.asn }}",
    "country": "in country {{ $labels.country }}",
}


def spike_alerts(w: Windows = Windows(), scope: Scope = Scope()) -> list[dict[str, Any]]:
    n = Names(w)
    out = []
    for category in SPIKE_CATEGORIES:
        for level in levels(scope):
            select = f'level="{level.name}", category="{category}"'
            if level.key in dict(scope.networks):
                select += f', {level.key}!="{FOLDED}"'
            where = _WHERE.get(level.name, f"in {level.name} {{{{ $labels.{level.key} }}}}")
            out.append({
                "alert": ALERT_NAMES[category],
                "expr": (
                    f"{n.share}{{{select}}}\n"
                    f"and {n.lower} > {n.bar}\n"
                    f"and ignoring (category) {n.samples} >= {w.min_samples}"
                ),
                "for": w.spike_for,
                "labels": {"severity": level.severity, "category": category,
                           "level": level.name},
                "annotations": {
                    "summary": f"{category} connections spiking {where}",
                    "description": (
                        f"{{{{ $value | humanizePercentage }}}} of sampled connections ended "
                        f"{category.replace('_', '-')} over {w.short} ({level.name} level), "
                        f"clearly above the {w.baseline} baseline (Wilson z={w.z:g}) and over "
                        f"{w.factor:g}x it. Typical causes: {CAUSES[category]}. "
                        "See docs/operations.md."
                    ),
                },
            })
    return out


def _health_alerts(w: Windows) -> list[dict[str, Any]]:
    return [
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


def sampling_alert(w: Windows = Windows()) -> dict[str, Any]:
    """Sampled flows against candidate SYNs over the long window: off the configured
    probability by more than z binomial standard deviations (the normal bound, fine at the
    >= min_samples expected flows it needs), and only where that many are expected, so a
    quiet server never fires. NOTRACK or a broken chain (nothing sampled) and a foreign rule
    that samples too much both show."""
    p = "resetwatch_sampling_probability"
    n = f"increase(resetwatch_sampling_candidates_total[{w.long}])"
    x = f"increase(resetwatch_flows_started_total[{w.long}])"
    return {
        "alert": "ResetwatchSamplingOff",
        "expr": (
            f"abs({x} - {p} * {n})\n"
            f"  > {w.z:g} * sqrt({p} * (1 - {p}) * {n})\n"
            f"and {p} * {n} >= {w.min_samples}\n"
            "and resetwatch_rules_managed == 1"
        ),
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": (
                "resetwatch on {{ $labels.instance }} samples new connections at another "
                "rate than its configured probability"
            )
        },
    }


def rules(w: Windows = Windows(), scope: Scope = Scope()) -> dict[str, Any]:
    return {
        "groups": [
            {"name": "resetwatch-recording", "interval": w.evaluation,
             "rules": recording_rules(w, scope)},
            {"name": "resetwatch-alerts", "interval": w.evaluation,
             "rules": spike_alerts(w, scope) + _health_alerts(w) + [sampling_alert(w)]},
        ]
    }


SIZING_RATES = (500, 1_200, 2_000, 5_000, 20_000, 100_000)
"""New connections per second at one level (a network's, a site's or the fleet's, over all
its servers) for the sizing table in docs/operations.md."""
SIZING_BASELINE = 0.02
SIZING_SHIFTS = (0.10, 0.30)


def spike_bar(baseline: float, baseline_n: float, w: Windows = Windows()) -> float:
    """The share the window's Wilson lower bound must clear (the `spike_bar` rule)."""
    if baseline_n < w.min_samples:
        return max(w.default_share, w.floor)
    _, upper = wilson(baseline * baseline_n, baseline_n, w.z)
    return max(upper, w.factor * max(baseline, w.baseline_min), w.floor)


def _pages(share: float, n: float, bar: float, z: float) -> bool:
    return n > 0 and wilson(share * n, n, z)[0] > bar


def detection(rate: float, probability: float, shift: float, w: Windows = Windows(),
              baseline: float = SIZING_BASELINE) -> Optional[float]:
    """Minutes from the start of a shift of the share from `baseline` to `shift` until the
    spike alert fires at a level with `rate` new connections per second (the window filling
    with the new share, then `for`), or None when it never does. The baseline is a week at
    the same rate."""
    n = rate * probability * seconds(w.short)
    if n < w.min_samples:
        return None
    bar = spike_bar(baseline, rate * probability * seconds(w.baseline), w)
    steps = 200
    for step in range(1, steps + 1):
        filled = step / steps
        if _pages(baseline + filled * (shift - baseline), n, bar, w.z):
            return (filled * seconds(w.short) + seconds(w.spike_for)) / 60
    return None


def smallest_paging_share(rate: float, probability: float, w: Windows = Windows(),
                          baseline: float = SIZING_BASELINE) -> Optional[float]:
    """The smallest share a full window must hold to page, against `baseline`."""
    n = rate * probability * seconds(w.short)
    if n < w.min_samples:
        return None
    bar = spike_bar(baseline, rate * probability * seconds(w.baseline), w)
    low, high = baseline, 1.0
    if not _pages(high, n, bar, w.z):
        return None
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if _pages(mid, n, bar, w.z) else (mid, high)
    return high


def sizing_table(probability: float = 0.0001, w: Windows = Windows()) -> str:
    """Markdown: how fast a shift of what size pages, by connections per second."""
    def minutes(value: Optional[float]) -> str:
        return "never" if value is None else f"{value:.0f} min"

    head = (f"| new connections/s | sampled per {w.short} | smallest share that pages "
            f"(baseline {SIZING_BASELINE:.0%}) | "
            + " | ".join(f"time to page, {SIZING_BASELINE:.0%} -> {s:.0%}"
                         for s in SIZING_SHIFTS) + " |")
    rows = [head, "|" + "---|" * (3 + len(SIZING_SHIFTS))]
    for rate in SIZING_RATES:
        n = rate * probability * seconds(w.short)
        least = smallest_paging_share(rate, probability, w)
        shown = f"under {w.min_samples}: no page" if least is None else f"{least:.1%}"
        times = " | ".join(minutes(detection(rate, probability, s, w)) for s in SIZING_SHIFTS)
        rows.append(f"| {rate:,} | {n:,.0f} | {shown} | {times} |")
    return "\n".join(rows)


def yaml_lines(value: Any, indent: int = 0) -> list[str]:
    """A small YAML writer for the shapes here: dicts, lists, strings, numbers.

    Strings go out as JSON strings (valid YAML) or, when multi-line, as literal blocks."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += yaml_lines(item, indent + 2)
            elif isinstance(item, str) and "\n" in item:
                lines.append(f"{pad}{key}: |-")
                lines += [f"{pad}  {line}" for line in item.splitlines()]
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, (dict, list)):
                lines.append(f"{pad}- {json.dumps(item)}")
                continue
            inner = yaml_lines(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
    return lines


def render(w: Windows = Windows(), scope: Scope = Scope()) -> str:
    header = (
        "# Generated by `python -m resetwatch.generate` from resetwatch/promrules.py; edit\n"
        "# that, not this file. Counts per level (fleet, site, client network, server),\n"
        "# their shares, Wilson bounds and a baseline that excludes the present; spike\n"
        "# alerts that page per level (tickets per server) and agent health. See\n"
        "# docs/operations.md.\n"
    )
    return header + "\n".join(yaml_lines(rules(w, scope))) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
