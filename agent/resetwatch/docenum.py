"""`DocEnum`: a string enum whose every value carries a one-line description.

The descriptions are the single source for the docs, the README tables and the metric HELP
texts, so each value is explained exactly once, where it is defined.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class DocEnum(str, Enum):
    """Members are declared as `NAME = "value", "What it means."`."""

    doc: str

    def __new__(cls, value: str, doc: str, *_extra: Any) -> DocEnum:
        member = str.__new__(cls, value)
        member._value_ = value
        member.doc = doc
        return member

    def __str__(self) -> str:
        return str(self.value)
