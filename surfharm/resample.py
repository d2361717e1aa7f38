"""Resampling maps between spherical meshes: native ``sphere.reg`` <-> icosahedral level k.

Method (exact triangle location, then barycentric interpolation):

1. Both meshes are brought to the unit sphere (a "sphere" whose radius varies by more than 1 % is
   refused: it is not a sphere, e.g. a white surface passed by mistake).
2. Every target point ``p`` is located in the source triangle ``(a, b, c)`` that the ray from the
   centre through ``p`` crosses. Candidate triangles are the nearest triangle centroids (scipy
   ``cKDTree``); the test is exact: with ``n_a = p . (b x c)``, ``n_b = p . (c x a)``,
   ``n_c = p . (a x b)``, the ray crosses the triangle iff the three have the same sign, and
   ``(n_a, n_b, n_c) / (n_a + n_b + n_c)`` are the barycentric coordinates of the crossing point
   (central projection onto the triangle's plane). Points that none of the first candidates contain
   are searched again with more candidates, then against every triangle.
3. The weights form a sparse (n_target, n_source) matrix: computed once per sphere pair and applied
   to any number of maps (``SphereResampler``).

Missing values and the medial wall: a source vertex that is NaN (or outside ``mask``) never
contributes. A target value is the weighted mean over the *valid* vertices of its triangle (weights
renormalised), and NaN when the valid vertices carry less than ``min_valid_weight`` (default 0.5) of
the weight, so the cortex boundary moves by at most half a triangle and no medial-wall value leaks into
cortex. Labels (annotations, masks) use the label of the triangle vertex with the largest weight
(``"nearest"``) or the label with the largest summed weight (``"majority"``).

Maps already on fsaverage / fsaverage6 / fsaverage5 (163842 / 40962 / 10242 values, FreeSurfer order)
need no interpolation: a lower level is the first V(k) values (:func:`cut_to_level`).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from spherical_ops import VERTEX_COUNTS, IcoSphere, icosphere, level_of, n_vertices
from surfharm.io.errors import InputFileError
from surfharm.io.surface import Surface

#: Largest accepted spread of vertex radii, relative to the median radius.
RADIUS_TOLERANCE = 0.01
#: Barycentric coordinates down to -this count as inside (points on a shared edge).
_INSIDE_TOLERANCE = 1e-9


class SphereError(InputFileError):
    """A mesh that cannot serve as a sphere (non-finite coordinates, radius not constant, ...)."""


def unit_sphere(vertices, *, name: str = "sphere", tolerance: float = RADIUS_TOLERANCE) -> np.ndarray:
    """Return (V, 3) float64 vertices scaled onto the unit sphere after checking they form a sphere.

    Raises SphereError naming ``name`` when a coordinate is NaN/inf or when the radius varies by
    more than ``tolerance`` (relative to the median radius).
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise SphereError(f"{name}: expected (V, 3) vertex coordinates, got shape {v.shape}")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise SphereError(f"{name}: {int(bad.sum())} vertices have NaN/inf coordinates "
                          f"(first: vertex {int(np.argmax(bad))})")
    radius = np.linalg.norm(v, axis=1)
    median = float(np.median(radius))
    if median <= 0:
        raise SphereError(f"{name}: vertices are all at the origin")
    spread = (radius.max() - radius.min()) / median
    if spread > tolerance:
        raise SphereError(
            f"{name} is not a sphere: vertex radius ranges {radius.min():.4g}..{radius.max():.4g} "
            f"({100 * spread:.1f}% of the median {median:.4g}); expected a spherical surface such as "
            f"?h.sphere.reg (radius constant within {100 * tolerance:g}%)")
    return v / radius[:, None]


