"""Shared pytest setup.

The lab cleanup lives here (and not in the integration tests) so that every test session, unit
tests included, removes network namespaces that a crashed earlier run left behind: otherwise
they accumulate on a developer's machine or a reused CI host, with their processes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest


def _can_manage_namespaces() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture(scope="session", autouse=True)
def rwlab_cleanup() -> Iterator[None]:
    """Remove leftover ``rwlab-*`` namespaces of dead runs before and after the session.

    Namespaces whose creating process is alive (another test session working right now) are
    left alone; see `tests.lab.netns.cleanup_stale`."""
    if not _can_manage_namespaces():
        yield
        return
    from tests.lab.netns import cleanup_stale

    cleanup_stale()
    yield
    cleanup_stale()
