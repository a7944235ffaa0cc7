"""Where the live agent's packets come from: the `PacketSource` interface and its NFLOG
implementation (tests pass their own source to `daemon.Agent`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Callable, Optional, Protocol

from .config import Config
from .nflog import NflogStats
from .packet import FieldsResult
from .rules.spec import MAX_HEADER_COPY


class PacketSource(Protocol):
    """What the daemon needs of a packet source (nflog.NflogSource, or a test double); a
    source may also offer `set_rcvbuf_max(bytes)`, which a reload calls."""

    def batches(self, timeout: float) -> Iterator[Sequence[FieldsResult]]:
        """Wait up to `timeout` for packets, yield them in batches (consumed fully)."""
        ...

    def stats(self) -> NflogStats: ...

    def close(self) -> None: ...


SourceFactory = Callable[[Config, Callable[[], float]], PacketSource]


def open_nflog(config: Config, clock: Callable[[], float]) -> PacketSource:
    from .nflog import DEFAULT_RCVBUF, NflogSource

    # The group copies no more than the longest header a rule asks for, also when someone
    # else's rules (no_rules) log to it with a larger size. The buffer starts at its usual
    # size, or at the limit when the limit is smaller (64 KiB to 8 MiB).
    return NflogSource(
        config.nflog_group,
        copy_range=MAX_HEADER_COPY,
        clock=clock,
        rcvbuf=min(DEFAULT_RCVBUF, config.nflog_buffer_max),
        rcvbuf_max=config.nflog_buffer_max,
    )


def set_buffer_max(source: object, size: int) -> None:
    """A reload's new nflog_buffer_max, for a source that can take it (NFLOG can)."""
    apply: Optional[Callable[[int], None]] = getattr(source, "set_rcvbuf_max", None)
    if apply is not None:
        apply(size)
