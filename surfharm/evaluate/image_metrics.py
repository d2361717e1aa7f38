"""Image metrics for volumetric harmonization: against the truth, between scanners, tissue contrast.

All functions take 3-D arrays on one grid and a bool mask of the voxels to score. Harmonized
images come in each method's own unit (z-scores, Nyul's 1-100 scale, ...); :func:`calibrate_units`
maps one method's outputs onto the truth's unit with a single affine map shared by every scan, so
that errors are comparable across methods without undoing any per-scan difference.

:func:`mae` and :func:`psnr` are those of :mod:`surfharm.evaluate.metrics` (one definition for maps
and images; images are scored with a voxel mask and ``psnr(..., clip=False)``). SSIM on 3-D Gaussian
windows is :func:`ssim_volume`; SSIM on mesh neighbourhoods is
:func:`surfharm.evaluate.metrics.ssim_sphere`.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
from scipy import ndimage, stats

from surfharm.evaluate.metrics import mae, psnr

__all__ = ["between_site_distances", "calibrate_units", "mae", "psnr", "ssim_volume", "wm_gm_ratio"]


def _masked(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)[mask]


def ssim_volume(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, data_range: float,
                sigma_vox: float = 1.5) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of two 3-D images over the voxels of ``mask``.

    Local means, variances and covariance use a 3-D Gaussian window of ``sigma_vox`` voxels;
    constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``. Returns a value in
    [-1, 1]; 1 when ``image`` equals ``truth``.
    """
    x = np.asarray(image, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    blur = lambda a: ndimage.gaussian_filter(a, sigma_vox, mode="reflect", truncate=3.5)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map[mask].mean())


def wm_gm_ratio(image: np.ndarray, tissue: np.ndarray, wm_label: int = 3, gm_label: int = 2) -> float:
    """Mean white-matter intensity over mean grey-matter intensity (a unit-free tissue contrast
    for images with a zero-based intensity unit)."""
    return float(np.mean(image[tissue == wm_label]) / np.mean(image[tissue == gm_label]))


def calibrate_units(images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], tuple[float, float]]:
    """Map every image into the truth's unit with ONE affine ``a * image + b`` (least squares, pooled
    over all scans' masked voxels). Returns ``(calibrated images, (a, b))``.

    Being shared by all scans, the map converts a method's unit but leaves every difference
    between scans (the site effect a method failed to remove) in place.
    """
    x = np.concatenate([_masked(im, m) for im, m in zip(images, masks)])
    y = np.concatenate([_masked(t, m) for t, m in zip(truths, masks)])
    design = np.column_stack([x, np.ones_like(x)])
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return [(a * np.asarray(im, np.float64) + b).astype(np.float32) for im in images], (float(a), float(b))


def between_site_distances(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], sites: Sequence,
                           max_values: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Distances between the scanners' pooled in-mask intensity distributions, averaged over pairs.

    Returns ``{"wasserstein": ..., "ks": ...}``: the 1-D Wasserstein distance (image unit) and the
    two-sample Kolmogorov-Smirnov statistic (unit-free, 0 to 1) between every pair of sites,
    averaged. Each site's pool is subsampled to ``max_values`` voxels (fixed ``seed``).
    """
    rng = np.random.default_rng(seed)
    sites = np.asarray(sites, dtype=object)
    labels = list(dict.fromkeys(sites.tolist()))
    if len(labels) < 2:
        raise ValueError(f"between-site distances need at least 2 sites, got {labels}")
    pools = {}
    for site in labels:
        values = np.concatenate([_masked(images[i], masks[i]) for i in np.flatnonzero(sites == site)])
        if values.size > max_values:
            values = rng.choice(values, max_values, replace=False)
        pools[site] = values
    pairs = list(combinations(labels, 2))
    return {
        "wasserstein": float(np.mean([stats.wasserstein_distance(pools[a], pools[b]) for a, b in pairs])),
        "ks": float(np.mean([stats.ks_2samp(pools[a], pools[b]).statistic for a, b in pairs])),
    }