def _as_mesh(sphere, name: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(unit vertices, faces, name) from a Surface, an IcoSphere, a (vertices, faces) pair, a path or a level."""
    if isinstance(sphere, (int, np.integer)) and not isinstance(sphere, bool):
        ico = icosphere(int(sphere))
        return ico.vertices, ico.faces, name or f"icosphere level {int(sphere)}"
    if isinstance(sphere, (str, os.PathLike)):
        from surfharm.io import read_surface

        sphere = read_surface(sphere)
    if isinstance(sphere, IcoSphere):
        return sphere.vertices, sphere.faces, name or f"icosphere level {sphere.level}"
    if isinstance(sphere, Surface):
        name = name or sphere.source or "sphere"
        vertices, faces = sphere.vertices, sphere.faces
    elif isinstance(sphere, tuple) and len(sphere) == 2:
        vertices, faces = sphere
        name = name or "sphere"
    else:
        raise SphereError(f"{name or 'sphere'}: expected a Surface, an IcoSphere, an icosahedral level, a "
                          f"(vertices, faces) pair or a file path, got {type(sphere).__name__}; a mesh needs its faces")
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
        raise SphereError(f"{name}: faces must be (F, 3) indices into {len(vertices)} vertices")
    return unit_sphere(vertices, name=name), faces, name


def _target_points(target, name: str | None) -> tuple[np.ndarray, str]:
    if isinstance(target, np.ndarray) and target.ndim == 2 and target.shape[1] == 3:
        name = name or "target points"
        return unit_sphere(target, name=name), name
    vertices, _, name = _as_mesh(target, name)
    return vertices, name


def locate(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray,
           *, candidates: tuple[int, ...] = (1, 8, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Find the triangle of a unit-sphere mesh crossed by the ray through each point.

    Parameters
    ----------
    vertices : ndarray
        (V, 3) unit vectors of the source mesh.
    faces : ndarray
        (F, 3) int triangles of the source mesh (either orientation).
    points : ndarray
        (N, 3) unit vectors.
    candidates : tuple[int, ...]
        numbers of nearest-centroid candidate triangles tried in turn for the points not
        yet located (on a regular mesh the nearest centroid is the answer for ~94 % of points).

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(face_index, weights)``: (N,) int64 triangle per point and (N, 3) float64 barycentric
        coordinates (>= 0, summing to 1) of the crossing point in that triangle.
    """
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    # Per-face cross products: p . (b x c) etc. are the unnormalised barycentric coordinates.
    crosses = np.stack([np.cross(b, c), np.cross(c, a), np.cross(a, b)], axis=1)  # (F, 3 corners, 3 xyz)
    det = np.einsum("fd,fd->f", a, crosses[:, 0])  # a . (b x c): its sign says which side the origin is on
    centroids = a + b + c
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    tree = cKDTree(centroids, balanced_tree=False, compact_nodes=False)  # faster to build, same answers

    n_points = points.shape[0]
    face_of = np.full(n_points, -1, dtype=np.int64)
    weights = np.zeros((n_points, 3))
    pending = np.arange(n_points)
    for n_candidates in candidates:
        if pending.size == 0:
            break
        _, cand = tree.query(points[pending], k=min(n_candidates, len(faces)), workers=-1)
        cand = cand.reshape(pending.size, -1)
        found, best_face, best_w = _best_candidate(points[pending], cand, crosses, det)
        face_of[pending[found]] = best_face[found]
        weights[pending[found]] = best_w[found]
        pending = pending[~found]
    for i in pending:  # rare: very irregular meshes; test every triangle
        found, best_face, best_w = _best_candidate(points[i:i + 1], np.arange(len(faces))[None, :], crosses, det)
        if not found[0]:
            raise SphereError(f"point {i} at {points[i]} lies in no triangle of the source sphere: "
                              "the mesh has holes or is not closed")
        face_of[i], weights[i] = best_face[0], best_w[0]
    return face_of, weights


def _best_candidate(points, cand, crosses, det):
    """Among candidate faces (N, K), the one containing each point: (found, face, weights)."""
    raw = np.einsum("nd,nkcd->nkc", points, crosses[cand])  # (N, K, 3)
    total = raw.sum(axis=2)
    # The ray (not its opposite) must cross the plane: sign(total) == sign(det).
    facing = total * det[cand] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        bary = raw / total[..., None]
    score = np.where(facing, bary.min(axis=2), -np.inf)
    pick = np.argmax(score, axis=1)
    rows = np.arange(cand.shape[0])
    found = score[rows, pick] >= -_INSIDE_TOLERANCE
    w = np.clip(bary[rows, pick], 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    return found, cand[rows, pick], w


class SphereResampler:
    """Barycentric interpolation from a source spherical mesh onto target points; weights computed once.

    Parameters
    ----------
    source
        the mesh the maps live on: a :class:`~surfharm.io.Surface` (e.g. ``read_surface(
        "lh.sphere.reg")``), an IcoSphere or an int level, a ``(vertices, faces)`` pair or a path.
    target
        where maps are wanted: same kinds as ``source``, or an (N, 3) array of points.
    source_name, target_name : str or None
        names used in error messages (default: the file names).

    Attributes
    ----------
    weights : scipy.sparse.csr_matrix
        scipy.sparse CSR matrix (n_target, n_source), rows summing to 1, 3 non-zeros per row.
    faces : ndarray
        (n_target, 3) int64 source vertices of each target's triangle.
    barycentric : ndarray
        (n_target, 3) float64 weights of those vertices.

    Examples
    --------
    >>> r = SphereResampler(read_surface("lh.sphere.reg"), 7)      # doctest: +SKIP
    >>> fsaverage_maps = r(native_maps)                              # doctest: +SKIP
    """

    def __init__(self, source, target, *, source_name: str | None = None, target_name: str | None = None):
        src_vertices, src_faces, self.source_name = _as_mesh(source, source_name)
        points, self.target_name = _target_points(target, target_name)
        face, bary = locate(src_vertices, src_faces, points)
        self.n_source = src_vertices.shape[0]
        self.n_target = points.shape[0]
        self.faces = src_faces[face]
        self.barycentric = bary
        rows = np.repeat(np.arange(self.n_target), 3)
        self.weights = sp.csr_matrix((bary.ravel(), (rows, self.faces.ravel())),
                                     shape=(self.n_target, self.n_source))
        self._weights32 = None  # float32 copy, made on first use with float32 maps

    def __repr__(self) -> str:
        return f"SphereResampler({self.source_name!r} [{self.n_source}] -> {self.target_name!r} [{self.n_target}])"

    def __call__(self, values, *, mask=None, min_valid_weight: float = 0.5, name: str = "values") -> np.ndarray:
        """Interpolate (n_source,) or (n_maps, n_source) values onto the target: (n_target,) / (n_maps, n_target).

        ``mask``: optional (n_source,) bool, True where values are valid (cortex); values outside, and
        NaN values, never contribute (see the module docstring for ``min_valid_weight``).
        Returns float32 for float32 input (computed in float32), float64 otherwise.
        """
        arr = np.asarray(values)
        if arr.shape[-1] != self.n_source or arr.ndim not in (1, 2):
            raise ValueError(
                f"{name} has {arr.shape[-1] if arr.ndim else 0} values per map (shape {arr.shape}) but the "
                f"source sphere {self.source_name} has {self.n_source} vertices; expected (n_maps, {self.n_source})")
        # float32 maps are interpolated in float32 (weights rounded to ~1e-7, far below the
        # interpolation error); anything else in float64.
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
        weights = self._weights_as(dtype)
        x = np.ascontiguousarray(np.atleast_2d(arr).T, dtype=dtype)  # (n_source, n_maps), C order: fast spmm
        valid = np.isfinite(x)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.n_source,):
                raise ValueError(f"mask has shape {mask.shape}, expected ({self.n_source},)")
            valid &= mask[:, None]
        if valid.all():
            out = weights @ x
        else:
            if np.isinf(x).any():
                raise ValueError(f"{name} holds inf; use NaN for missing values")
            num = weights @ np.where(valid, x, 0)
            den = weights @ valid.astype(dtype)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(den >= max(min_valid_weight, 1e-6), num / den, np.nan)
        out = np.ascontiguousarray(out.T, dtype=dtype)
        return out[0] if arr.ndim == 1 else out

    def _weights_as(self, dtype) -> sp.csr_matrix:
        if dtype == np.float64:
            return self.weights
        if self._weights32 is None:
            self._weights32 = self.weights.astype(np.float32)
        return self._weights32

    def labels(self, labels, *, mode: str = "nearest") -> np.ndarray:
        """Carry integer labels (annotation, mask) to the target without mixing them: (n_target,).

        ``mode="nearest"``: label of the triangle vertex with the largest weight;
        ``"majority"``: the label with the largest summed weight among the triangle's vertices.
        """
        lab = np.asarray(labels)
        if lab.shape != (self.n_source,):
            raise ValueError(f"labels have shape {lab.shape}, expected ({self.n_source},) for {self.source_name}")
        corner = lab[self.faces]  # (n_target, 3)
        if mode == "nearest":
            return corner[np.arange(self.n_target), np.argmax(self.barycentric, axis=1)]
        if mode == "majority":
            same = corner[:, :, None] == corner[:, None, :]
            score = np.einsum("njk,nk->nj", same, self.barycentric)
            return corner[np.arange(self.n_target), np.argmax(score, axis=1)]
        raise ValueError(f"mode must be 'nearest' or 'majority', got {mode!r}")


# -- icosahedral shortcuts -------------------------------------------------------------------------

def cut_to_level(values, level: int, *, name: str = "map") -> np.ndarray:
    """Maps on fsaverageN (icosahedral, FreeSurfer order) cut to a lower ``level`` by nesting.

    ``values``: (..., V(k)) with k >= level. Returns a view ``values[..., :V(level)]``: no interpolation.
    """
    arr = np.asarray(values)
    have = level_of(arr.shape[-1], what=name)
    if level > have:
        raise ValueError(f"{name} is on level {have} ({arr.shape[-1]} vertices); cannot cut up to level {level}, "
                         "use upsample_ico")
    return arr[..., :n_vertices(level)]


@functools.lru_cache(maxsize=8)
def _ico_upsampler(low: int, high: int) -> SphereResampler:
    return SphereResampler(low, high)


def upsample_ico(values, level: int, *, name: str = "map") -> np.ndarray:
    """Icosahedral maps interpolated up to a higher ``level`` (kept vertices keep their values)."""
    arr = np.asarray(values)
    have = level_of(arr.shape[-1], what=name)
    if level <= have:
        return cut_to_level(arr, level, name=name)
    return _ico_upsampler(have, level)(arr, name=name)


def to_ico(values, level: int = 7, *, sphere=None, mask=None, min_valid_weight: float = 0.5,
           name: str = "map") -> np.ndarray:
    """Bring (V,) or (n, V) maps onto icosahedral ``level``.

    With ``sphere`` (the subject's ``?h.sphere.reg``: Surface or path) the maps are native and are
    interpolated; without it they must already be icosahedral (fsaverageN) and are cut or upsampled.
    """
    if sphere is None:
        arr = np.asarray(values)
        if arr.shape[-1] not in VERTEX_COUNTS:
            level_of(arr.shape[-1], what=f"{name} (no sphere given, so it must be on an icosahedral mesh)")
        return upsample_ico(arr, level, name=name)
    return native_to_ico(values, sphere, level=level, mask=mask, min_valid_weight=min_valid_weight, source_name=name)


def native_to_ico(values, sphere, *, level: int = 7, mask=None, min_valid_weight: float = 0.5,
                  source_name: str | None = None) -> np.ndarray:
    """Native-space maps (V_native,) / (n, V_native) on ``sphere`` -> icosahedral ``level`` (barycentric)."""
    resampler = SphereResampler(sphere, level, source_name=source_name)
    return resampler(values, mask=mask, min_valid_weight=min_valid_weight, name=source_name or "map")


def ico_to_native(values, sphere, *, mask=None, min_valid_weight: float = 0.5,
                  source_name: str | None = None) -> np.ndarray:
    """Icosahedral maps (V(k),) / (n, V(k)) -> the native vertices of ``sphere`` (barycentric)."""
    arr = np.asarray(values)
    level = level_of(arr.shape[-1], what=source_name or "map")
    resampler = SphereResampler(level, sphere, target_name=source_name)
    return resampler(arr, mask=mask, min_valid_weight=min_valid_weight, name=source_name or "map")


def resample_file(input_path, output_path, *, sphere=None, level: int = 7, to_native: bool = False,
                  cortex=None, min_valid_weight: float = 0.5, label_mode: str = "nearest",
                  fill_value: float | None = None):
    """Resample the map in ``input_path`` and write it to ``output_path`` (format from its name).

    * ``sphere`` given, ``to_native`` False: the input is native on ``sphere`` -> icosahedral ``level``.
    * ``sphere`` given, ``to_native`` True: the input is icosahedral -> the vertices of ``sphere``.
    * no ``sphere``: the input is icosahedral (fsaverageN) -> ``level`` by nesting (or upsampling).

    ``.annot`` inputs are resampled as labels (``label_mode``) and written as ``.annot``. ``cortex``
    (a label/annotation of the input's mesh) sets values outside it to NaN first. ``fill_value``
    replaces NaN in the output (e.g. 0, as FreeSurfer writes outside cortex). Every input is read and
    checked (hemisphere, vertex counts) before anything is written.

    Returns
    -------
    Path
        Path of the written file.
    """
    from surfharm import io as sio
    from surfharm.io.freesurfer import read_annot, write_annot
    from surfharm.io.surface import Annotation

    sio.check_same_hemi(input_path, sphere, cortex, output_path)
    if to_native and sphere is None:
        raise ValueError("to_native needs the subject's sphere (sphere=...)")
    is_annot = sio.detect_format(input_path) == "annot"
    annot = read_annot(input_path) if is_annot else None
    values = annot.labels if is_annot else sio.read_map(input_path)
    name = str(input_path)
    sphere_surface = sio.read_surface(sphere) if sphere is not None else None
    if cortex is not None and not is_annot:
        values = values.astype(np.float32, copy=True)
        values[~sio.read_cortex_mask(cortex, values.shape[0])] = np.nan

    if sphere_surface is None:
        if is_annot:
            raise ValueError(f"{input_path}: resampling an annotation needs the subject's sphere (sphere=...)")
        result = to_ico(values, level, name=name)
    elif to_native:
        have = level_of(values.shape[0], what=f"{name} (to_native: expected an icosahedral map)")
        resampler = SphereResampler(have, sphere_surface, target_name=str(sphere))
    else:
        if values.shape[0] != sphere_surface.n_vertices:
            raise InputFileError(f"{input_path} has {values.shape[0]} values but sphere {sphere} has "
                                 f"{sphere_surface.n_vertices} vertices; expected one value per sphere vertex")
        resampler = SphereResampler(sphere_surface, level, source_name=str(sphere))
    if sphere_surface is not None:
        if is_annot:
            result = resampler.labels(values, mode=label_mode)
        else:
            result = resampler(values, min_valid_weight=min_valid_weight, name=name)
    if is_annot:
        if not str(output_path).endswith(".annot"):
            raise ValueError(f"{output_path}: an annotation input must be written to a .annot file")
        return write_annot(output_path, Annotation(labels=result, names=annot.names, ctab=annot.ctab),
                           inputs=(input_path, sphere))
    if fill_value is not None:
        result = np.where(np.isnan(result), np.float32(fill_value), result)
    return sio.write_map(output_path, result, inputs=(input_path, sphere, cortex))
