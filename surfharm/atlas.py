"""Desikan-Killiany (DK) ROI summaries of icosahedral maps.

The DK label of every fsaverage5 vertex ships with surfharm (``surfharm/data/aparc_fsa5.csv``, from
the ENIGMA TOOLBOX, BSD-3; see ``aparc_fsa5.README.md`` next to it). fsaverage5 is icosahedral level 5
in FreeSurfer order, so:

* level k < 5: the first ``10 * 4**k + 2`` vertices of level 5 *are* level k (nested meshes), and
  their labels are taken as they are;
* level k > 5: each added vertex takes the label of its first parent edge end point
  (:func:`spherical_ops.upsample_parents`); region borders move by at most half an edge.
"""
from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import pandas as pd

from spherical_ops import level_of, n_vertices, upsample_parents

#: The 34 DK regions of one hemisphere, in ENIGMA / FreeSurfer ``aparc.stats`` column order.
DK_REGIONS = (
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal", "fusiform",
    "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital", "lateralorbitofrontal",
    "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral",
    "parsopercularis", "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral",
    "posteriorcingulate", "precentral", "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal",
    "superiorfrontal", "superiorparietal", "superiortemporal", "supramarginal", "frontalpole",
    "temporalpole", "transversetemporal", "insula",
)

# Label values of the 34 regions in aparc_fsa5.csv (the corpus callosum, 4 / 39, and 0 are skipped).
_LEFT_CODES = np.array([1, 2, 3, *range(5, 36)])
_RIGHT_CODES = np.array([36, 37, 38, *range(40, 71)])
_HEMIS = {"left": ("lh", _LEFT_CODES, 0), "right": ("rh", _RIGHT_CODES, 1)}


def _check_hemi(hemi: str) -> tuple[str, np.ndarray, int]:
    if hemi not in _HEMIS:
        raise ValueError(f"hemi must be 'left' or 'right', got {hemi!r}")
    return _HEMIS[hemi]


@functools.lru_cache(maxsize=None)
def _fsaverage5_codes() -> np.ndarray:
    text = resources.files("surfharm").joinpath("data/aparc_fsa5.csv").read_text()
    codes = np.array(text.split(), dtype=np.int64)
    if codes.shape != (2 * n_vertices(5),):
        raise ValueError(f"surfharm/data/aparc_fsa5.csv holds {codes.shape[0]} labels; expected {2 * n_vertices(5)}")
    return codes


@functools.lru_cache(maxsize=None)
def _dk_labels(hemi: str, level: int) -> np.ndarray:
    _, codes_of_regions, half = _check_hemi(hemi)
    if level <= 5:
        v5 = n_vertices(5)
        codes = _fsaverage5_codes()[half * v5: half * v5 + n_vertices(level)]
        lookup = np.full(71, -1, dtype=np.int64)
        lookup[codes_of_regions] = np.arange(len(DK_REGIONS))
        labels = lookup[codes]
    else:
        coarse = _dk_labels(hemi, level - 1)
        labels = np.concatenate([coarse, coarse[upsample_parents(level)[:, 0]]])
    labels.setflags(write=False)
    return labels


def dk_labels(hemi: str = "left", level: int = 5) -> np.ndarray:
    """DK region index of every vertex of the level-``level`` icosphere.

    Returns:
        (V,) int64, values 0..33 (index into :data:`DK_REGIONS`) and -1 outside cortex (medial
        wall, corpus callosum). Read-only.
    """
    return _dk_labels(hemi, int(level))


def cortex_mask(hemi: str = "left", level: int = 5) -> np.ndarray:
    """(V,) bool: True on the 34 DK regions, False on the medial wall and corpus callosum."""
    return dk_labels(hemi, level) >= 0


def roi_means(maps, hemi: str = "left", *, prefix: str | None = None) -> pd.DataFrame:
    """Mean of each DK region, per scan (NaN vertices ignored).

    Args:
        maps: (n_scans, V) array of icosahedral maps (V = 10 * 4**k + 2) in FreeSurfer order.
        hemi: ``"left"`` or ``"right"``.
        prefix: column prefix; default ``"lh_"`` / ``"rh_"``, giving FreeSurfer-style names such as
            ``lh_bankssts``.

    Returns:
        DataFrame (n_scans, 34), one column per region of :data:`DK_REGIONS`.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2:
        raise ValueError(f"maps must be 2-D (n_scans, n_vertices), got shape {maps.shape}")
    short, _, _ = _check_hemi(hemi)
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
