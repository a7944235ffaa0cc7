"""Prometheus metrics of the live agent.

Flows are counted in plain dicts (a sink, cheap per flow); one custom collector turns them and
the agent's health into metric families at scrape time. Every label value is declared from
the start, so `rate()` works from the first scrape. No label ever holds a peer address.
HELP texts come from the enums' own descriptions (classify.py, flows.py, packet.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .classify import Category, Outcome, Stage, Tag
from .event import CountingOutput, FlowEvent
from .flows import Exclusion, TableStats
from .networks import NetworkCollector, NetworkLabels, Networks
from .nflog import NflogStats
from .packet import Invalid
from .rules.keeper import RulesState
from .server import REFUSALS
from .signature import Signature, signature_of
from .tally import FAMILIES, Tally

NFLOG_LOSS_REASONS = {
    "seq_gap": "Packets missing between NFLOG sequence numbers (dropped by the kernel when the "
    "receive buffer overflowed).",
    "bad_message": "Netlink messages too damaged to read, counted once each: at least one "
    "packet lost per count (the rest of the datagram is skipped).",
}


def _counter(
    name: str, help: str, labels: list[str], values: Mapping[tuple[Any, ...], float]
) -> CounterMetricFamily:
    """A labelled counter family; label values are enum members (their value) or strings."""
    family = CounterMetricFamily(name, help, labels=labels)
    for key, value in values.items():
        family.add_metric([getattr(part, "value", part) for part in key], value)
    return family


def _enum_help(intro: str, members: object) -> str:
    return intro + " " + " ".join(f"{m.value}: {m.doc}" for m in members)  # type: ignore[attr-defined]


class FlowCounts(CountingOutput):
    """An output counting finished flows in one `Tally` (since the agent started); the
    collector folds it into the metric families at scrape time. With `labels` (an IP
    database is set), a second tally counts judged flows under bounded network labels."""

    def __init__(self, labels: Optional[NetworkLabels] = None) -> None:
        self.tally = Tally()
        self.labels = labels
        self.networks = Tally()

    def write(self, event: FlowEvent) -> None:
        self.tally.add(event)
        network = event.network
        if network is not None and self.labels is not None:
            asn, country = self.labels.labels_of(event, network)
            self.networks.add(event, asn, country)

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


class OutputHealth(Protocol):
    """What the collector reads of one output's failure policy (outputs.OutputState)."""

    @property
    def name(self) -> str: ...

    @property
    def errors(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def failing(self) -> bool: ...


@dataclass
class AgentHealth:
    """What the daemon tells the collector about itself; read at scrape time."""

    probability: float = 0.0
    max_flows: int = 0
    flows_active: Callable[[], int] = lambda: 0
    flows_started: int = 0
    late_packets: int = 0
    nflog: NflogStats = field(default_factory=NflogStats)
    invalid: dict[Invalid, int] = field(default_factory=lambda: {r: 0 for r in Invalid})
    rules: RulesState = field(default_factory=RulesState)
    reloads: int = 0
    last_packet_age: Callable[[], float] = lambda: 0.0
    last_packet_time: Callable[[], float] = lambda: 0.0
    """Epoch seconds of the last packet; 0 while none has arrived."""
    history_save_errors: Callable[[], int] = lambda: 0
    outputs: Callable[[], Sequence[OutputHealth]] = lambda: ()
    """Every output the factory can build, failing or not (outputs.OUTPUTS declares them)."""

    # The HTTP listener's own counts (server.py), read at scrape time.
    http_refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))
    http_open: Callable[[], int] = lambda: 0

    def configure(self, probability: float, max_flows: int, rules_managed: bool) -> None:
        """What a (re)loaded config says the agent does."""
        self.probability, self.max_flows = probability, max_flows
        self.rules.managed = rules_managed

    def update(self, table: TableStats, nflog: NflogStats) -> None:
        """The loop's counters after a pass."""
        self.flows_started, self.late_packets = table.started, table.late_packets
        self.nflog = nflog


