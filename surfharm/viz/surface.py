"""Cortical maps drawn with pyvista: one map, before/after harmonization, site means and site effects.

Every function returns the :class:`pyvista.Plotter` it drew into and takes ``off_screen`` and
``screenshot``: with ``screenshot="fig.png"`` the PNG is written (atomically) and the plotter is
off-screen; without a display the plotter is off-screen too; with a display and
``off_screen=False`` call ``plotter.show()`` for an interactive window.

Layout of every figure (:mod:`surfharm.viz.grid`): one row per map (raw, harmonized, difference;
or one per site), one column per (hemisphere, view), a colour bar per row at the right, titled with
the unit. Vertices outside cortex (NaN) are neutral grey. Window size, camera, lighting and
anti-aliasing are fixed, so the same call gives the same picture.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spherical_ops.mesh import Surface
from surfharm.viz.grid import PANEL_SIZE, Column, Row, columns_for, render_grid
from surfharm.viz.mesh import MeshError, check_values
from surfharm.viz.site_effects import site_deviation_maps, site_effect_map, site_mean_maps
from surfharm.viz.surfaces import mesh_for_map, normalize_hemi, split_hemispheres

SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
PVALUE_CMAP = "YlOrRd"


# -- colour limits ---------------------------------------------------------------------------------

def _finite_values(arrays) -> np.ndarray:
    parts = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    vals = np.concatenate(parts) if parts else np.empty(0)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise MeshError("nothing to draw: every value is NaN (outside cortex)")
    return vals


def robust_clim(arrays, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """Shared colour limits of several maps: the given percentiles of all their finite values."""
    lo, hi = np.percentile(_finite_values(arrays), percentiles)
    if hi <= lo:
        pad = max(abs(lo) * 0.05, 1e-3)
        lo, hi = lo - pad, hi + pad
    return float(lo), float(hi)


def symmetric_clim(arrays, percentile: float = 99.0) -> tuple[float, float]:
    """Colour limits centred on 0 (for differences): +-the given percentile of the absolute values."""
    top = float(np.percentile(np.abs(_finite_values(arrays)), percentile))
    top = top if top > 0 else 1e-3
    return -top, top


def _check_clim(clim, name: str = "clim") -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clim)
    except (TypeError, ValueError):
        raise MeshError(f"{name} must be two numbers (low, high), got {clim!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise MeshError(f"{name} must be finite with low < high, got {clim!r}")
    return lo, hi


# -- maps per hemisphere ---------------------------------------------------------------------------

def _bar_title(label: str, units: str | None) -> str:
    return f"{label} ({units})" if units else label


def _as_hemis(values, hemi: str, surface, name: str) -> tuple[dict[str, np.ndarray], dict[str, Surface]]:
    """Split ``values`` per hemisphere and find each one's mesh; values are cut to the mesh's vertices."""
    per_hemi = split_hemispheres(values, hemi)
    meshes, out = {}, {}
    for side, vals in per_hemi.items():
        vals = np.asarray(vals)
        n = vals.shape[-1]
        try:
            mesh, take = mesh_for_map(surface, side, n)
        except MeshError as exc:
            if normalize_hemi(hemi) != "both" and not isinstance(values, dict) and n % 2 == 0:
                raise MeshError(f"{name}: {exc} (if it holds both hemispheres, left then right, pass hemi='both')") \
                    from None
            raise MeshError(f"{name}: {exc}") from None
        meshes[side] = mesh
        out[side] = vals[..., take]
    return out, meshes


# -- public plotting functions --------------------------------------------------------------------

def plot_surface_map(values, surface="inflated", *, hemi: str = "lh", views: Sequence[str] = ("lateral", "medial"),
                     cmap: str = SEQUENTIAL_CMAP, clim=None, symmetric: bool = False, label: str = "thickness",
                     units: str | None = "mm", title: str | None = None, mask=None,
                     off_screen: bool | None = None, screenshot=None, panel_size=PANEL_SIZE, zoom: float = 1.0):
    """Draw one cortical map in several views of one or both hemispheres; return the Plotter.

    Parameters
    ----------
    values : (V,) array for ``hemi``; (2V,) left then right with ``hemi="both"``; or a dict
        ``{"lh": (V,), "rh": (V,)}``. NaN = outside cortex (grey).
    surface : "pial", "white", "inflated" or "sphere" (fsaverage5 from nilearn, any icosahedral
        map size), a FreeSurfer/GIfTI surface path, a ``(vertices, faces)`` pair, or a dict per hemisphere.
    hemi : "lh" or "rh" ("left"/"right" accepted), or "both".
    views : any of "lateral", "medial", "dorsal", "ventral", "anterior", "posterior".
    cmap, clim : colour map name and (low, high); default clim = 1st-99th percentile (symmetric
        around 0 with ``symmetric=True``, e.g. for differences with a diverging ``cmap``).
    label, units : colour-bar title ``"label (units)"``.
    mask : optional bool array like ``values`` (True = cortex): False vertices are drawn grey.
    off_screen, screenshot : see the module docstring; ``screenshot`` is a PNG path.
    """
    per_hemi, meshes = _as_hemis(values, hemi, surface, "map")
    if mask is not None:
        per_hemi = _apply_mask(per_hemi, mask, hemi)
    for side, vals in per_hemi.items():
        per_hemi[side] = check_values(vals, meshes[side].n_vertices, name=f"{side} map")
    maps = list(per_hemi.values())
    clim = _check_clim(clim) if clim is not None else (symmetric_clim(maps) if symmetric else robust_clim(maps))
    columns = columns_for(list(per_hemi), views)
    row = Row("", [per_hemi[c.hemi] for c in columns], cmap, clim, _bar_title(label, units))
    return render_grid([row], columns, meshes, title=title, panel_size=panel_size, off_screen=off_screen,
                       screenshot=screenshot, zoom=zoom)


def _apply_mask(per_hemi: dict, mask, hemi: str) -> dict:
    masks = split_hemispheres(mask, hemi)
    out = {}
    for side, vals in per_hemi.items():
        if side not in masks:
            raise MeshError(f"mask has no values for the {side} hemisphere")
        m = np.asarray(masks[side], dtype=bool)
        if m.shape[-1] < vals.shape[-1]:
            raise MeshError(f"mask has {m.shape[-1]} values for the {side} hemisphere, the map {vals.shape[-1]}")
        out[side] = np.where(m[..., : vals.shape[-1]], vals, np.nan)
    return out


def plot_before_after(before, after, surface="inflated", *, hemi: str = "lh",
                      views: Sequence[str] = ("lateral", "medial"), cmap: str = SEQUENTIAL_CMAP, clim=None,
                      diff_cmap: str = DIVERGING_CMAP, diff_clim=None, labels: tuple[str, str] = ("raw", "harmonized"),
                      quantity: str = "thickness", units: str | None = "mm", title: str | None = None,
                      off_screen: bool | None = None, screenshot=None, panel_size=PANEL_SIZE):
    """Raw, harmonized and their difference (harmonized - raw) on the cortex, in one figure.

    ``before`` and ``after`` are maps shaped like ``values`` of :func:`plot_surface_map` (one
    scan, or e.g. a site's mean). Raw and harmonized share ``clim`` (default: 1st-99th percentile
    of both); the difference uses a diverging map centred on 0 (``diff_clim`` default: +-99th
    percentile of its absolute value). Returns the Plotter.
    """
    raw, meshes = _as_hemis(before, hemi, surface, "before")
    harm, _ = _as_hemis(after, hemi, surface, "after")
    if set(raw) != set(harm):
        raise MeshError(f"before has hemispheres {sorted(raw)} but after has {sorted(harm)}; expected the same")
    for side in raw:
        raw[side] = check_values(raw[side], meshes[side].n_vertices, name=f"before ({side})")
        harm[side] = check_values(harm[side], meshes[side].n_vertices, name=f"after ({side})")
    diff = {side: harm[side] - raw[side] for side in raw}
    clim = _check_clim(clim) if clim is not None else robust_clim(list(raw.values()) + list(harm.values()))
    diff_clim = _check_clim(diff_clim, "diff_clim") if diff_clim is not None else symmetric_clim(list(diff.values()))
    columns = columns_for(list(raw), views)
    rows = [
        Row(labels[0], [raw[c.hemi] for c in columns], cmap, clim, _bar_title(quantity, units)),
        Row(labels[1], [harm[c.hemi] for c in columns], cmap, clim, _bar_title(quantity, units)),
        Row(f"{labels[1]}\n- {labels[0]}", [diff[c.hemi] for c in columns], diff_cmap, diff_clim,
            _bar_title("difference", units)),
    ]
    return render_grid(rows, columns, meshes, title=title, panel_size=panel_size, off_screen=off_screen,
                       screenshot=screenshot)


def _stage_rows(stages: dict[str, dict[str, np.ndarray]], order: list, columns_per_stage: list[Column],
                cmap: str, clim, bar_title: str) -> tuple[list[Row], list[Column]]:
    """Rows = sites; columns = each stage (before/after) x hemisphere x view."""
    columns, rows = [], []
    for stage in stages:
        columns += [Column(c.hemi, c.view, f"{stage}: {c.hemi} {c.view}" if len(stages) > 1 else c.label)
                    for c in columns_per_stage]
    for i, site in enumerate(order):
        cells = [stages[stage][c.hemi][i] for stage in stages for c in columns_per_stage]
        rows.append(Row(str(site), cells, cmap, clim, bar_title))
    return rows, columns


def plot_site_maps(maps, sites, after=None, surface="inflated", *, covariates=None, hemi: str = "lh",
                   views: Sequence[str] = ("lateral", "medial"), kind: str = "deviation", cmap: str | None = None,
                   clim=None, stage_labels: tuple[str, str] = ("raw", "harmonized"), quantity: str = "thickness",
                   units: str | None = "mm", title: str | None = None, off_screen: bool | None = None,
                   screenshot=None, panel_size=PANEL_SIZE):
    """One row per site: its mean map (``kind="mean"``) or its deviation from the mean of the site
    means (``kind="deviation"``, diverging colours centred on 0: the site effect in mm).

    ``maps`` (n_scans, V) (or 2V with ``hemi="both"``, or a dict per hemisphere) and ``sites``
    (n_scans,); with ``after`` (same shape) the harmonized maps are shown beside the raw ones with the
    same colour scale. ``covariates`` (DataFrame, one row per scan, e.g. age and sex) adjusts the
    deviations (:func:`surfharm.viz.site_effects.site_deviation_maps`): without them, sites that
    differ in age show their age difference as a site effect. Returns the Plotter.
    """
    if kind not in ("mean", "deviation"):
        raise MeshError(f"kind={kind!r}; expected 'mean' or 'deviation'")

    def summarise(stack, labels):
        if kind == "mean":
            return site_mean_maps(stack, labels)
        return site_deviation_maps(stack, labels, covariates)

    stages_in = {stage_labels[0]: maps} if after is None else {stage_labels[0]: maps, stage_labels[1]: after}
    stages, meshes, order = {}, {}, None
    for stage, stack in stages_in.items():
        per_hemi, meshes = _as_hemis(stack, hemi, surface, stage)
        stages[stage] = {}
        for side, arr in per_hemi.items():
            if np.ndim(arr) != 2:
                raise MeshError(f"{stage}: maps must be 2-D (n_scans, n_vertices), got shape {np.shape(arr)}")
            site_labels, summary = summarise(arr, sites)
            if order is not None and site_labels != order:
                raise MeshError("raw and harmonized maps have different sites")
            order = site_labels
            stages[stage][side] = summary
    all_maps = [m for st in stages.values() for m in st.values()]
    if kind == "mean":
        cmap = cmap or SEQUENTIAL_CMAP
        clim = _check_clim(clim) if clim is not None else robust_clim(all_maps)
        bar = _bar_title(quantity, units)
    else:
        cmap = cmap or DIVERGING_CMAP
        clim = _check_clim(clim) if clim is not None else symmetric_clim(all_maps)
        bar = _bar_title("site effect", units)
    rows, columns = _stage_rows(stages, order, columns_for(list(meshes), views), cmap, clim, bar)
    return render_grid(rows, columns, meshes, title=title, panel_size=panel_size, off_screen=off_screen,
                       screenshot=screenshot)


def plot_site_effect(maps, sites, after=None, covariates=None, surface="inflated", *, hemi: str = "lh",
                     views: Sequence[str] = ("lateral", "medial"), cmap: str = PVALUE_CMAP, clim=None,
                     stage_labels: tuple[str, str] = ("raw", "harmonized"), title: str | None = None,
                     off_screen: bool | None = None, screenshot=None, panel_size=PANEL_SIZE):
    """-log10 p of the per-vertex site test (F-test adjusted for ``covariates``), raw and harmonized.

    One row per stage, shared colour limits (default 0 to the 99th percentile of both, at least
    -log10 0.05 so a clean map looks clean). See :func:`surfharm.viz.site_effects.site_effect_map`.
    Returns the Plotter.
    """
    stages_in = {stage_labels[0]: maps} if after is None else {stage_labels[0]: maps, stage_labels[1]: after}
    rows_values, meshes = {}, {}
    for stage, stack in stages_in.items():
        per_hemi, meshes = _as_hemis(stack, hemi, surface, stage)
        rows_values[stage] = {side: site_effect_map(arr, sites, covariates) for side, arr in per_hemi.items()}
    all_maps = [m for st in rows_values.values() for m in st.values()]
    if clim is None:
        top = max(float(np.percentile(_finite_values(all_maps), 99)), -np.log10(0.05))
        clim = (0.0, top)
    clim = _check_clim(clim)
    columns = columns_for(list(meshes), views)
    rows = [Row(stage, [vals[c.hemi] for c in columns], cmap, clim, "-log10 p (site)")
            for stage, vals in rows_values.items()]
    return render_grid(rows, columns, meshes, title=title, panel_size=panel_size, off_screen=off_screen,
                       screenshot=screenshot)
