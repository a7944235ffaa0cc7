"""The judged-flow event: what every output receives, once per finished flow.

The engine builds one `FlowEvent` per finished flow, after the classifier, and hands the same
object to every output (counts, history, records, ...). What is worth computing once per flow
for several outputs (the client's network, the signature) is computed here, never again in an
output: add a field with a default, fill it in `Engine`, and every output can read it.

`Output` is the one protocol outputs implement, with a lifecycle: `open` before the first
event, `flush` now and then (the daemon's loop, the end of a replay), `reopen` on reload (a
rotated records file), `close` at the end. Outputs that can fail (files, sockets) are wrapped
by `outputs.Guarded`, which applies the failure policy; in-memory counters never fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Protocol

from .classify import Verdict
from .flows import Exclusion, Flow
from .signature import Signature, signature_of

if TYPE_CHECKING:
    from .ipdb import Network


class FlowEvent(NamedTuple):
    """One finished flow: judged (`verdict` set) or excluded (`excluded` set), never both."""

    flow: Flow
    family: str
    """"4" or "6": the label value every count uses, derived once."""
    verdict: Optional[Verdict]
    """The classifier's verdict; None for an excluded flow."""
    excluded: Optional[Exclusion]
    """Why the flow was counted but not classified; None for a judged flow."""
    signature: Optional[Signature] = None
    """The paper's tampering signature of the verdict (signature.py); None when excluded."""
    network: Optional[Network] = None
    """The client's network from the IP database (networks.py), looked up once per judged
    flow; None without a database and for excluded flows."""


def family_of(flow: Flow) -> str:
    return "4" if len(flow.key) == 12 else "6"


class Output(Protocol):
    """Where finished flows go. `name` labels its errors (`resetwatch_output_errors_total`)."""

    name: str

    def open(self) -> None: ...

    def write(self, event: FlowEvent) -> None: ...

    def flush(self) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class CountingOutput:
    """Base for in-memory outputs: nothing to open, flush, reopen or close."""

    name = "counts"

    def open(self) -> None:
        return None

    def flush(self) -> None:
        return None

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        return None


def judged_event(flow: Flow, verdict: Verdict) -> FlowEvent:
    """The event of a judged flow (for callers outside the engine: tests, tools)."""
    return FlowEvent(flow, family_of(flow), verdict, None, signature_of(verdict), None)


def excluded_event(flow: Flow, reason: Exclusion) -> FlowEvent:
    """The event of an excluded flow."""
    return FlowEvent(flow, family_of(flow), None, reason, None, None)
