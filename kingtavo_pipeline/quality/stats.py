"""Volume anomalies: a partition's value against a trailing window, by robust z-score (median/MAD).

The median and the median absolute deviation ignore the odd outlier day that a mean and a standard
deviation would chase, so one bad day in the window does not hide the next one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Literal

# 1 / Phi^-1(3/4): scales the MAD to a standard deviation for normally distributed data
MAD_TO_SIGMA = 1.4826

VolumeStatus = Literal["ok", "anomaly", "insufficient_history"]


@dataclass(frozen=True)
class VolumeVerdict:
    status: VolumeStatus
    value: float
    history_size: int
    median: float | None = None
    mad: float | None = None
    scale: float | None = None
    z: float | None = None

    @property
    def passed(self) -> bool:
        """Not enough history is a pass: no alarm until the window can say what is normal."""
        return self.status != "anomaly"


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median (0.0 for fewer than one value)."""
    if not values:
        return 0.0
    centre = median(values)
    return float(median(abs(v - centre) for v in values))


def robust_scale(values: Sequence[float], *, min_scale_fraction: float = 0.05, min_scale: float = 1.0) -> float:
    """The spread a z-score divides by: MAD as a standard deviation, floored.

    A flat history (MAD 0: the same count every day) would make any change infinitely anomalous;
    the floor (a fraction of the median, and at least ``min_scale``) sets the smallest change that
    can alarm at all.
    """
    centre = abs(median(values)) if values else 0.0
    return max(MAD_TO_SIGMA * mad(values), min_scale_fraction * centre, min_scale)


def robust_zscore(history: Sequence[float], value: float, *, min_scale_fraction: float = 0.05,
                  min_scale: float = 1.0) -> float:
    """How many robust standard deviations ``value`` lies from the history's median (signed)."""
    if not history:
        raise ValueError("a z-score needs at least one value of history")
    scale = robust_scale(history, min_scale_fraction=min_scale_fraction, min_scale=min_scale)
    return (value - median(history)) / scale


def assess_volume(
    history: Sequence[float | None],
    value: float,
    *,
    threshold: float = 3.5,
    min_history: int = 7,
    min_scale_fraction: float = 0.05,
    min_scale: float = 1.0,
) -> VolumeVerdict:
    """Is ``value`` anomalous against ``history`` (trailing partitions, oldest first)?

    Missing history values (None, NaN) are skipped; with fewer than ``min_history`` left the verdict
    is ``insufficient_history``, which passes. ``threshold`` is the sensitivity: |z| above it alarms.
    """
    if threshold <= 0:
        raise ValueError("threshold must be > 0")
    known = [float(v) for v in history if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(known) < max(min_history, 1):
        return VolumeVerdict("insufficient_history", float(value), len(known))
    centre = float(median(known))
    spread = mad(known)
    scale = robust_scale(known, min_scale_fraction=min_scale_fraction, min_scale=min_scale)
    z = (float(value) - centre) / scale
    status: VolumeStatus = "anomaly" if abs(z) > threshold else "ok"
    return VolumeVerdict(status, float(value), len(known), centre, spread, scale, z)
