"""The Desikan-Killiany (DK) atlas at any icosahedral level: region labels and the fsaverage cortex mask.

Used by the simulator (the cortex of simulated maps) and by :mod:`surfharm.evaluate.rois` (ROI
summaries); it depends on :mod:`spherical_ops` and the package data only.

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

from spherical_ops import n_vertices, upsample_parents
from spherical_ops.mesh import Surface
from surfharm.hemispheres import LONG_NAMES, hemi_name

#: fsaverage5 surfaces nilearn ships, by the names surfharm accepts.
FSAVERAGE5_SURFACES = {"pial": "pial", "white": "white", "inflated": "infl", "infl": "infl", "sphere": "sphere"}

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
# Per hemisphere: the label values of its regions and its half of aparc_fsa5.csv.
_HEMIS = {"lh": (_LEFT_CODES, 0), "rh": (_RIGHT_CODES, 1)}


@functools.cache
def _fsaverage5_codes() -> np.ndarray:
    text = resources.files("surfharm").joinpath("data/aparc_fsa5.csv").read_text()
    codes = np.array(text.split(), dtype=np.int64)
    if codes.shape != (2 * n_vertices(5),):
        raise ValueError(f"surfharm/data/aparc_fsa5.csv holds {codes.shape[0]} labels; expected {2 * n_vertices(5)}")
    return codes


@functools.cache
def _dk_labels(hemi: str, level: int) -> np.ndarray:
    codes_of_regions, half = _HEMIS[hemi]
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


def dk_labels(hemi: str = "lh", level: int = 5) -> np.ndarray:
    """DK region index of every vertex of the level-``level`` icosphere of hemisphere ``hemi``
    (``"lh"``/``"rh"``; ``"left"``/``"right"`` accepted).

    Returns
    -------
    ndarray
        (V,) int64, values 0..33 (index into :data:`DK_REGIONS`) and -1 outside cortex (medial
        wall, corpus callosum). Read-only.
    """
    return _dk_labels(hemi_name(hemi), int(level))


def fsaverage_cortex_mask(hemi: str = "lh", level: int = 5) -> np.ndarray:
    """The cortex of fsaverage's hemisphere ``hemi`` at icosahedral ``level``.

    Returns
    -------
    ndarray
        (V,) bool: True on the 34 DK regions, False on the medial wall and corpus callosum.
    """
    return dk_labels(hemi, level) >= 0


@functools.lru_cache(maxsize=16)
def fsaverage5_surface(surface: str = "pial", hemi: str = "lh") -> Surface:
    """nilearn's fsaverage5 mesh of one hemisphere (10242 vertices, coordinates in mm, read-only).

    ``surface``: pial, white, inflated or sphere. Raises ValueError naming the accepted names.
    """
    import nibabel as nib
    from nilearn import datasets

    key = FSAVERAGE5_SURFACES.get(str(surface).lower())
    if key is None:
        raise ValueError(f"unknown fsaverage5 surface {surface!r}; "
                         f"expected one of {', '.join(sorted(FSAVERAGE5_SURFACES))}")
    side = hemi_name(hemi)
    path = datasets.fetch_surf_fsaverage("fsaverage5")[f"{key}_{LONG_NAMES[side]}"]
    gii = nib.load(path)
    vertices = np.asarray(gii.agg_data("NIFTI_INTENT_POINTSET"), dtype=np.float64)
    faces = np.asarray(gii.agg_data("NIFTI_INTENT_TRIANGLE"), dtype=np.int64)
    vertices.setflags(write=False)
    faces.setflags(write=False)
    return Surface(vertices, faces, f"fsaverage5 {key} {side}")
