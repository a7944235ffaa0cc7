"""`resetwatch status`: ask a running agent over HTTP and print what it sees.

The shares, counts and tags come from the local API (api.py); the agent's health (rules,
NFLOG loss, flows held, last packet) from /metrics, read with prometheus_client's own parser.
Every failure ends in one line naming the agent's address: never a traceback.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import api, report
from .classify import Category
from .summary import share_cell

TIMEOUT_S = 5.0
TOP_TAGS = 8


class StatusError(Exception):
    """The agent could not be asked; the message is one line. `usage`: the user's input
    (such as the range) was refused, rather than the agent being unreachable."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def url_from_listen(listen: str) -> str:
    """The URL to reach an agent listening on `listen` (ADDRESS:PORT) from this host."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"  # a wildcard listener answers on loopback
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def normalise_url(text: str) -> str:
    url = text.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def resolve_agent(agent: Optional[str], config: Optional[str]) -> str:
    """The agent's URL: `agent` if given, else the `listen` setting of the config file (the
    default file when it exists), else the default listen address. Raises ConfigError."""
    from .config import DEFAULT_CONFIG, load

    if agent:
        return normalise_url(agent)
    path: Optional[Path] = Path(config) if config else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    return url_from_listen(load(path).listen)


def _get(base: str, path: str, query: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    # No proxy: the agent is local, and an http_proxy variable must not send us elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()
    except urllib.error.URLError as error:
        reason = error.reason
        text = getattr(reason, "strerror", None) or str(reason)
        raise StatusError(f"no agent answering at {base} ({text})") from None
    except (socket.timeout, TimeoutError):
        raise StatusError(f"no agent answering at {base} (no answer in {TIMEOUT_S:g} s)") from None
    except (OSError, ValueError) as error:  # reset connections, malformed URLs
        raise StatusError(f"cannot ask {base}: {error}") from None


def agent_settings(base: str) -> Optional[dict[str, Any]]:
    """The running agent's settings (its /api/v1/config), or None when no agent answers
    there (or something else does)."""
    try:
        status, body = _get(base, api.PREFIX + "/config")
        doc = json.loads(body) if status == 200 else None
    except (StatusError, ValueError):
        return None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    return settings if isinstance(settings, dict) else None


def _api(base: str, path: str, query: dict[str, str]) -> dict[str, Any]:
    status, body = _get(base, path, query)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status == 400 and isinstance(doc, dict) and doc.get("errors"):
        raise StatusError(str(doc["errors"][0].get("message")), usage=True)
    if status != 200 or not isinstance(doc, dict) or not doc.get("success"):
        raise StatusError(
            f"{base}{path} answered HTTP {status}, not the resetwatch API "
            "(is it a resetwatch agent of this version?)"
        )
    result = doc.get("result")
    if not isinstance(result, dict):
        raise StatusError(f"{base}{path}: no result in the answer")
    return result


Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def _metrics(base: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(base, "/metrics")
    if status != 200:
        raise StatusError(f"{base}/metrics answered HTTP {status}")
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            for sample in family.samples:
                by_labels = samples.setdefault(sample.name, {})
                by_labels[frozenset(sample.labels.items())] = float(sample.value)
    except (ValueError, IndexError, TypeError) as error:
        raise StatusError(f"{base}/metrics is not a Prometheus exposition: {error}") from None
    return samples


def _one(samples: Samples, name: str) -> Optional[float]:
    values = samples.get(name, {})
    return sum(values.values()) if values else None


@dataclass
class Status:
    agent: str
    range: str
    summary: dict[str, Any]
    tags: dict[str, Any]
    health: dict[str, Any]
    networks: Optional[dict[str, Any]] = None
    """With `--by`: the agent's /networks answer (per network rows, as replay's)."""
    by: Optional[str] = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "agent": self.agent,
            "range": self.range,
            "summary": self.summary,
            "tags": self.tags,
            "health": self.health,
        }
        if self.networks is not None:
            out["networks"] = self.networks
        return out


def _last_packet_age(samples: Samples) -> Optional[float]:
    """Seconds since the last packet; None when none was ever received (the agent's gauge
    then counts from its start, which is no packet's age)."""
    if _one(samples, "resetwatch_nflog_packets_total") == 0:
        return None
    return _one(samples, "resetwatch_last_packet_age_seconds")


def _health(samples: Samples) -> dict[str, Any]:
    lost = samples.get("resetwatch_nflog_lost_total", {})
    version = next(
        (dict(labels).get("version") for labels in samples.get("resetwatch_build_info", {})),
        None,
    )
    return {
        "version": version,
        "samplingProbability": _one(samples, "resetwatch_sampling_probability"),
        "rulesPresent": _one(samples, "resetwatch_rules_present"),
        "rulesManaged": _one(samples, "resetwatch_rules_managed"),
        "nflogPackets": _one(samples, "resetwatch_nflog_packets_total"),
        "nflogLost": {dict(labels).get("reason", ""): v for labels, v in lost.items()},
        "nflogSocketDrops": _one(samples, "resetwatch_nflog_socket_drops_total"),
        "flowsHeld": _one(samples, "resetwatch_flows_active"),
        "flowsMax": _one(samples, "resetwatch_flows_max"),
        "lastPacketAgeSeconds": _last_packet_age(samples),
        "historySaveErrors": _one(samples, "resetwatch_history_save_errors_total"),
    }


def gather(base: str, date_range: str, by: Optional[str] = None) -> Status:
    """Everything `status` shows, from the agent at `base` (raises `StatusError`); with
    `by` (asn or country) also the per-network rows."""
    query = {"dateRange": date_range}
    summary = _api(base, api.SUMMARY, query)
    tags = _api(base, api.TAGS, query)
    networks = _api(base, api.NETWORKS, {**query, "by": by}) if by else None
    return Status(base, date_range, summary, tags, _health(_metrics(base)), networks, by)


# ---- the table --------------------------------------------------------------------------------


def _int(value: Optional[float]) -> str:
    return "?" if value is None else f"{int(value):,}"


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return "under 1 s ago"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _probability(p: Optional[float]) -> str:
    if p is None:
        return "?"
    if p >= 1:
        return f"{p:g} (every connection)"
    return f"{p:g} (1 in {round(1 / p):,})"


def _rules(present: Optional[float], managed: Optional[float]) -> str:
    if managed == 0:
        return "not managed by the agent (no_rules)"
    if present == 1:
        return "present"
    return "MISSING: nothing is sampled (see the agent's log)"


def table(status: Status) -> str:
    summary, health = status.summary, status.health
    meta = summary["meta"]
    key = next(k for k in summary if k != "meta")
    shares, counts = summary[key], meta["counts"][key]
    span = meta["dateRange"][0]
    excluded = {k: v for k, v in counts["excluded"].items() if v}
    lines = [f"resetwatch status: {status.agent}"
             + (f" (version {health['version']})" if health.get("version") else "")]
    rows = [
        ("range", f"last {status.range} ({span['startTime']} to {span['endTime']})"),
        ("classified flows", f"{counts['classified']:,}"),
        ("excluded flows", f"{sum(excluded.values()):,}"
         + (" (" + ", ".join(f"{k} {v:,}" for k, v in excluded.items()) + ")" if excluded
            else "")),
    ]
    lines += [f"  {name + ':':<23}{value}" for name, value in rows]
    lines.append("")
    lines.append(f"  {'category':<16}{'share':>9}{'flows':>12}")
    for category in Category:
        share = shares[category.value]
        count = counts["categories"][category.value]
        lines.append(f"  {category.value:<16}{share_cell(share):>9}{count:>12,}")
    top = sorted(
        (t for t in status.tags["tags"] if t["count"]), key=lambda t: (-t["count"], t["tag"])
    )[:TOP_TAGS]
    lines.append("")
    if top:
        # Tags overlap (a flow carries several), so these are ratios to classified flows.
        lines.append(f"  {'top tags':<16}{'flows':>9}{'of classified':>15}")
        for tag in top:
            lines.append(f"  {tag['tag']:<16}{tag['count']:>9,}{share_cell(tag['share']):>15}")
    else:
        lines.append("  top tags:              none in this range")
    lost = health["nflogLost"]
    lost_text = f"{int(sum(lost.values())):,} packets"
    if any(lost.values()):
        lost_text += " (" + ", ".join(f"{k} {int(v):,}" for k, v in lost.items() if v) + ")"
    lost_text += f", {_int(health['nflogSocketDrops'])} socket drops"
    lost_text += f" (of {_int(health['nflogPackets'])} received)"
    rows = [
        ("sampling probability", _probability(health["samplingProbability"])),
        ("rules", _rules(health["rulesPresent"], health["rulesManaged"])),
        ("NFLOG loss", lost_text),
        ("flows held", f"{_int(health['flowsHeld'])} of {_int(health['flowsMax'])}"),
        ("last packet", "no packet yet" if health["nflogPackets"] == 0
         else _age(health["lastPacketAgeSeconds"])),
    ]
    if health.get("historySaveErrors"):
        rows.append(("history saves failed", f"{_int(health['historySaveErrors'])} (see log)"))
    lines.append("")
    lines += [f"  {name + ':':<23}{value}" for name, value in rows]
    text = "\n".join(lines) + "\n"
    if status.networks is not None and status.by:
        text += _network_lines(status.networks, status.by)
    return text


def _network_lines(answer: dict[str, Any], by: str) -> str:
    """replay's `--by` table, from the agent's rows; says when it keeps no networks."""
    tracked = answer["meta"].get("tracked", 0)
    if not tracked:
        return f"\n  by {by}: the agent has no IP database (ipdb), so no per-network counts\n"
    note = (f"  the {tracked} busiest networks and countries have rows of their own; the rest "
            "count as other\n")
    return report.rows_table(answer[f"by_{by}"], by) + note


def render(status: Status, fmt: str) -> str:
    """The output of `status` in `fmt` (table or json); a malformed answer is a StatusError."""
    if fmt == "json":
        return json.dumps(status.as_json(), indent=2) + "\n"
    try:
        return table(status)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, StopIteration) as error:
        raise StatusError(
            f"{status.agent} answered in a shape this version cannot read "
            f"({type(error).__name__}: {error})"
        ) from None
