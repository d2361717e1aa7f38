"""Covariance heterogeneity maps: where the sites' local covariance differs (raw and harmonized).

For every vertex, Box's M test that the sites share the covariance of the vertex and its 1-ring
neighbours, after the covariates and the site means are removed
(:func:`surfharm.evaluate.metrics.covariance_heterogeneity`), drawn as -log10 p. Location/scale
methods (ComBat) leave these maps largely unchanged; methods that model covariance (CovBat,
RELIEF, SAN) should clear them. Works for maps of any icosahedral level (the mesh of the level
gives the 1-ring).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from spherical_ops import icosphere, level_of
from surfharm.viz.grid import PANEL_SIZE, Row, columns_for, render_grid

PVALUE_CMAP = "YlOrRd"
_SMALLEST_P = 1e-308
CAPTION = ("-log10 p of Box's M test, at every vertex, that the sites share the covariance of the vertex and its "
           "1-ring neighbours (covariates and site means removed); raw and harmonized share the colour scale. "
           "Methods that correct only each vertex's mean and variance leave this map largely unchanged.")


def covariance_heterogeneity_map(maps, sites, covariates=None) -> np.ndarray:
    """-log10 p of the per-vertex covariance test for (n_scans, V) maps of one hemisphere: (V,)."""
    from surfharm.evaluate import metrics
    from surfharm.viz.site_effects import _encode_covariates

    arr = np.asarray(maps, dtype=np.float64)
    level = level_of(arr.shape[1])
    hoods = metrics.ring_neighbourhoods(np.asarray(icosphere(level).faces), arr.shape[1])
    cov = None
    if covariates is not None:
        encoded = np.asarray(_encode_covariates(covariates, arr.shape[0]), dtype=np.float64)
        cov = pd.DataFrame(encoded, columns=[f"c{i}" for i in range(encoded.shape[1])]) if encoded.size else None
    p = metrics.covariance_heterogeneity(arr, np.asarray(sites), hoods, cov)["p"]
    return -np.log10(np.clip(p, _SMALLEST_P, 1.0))


def plot_covariance_heterogeneity(maps, sites, after=None, covariates=None, surface="inflated", *, hemi: str = "lh",
                                  views: Sequence[str] = ("lateral", "medial"), cmap: str = PVALUE_CMAP, clim=None,
                                  stage_labels: tuple[str, str] = ("raw", "harmonized"), title: str | None = None,
                                  off_screen: bool | None = None, screenshot=None, panel_size=PANEL_SIZE):
    """The covariance heterogeneity map, raw (and harmonized): one row per stage, shared colour limits
    (0 to the 99th percentile, at least -log10 0.05). Returns the pyvista Plotter."""
    from surfharm.viz.surface import _as_hemis, _check_clim, _finite_values

    stages_in = {stage_labels[0]: maps} if after is None else {stage_labels[0]: maps, stage_labels[1]: after}
    rows_values, meshes = {}, {}
    for stage, stack in stages_in.items():
        per_hemi, meshes = _as_hemis(stack, hemi, surface, stage)
        rows_values[stage] = {side: covariance_heterogeneity_map(arr, sites, covariates)
                              for side, arr in per_hemi.items()}
    if clim is None:
        values = _finite_values([m for st in rows_values.values() for m in st.values()])
        top = max(float(np.percentile(values, 99)) if values.size else 0.0, -np.log10(0.05))
        clim = (0.0, top)
    clim = _check_clim(clim)
    columns = columns_for(list(meshes), views)
    rows = [Row(stage, [vals[c.hemi] for c in columns], cmap, clim, "-log10 p (covariance)")
            for stage, vals in rows_values.items()]
    return render_grid(rows, columns, meshes, title=title, panel_size=panel_size, off_screen=off_screen,
                       screenshot=screenshot)


__all__ = ["CAPTION", "covariance_heterogeneity_map", "plot_covariance_heterogeneity"]
