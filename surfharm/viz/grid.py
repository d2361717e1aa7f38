"""Panels of cortical maps in one pyvista window: rows of maps x columns of (hemisphere, view).

The layout engine behind :mod:`surfharm.viz.surface`: a label column at the left, one panel per
(row, column), a colour bar per run of rows sharing one colour scale at the right, an optional title
on top. Window size, camera (parallel projection fitted to the mesh), lighting and anti-aliasing
(off) are fixed, so the same call gives the same pixels.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spherical_ops.mesh import Surface
from surfharm._atomic import atomic_path
from surfharm.hemispheres import LONG_NAMES
from surfharm.viz.mesh import MeshError, surface_polydata

NAN_COLOR = (0.78, 0.78, 0.78)  # neutral grey for the medial wall / outside cortex
PANEL_SIZE = (300, 230)  # pixels of one brain view

# Direction from the brain to the camera, and the camera's up vector. Lateral/medial depend on the hemisphere.
_VIEWS = {
    ("lh", "lateral"): ((-1, 0, 0), (0, 0, 1)), ("lh", "medial"): ((1, 0, 0), (0, 0, 1)),
    ("rh", "lateral"): ((1, 0, 0), (0, 0, 1)), ("rh", "medial"): ((-1, 0, 0), (0, 0, 1)),
}
_VIEWS_ANY_HEMI = {
    "dorsal": ((0, 0, 1), (0, 1, 0)), "ventral": ((0, 0, -1), (0, 1, 0)),
    "anterior": ((0, 1, 0), (0, 0, 1)), "posterior": ((0, -1, 0), (0, 0, 1)),
}
VIEWS = ("lateral", "medial", "dorsal", "ventral", "anterior", "posterior")


@dataclass
class Column:
    """One column of panels: a hemisphere (``"lh"``/``"rh"``) seen from one side; ``label`` heads the column."""

    hemi: str
    view: str
    label: str


@dataclass
class Row:
    """One row of panels: a value array per column (None = empty panel) drawn with one colour scale."""

    label: str
    cells: list
    cmap: str
    clim: tuple[float, float]
    bar_title: str


def columns_for(hemis: Sequence[str], views: Sequence[str], prefix: str = "") -> list[Column]:
    """One column per (hemisphere, view), hemispheres outermost: left lateral, left medial, right ..."""
    cols = []
    for view in views:
        if view not in VIEWS:
            raise MeshError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    for hemi in hemis:
        for view in views:
            cols.append(Column(hemi, view, f"{prefix}{LONG_NAMES.get(hemi, hemi)} {view}"))
    return cols


def _camera(hemi: str, view: str):
    direction, up = _VIEWS.get((hemi, view)) or _VIEWS_ANY_HEMI[view]
    return np.asarray(direction, dtype=float), np.asarray(up, dtype=float)


def _fit_camera(plotter, vertices: np.ndarray, direction: np.ndarray, up: np.ndarray,
                panel_size: tuple[int, int], zoom: float) -> None:
    """Look along ``-direction`` with a parallel projection that just fits the mesh in the panel.

    Fitting the mesh's extent in the view plane (not its bounding sphere) fills every panel the same
    way, whatever the surface (pial, inflated, a subject's white surface).
    """
    right = np.cross(-direction, up)
    across, along = vertices @ right, vertices @ up
    centre_2d = np.array([across.max() + across.min(), along.max() + along.min()]) / 2
    depth = vertices @ direction
    focal = centre_2d[0] * right + centre_2d[1] * up + depth.mean() * direction
    half_w, half_h = np.ptp(across) / 2, np.ptp(along) / 2
    aspect = panel_size[0] / panel_size[1]
    span = np.ptp(depth) + 1.0
    scale = max(half_h, half_w / aspect) * 1.14 / zoom
    focal = focal + up * 0.08 * scale  # the brain sits a little low: room for the column title above it
    plotter.camera_position = [tuple(focal + direction * (span * 4)), tuple(focal), tuple(up)]
    plotter.enable_parallel_projection()
    plotter.camera.parallel_scale = scale
    plotter.renderer.reset_camera_clipping_range()


def _prefer_egl_without_display() -> None:
    """With no display on Linux, let VTK render through EGL directly.

    VTK otherwise tries X first and prints "bad X server connection" on every render before falling
    back to EGL, which reads like an error. Only done when libEGL exists and the user has not chosen.
    """
    import ctypes.util

    if (sys.platform.startswith("linux") and not has_display()
            and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ and ctypes.util.find_library("EGL")):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"


def has_display() -> bool:
    """True when a window can be opened (always on Windows and macOS; DISPLAY/WAYLAND_DISPLAY on Linux)."""
    if os.name == "nt" or os.uname().sysname == "Darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _bar_groups(rows: list[Row]) -> list[tuple[int, int]]:
    """Runs of consecutive rows drawn with the same colour scale share one colour bar: (first, last+1)."""
    groups, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or (rows[i].cmap, rows[i].clim, rows[i].bar_title) != \
                (rows[start].cmap, rows[start].clim, rows[start].bar_title):
            groups.append((start, i))
            start = i
    return groups


def render_grid(rows: list[Row], columns: list[Column], meshes: dict[str, Surface], *, title: str | None = None,
                panel_size: tuple[int, int] = PANEL_SIZE, nan_color=NAN_COLOR, off_screen: bool | None = None,
                screenshot: str | os.PathLike | None = None, zoom: float = 1.0):
    """Draw ``rows`` x ``columns`` panels of maps on ``meshes`` (one per hemisphere); return the Plotter.

    The functions of :mod:`surfharm.viz.surface` build the rows. ``cells[j]`` of a row holds the
    values of column ``j``'s hemisphere (length = that mesh's vertex count) or None for an empty panel.
    """
    _prefer_egl_without_display()
    import pyvista as pv

    if not rows or not columns:
        raise MeshError("nothing to draw: no rows or no columns")
    for row in rows:
        if len(row.cells) != len(columns):
            raise MeshError(f"row {row.label!r} has {len(row.cells)} cells for {len(columns)} columns")
    has_labels = any(r.label for r in rows)
    label_w, title_h = (0.42 if has_labels else 0.0), (0.16 if title else 0.0)
    # The colour-bar title is centred over the bar: the column must hold the longest one (~9.5 px a character).
    longest = max(len(r.bar_title) for r in rows)
    bar_w = max(0.6, longest * 9.5 * (panel_size[1] / PANEL_SIZE[1]) / 0.95 / panel_size[0])
    n_rows, n_cols = len(rows) + (1 if title else 0), len(columns) + 2
    first = 1 if title else 0
    col_weights = [label_w or 0.001] + [1.0] * len(columns) + [bar_w]
    row_weights = ([title_h] if title else []) + [1.0] * len(rows)
    groups = [(np.s_[a + first:b + first], n_cols - 1) for a, b in _bar_groups(rows) if b - a > 1]
    if title:
        groups.append((0, np.s_[:]))
    if off_screen is None:
        off_screen = screenshot is not None or pv.OFF_SCREEN or not has_display()
    width = int(round(sum(col_weights) * panel_size[0]))
    height = int(round(sum(row_weights) * panel_size[1]))
    plotter = pv.Plotter(off_screen=off_screen, shape=(n_rows, n_cols), groups=groups or None,
                         row_weights=row_weights, col_weights=col_weights, border=False,
                         window_size=[width, height])
    plotter.set_background("white")
    # MSAA differs between GPUs/drivers; without it the same call gives the same pixels everywhere.
    plotter.disable_anti_aliasing()

    if title:
        plotter.subplot(0, 0)
        plotter.add_text(title, position="upper_edge", font_size=_font(12, panel_size), color="black")
    for i, row in enumerate(rows):
        r = i + first
        if has_labels:
            plotter.subplot(r, 0)
            plotter.add_text(row.label, position=(6, int(panel_size[1] * 0.45)), font_size=_font(10, panel_size),
                             color="black")
        for j, (col, values) in enumerate(zip(columns, row.cells)):
            plotter.subplot(r, j + 1)
            if i == 0:
                plotter.add_text(col.label, position="upper_edge", font_size=_font(8, panel_size), color="black")
            if values is None:
                continue
            mesh = meshes[col.hemi]
            poly = surface_polydata(mesh.vertices, mesh.faces, values, name=row.bar_title)
            plotter.add_mesh(poly, scalars=row.bar_title, cmap=row.cmap, clim=row.clim, nan_color=nan_color,
                             smooth_shading=True, show_scalar_bar=False, ambient=0.25, diffuse=0.75,
                             specular=0.0, name=f"map-{i}-{j}")
            _fit_camera(plotter, mesh.vertices, *_camera(col.hemi, col.view), panel_size, zoom)
    _add_colour_bars(plotter, rows, first, n_cols - 1, panel_size, bar_w)
    if screenshot is not None:
        with atomic_path(screenshot) as tmp:
            plotter.screenshot(str(tmp))
    return plotter


def _font(points: int, panel_size: tuple[int, int]) -> int:
    """Font size scaled with the panel height, so small figures keep their proportions."""
    return max(5, int(round(points * panel_size[1] / PANEL_SIZE[1])))


def _add_colour_bars(plotter, rows: list[Row], first_row: int, bar_col: int, panel_size: tuple[int, int],
                     bar_w: float) -> None:
    import pyvista as pv

    width = 0.3 * 0.6 / bar_w  # the same bar (and labels) in pixels whatever the column's width
    used_titles: set[str] = set()
    for a, b in _bar_groups(rows):
        row = rows[a]
        # pyvista ties colour bars with the same title together: keep titles unique per scale.
        bar_title = row.bar_title
        while bar_title in used_titles:
            bar_title += " "
        used_titles.add(bar_title)
        plotter.subplot(a + first_row, bar_col)
        lut = pv.LookupTable(cmap=row.cmap)
        lut.scalar_range = row.clim
        plotter.add_scalar_bar(title=bar_title, mapper=None, lookup_table=lut, vertical=True,
                               position_x=0.5 - width / 2, position_y=0.08 if b - a > 1 else 0.12, width=width,
                               height=0.84 if b - a > 1 else 0.76, n_labels=5, fmt="%.2f", color="black",
                               title_font_size=_font(14, panel_size), label_font_size=_font(12, panel_size),
                               unconstrained_font_size=True)


