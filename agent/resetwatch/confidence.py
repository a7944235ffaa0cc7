"""The one rule for "too small to trust", and the confidence level derived from it.

A share of n sampled connections is noise when n is small: with n = 20, one reset more or
less moves a share by 5 points. Every view that shows shares (the API's `confidenceInfo`,
replay's and status's per-network tables, the spike alerts' minimum) uses this one rule, so
a share marked trustworthy in one place is trustworthy everywhere.
"""

from __future__ import annotations

MIN_TRUSTED_SAMPLES = 100
"""Fewer classified connections than this in a window: the shares are shown, marked too
small to trust, and no alert fires on them. At 100 samples the 95% Wilson interval of a 5%
share spans about 2 to 11%: wide, but a spike to 3x the baseline stands clear of it."""

LEVELS = (
    (10_000, 5),
    (1_000, 4),
    (MIN_TRUSTED_SAMPLES, 3),
    (20, 2),
    (1, 1),
)
"""Radar-style confidence levels by sample size: 3 and above are trusted, 0 is no data."""


def too_small(classified: int) -> bool:
    return classified < MIN_TRUSTED_SAMPLES


def level(classified: int) -> int:
    """0 (no sample) to 5 (10,000 or more classified connections)."""
    for floor, value in LEVELS:
        if classified >= floor:
            return value
    return 0
