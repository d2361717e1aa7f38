"""Reading a cohort: one function per input kind, each filling one preallocated array.

:func:`read_files` (one map file per scan and a table), :func:`read_subjects_dir` (a FreeSurfer
``SUBJECTS_DIR`` and a participants table), :func:`read_stacked_mgh` (a stacked MGH/MGZ, streamed
frame block by frame block, and its FSGD) and :func:`read_roi_table` (ROI tables) return a
:class:`surfharm.Cohort`; :meth:`Cohort.from_files` and its siblings call them. Each fills one
(n_scans, V) float32 array, in memory or memory-mapped (``out=``), scan by scan: the data is never
held twice. :func:`stacked_mgh_table` gives a stacked MGH's table from its FSGD and header alone,
before any map is read.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from spherical_ops import level_of, n_vertices
from surfharm import io as sio
from surfharm.cohort import Cohort, CohortError, space_name, validate_table
from surfharm.io.errors import InputFileError, InputTableError


def read_files(paths, table, *, level: int | None = None, spheres=None, cortex=None,
               hemi: str | None = None, measure: str | None = None, out=None,
               path_column: str = "path", n_jobs: int = 1, progress: bool = False) -> Cohort:
    """Build a cohort from one map file per scan (MGH/MGZ, GIfTI, curv) and a participants table.

    Parameters
    ----------
    paths
        one file per row of ``table``; or None to take them from ``table[path_column]``
        (relative paths are relative to the table file's folder).
    table : DataFrame or path
        DataFrame or CSV/TSV path (subject, site, ...).
    level : int or None
        icosahedral level wanted; maps on a higher level are cut by nesting; native maps
        need ``spheres``. None keeps the maps as they are (all must have the same length).
    spheres
        one ``?h.sphere.reg`` per scan (or a single sphere shared by all) for maps in
        native space; each scan is resampled to ``level`` (default 7).
    cortex
        (V,) bool mask, an annotation/label path, or one per scan; values outside are NaN.
    out
        a ``.npy`` path to hold the maps as a memory-map (large cohorts), or None (in memory).
    n_jobs : int
        scans read and resampled in parallel threads.
    progress : bool
        show a progress bar.
    """
    table = read_participants(table)
    base = Path(table.attrs.get("source", ".")).parent
    validate_table(table)  # before any map is read
    if paths is None:
        if path_column not in table.columns:
            raise InputTableError(f"no file paths given and the table has no {path_column!r} column")
        paths = [p if Path(p).is_absolute() else base / p for p in table[path_column]]
    paths = [Path(p) for p in paths]
    if len(paths) != len(table):
        raise CohortError(f"{len(paths)} files for {len(table)} table rows; expected one file per scan")
    hemi = sio.check_same_hemi(*paths, *(_as_list(spheres, len(paths)) if spheres is not None else [])) or hemi
    sphere_list = _as_list(spheres, len(paths)) if spheres is not None else [None] * len(paths)
    cortex_list = _as_list(cortex, len(paths)) if cortex is not None and not isinstance(cortex, np.ndarray) \
        else [cortex] * len(paths)
    loader = _MapLoader(level=level)

    def read(i):
        return loader.load(paths[i], sphere_list[i], cortex_list[i])

    maps = _fill(len(paths), read, out=out, n_jobs=n_jobs, progress=progress, name_of=lambda i: str(paths[i]))
    sources = pd.DataFrame({"map": [str(p) for p in paths],
                            "sphere": [None if s is None else str(s) for s in sphere_list]})
    return Cohort(maps, table, hemi=hemi, measure=measure, sources=sources)

def read_subjects_dir(subjects_dir, participants, hemi: str = "lh", measure: str = "thickness", *,
                      level: int = 7, fwhm: int | None = None, cortex: bool = True,
                      dir_pattern: str | None = None, out=None, n_jobs: int = 1,
                      progress: bool = False) -> Cohort:
    """Build a cohort from a FreeSurfer ``SUBJECTS_DIR`` and a participants table.

    For each row the subject folder is ``dir_pattern.format(subject=..., session=...)`` (default
    ``{subject}``, or ``{subject}_{session}`` when the table has a session column).

    * ``fwhm=None``: reads ``surf/<hemi>.<measure>`` and ``surf/<hemi>.sphere.reg`` and resamples to
      icosahedral ``level`` by barycentric interpolation (vertices outside ``label/<hemi>.cortex.label``
      are NaN when ``cortex`` is True and the label exists).
    * ``fwhm=N``: reads the qcache output ``surf/<hemi>.<measure>.fwhmN.fsaverage.mgh`` (or ``.mgz``),
      already on fsaverage, cut to ``level`` by nesting.

    ``out``: a ``.npy`` path for memory-mapped maps (large cohorts); ``n_jobs``: subjects processed
    in parallel threads; ``progress``: show a progress bar.

    Raises InputFileError naming the subject and the file that is missing.
    """
    subjects_dir = Path(subjects_dir)
    if not subjects_dir.is_dir():
        raise InputFileError(f"SUBJECTS_DIR {subjects_dir} is not a folder")
    if hemi not in ("lh", "rh"):
        raise CohortError(f"hemi must be 'lh' or 'rh', got {hemi!r}")
    table = validate_table(read_participants(participants))
    if dir_pattern is None:
        dir_pattern = "{subject}_{session}" if "session" in table.columns else "{subject}"
    rows = table.to_dict("records")
    folders = [subjects_dir / dir_pattern.format(**{k: v for k, v in r.items() if isinstance(k, str)}) for r in rows]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise InputFileError(f"{len(missing)} subject folder(s) of the participants table are missing from "
                             f"{subjects_dir}, e.g. {missing[:3]}")
    if fwhm is not None:
        maps_paths, sphere_paths, cortex_paths = [], [None] * len(folders), [None] * len(folders)
        for f in folders:
            candidates = [f / "surf" / f"{hemi}.{measure}.fwhm{fwhm}.fsaverage.{ext}" for ext in ("mgh", "mgz")]
            found = [c for c in candidates if c.exists()]
            if not found:
                raise InputFileError(f"{candidates[0]} (or .mgz) does not exist; run recon-all -qcache, "
                                     "or pass fwhm=None to resample the native map")
            maps_paths.append(found[0])
    else:
        maps_paths = [f / "surf" / f"{hemi}.{measure}" for f in folders]
        sphere_paths = [f / "surf" / f"{hemi}.sphere.reg" for f in folders]
        cortex_paths = [(f / "label" / f"{hemi}.cortex.label")
                        if cortex and (f / "label" / f"{hemi}.cortex.label").exists()
                        else None for f in folders]
        for p in (*maps_paths, *sphere_paths):
            if not p.exists():
                raise InputFileError(f"{p} does not exist (needed for subject folder {p.parent.parent.name})")
    loader = _MapLoader(level=level)
    maps = _fill(len(folders), lambda i: loader.load(maps_paths[i], sphere_paths[i], cortex_paths[i]),
                 out=out, n_jobs=n_jobs, progress=progress, name_of=lambda i: str(maps_paths[i]))
    sources = pd.DataFrame({"map": [str(p) for p in maps_paths],
                            "sphere": [None if s is None else str(s) for s in sphere_paths]})
    return Cohort(maps, table, hemi=hemi, measure=measure, sources=sources)

def read_stacked_mgh(mgh, fsgd, *, site_column: str | None = None, participants=None, cortex=None,
                     hemi: str | None = None, measure: str | None = None, out=None,
                     chunk_frames: int = 64) -> Cohort:
    """Build a cohort from a stacked MGH/MGZ (one frame per subject, ``mris_preproc``) and its FSGD.

    Frame ``i`` is the subject of the i-th ``Input`` line of the FSGD. ``participants`` (optional
    table with ``subject``) is joined by subject to add covariates. The site of each scan is the
    column ``site_column``; by default the participants' ``site`` column when there is one, else
    the FSGD class. ``cortex``: (V,) bool mask or an annot / label path; vertices outside are set to
    NaN. Frames are streamed into ``out`` (a ``.npy`` memmap) or one in-memory array.
    """
    sio.check_same_hemi(mgh, *([cortex] if isinstance(cortex, (str, os.PathLike)) else []))
    table = validate_table(stacked_mgh_table(mgh, fsgd, participants=participants, site_column=site_column))
    n_frames, n_vert = sio.mgh_shape(mgh)
    mask = _resolve_cortex_mask(cortex, n_vert)
    maps = _allocate((n_frames, n_vert), out)
    for start, block in sio.iter_mgh_frames(mgh, chunk_frames=chunk_frames):
        block = block.astype(np.float32, copy=False)
        if np.isinf(block).any():
            rows, cols = np.nonzero(np.isinf(block))
            frame = start + rows[0]
            raise InputFileError(f"{mgh}: frame {frame} (subject {table['subject'].iloc[frame]}) holds "
                                 f"{int((rows == rows[0]).sum())} inf value(s), first at vertex {cols[0]}; "
                                 "expected finite values (NaN for missing ones)")
        if mask is not None:
            block[:, ~mask] = np.nan
        maps[start:start + block.shape[0]] = block
    hemi = hemi or sio.hemi_of(mgh)
    sources = pd.DataFrame({"map": [str(mgh)] * n_frames, "sphere": [None] * n_frames})
    return Cohort(maps, table, hemi=hemi, measure=measure, sources=sources)

def read_roi_table(table_path, covariates_path=None, *, id_column: str | None = None,
                   features=None, site_column: str = "site", measure: str | None = None) -> Cohort:
    """Build an ROI cohort from an ``aparcstats2table``/``asegstats2table`` TSV or a CSV.

    ``covariates_path``: a table joined by subject (and session) that brings site, age, sex...
    The maps are (n_scans, n_rois) float32 and ``feature_names`` lists the ROI columns.
    """
    table, features = sio.read_roi_table(table_path, covariates=covariates_path, id_column=id_column,
                                         features=features)
    if site_column != "site":
        if site_column not in table.columns:
            raise InputTableError(f"{table_path}: no site column {site_column!r}")
        table = table.rename(columns={site_column: "site"})
    maps = table[features].to_numpy(dtype=np.float32)
    rest = table.drop(columns=features)
    hemi = sio.hemi_of(table_path) if Path(str(table_path)).exists() else None
    return Cohort(maps, rest, feature_names=features, measure=measure, hemi=hemi)


# -- helpers ---------------------------------------------------------------------------------------------------

def stacked_mgh_table(mgh, fsgd, *, participants=None, site_column: str | None = None) -> pd.DataFrame:
    """The table of a stacked MGH: its FSGD (frame i = i-th ``Input`` line) joined with ``participants``,
    site column chosen as in :meth:`Cohort.from_stacked_mgh`, checked against the MGH header's frame
    count. Reads the MGH header only, never its maps."""
    table, _ = sio.read_fsgd(fsgd)
    if participants is not None:
        table = sio.join_covariates(table, read_participants(participants), on=("subject",),
                                    source=str(fsgd), covariates_source=str(participants))
    if site_column is None:
        site_column = "site" if "site" in table.columns else "class"
    if site_column not in table.columns:
        raise InputTableError(f"site column {site_column!r} is neither the FSGD class nor a participants column")
    if site_column != "site":
        table = table.drop(columns=["site"], errors="ignore").rename(columns={site_column: "site"})
    n_frames, _ = sio.mgh_shape(mgh)
    if n_frames != len(table):
        raise InputFileError(f"{mgh} has {n_frames} frames but {fsgd} lists {len(table)} subjects; "
                             "expected one frame per FSGD Input line")
    table.attrs["source"] = str(fsgd) if participants is None else f"{fsgd} + {participants}"
    return table


def read_participants(participants) -> pd.DataFrame:
    if isinstance(participants, pd.DataFrame):
        table = participants.copy()
        table.attrs.setdefault("source", "participants table")
        return table
    return sio.read_table(participants)


def _as_list(value, n: int) -> list:
    if isinstance(value, (str, os.PathLike)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise CohortError(f"{len(values)} entries given where {n} (one per scan) were expected")
    return values


def _allocate(shape, out) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    out = Path(out)
    if out.suffix != ".npy":
        raise CohortError(f"out={out} must be a .npy file (memory-mapped maps)")
    return np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)


def _fill(n_scans: int, read_one, *, out=None, n_jobs: int = 1, progress: bool = False, name_of=None) -> np.ndarray:
    """Allocate the (n_scans, V) array once (V from the first scan) and fill it scan by scan.

    ``n_jobs`` > 1 reads/resamples scans in that many threads (numpy and scipy release the GIL in
    the heavy parts); rows are still written in order into the one array.
    """
    from concurrent.futures import ThreadPoolExecutor

    from surfharm._progress import progress_bar

    first = read_one(0)
    maps = _allocate((n_scans, first.shape[0]), out)
    maps[0] = first
    bar = progress_bar(progress, total=n_scans, initial=1, unit="scan", desc="reading scans")

    def store(i, row):
        if row.shape != first.shape:
            if name_of is not None:
                raise InputFileError(f"{name_of(i)} has {row.shape[0]} values but {name_of(0)} has {first.shape[0]}; "
                                     "all scans must be on the same mesh (pass level=... and spheres=... to resample)")
            raise CohortError(f"scan {i} has {row.shape[0]} values but scan 0 has {first.shape[0]}; "
                              "all scans must be on the same mesh (pass level=... and spheres=... to resample)")
        maps[i] = row
        bar.update(1)

    if n_jobs > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            for i, row in zip(range(1, n_scans), pool.map(read_one, range(1, n_scans))):
                store(i, row)
    else:
        for i in range(1, n_scans):
            store(i, read_one(i))
    bar.close()
    return maps


def _resolve_cortex_mask(cortex, n_vert: int):
    """The ``cortex`` argument (None, a (V,) bool array, or an annot / label path) as a (V,) mask or None."""
    if cortex is None:
        return None
    if isinstance(cortex, np.ndarray):
        if cortex.shape != (n_vert,) or cortex.dtype != bool:
            raise CohortError(f"cortex mask must be a ({n_vert},) bool array, got {cortex.shape} {cortex.dtype}")
        return cortex
    return sio.read_cortex_mask(cortex, n_vert)


class _MapLoader:
    """Read one scan's map and bring it to the requested icosahedral level.

    Resampling weights are computed once per sphere file and reused while consecutive scans share it
    (e.g. one template sphere for every scan). Safe to call from several threads.
    """

    def __init__(self, level: int | None):
        self.level = level
        self._resamplers: dict[str, object] = {}

    def load(self, path, sphere, cortex) -> np.ndarray:
        values = sio.read_map(path).astype(np.float32)
        if np.isinf(values).any():
            bad = np.flatnonzero(np.isinf(values))
            raise InputFileError(f"{path}: {bad.size} inf value(s), first at vertex {bad[0]}; expected finite "
                                 "values (NaN for missing ones)")
        # The map's own vertex count is checked first, so that a map of the wrong mesh is blamed, not its label.
        resampler = None
        if sphere is not None:
            resampler = self._resampler(sphere)
            if resampler.n_source != values.shape[0]:
                raise InputFileError(f"{path} has {values.shape[0]} values but sphere {sphere} has "
                                     f"{resampler.n_source} vertices; expected the same subject and hemisphere")
        elif self.level is not None:
            try:
                have = level_of(values.shape[0], what=str(path))
            except ValueError as exc:
                raise InputFileError(f"{exc}; a map in the subject's own vertex order needs its sphere.reg "
                                     "(spheres=...) to be resampled") from None
            if have < self.level:
                raise InputFileError(
                    f"{path} is on level {have} ({space_name(have)}, {values.shape[0]} vertices), below the "
                    f"requested level {self.level} ({space_name(self.level)}, {n_vertices(self.level)} vertices); "
                    f"run at its level (--level {have} on the command line, level={have} in Python), or bring the "
                    f"map up first with 'surfharm resample {Path(path).name} OUT.mgz --level {self.level}'")
        try:
            mask = _resolve_cortex_mask(cortex, values.shape[0])
        except (InputFileError, CohortError) as exc:
            raise InputFileError(f"cortex {cortex} does not fit {path} ({values.shape[0]} values): {exc}") from None
        if mask is not None:
            values[~mask] = np.nan
        if resampler is not None:
            return resampler(values, name=str(path))
        if self.level is None:
            return values
        return values[:n_vertices(self.level)]

    def _resampler(self, sphere):
        from surfharm.resample import SphereResampler

        key = str(Path(sphere).resolve())
        cached = self._resamplers.get(key)
        if cached is None:
            level = 7 if self.level is None else self.level
            cached = SphereResampler(sio.read_surface(sphere), level, source_name=str(sphere))
            # Keep only the latest sphere: consecutive scans often share it, and a cohort of
            # thousands of subjects must not keep thousands of weight matrices.
            self._resamplers = {key: cached}
        return cached
