"""Real base anatomy and the biology of the simulated subjects.

* Base anatomy: the fsaverage5 cortical thickness that nilearn ships (real FreeSurfer data, an
  average of adult subjects, 10242 vertices = icosahedral level 5 in FreeSurfer order), with the
  medial wall (DK "unknown" and corpus callosum) masked.
* Adult ageing: linear thinning of about -0.007 mm/year (range about -0.003 to -0.011 mm/year over
  the cortex), the rate reported by large lifespan studies.
* Infant growth: thickness at age ``t`` months is the 24-month value times
  ``g(t) = (1 - a exp(-t / tau)) / (1 - a exp(-24 / tau))``: with the defaults (``a = 0.27``,
  ``tau`` about 4.5 months) thickness grows by about 30 % in the first year and 1-3 % in the second,
  as longitudinal infant MRI studies describe.
"""
from __future__ import annotations

import functools

import numpy as np

from spherical_ops import n_vertices, upsample_parents
from surfharm.hemispheres import LONG_NAMES, hemi_name

#: Age (years) at which the adult age effect is zero (the base map's nominal age).
ADULT_REFERENCE_AGE = 50.0
#: Age (months) at which the infant growth curve equals the base map.
INFANT_REFERENCE_MONTHS = 24.0


def fsaverage5_thickness(hemi: str = "lh") -> np.ndarray:
    """nilearn's fsaverage5 thickness of hemisphere ``hemi`` (``"lh"``/``"rh"``; ``"left"``/``"right"``
    accepted): (10242,) float64 in mm, read-only."""
    return _fsaverage5_thickness(LONG_NAMES[hemi_name(hemi)])


@functools.lru_cache(maxsize=2)
def _fsaverage5_thickness(side: str) -> np.ndarray:
    from nilearn import datasets, surface

    fsaverage = datasets.fetch_surf_fsaverage("fsaverage5")
    thickness = np.asarray(surface.load_surf_data(fsaverage[f"thick_{side}"]), dtype=np.float64)
    if thickness.shape != (n_vertices(5),):
        raise ValueError(f"nilearn's fsaverage5 thick_{side} has shape {thickness.shape}; expected ({n_vertices(5)},)")
    thickness.setflags(write=False)
    return thickness


def to_level(values: np.ndarray, level: int) -> np.ndarray:
    """Bring per-vertex values defined at level 5 to ``level`` (V5, ...) -> (V_level, ...).

    Coarser levels keep the first vertices (the meshes are nested); finer levels put at each new
    vertex the NaN-aware mean of its two parents (:func:`spherical_ops.upsample_parents`).
    """
    if level <= 5:
        return values[: n_vertices(level)]
    out = values
    for k in range(6, level + 1):
        parents = upsample_parents(k)
        with np.errstate(invalid="ignore"):
            new = np.nanmean(np.stack([out[parents[:, 0]], out[parents[:, 1]]]), axis=0)
        out = np.concatenate([out, new])
    return out


def upsample_maps(maps: np.ndarray, from_level: int, to_level_: int) -> np.ndarray:
    """Upsample (n, V_from) maps by parent averaging (NaN-aware) to (n, V_to)."""
    out = maps
    for k in range(from_level + 1, to_level_ + 1):
        parents = upsample_parents(k)
        a, b = out[:, parents[:, 0]], out[:, parents[:, 1]]
        new = np.where(np.isnan(a), b, np.where(np.isnan(b), a, 0.5 * (a + b)))
        out = np.concatenate([out, new], axis=1)
    return out


def infant_growth(age_months, tau_months, birth_fraction: float = 0.73) -> np.ndarray:
    """Relative thickness g(t) (1 at 24 months) of the saturating infant growth curve.

    Parameters
    ----------
    age_months : ndarray
        (n,) ages in months (0-24 is the modelled range; older ages saturate).
    tau_months : ndarray
        (V,) growth time constant of each vertex, months.
    birth_fraction : float
        g(0) when tau is 4.5 months (about 0.73: thickness grows by ~35 % to 24 months).

    Returns
    -------
    ndarray
        (n, V) growth factors.
    """
    a = 1.0 - birth_fraction
    t = np.asarray(age_months, dtype=np.float64)[:, None]
    tau = np.asarray(tau_months, dtype=np.float64)[None, :]
    return (1.0 - a * np.exp(-t / tau)) / (1.0 - a * np.exp(-INFANT_REFERENCE_MONTHS / tau))
