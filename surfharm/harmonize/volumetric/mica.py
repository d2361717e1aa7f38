"""MICA, multisite image harmonization by CDF alignment (Wrobel et al., NeuroImage 2020).

Each scan gets a smooth monotone warp of its intensities that makes its in-mask intensity CDF
match a target CDF: ``h_i = Q_target o F_i``, where ``F_i`` is the scan's CDF and ``Q_target`` the
target's quantile function. The warp is a monotone cubic (PCHIP) through the pairs of quantiles at
``n_knots`` probability levels; fewer knots give a smoother warp that follows the scanner's
intensity curve rather than the individual anatomy. Past the outermost knots the end secants
are extended linearly, so the warp stays monotone everywhere.

The target is learned by ``fit``: the quantile function of one training scan (``target=<index>``)
or the average of the training scans' quantile functions (``target="average"``: the 1-D
Wasserstein barycentre of their intensity distributions). New scans are warped to it by
``transform``.
"""
from __future__ import annotations

import numpy as np
from surfharm.harmonize.base import StateCheck, register
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, IntensityMap, check_increasing
from surfharm.io.nifti import VolumeInputError


def monotone_warp(x_knots: np.ndarray, y_knots: np.ndarray) -> IntensityMap:
    """Monotone cubic through the knots, extended by the end secants.

    Knots sharing one ``x`` (ties from discrete intensities) are merged by averaging their ``y``.
    """
    from scipy.interpolate import PchipInterpolator  # slow to import: only when a warp is built

    xs, inverse = np.unique(x_knots, return_inverse=True)
    ys = np.bincount(inverse, weights=y_knots) / np.bincount(inverse)
    if xs.size < 2:
        raise VolumeInputError("a scan has a single intensity at every knot; expected varied intensities")
    inner = PchipInterpolator(xs, ys, extrapolate=False)
    slope_lo = (ys[1] - ys[0]) / (xs[1] - xs[0])
    slope_hi = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])

    def fmap(x: np.ndarray) -> np.ndarray:
        y = inner(np.clip(x, xs[0], xs[-1]))
        y = np.where(x < xs[0], ys[0] + slope_lo * (x - xs[0]), y)
        return np.where(x > xs[-1], ys[-1] + slope_hi * (x - xs[-1]), y)

    return fmap


@register("mica")
class MICA(IntensityMapHarmonizer):
    """CDF-aligning monotone intensity warps (see the module docstring).

    Parameters
    ----------
    target : "average" or int
        ``"average"``: warp to the average quantile function of the training scans; an int: warp
        to the training scan at that position.
    n_knots : int
        Number of probability levels where the warp is pinned (evenly spaced between
        ``tail`` and ``1 - tail``).
    tail : float
        Probability left out at each end (the extremes of a histogram are noise).
    """

    fitted_attribute = "target_quantiles_"

    def __init__(self, *, target="average", n_knots: int = 21, tail: float = 0.005) -> None:
        self.target = target
        self.n_knots = n_knots
        self.tail = tail

    @property
    def probabilities(self) -> np.ndarray:
        """The probability levels of the knots, ``(n_knots,)``."""
        if not (isinstance(self.n_knots, (int, np.integer)) and self.n_knots >= 2):
            raise VolumeInputError(f"n_knots must be an integer >= 2, got {self.n_knots!r}")
        if not 0 <= self.tail < 0.5:
            raise VolumeInputError(f"tail must be in [0, 0.5), got {self.tail}")
        return np.linspace(self.tail, 1.0 - self.tail, int(self.n_knots))

    def _summarize(self, values: np.ndarray, name: str) -> np.ndarray:
        return np.quantile(values, self.probabilities)

    def _fit_summaries(self, summaries: list) -> None:
        quantiles = np.stack(summaries)
        if isinstance(self.target, str):
            if self.target != "average":
                raise VolumeInputError(f"target must be 'average' or a scan index, got {self.target!r}")
            self.target_quantiles_ = quantiles.mean(axis=0)
        else:
            index = int(self.target)
            if not -len(quantiles) <= index < len(quantiles):
                raise VolumeInputError(f"target scan index {index} is out of range for {len(quantiles)} training scans")
            self.target_quantiles_ = quantiles[index]

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        return monotone_warp(np.quantile(values, self.probabilities), self.target_quantiles_)

    def _get_state(self):
        arrays, meta = super()._get_state()
        return {**arrays, "target_quantiles": self.target_quantiles_}, meta

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        self.target_quantiles_ = arrays["target_quantiles"]

    def _check_state(self, check: StateCheck) -> None:
        check.shape("target_quantiles", self.target_quantiles_, (int(self.n_knots),))
        check.finite("target_quantiles", self.target_quantiles_)
        check_increasing(check, "target_quantiles", self.target_quantiles_, strict=False)
