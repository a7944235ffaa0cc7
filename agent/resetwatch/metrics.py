"""Prometheus metrics of the live agent.

Flows are counted in plain dicts (a sink, cheap per flow); one custom collector turns them and
the agent's health into metric families at scrape time. Every label value is declared from
the start, so `rate()` works from the first scrape. No label ever holds a peer address.
HELP texts come from the enums' own descriptions (classify.py, flows.py, packet.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .classify import Category, Outcome, Stage, Tag
from .event import CountingOutput, FlowEvent
from .flows import Exclusion
from .packet import Invalid
from .signature import Signature, signature_of
from .tally import FAMILIES, Tally

NFLOG_LOSS_REASONS = {
    "seq_gap": "Packets missing between NFLOG sequence numbers (dropped by the kernel when the "
    "receive buffer overflowed).",
    "bad_message": "Netlink messages too damaged to read, counted once each: at least one "
    "packet lost per count (the rest of the datagram is skipped).",
}


def _enum_help(intro: str, members: object) -> str:
    return intro + " " + " ".join(f"{m.value}: {m.doc}" for m in members)  # type: ignore[attr-defined]


class FlowCounts(CountingOutput):
    """An output counting finished flows in one `Tally` (since the agent started); the
    collector folds it into the metric families at scrape time."""

    def __init__(self) -> None:
        self.tally = Tally()

    def write(self, event: FlowEvent) -> None:
        self.tally.add(event)

    def connections(self) -> dict[tuple[str, Category], int]:
        out = {(f, c): 0 for f in FAMILIES for c in Category}
        out.update(self.tally.group(lambda k: (k.family, k.verdict.category)))
        return out

    def outcomes(self) -> dict[tuple[str, Stage, Outcome], int]:
        out = {(f, s, o): 0 for f in FAMILIES for s in Stage for o in Outcome}
        out.update(self.tally.group(lambda k: (k.family, k.verdict.stage, k.verdict.outcome)))
        return out

    def signatures(self) -> dict[tuple[str, Signature], int]:
        out = {(f, sig): 0 for f in FAMILIES for sig in Signature}
        for key, count in self.tally.judged.copy().items():
            out[key.family, signature_of(key.verdict) or Signature.NONE] += count
        return out

    def tags(self) -> dict[tuple[str, Category, Tag], int]:
        out = {(f, c, t): 0 for f in FAMILIES for c in Category for t in Tag}
        for key, count in self.tally.judged.copy().items():
            family, category = key.family, key.verdict.category
            for tag in key.verdict.tags:
                out[family, category, tag] += count
        return out


@dataclass
class AgentHealth:
    """What the daemon tells the collector about itself; read at scrape time."""

    probability: float = 0.0
    max_flows: int = 0
    flows_active: Callable[[], int] = lambda: 0
    flows_started: int = 0
    late_packets: int = 0
    nflog_packets: int = 0
    nflog_lost: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NFLOG_LOSS_REASONS, 0))
    nflog_buffer_bytes: int = 0
    nflog_overruns: int = 0
    nflog_socket_drops: int = 0
    invalid: dict[Invalid, int] = field(default_factory=lambda: {r: 0 for r in Invalid})
    rules_present: bool = False
    rules_managed: bool = True
    rules_repairs: int = 0
    sampler_set_full: int = 0
    reloads: int = 0
    last_packet_age: Callable[[], float] = lambda: 0.0
    history_save_errors: Callable[[], int] = lambda: 0


class AgentCollector(Collector):
    """The single collector for everything the agent exports."""

    def __init__(self, counts: FlowCounts, health: AgentHealth) -> None:
        self.counts = counts
        self.health = health

    def collect(self) -> Iterator[Metric]:
        counts, health = self.counts, self.health
        m = CounterMetricFamily(
            "resetwatch_connections",
            _enum_help("Sampled TCP connections judged, by category.", Category),
            labels=["family", "category"],
        )
        for (family, category), value in counts.connections().items():
            m.add_metric([family, category.value], value)
        yield m

        m = CounterMetricFamily(
            "resetwatch_connection_outcomes",
            _enum_help("Sampled TCP connections judged, by stage and outcome.", Outcome),
            labels=["family", "stage", "outcome"],
        )
        for (family, stage, outcome), value in counts.outcomes().items():
            m.add_metric([family, stage.value, outcome.value], value)
        yield m

        m = CounterMetricFamily(
            "resetwatch_connection_tags",
            "Judged connections carrying each tag, by category (a connection has several "
            "tags). " + " ".join(f"{t.value}: {t.doc}" for t in Tag),
            labels=["family", "category", "tag"],
        )
        for (family, category, tag), value in counts.tags().items():
            m.add_metric([family, category.value, tag.value], value)
        yield m

        m = CounterMetricFamily(
            "resetwatch_connection_signatures",
            "Judged connections by the SIGCOMM '23 paper's tampering signature (exactly one "
            "each; none for the rest). " + " ".join(f"{s.value}: {s.doc}." for s in Signature),
            labels=["family", "signature"],
        )
        for (family, signature), value in counts.signatures().items():
            m.add_metric([family, signature.value], value)
        yield m

        m = CounterMetricFamily(
            "resetwatch_flows_excluded",
            _enum_help("Sampled flows counted but not classified, by reason.", Exclusion),
            labels=["reason"],
        )
        for reason, value in counts.tally.excluded_by().items():
            m.add_metric([reason.value], value)
        yield m

        yield GaugeMetricFamily(
            "resetwatch_sampling_probability",
            "Probability that a new ingress TCP connection is sampled: divide counts by it "
            "to estimate all connections.",
            value=health.probability,
        )
        yield GaugeMetricFamily(
            "resetwatch_flows_active", "Flows held in the table now.",
            value=health.flows_active(),
        )
        yield GaugeMetricFamily(
            "resetwatch_flows_max", "Capacity of the flow table (max_flows).",
            value=health.max_flows,
        )
        yield CounterMetricFamily(
            "resetwatch_flows_started", "Flows started by a SYN.", value=health.flows_started
        )
        yield CounterMetricFamily(
            "resetwatch_packets_late",
            "Packets of a flow already judged (after its 10th packet or its close linger).",
            value=health.late_packets,
        )
        yield CounterMetricFamily(
            "resetwatch_nflog_packets", "Packets received from NFLOG.",
            value=health.nflog_packets,
        )
        m = CounterMetricFamily(
            "resetwatch_nflog_lost",
            "Packets logged by the kernel but not received, by how the loss was seen. "
            + " ".join(f"{k}: {v}" for k, v in NFLOG_LOSS_REASONS.items()),
            labels=["reason"],
        )
        for loss in NFLOG_LOSS_REASONS:
            m.add_metric([loss], health.nflog_lost.get(loss, 0))
        yield m
        yield CounterMetricFamily(
            "resetwatch_nflog_overruns",
            "Times the NFLOG receive buffer overflowed (ENOBUFS); each grows the buffer up to "
            "nflog_buffer_max. The packets lost are counted in resetwatch_nflog_lost_total.",
            value=health.nflog_overruns,
        )
        yield CounterMetricFamily(
            "resetwatch_nflog_socket_drops",
            "Netlink datagrams (batches of packets) the kernel dropped at the agent's socket "
            "(SO_MEMINFO). Non-zero means packets were lost, even before a sequence gap shows "
            "them in resetwatch_nflog_lost_total.",
            value=health.nflog_socket_drops,
        )
        yield GaugeMetricFamily(
            "resetwatch_nflog_receive_buffer_bytes",
            "Size of the NFLOG socket's receive buffer (grows on overflow up to a limit).",
            value=health.nflog_buffer_bytes,
        )
        m = CounterMetricFamily(
            "resetwatch_packets_invalid",
            _enum_help("Received packets that could not be parsed, by reason.", Invalid),
            labels=["reason"],
        )
        for invalid_reason, value in health.invalid.items():
            m.add_metric([invalid_reason.value], value)
        yield m
        yield GaugeMetricFamily(
            "resetwatch_rules_present",
            "1 when the sampling rules are installed as configured, else 0.",
            value=1 if health.rules_present else 0,
        )
        yield GaugeMetricFamily(
            "resetwatch_rules_managed",
            "1 when the agent installs and repairs the rules, 0 with no_rules.",
            value=1 if health.rules_managed else 0,
        )
        yield CounterMetricFamily(
            "resetwatch_rules_repairs",
            "Times the rules were found missing or changed and were put back.",
            value=health.rules_repairs,
        )
        yield CounterMetricFamily(
            "resetwatch_sampler_set_full",
            "Sampled SYNs the stateless sampler dropped because its set of sampled connections "
            "was full (always 0 with the conntrack sampler).",
            value=health.sampler_set_full,
        )
        yield CounterMetricFamily(
            "resetwatch_config_reloads", "Successful configuration reloads (SIGHUP).",
            value=health.reloads,
        )
        yield GaugeMetricFamily(
            "resetwatch_last_packet_age_seconds",
            "Seconds since the last packet arrived from NFLOG.",
            value=health.last_packet_age(),
        )
        yield CounterMetricFamily(
            "resetwatch_history_save_errors",
            "Failed saves of the 15-minute history to state_dir (read-only or full disk); "
            "the agent keeps counting in memory and retries every minute.",
            value=health.history_save_errors(),
        )
        info = InfoMetricFamily("resetwatch_build", "Version of the running agent.")
        info.add_metric([], {"version": __version__})
        yield info


def build_registry(counts: FlowCounts, health: AgentHealth) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(counts, health))
    return registry
