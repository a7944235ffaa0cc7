"""The network-namespace lab shared by integration tests and benchmarks. (``resetwatch demo``
builds its own, in ``resetwatch.demo.lab``: the installed package cannot import ``tests``.)

See `netns` (the namespaces), `traffic` (server and client actions), `capture` (sampling rules
and NFLOG capture) and `scenarios` (the named client behaviours with their expected verdicts).
"""

from __future__ import annotations

from .capture import NflogCapture, install_sampling_rules
from .netns import PREFIX, Lab, LabError, cleanup_stale, list_namespaces

__all__ = [
    "PREFIX",
    "Lab",
    "LabError",
    "NflogCapture",
    "cleanup_stale",
    "install_sampling_rules",
    "list_namespaces",
]
