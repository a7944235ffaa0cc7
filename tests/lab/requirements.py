"""What a lab test needs from this machine, and the pytest marks that skip it, with the reason,
where that is missing. One place, so every lab test words its skip the same way."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable

import pytest


def skip_reason(
    root_for: str,
    *,
    tools: Iterable[str] = (),
    modules: Iterable[str] = (),
    also_missing: Iterable[str] = (),
) -> str:
    """Why the test cannot run here ("" when it can): not root (`root_for` says what root is
    needed for), or commands not on PATH, Python modules not importable, or other needs the
    caller found missing (`also_missing`, each worded for the reader, e.g. with its package)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"needs root ({root_for})"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [module for module in modules if importlib.util.find_spec(module) is None]
    missing += list(also_missing)
    return f"missing here: {', '.join(missing)}" if missing else ""


def lab_marks(reason: str) -> list[pytest.MarkDecorator]:
    """`pytestmark` for a module of lab tests: marked `root`, skipped when `reason` is set."""
    return [pytest.mark.root, pytest.mark.skipif(bool(reason), reason=reason)]
