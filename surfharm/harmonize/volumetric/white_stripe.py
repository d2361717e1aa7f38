"""WhiteStripe (Shinohara et al., NeuroImage Clin. 2014): z-score by normal-appearing white matter.

The white-matter mode is a peak of the smoothed intensity histogram inside the brain mask (the
highest-intensity peak on T1, the largest on T2/FLAIR). The "stripe" holds the voxels whose
intensity quantile lies within ``width`` of the mode's quantile; each scan is standardized by the
stripe's mean and standard deviation, so white matter lands near 0 with unit spread in every scan.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from surfharm.harmonize.base import register
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, IntensityMap, positive_scale
from surfharm.io.nifti import VolumeInputError

_N_BINS = 1024


def smoothed_histogram(values: np.ndarray, upper_quantile: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed histogram (a binned kernel density) of ``values`` up to ``upper_quantile``.

    Returns ``(bin_centres, density)``, both ``(1024,)``. The kernel width follows Scott's rule
    (``1.06 sd n^-1/5``, as ``scipy.stats.gaussian_kde``); the brightest 1% (vessels, fat,
    artefacts) are left out so that they cannot form the last peak.
    """
    top = float(np.quantile(values, upper_quantile))
    kept = values[values <= top]
    counts, edges = np.histogram(kept, bins=_N_BINS, range=(float(kept.min()), top))
    centres = 0.5 * (edges[:-1] + edges[1:])
    bin_width = edges[1] - edges[0]
    bandwidth = 1.06 * kept.std() * kept.size ** (-0.2)
    sigma_bins = bandwidth / bin_width if bin_width > 0 else 0.0
    density = ndimage.gaussian_filter1d(counts.astype(np.float64), sigma_bins, mode="constant")
    return centres, density


def tissue_mode(values: np.ndarray, peak: str = "last", rare_fraction: float = 0.2) -> float:
    """Intensity of the white-matter peak: the last (T1) or largest (T2, FLAIR) histogram peak.

    Peaks lower than ``rare_fraction`` times the highest one are rare intensities (vessels, lesions,
    partial volume) and are skipped, as in the published method. A white-matter peak that is only a
    shoulder of the grey-matter peak still counts: no prominence is required.
    """
    from scipy.signal import find_peaks  # scipy.signal takes a second to import: only when needed

    centres, density = smoothed_histogram(values)
    peaks, _ = find_peaks(density, height=rare_fraction * density.max())
    if peaks.size == 0 or peak == "largest":
        return float(centres[np.argmax(density)])
    return float(centres[peaks[-1]])


@register("white-stripe")
class WhiteStripe(IntensityMapHarmonizer):
    """WhiteStripe normalization of each scan (see the module docstring).

    Parameters
    ----------
    width : float
        Half-width of the stripe in quantiles (0.05 = the voxels between the mode's quantile minus
        and plus 5 %), the published default.
    peak : {"last", "largest"}
        Which histogram peak is white matter: ``"last"`` for T1-weighted, ``"largest"`` for T2/FLAIR.
    """

    needs_fit = False

    def __init__(self, *, width: float = 0.05, peak: str = "last") -> None:
        self.width = width
        self.peak = peak

    def stripe_stats(self, values: np.ndarray, name: str = "scan") -> tuple[float, float]:
        """``(mean, sd)`` of the white stripe of one scan's in-mask intensities ``values``."""
        if not 0 < self.width < 0.5:
            raise VolumeInputError(f"width must be in (0, 0.5), got {self.width}")
        if self.peak not in ("last", "largest"):
            raise VolumeInputError(f"peak must be 'last' (T1) or 'largest' (T2, FLAIR), got {self.peak!r}")
        mode = tissue_mode(values, self.peak)
        q_mode = float(np.mean(values < mode))
        lo, hi = np.quantile(values, [max(q_mode - self.width, 0.0), min(q_mode + self.width, 1.0)])
        stripe = values[(values >= lo) & (values <= hi)]
        if stripe.size < 2:
            raise VolumeInputError(f"{name}: the white stripe around intensity {mode:.4g} holds {stripe.size} voxels; "
                                   "expected a brain mask with white matter")
        return float(stripe.mean()), positive_scale(float(stripe.std()), name, "the white stripe's standard deviation")

    def _scan_map(self, values: np.ndarray, name: str) -> IntensityMap:
        mean, sd = self.stripe_stats(values, name)
        return lambda x: (x - mean) / sd
