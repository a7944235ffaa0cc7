"""The promtool unit tests of the spike rules, written by code (deploy/prometheus/
resetwatch.spikes.test.yml; `python -m resetwatch.generate` keeps it current).

Code, not hand-written YAML, because the cases need many regular series (ten networks,
three servers) and a simulated week of binomial noise, drawn from a seeded generator so the
file is the same on every machine. What each case expects is written here literally.
Run: `promtool test rules deploy/prometheus/resetwatch.spikes.test.yml`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from . import promrules

W = promrules.Windows()
NAMES = promrules.Names(W)
JOB = "resetwatch"
Labels = dict[str, str]
Segments = Sequence[tuple[float, int]]
"""A counter as runs of (increment per sample, samples); a run of increment None is a gap."""


def counter(segments: Segments, restart_at: Optional[int] = None, gap: int = 0) -> str:
    """promtool's series notation for a counter growing by each run's increment per sample,
    from 0. `restart_at`: after that many samples the agent restarts (`gap` missed scrapes,
    then the counter starts again from 0, as a restarted agent's pre-declared counters do)."""
    steps = [inc for inc, count in segments for _ in range(count)]
    if restart_at is not None:
        before, after = steps[:restart_at], steps[restart_at + 1 + gap:]
        return " ".join([_runs(before), *["_"] * gap, _runs(after)])
    return _runs(steps)


def _runs(steps: list[float]) -> str:
    """0, then each run of equal increments as 'first+incxN' (N + 1 values)."""
    tokens, total, i = ["0"], 0.0, 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[i]:
            j += 1
        inc = steps[i]
        tokens.append(f"{total + inc:g}+{inc:g}x{j - i}")
        total += inc * (j - i + 1)
        i = j + 1
    return " ".join(tokens)


def series(metric: str, labels: Labels, values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {"job": JOB, **labels}.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def server(instance: str, shares: dict[str, Segments], extra: Optional[Labels] = None,
           **restart: int) -> list[dict[str, str]]:
    labels = {"instance": instance, **(extra or {}), "family": "4"}
    return [series("resetwatch_connections_total", {**labels, "category": c},
                   counter(segs, **restart)) for c, segs in shares.items()]


def alert(category: str, level: str, value: str, **labels: str) -> dict[str, Any]:
    """An expected spike alert: its labels and annotations, written out."""
    where = {
        "fleet": "across the fleet",
        "instance": f"on {labels.get('instance')}",
        "asn": f"in network AS{labels.get('asn')}",
        "country": f"in country {labels.get('country')}",
    }.get(level, f"in {level} {labels.get(level)}")
    severity = "ticket" if level == "instance" else "page"
    return {
        "exp_labels": {"job": JOB, **labels, "level": level, "category": category,
                       "severity": severity},
        "exp_annotations": {
            "summary": f"{category} connections spiking {where}",
            "description": (
                f"{value} of sampled connections ended {category.replace('_', '-')} over 15m "
                f"({level} level), clearly above the 7d baseline (Wilson z=3) and over 3x it. "
                f"Typical causes: {promrules.CAUSES[category]}. See docs/operations.md."
            ),
        },
    }


def check(minute: int, name: str, alerts: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": list(alerts)}


ACK, PSH = promrules.ALERT_NAMES["post_ack"], promrules.ALERT_NAMES["post_psh"]


def young_deployment() -> dict[str, Any]:
    """A site of three servers, 40 minutes old: 20 minutes at a 2.7% Post-PSH share, then
    16% (the case that went pending and cleared within two minutes when the baseline held
    the spike). No baseline exists yet, so the default share stands in; it fires."""
    site = {"site": "ams"}
    servers = [f"edge-a{i}" for i in (1, 2, 3)]
    inputs = []
    for name in servers:
        inputs += server(name, {"no_match": [(97.3, 20), (84, 40)],
                                "post_psh": [(2.7, 20), (16, 40)],
                                "post_ack": [(0, 60)]}, site)
    fired = [alert("post_psh", "fleet", "16%"), alert("post_psh", "site", "16%", site="ams")]
    fired += [alert("post_psh", "instance", "16%", instance=s, site="ams") for s in servers]
    lower, _ = promrules.wilson(3 * 16 * 15, 3 * 100 * 15, W.z)
    return {
        "name": "young_deployment_under_an_hour_with_a_real_spike_fires",
        "interval": "1m",
        "input_series": inputs,
        "promql_expr_test": [
            {   # No baseline yet: the conservative default share is the bar.
                "expr": f'{NAMES.bar}{{level="fleet", category="post_psh"}}',
                "eval_time": "50m",
                "exp_samples": [{"labels": _labels(NAMES.bar, "fleet", "post_psh"),
                                 "value": W.default_share}],
            },
            {   # The recorded Wilson bound is the formula's (promrules.wilson).
                "expr": f'{NAMES.lower}{{level="fleet", category="post_psh"}}',
                "eval_time": "50m",
                "exp_samples": [{"labels": _labels(NAMES.lower, "fleet", "post_psh"),
                                 "value": lower}],
            },
        ],
        "alert_rule_test": [
            check(19, PSH),  # before the spike: 2.7% is under the default share
            check(50, PSH, fired),
            check(50, ACK),
        ],
    }


def _labels(name: str, level: str, category: str, **extra: str) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in
                      {"__name__": name, "category": category, "job": JOB, "level": level,
                       **extra}.items())
    return "{" + inner + "}"


MATURE = 720
"""Minutes of history before the mature case's spike: the baseline holds thousands."""


def mature_deployment() -> dict[str, Any]:
    """Twelve hours at a 2% Post-ACK share on three servers of a site, then 37% on all three:
    fires at every level (the fleet and site page, the servers get tickets), and is still
    firing an hour later, because the baseline stops an hour before now."""
    servers = [f"edge-f{i}" for i in (1, 2, 3)]
    inputs = []
    for name in servers:
        inputs += server(name, {"no_match": [(100, MATURE + 90)],
                                "post_ack": [(2, MATURE), (60, 90)],
                                "post_psh": [(2, MATURE + 90)]}, {"site": "fra"})
    fired = [alert("post_ack", "fleet", "37.04%"),
             alert("post_ack", "site", "37.04%", site="fra")]
    fired += [alert("post_ack", "instance", "37.04%", instance=s, site="fra") for s in servers]
    return {
        "name": "mature_deployment_spike_fires_and_stays_firing",
        "interval": "1m",
        "input_series": inputs,
        "promql_expr_test": [{
            # An hour into the spike the baseline still holds none of it.
            "expr": f'{NAMES.baseline}{{level="fleet", category="post_ack"}}',
            "eval_time": f"{MATURE + 60}m",
            "exp_samples": [{"labels": _labels(NAMES.baseline, "fleet", "post_ack"),
                             "value": 2 / 104}],
        }],
        "alert_rule_test": [
            check(MATURE - 5, ACK),
            check(MATURE + 10, ACK),  # seen, but not yet for 15 minutes
            check(MATURE + 30, ACK, fired),
            check(MATURE + 85, ACK, fired),
            check(MATURE + 30, PSH),
        ],
    }


def one_network_of_ten() -> dict[str, Any]:
    """Ten client networks on two servers, 2.4% Post-ACK each for six hours; then a middlebox
    in AS64501 makes 27% of its connections Post-ACK. The fleet's share moves from 2.4% to
    5.7% (under 3x), so only that network pages. The folded `other` networks spike too: never
    paged."""
    asns = [str(64500 + i) for i in range(1, 11)]
    inputs = []
    history, spike = 360, 60
    for name in ("edge-n1", "edge-n2"):
        base = {"instance": name, "site": "lon", "family": "4"}
        total_ack = [(10.0, history), (24.0, spike)]
        total_ok = [(400.0, history), (400.0, spike)]
        inputs += server(name, {"no_match": total_ok, "post_ack": total_ack}, {"site": "lon"})
        for asn in [*asns, "other"]:
            hit = asn in ("64501", "other")
            ok = [(40.0, history + spike)]
            ack = [(1.0, history), (15.0 if hit else 1.0, spike)]
            for category, segs in (("no_match", ok), ("post_ack", ack)):
                inputs.append(series("resetwatch_network_connections_total",
                                     {**base, "asn": asn, "category": category},
                                     counter(segs)))
        for category, segs in (("no_match", total_ok), ("post_ack", total_ack)):
            inputs.append(series("resetwatch_country_connections_total",
                                 {**base, "country": "NL", "category": category},
                                 counter(segs)))
    return {
        "name": "spike_in_one_network_of_ten_fires_for_it_only",
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [
            check(history - 5, ACK),
            check(history + 40, ACK, [alert("post_ack", "asn", "27.27%", asn="64501")]),
            check(history + 40, PSH),
        ],
    }


def agent_restart() -> dict[str, Any]:
    """A mature site of two servers; one agent restarts (two missed scrapes, then its
    counters start again from 0). `increase` sees a reset, not a drop: nothing fires."""
    inputs = []
    for name in ("edge-r1", "edge-r2"):
        restart = {"restart_at": 240, "gap": 2} if name == "edge-r1" else {}
        inputs += server(name, {"no_match": [(100, 300)], "post_ack": [(2, 300)],
                                "post_psh": [(3, 300)]}, {"site": "par"}, **restart)
    return {
        "name": "agent_restart_counter_reset_fires_nothing",
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [check(m, name) for m in (242, 246, 255, 270, 290)
                            for name in (ACK, PSH)],
    }


NOISE_SHARES = {"post_ack": 0.02, "post_psh": 0.027}
NOISE_STEP_MIN = 5
WEEK_MIN = 7 * 24 * 60


def _noise_counts(rng: random.Random, per_window: int) -> dict[str, list[int]]:
    """Cumulative counts per category, one sample every NOISE_STEP_MIN minutes for a week:
    each step's connections are Poisson (mean per_window / 3, the 15-minute window holding
    three steps), each judged by a draw with the categories' shares."""
    mean = per_window * NOISE_STEP_MIN / 15
    totals = {c: [0] for c in ("no_match", *NOISE_SHARES)}
    for _ in range(WEEK_MIN // NOISE_STEP_MIN):
        step = {c: 0 for c in totals}
        for _ in range(_poisson(rng, mean)):
            draw, category = rng.random(), "no_match"
            for name, share in NOISE_SHARES.items():
                if draw < share:
                    category = name
                    break
                draw -= share
            step[category] += 1
        for c in totals:
            totals[c].append(totals[c][-1] + step[c])
    return totals


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method in chunks, so large means do not underflow exp(-mean).
    count = 0
    while mean > 0:
        part = min(mean, 30.0)
        mean -= part
        limit, product = pow(2.718281828459045, -part), rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
    return count


NOISE_SIZES = (20, 100, 1000)


def binomial_noise() -> dict[str, Any]:
    """Servers whose shares never change (each its own job, so its fleet and site are its
    own), sampled at 20, 100 and 1,000 connections per 15 minutes for a simulated week from
    its first minute (young, then mature): no spike alert at any level, ever (the issue
    allows one page a week; the rules give none). One group for the three sizes: promtool's
    cost is per evaluation, not per series."""
    inputs, checks = [], []
    for size in NOISE_SIZES:
        rng = random.Random(20 + size)
        job = f"noise{size}"
        for category, values in _noise_counts(rng, size).items():
            labels = {"job": job, "instance": "edge-q", "site": "q", "family": "4",
                      "category": category}
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            inputs.append({"series": f"resetwatch_connections_total{{{inner}}}",
                           "values": " ".join(map(str, values))})
        checks.append({
            "expr": (f'count_over_time(ALERTS{{job="{job}", alertstate="firing", '
                     f'alertname=~"{ACK}|{PSH}"}}[{WEEK_MIN + 60}m])'),
            "eval_time": f"{WEEK_MIN}m",
            "exp_samples": [],
        })
    return {
        "name": "binomial_noise_at_20_100_1000_samples_per_window_for_a_week_pages_never",
        "interval": f"{NOISE_STEP_MIN}m",
        "input_series": inputs,
        "promql_expr_test": checks,
    }


def _render(name: str, evaluation: str, cases: list[dict[str, Any]]) -> str:
    header = (
        "# Generated by `python -m resetwatch.generate` from resetwatch/promtests.py; edit\n"
        f"# that, not this file. Run: promtool test rules {name}\n"
    )
    doc = {"rule_files": ["resetwatch.rules.yml"], "evaluation_interval": evaluation,
           "tests": cases}
    return header + "\n".join(promrules.yaml_lines(doc)) + "\n"


def render_spikes() -> str:
    """The behaviour cases, evaluated every minute as shipped."""
    cases = [young_deployment(), mature_deployment(), one_network_of_ten(), agent_restart()]
    return _render("resetwatch.spikes.test.yml", W.evaluation, cases)


def render_noise() -> str:
    """The week of noise, evaluated at its sample interval (5 minutes: the shares change
    only when a sample arrives; a minute's evaluation would take promtool five times as
    long for the same answer)."""
    return _render("resetwatch.noise.test.yml", f"{NOISE_STEP_MIN}m", [binomial_noise()])
