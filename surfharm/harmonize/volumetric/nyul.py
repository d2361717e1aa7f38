"""Nyul-Udupa piecewise-linear histogram standardization (Nyul & Udupa 1999; Nyul et al. 2000).

``fit`` learns a standard scale: the intensity landmarks (percentiles inside the brain mask) of
every training scan, mapped linearly so that the lowest and highest landmark land on
``scale_range``, then averaged over scans. ``transform`` maps a scan's own landmarks onto the
standard scale piecewise-linearly; beyond the end landmarks the end segments are extended.
"""
from __future__ import annotations

import numpy as np

from surfharm.harmonize.base import StateCheck, register
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, IntensityMap, check_increasing
from surfharm.io.nifti import VolumeInputError

DEFAULT_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def piecewise_linear(x_knots: np.ndarray, y_knots: np.ndarray) -> IntensityMap:
    """Increasing piecewise-linear map through the knots, extended linearly past both ends."""
    slope_lo = (y_knots[1] - y_knots[0]) / (x_knots[1] - x_knots[0])
    slope_hi = (y_knots[-1] - y_knots[-2]) / (x_knots[-1] - x_knots[-2])

    def fmap(x: np.ndarray) -> np.ndarray:
        y = np.interp(x, x_knots, y_knots)
        y = np.where(x < x_knots[0], y_knots[0] + slope_lo * (x - x_knots[0]), y)
        return np.where(x > x_knots[-1], y_knots[-1] + slope_hi * (x - x_knots[-1]), y)

    return fmap


@register("nyul")
class Nyul(IntensityMapHarmonizer):
    """Piecewise-linear landmark standardization (see the module docstring).

    Parameters
    ----------
    percentiles : sequence of float
        Landmark percentiles inside the brain mask, increasing; the first and last are the ends
        (default 1, 10, 20, ..., 90, 99).
    scale_range : (float, float)
        Where the first and last landmarks land on the standard scale (default 1 to 100).
    """

    fitted_attribute = "standard_scale_"

    def __init__(self, *, percentiles=DEFAULT_PERCENTILES, scale_range=(1.0, 100.0)) -> None:
        self.percentiles = percentiles
        self.scale_range = scale_range

    def landmarks(self, values: np.ndarray, name: str = "scan") -> np.ndarray:
        """The scan's intensity landmarks ``(n_landmarks,)``; refused when two coincide."""
        pct = np.asarray(self.percentiles, dtype=np.float64)
        if pct.ndim != 1 or pct.size < 3 or np.any(np.diff(pct) <= 0) or pct[0] < 0 or pct[-1] > 100:
            raise VolumeInputError(f"percentiles must be >= 3 increasing values in [0, 100], got {list(pct)}")
        marks = np.percentile(values, pct)
        if np.any(np.diff(marks) <= 0):
            i = int(np.argmin(np.diff(marks)))
            raise VolumeInputError(f"{name}: percentiles {pct[i]:g} and {pct[i + 1]:g} have the same intensity "
                                   f"{marks[i]:.4g}; the scan has too few distinct intensities inside the mask "
                                   "for these landmarks")
        return marks

    def _summarize(self, values: np.ndarray, name: str) -> np.ndarray:
        marks = self.landmarks(values, name)
        lo, hi = (float(v) for v in self.scale_range)
        return lo + (marks - marks[0]) / (marks[-1] - marks[0]) * (hi - lo)

    def _fit_summaries(self, summaries: list) -> None:
        self.standard_scale_ = np.mean(np.stack(summaries), axis=0)

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        return piecewise_linear(self.landmarks(values, name), self.standard_scale_)

    def _get_state(self):
        arrays, meta = super()._get_state()
        return {**arrays, "standard_scale": self.standard_scale_}, meta

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        self.standard_scale_ = arrays["standard_scale"]

    def _check_state(self, check: StateCheck) -> None:
        check.shape("standard_scale", self.standard_scale_, (len(self.percentiles),))
        check.finite("standard_scale", self.standard_scale_)
        check_increasing(check, "standard_scale", self.standard_scale_)
