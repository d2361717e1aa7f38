"""Desikan-Killiany (DK) ROI summaries of icosahedral maps.

The labels themselves (:data:`DK_REGIONS`, :func:`dk_labels`, :func:`fsaverage_cortex_mask`) live in
:mod:`surfharm.atlas`, below both the simulator and the evaluation, and are re-exported here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from spherical_ops import level_of
from surfharm.atlas import DK_REGIONS, dk_labels, fsaverage_cortex_mask
from surfharm.hemispheres import hemi_name

__all__ = ["DK_REGIONS", "dk_labels", "fsaverage_cortex_mask", "roi_means"]


def roi_means(maps, hemi: str = "lh", *, prefix: str | None = None) -> pd.DataFrame:
    """Mean of each DK region, per scan (NaN vertices ignored).

    Parameters
    ----------
    maps : ndarray
        (n_scans, V) array of icosahedral maps (V = 10 * 4**k + 2) in FreeSurfer order.
    hemi : str
        ``"lh"`` or ``"rh"`` (``"left"``/``"right"`` accepted).
    prefix : str or None
        column prefix; default ``"lh_"`` / ``"rh_"``, giving FreeSurfer-style names such as
        ``lh_bankssts``.

    Returns
    -------
    DataFrame
        DataFrame (n_scans, 34), one column per region of :data:`DK_REGIONS`.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2:
        raise ValueError(f"maps must be 2-D (n_scans, n_vertices), got shape {maps.shape}")
    short = hemi_name(hemi)
    labels = dk_labels(hemi, level_of(maps.shape[1], what="maps"))
    # One sparse-free pass: (scans, vertices) x (vertices, regions) one-hot, NaN-aware.
    onehot = np.zeros((labels.shape[0], len(DK_REGIONS)))
    inside = labels >= 0
    onehot[np.nonzero(inside)[0], labels[inside]] = 1.0
    valid = np.isfinite(maps)
    sums = np.where(valid, maps, 0.0) @ onehot
    counts = valid.astype(np.float64) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    prefix = f"{short}_" if prefix is None else prefix
    return pd.DataFrame(means, columns=[f"{prefix}{name}" for name in DK_REGIONS])
