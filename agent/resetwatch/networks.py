"""Whose connections: each judged flow's client network, and bounded labels for the metrics.

`Networks` wraps the IP database (ipdb.py) for the engine: one lookup per judged flow, of the
client's address (a flow's key starts with it: the table holds ingress packets only, also in
a replay with `--server`), never per packet; excluded flows get none.

`NetworkLabels` keeps the metrics' cardinality bounded: the `network_top` busiest networks
and countries (topn.py, stable membership) have a series of their own, every other flow and
every lookup miss counts as `other`. A network's series starts at 0 when it enters; when it
leaves, its series ends and its flows count as `other` from then on. `NetworkCollector`
exports both families from the `FlowCounts.networks` tally, plus what the labels hide.

The history (history.py) counts each judged flow under the same labels as the metrics: the
labels are computed once per flow (`labels_of` remembers the last event), so the API's
per-network answers and the metric series agree and membership is decided in one place.
`NetworkNames` keeps, for the labels only (bounded), the AS name, the country's name and its
continent as the database gave them: the API's top lists name each row, and the continent
filter reads a country's continent from the same database that gave the country.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .classify import Category
from .event import FlowEvent
from .flows import Flow
from .ipdb import Ipdb, Network
from .periodic import Every
from .tally import JudgedKey
from .topn import OTHER, TopN

if TYPE_CHECKING:
    from .engine import Engine
    from .history import History
    from .metrics import FlowCounts

log = logging.getLogger("resetwatch")

FAMILIES = ("4", "6")


REFRESH_EVERY = 60.0
"""Seconds between checks that a database file was replaced (operators update monthly)."""


class Networks:
    """The client-network lookup of the engine (`Engine(network_of=networks.of)`)."""

    def __init__(self, ipdb: Ipdb, clock: Callable[[], float] = time.monotonic) -> None:
        self.ipdb = ipdb
        self._reopen = False
        self._clock = clock
        self._refresher = Every(REFRESH_EVERY, self.refresh, clock, background=True)

    def poll(self) -> None:
        """From the daemon's loop: start a `refresh` in its own thread when one is due."""
        self._refresher.poll()

    def request_reopen(self) -> None:
        """SIGHUP: reopen every file, changed or not, at the next `poll`."""
        self._reopen = True
        self._refresher.next_at = self._clock()

    def refresh(self) -> None:
        """Swap in replaced files (a corrupt one is refused, the old one kept). Runs in a
        background thread: opening and checking a file never pauses the packet loop."""
        if self._reopen:
            self._reopen = False
            self.ipdb.reopen()
        else:
            self.ipdb.maybe_reload()

    @classmethod
    def open(cls, paths: Sequence[str], clock: Callable[[], float] = time.monotonic) -> Networks:
        """Raises ipdb.IpdbError with one line naming the file and the problem."""
        return cls(Ipdb(paths), clock)

    def of(self, flow: Flow) -> Network:
        key = flow.key
        return self.ipdb.lookup(key[:4] if len(key) == 12 else key[:16])

    def describe(self) -> list[str]:
        return self.ipdb.describe()


def attach(
    paths: Sequence[str], top: int, clock: Callable[[], float], counts: FlowCounts,
    engine: Engine, registry: CollectorRegistry, history: Optional[History] = None,
) -> Networks:
    """Open the databases and wire them into the engine, the counts, the history and the
    metrics; say which file answers what. Raises ipdb.IpdbError (one line) when a file cannot
    be used."""
    networks = Networks.open(paths, clock)
    labels = counts.labels = NetworkLabels(top, clock)
    if history is not None:
        history.use_labels(labels)
    engine.network_of = networks.of
    registry.register(NetworkCollector(counts, networks))
    for line in networks.describe():
        log.info("ipdb: %s", line)
    return networks


MAX_NAMES = 4096
"""Names kept per map at most; beyond, the oldest half goes (labels change slowly)."""