class AgentCollector(Collector):
    """The single collector for everything the agent exports."""

    def __init__(self, counts: FlowCounts, health: AgentHealth) -> None:
        self.counts = counts
        self.health = health

    def collect(self) -> Iterator[Metric]:
        counts, health = self.counts, self.health
        yield from self._flows(counts)
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
        yield from self._nflog(health.nflog)
        m = CounterMetricFamily(
            "resetwatch_packets_invalid",
            _enum_help("Received packets that could not be parsed, by reason.", Invalid),
            labels=["reason"],
        )
        for invalid_reason, value in health.invalid.items():
            m.add_metric([invalid_reason.value], value)
        yield m
        yield from self._rules(health.rules)
        yield from self._outputs(health.outputs())
        yield CounterMetricFamily(
            "resetwatch_config_reloads", "Successful configuration reloads (SIGHUP).",
            value=health.reloads,
        )
        yield GaugeMetricFamily(
            "resetwatch_last_packet_timestamp_seconds",
            "When the last packet arrived from NFLOG, in epoch seconds (0: no packet yet). "
            "Alert on time() minus it.",
            value=health.last_packet_time(),
        )
        yield GaugeMetricFamily(
            "resetwatch_last_packet_age_seconds",
            "Deprecated, to be removed after this release: use time() - "
            "resetwatch_last_packet_timestamp_seconds. Seconds since the last packet arrived "
            "from NFLOG (since the start while none has).",
            value=health.last_packet_age(),
        )
        yield CounterMetricFamily(
            "resetwatch_history_save_errors",
            "Failed saves of the 15-minute history to state_dir (read-only or full disk); "
            "the agent keeps counting in memory and retries every minute.",
            value=health.history_save_errors(),
        )
        yield from _http_families(health)
        info = InfoMetricFamily("resetwatch_build", "Version of the running agent.")
        info.add_metric([], {"version": __version__})
        yield info

    @staticmethod
    def _nflog(stats: NflogStats) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "resetwatch_nflog_packets", "Packets received from NFLOG.", value=stats.packets
        )
        m = CounterMetricFamily(
            "resetwatch_nflog_lost",
            "Packets logged by the kernel but not received, by how the loss was seen. "
            + " ".join(f"{k}: {v}" for k, v in NFLOG_LOSS_REASONS.items()),
            labels=["reason"],
        )
        for loss in NFLOG_LOSS_REASONS:
            m.add_metric([loss], getattr(stats, "lost_" + loss))
        yield m
        yield CounterMetricFamily(
            "resetwatch_nflog_overruns",
            "Times the NFLOG receive buffer overflowed (ENOBUFS); each grows the buffer up to "
            "nflog_buffer_max. The packets lost are counted in resetwatch_nflog_lost_total.",
            value=stats.overruns,
        )
        yield CounterMetricFamily(
            "resetwatch_nflog_socket_drops",
            "Netlink datagrams (batches of packets) the kernel dropped at the agent's socket "
            "(SO_MEMINFO). Non-zero means packets were lost, even before a sequence gap shows "
            "them in resetwatch_nflog_lost_total.",
            value=stats.socket_drops,
        )
        yield GaugeMetricFamily(
            "resetwatch_nflog_receive_buffer_bytes",
            "Size of the NFLOG socket's receive buffer (grows on overflow up to a limit).",
            value=stats.receive_buffer_bytes,
        )

    @staticmethod
    def _flows(counts: FlowCounts) -> Iterator[Metric]:
        """The flow families, from the one count model's views (every label value present)."""
        yield _counter(
            "resetwatch_connections",
            _enum_help("Sampled TCP connections judged, by category.", Category),
            ["family", "category"], counts.connections(),
        )
        yield _counter(
            "resetwatch_connection_outcomes",
            _enum_help("Sampled TCP connections judged, by stage and outcome.", Outcome),
            ["family", "stage", "outcome"], counts.outcomes(),
        )
        yield _counter(
            "resetwatch_connection_tags",
            "Judged connections carrying each tag, by category (a connection has several "
            "tags). " + " ".join(f"{t.value}: {t.doc}" for t in Tag),
            ["family", "category", "tag"], counts.tags(),
        )
        yield _counter(
            "resetwatch_connection_signatures",
            "Judged connections by the SIGCOMM '23 paper's tampering signature (exactly one "
            "each; none for the rest). " + " ".join(f"{s.value}: {s.doc}." for s in Signature),
            ["family", "signature"], counts.signatures(),
        )
        yield _counter(
            "resetwatch_flows_excluded",
            _enum_help("Sampled flows counted but not classified, by reason.", Exclusion),
            ["reason"], {(r,): n for r, n in counts.tally.excluded_by().items()},
        )

    @staticmethod
    def _rules(rules: RulesState) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "resetwatch_rules_present",
            "1 when the sampling rules are installed as configured, else 0.",
            value=1 if rules.present else 0,
        )
        yield GaugeMetricFamily(
            "resetwatch_rules_managed",
            "1 when the agent installs and repairs the rules, 0 with no_rules.",
            value=1 if rules.managed else 0,
        )
        yield CounterMetricFamily(
            "resetwatch_rules_repairs",
            "Times the rules were found missing or changed and were put back.",
            value=rules.repairs,
        )
        yield CounterMetricFamily(
            "resetwatch_rules_checks",
            "Checks of the installed rules, run in a thread of their own (never in the "
            "packet loop), the next one a rules_check_interval after the last one ended.",
            value=rules.checks,
        )
        yield CounterMetricFamily(
            "resetwatch_rules_check_timeouts",
            "Rules checks or repairs that gave up waiting: the xtables lock held by another "
            "program past its wait, or a tool with no answer. The rules' state was not known.",
            value=rules.timeouts,
        )
        yield CounterMetricFamily(
            "resetwatch_sampler_set_full",
            "Sampled SYNs the stateless sampler dropped because its set of sampled connections "
            "was full (always 0 with the conntrack sampler).",
            value=rules.set_full,
        )
        yield CounterMetricFamily(
            "resetwatch_sampling_candidates",
            "New TCP SYNs the sample rule could have drawn for (its filters, no random draw, "
            "no conntrack state), counted by a rule of the agent's own and read at each rules "
            "check. Times the sampling probability, what resetwatch_flows_started_total should "
            "grow by.",
            value=rules.candidates,
        )
        yield GaugeMetricFamily(
            "resetwatch_rules_label_conflicts",
            "Rules outside the agent's own that set its conntrack label bit, at the last "
            "check: each makes every connection it matches look sampled.",
            value=rules.label_conflicts,
        )
        yield GaugeMetricFamily(
            "resetwatch_rules_check_duration_seconds",
            "How long the last rules check took, waits for the xtables lock included.",
            value=rules.last_check_seconds,
        )

    @staticmethod
    def _outputs(outputs: Sequence[OutputHealth]) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "resetwatch_output_errors",
            "Failed writes, flushes or reopens of an output (a full or failing disk, a closed "
            "file). The agent keeps running and retries the output with backoff.",
            labels=["output"],
        )
        dropped = CounterMetricFamily(
            "resetwatch_output_events_dropped",
            "Finished flows an output lost while failing (not written, or written to a buffer "
            "the failure discarded). The counts and history still have them.",
            labels=["output"],
        )
        failing = GaugeMetricFamily(
            "resetwatch_output_failing",
            "1 while an output is failing (from its first error until a write succeeds again).",
            labels=["output"],
        )
        for output in outputs:
            errors.add_metric([output.name], output.errors)
            dropped.add_metric([output.name], output.dropped)
            failing.add_metric([output.name], 1 if output.failing else 0)
        yield errors
        yield dropped
        yield failing


def _http_families(health: AgentHealth) -> Iterator[Metric]:
    """The HTTP listener's connections: what a misbehaving local client cost (issue 12)."""
    m = CounterMetricFamily(
        "resetwatch_http_connections_refused",
        "HTTP connections the listener closed without a full answer, by reason (never logged: "
        "no client address is kept). " + " ".join(f"{k}: {v}." for k, v in REFUSALS.items()),
        labels=["reason"],
    )
    for reason in REFUSALS:
        m.add_metric([reason], health.http_refused.get(reason, 0))
    yield m
    yield GaugeMetricFamily(
        "resetwatch_http_connections_open",
        "HTTP connections open now (at most http_max_connections).",
        value=health.http_open(),
    )


def build_registry(
    counts: FlowCounts, health: AgentHealth, networks: Optional[Networks] = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(counts, health))
    # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time: the
    # agent's own cost, as every Prometheus client exports it.
    ProcessCollector(registry=registry)
    if networks is not None and counts.labels is not None:
        registry.register(NetworkCollector(counts, networks))
    return registry
