"""Plausible values of FreeSurfer measures, and the checks of maps against them.

Some measures cannot be negative: a negated or sign-flipped thickness map is a broken input, and
because harmonizers pool statistics over scans it moves the results of every other scan too. The
ranges, inclusive, in the measure's units:

=================  ==============  ================================================================
measure            range           why
=================  ==============  ================================================================
``thickness``      [0, 10] mm      FreeSurfer caps thickness at 5 mm by default (``mris_make_surfaces
                                   -max``); other pipelines and options allow more, so up to 10 mm
``thicknessstd``   [0, 10] mm      standard deviation of thickness in an ROI (``aparcstats2table``)
``area``           [0, inf) mm^2   vertex or ROI surface area (``area``, ``area.pial``, ``area.mid``)
``volume``         [0, inf) mm^3   vertex or ROI grey-matter volume
=================  ==============  ================================================================

The measure is looked up by its name up to the first dot (``area.pial`` is an area). Measures that
may be negative (``curv``, ``sulc``, ``jacobian_white``, ...) have no range and are not checked.
0 is allowed: FreeSurfer writes 0 outside cortex. NaN (missing, outside cortex) is never counted.

Every function reads its maps in chunks of scans, so a memory-mapped cohort is checked without
loading it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Plausible (low, high, unit) of each measure; None = unbounded on that side.
MEASURE_RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "thickness": (0.0, 10.0, "mm"),
    "thicknessstd": (0.0, 10.0, "mm"),
    "area": (0.0, None, "mm^2"),
    "volume": (0.0, None, "mm^3"),
}

#: Rows of maps read at a time (a memory map is never read whole).
CHUNK_SCANS = 64


@dataclass(frozen=True)
class ValueRange:
    """A closed interval of plausible values; ``low``/``high`` None = unbounded on that side."""

    low: float | None
    high: float | None
    unit: str = ""

    def __post_init__(self):
        for bound in (self.low, self.high):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"value range bounds must be finite numbers (or None), got {bound}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"value range [{self.low}, {self.high}]: the lower bound is above the upper bound")

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        closing = ")" if self.high is None else "]"
        opening = "(" if self.low is None else "["
        return f"{opening}{low}, {high}{closing}" + (f" {self.unit}" if self.unit else "")

    def outside(self, block: np.ndarray) -> np.ndarray:
        """Boolean mask of the values of ``block`` outside the range (NaN is never outside)."""
        with np.errstate(invalid="ignore"):
            mask = np.zeros(block.shape, dtype=bool)
            if self.low is not None:
                mask |= block < self.low
            if self.high is not None:
                mask |= block > self.high
        return mask


def measure_range(measure: str | None) -> ValueRange | None:
    """The plausible range of ``measure`` (:data:`MEASURE_RANGES`), or None when it is not checked."""
    if not measure:
        return None
    entry = MEASURE_RANGES.get(str(measure).lower().split(".")[0])
    return None if entry is None else ValueRange(*entry)


def resolve_range(measure: str | None, value_range=None, *, allow_implausible: bool = False) -> ValueRange | None:
    """The range to check maps of ``measure`` against.

    ``value_range``: None for the measure's default (:func:`measure_range`), a :class:`ValueRange`,
    or ``(low, high)`` (either may be None: unbounded). ``allow_implausible`` turns the check off
    (returns None) for measures that may legitimately leave their usual range.
    """
    if allow_implausible:
        return None
    if value_range is None:
        return measure_range(measure)
    if isinstance(value_range, ValueRange):
        return value_range
    try:
        low, high = value_range
    except (TypeError, ValueError):
        raise ValueError(f"value range must be (low, high), got {value_range!r}") from None
    unit = measure_range(measure).unit if measure_range(measure) is not None else ""
    return ValueRange(None if low is None else float(low), None if high is None else float(high), unit)


@dataclass
class RangeCount:
    """Values outside a range, per scan: ``counts`` (n_scans,) and the extremes found."""

    counts: np.ndarray
    minimum: float
    maximum: float

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def scans(self) -> np.ndarray:
        """Indices of the scans holding at least one value outside the range."""
        return np.flatnonzero(self.counts)


def count_outside(maps, value_range: ValueRange, *, chunk: int = CHUNK_SCANS) -> RangeCount:
    """Count, per scan (row), the values of ``maps`` outside ``value_range``; chunked over scans."""
    n_scans = maps.shape[0]
    counts = np.zeros(n_scans, dtype=np.int64)
    low, high = math.inf, -math.inf
    for start in range(0, n_scans, chunk):
        block = np.asarray(maps[start:start + chunk])
        mask = value_range.outside(block)
        counts[start:start + block.shape[0]] = mask.sum(axis=1)
        if mask.any():
            bad = block[mask]
            low, high = min(low, float(bad.min())), max(high, float(bad.max()))
    return RangeCount(counts, low, high)


def clip_inplace(maps, value_range: ValueRange, *, chunk: int = CHUNK_SCANS) -> int:
    """Clip the values of ``maps`` (an array or writable memory map) into ``value_range``, chunk by
    chunk; NaN stays NaN. Returns the number of values changed."""
    changed = 0
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start:start + chunk])
        mask = value_range.outside(block)
        n = int(mask.sum())
        if n:
            changed += n
            maps[start:start + chunk] = np.clip(block, value_range.low, value_range.high)
    return changed


def empty_rows(maps, *, chunk: int = CHUNK_SCANS) -> np.ndarray:
    """Indices of the scans (rows) whose every value is NaN."""
    empty = []
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start:start + chunk])
        empty += (start + np.flatnonzero(np.isnan(block).all(axis=1))).tolist()
    return np.asarray(empty, dtype=np.int64)


def describe(measure: str | None, value_range: ValueRange, found: RangeCount, name_of, *, limit: int = 5) -> str:
    """One line per offending scan (at most ``limit``): ``name: n value(s)``; ``name_of(i)`` names scan i."""
    what = measure or "map"
    lines = [f"{found.total} {what} value(s) in {found.scans.size} scan(s) lie outside the plausible range "
             f"{value_range} (found {found.minimum:g} .. {found.maximum:g})"]
    for i in found.scans[:limit]:
        lines.append(f"  {name_of(int(i))}: {found.counts[i]} value(s)")
    if found.scans.size > limit:
        lines.append(f"  ... and {found.scans.size - limit} more scan(s)")
    return "\n".join(lines)