class NetworkNames:
    """Bounded maps from labels to what the database said: AS label -> AS name, country ->
    continent, country -> name. Written by the packet loop for labelled flows only; readers
    take `copy()`."""

    __slots__ = ("as_name", "continent", "country_name")

    def __init__(self) -> None:
        self.as_name: dict[str, str] = {}
        self.continent: dict[str, str] = {}
        self.country_name: dict[str, str] = {}

    def note(self, asn: str, network: Network, country: str) -> None:
        # Dict lookups only on the per-flow path; a write when a name is new or changed.
        if asn != OTHER and network.as_name and self.as_name.get(asn) != network.as_name:
            _put(self.as_name, asn, network.as_name)
        if country != OTHER:
            if network.continent and country not in self.continent:
                _put(self.continent, country, network.continent)
            if network.country_name and country not in self.country_name:
                _put(self.country_name, country, network.country_name)

    def copy(self) -> NetworkNames:
        out = NetworkNames()
        out.as_name, out.continent = self.as_name.copy(), self.continent.copy()
        out.country_name = self.country_name.copy()
        return out

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"asName": dict(sorted(self.as_name.copy().items())),
                "continent": dict(sorted(self.continent.copy().items())),
                "countryName": dict(sorted(self.country_name.copy().items()))}

    def load(self, doc: Any) -> None:
        """Add the names of `to_json` output; anything malformed is skipped (names only
        decorate the answers, they never change a count)."""
        if not isinstance(doc, dict):
            return
        for field, target in (("asName", self.as_name), ("continent", self.continent),
                              ("countryName", self.country_name)):
            values = doc.get(field)
            if isinstance(values, dict):
                for label, name in list(values.items())[:MAX_NAMES]:
                    if isinstance(label, str) and isinstance(name, str):
                        target.setdefault(label, name)


def _put(names: dict[str, str], label: str, name: str) -> None:
    if len(names) >= MAX_NAMES:
        for old in list(names)[: MAX_NAMES // 2]:
            del names[old]
    names[label] = name


class NetworkLabels:
    """The metric label of a flow's network and country: its own, or `other`."""

    def __init__(self, top: int, clock: Callable[[], float]) -> None:
        self.asn = TopN(top, clock=clock)
        self.country = TopN(top, clock=clock)
        self.top = top
        self.misses = 0
        """Judged flows whose network the databases did not know (counted as other)."""
        self.names = NetworkNames()
        self._last: Optional[FlowEvent] = None
        self._last_labels = (OTHER, OTHER)

    def labels(self, network: Network) -> tuple[str, str]:
        asn = self.asn.observe(str(network.asn)) if network.asn is not None else OTHER
        country = self.country.observe(network.country) if network.country else OTHER
        if network.asn is None and network.country is None:
            self.misses += 1
        self.names.note(asn, network, country)
        return asn, country

    def labels_of(self, event: FlowEvent, network: Network) -> tuple[str, str]:
        """`labels` of the event's network, computed once per event however many outputs
        ask (the metrics and the history): a flow is observed once by the top N."""
        if event is not self._last:
            self._last, self._last_labels = event, self.labels(network)
        return self._last_labels


def _by_label(field: str) -> Callable[[JudgedKey], tuple[str, Category, str]]:
    def key(k: JudgedKey) -> tuple[str, Category, str]:
        return k.family, k.verdict.category, k.asn if field == "asn" else k.country

    return key


class NetworkCollector(Collector):
    """The per-network families, read from the counts at scrape time."""

    def __init__(self, counts: FlowCounts, networks: Networks) -> None:
        self.counts = counts
        self.networks = networks

    def collect(self) -> Iterator[Metric]:
        labels = self.counts.labels
        assert labels is not None
        tally = self.counts.networks
        for name, field, top, what in (
            ("resetwatch_network_connections", "asn", labels.asn, "client network (AS number)"),
            ("resetwatch_country_connections", "country", labels.country, "client country"),
        ):
            members = top.members() | {OTHER}
            m = CounterMetricFamily(
                name,
                f"Sampled TCP connections judged, by category and {what}: the busiest "
                f"networks_top have their own series (it starts at 0 when one enters), the "
                f"rest and lookup misses count as other.",
                labels=["family", "category", field],
            )
            counts = {(f, c, OTHER): 0 for f in FAMILIES for c in Category}
            counts.update(tally.group(_by_label(field)))
            for (family, category, label), value in counts.items():
                if label in members:
                    m.add_metric([family, category.value, label], value)
            yield m
        ipdb = self.networks.ipdb
        yield GaugeMetricFamily(
            "resetwatch_networks_seen",
            "Distinct client networks (AS numbers) seen recently, of which networks_top get a "
            "series of their own.",
            value=labels.asn.distinct_seen,
        )
        yield CounterMetricFamily(
            "resetwatch_network_flows_other",
            "Judged connections of networks without a series of their own (counted as other).",
            value=labels.asn.folded_into_other,
        )
        yield CounterMetricFamily(
            "resetwatch_ipdb_lookup_misses",
            "Judged connections whose client address no database knew (counted as other).",
            value=labels.misses,
        )
        built = GaugeMetricFamily(
            "resetwatch_ipdb_build_timestamp_seconds",
            "When each IP database was built (its metadata), by database type: an old one "
            "names networks as they were then.",
            labels=["database"],
        )
        for info in ipdb.files:
            built.add_metric([info.database_type], float(info.build_epoch))
        yield built
