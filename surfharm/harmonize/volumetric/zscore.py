"""Baselines: z-score and global scaling of each scan's intensities inside its brain mask."""
from __future__ import annotations

import numpy as np

from surfharm.harmonize.base import StateCheck, register
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, IntensityMap, positive_scale


@register("zscore")
class ZScore(IntensityMapHarmonizer):
    """``(x - mean) / sd`` with the mean and sd (ddof=0) of the scan's own in-mask intensities.

    Nothing is learned from the training set: every scan is standardized by itself, so the output
    unit is "standard deviations of this brain". Stateless ``fit`` is kept for the protocol.
    """

    needs_fit = False

    def __init__(self) -> None:
        pass

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        mean = float(values.mean())
        sd = positive_scale(float(values.std()), name, "the standard deviation inside the mask")
        return lambda x: (x - mean) / sd


@register("global-scaling-vol")
class GlobalScaling(IntensityMapHarmonizer):
    """Multiply each scan so that its in-mask mean equals the training scans' average in-mask mean.

    ``x * reference_mean_ / scan_mean``: one gain per scan, no offset, output in the training
    scans' intensity unit. ``reference_mean_`` is learned by ``fit``.
    """

    fitted_attribute = "reference_mean_"

    def __init__(self) -> None:
        pass

    def _summarize(self, values: np.ndarray, name: str) -> float:
        return positive_scale(float(values.mean()), name, "the mean intensity inside the mask")

    def _fit_summaries(self, summaries: list) -> None:
        self.reference_mean_ = float(np.mean(summaries))

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        gain = self.reference_mean_ / positive_scale(float(values.mean()), name, "the mean intensity inside the mask")
        return lambda x: x * gain

    def _get_state(self):
        arrays, meta = super()._get_state()
        return arrays, {**meta, "reference_mean": self.reference_mean_}

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        self.reference_mean_ = float(meta["reference_mean"])

    def _check_state(self, check: StateCheck) -> None:
        check.finite("reference_mean", self.reference_mean_, positive=True)
