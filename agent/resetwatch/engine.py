"""The one pipeline both `replay` and `run` use: packets -> flow table -> classifier -> outputs."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Callable, Optional

from .classify import classify
from .event import FlowEvent, Output
from .flows import Exclusion, Flow, FlowTable
from .packet import FieldsResult, Invalid
from .signature import signature_of

if TYPE_CHECKING:
    from .ipdb import Network

# NamedTuple's generated __new__ is a Python function; one event per flow is built directly.
_new_event = tuple.__new__


class Engine:
    """Feeds parsed packets to a `FlowTable`, judges each finished flow once and hands the
    one `FlowEvent` to every output."""

    def __init__(
        self,
        outputs: list[Output],
        *,
        idle_timeout: float = 300.0,
        close_linger: float = 10.0,
        max_flows: int = 1_000_000,
        network_of: Optional[Callable[[Flow], Network]] = None,
    ) -> None:
        self.outputs = outputs
        self.network_of = network_of
        """The client-network lookup (networks.py), once per judged flow; None: no networks."""
        self.table = FlowTable(
            self._finished,
            idle_timeout=idle_timeout,
            close_linger=close_linger,
            max_flows=max_flows,
        )
        self.invalid: Counter[Invalid] = Counter()
        self.feed = self.table.add
        """Feed one parsed packet (bound directly: this is the per-packet hot path)."""
        self.feed_many = self.table.add_many
        """Feed packets in order; returns the newest of its second argument and their
        timestamps (see `FlowTable.add_many`)."""

    def _finished(self, flow: Flow, excluded: Optional[Exclusion]) -> None:
        family = "4" if len(flow.key) == 12 else "6"
        if excluded is None:
            verdict = classify(flow)
            network = self.network_of(flow) if self.network_of is not None else None
            event = _new_event(
                FlowEvent, (flow, family, verdict, None, signature_of(verdict), network)
            )
        else:
            event = _new_event(FlowEvent, (flow, family, None, excluded, None, None))
        for output in self.outputs:
            output.write(event)

    def feed_batches(
        self, batches: Iterable[Sequence[FieldsResult]], invalid: MutableMapping[Invalid, int]
    ) -> bool:
        """Feed batches of parsed packets (the live source's shape), counting the unparsable
        ones in `invalid`. True when any batch held something."""
        feed_many = self.feed_many
        received = False
        for batch in batches:
            if not batch:
                continue
            received = True
            packets = [item for item in batch if not isinstance(item, Invalid)]
            if len(packets) != len(batch):
                for item in batch:
                    if isinstance(item, Invalid):
                        invalid[item] += 1
            feed_many(packets)
        return received

    def count_invalid(self, reason: Invalid) -> None:
        self.invalid[reason] += 1

    def sweep(self, now: float, budget: int = 1024) -> int:
        """Judge flows past their deadline, then spare the cyclic GC the flows still held.

        Flows hold no reference cycles (refcounting frees them), yet with a million of them
        each full collection walks them all: about 15% of the agent's CPU in a SYN flood.
        `gc.freeze()` moves what survived to a generation the collector never walks.
        `collect_cycles` undoes it now and then, so a cycle elsewhere is still reclaimed.
        """
        done = self.table.sweep(now, budget)
        gc.freeze()
        return done

    @staticmethod
    def collect_cycles() -> None:
        gc.unfreeze()
        gc.collect()

    def drain(self, now: float) -> None:
        """End of input or shutdown: judge what is past a deadline, truncate the rest."""
        self.table.drain(now)
