"""The Cohort: every scan's map (one row each) with the table that says who, where and what.

A :class:`Cohort` holds

* ``maps``: (n_scans, n_features) float32, an in-memory array or a ``numpy.memmap`` (``.npy``) for
  cohorts larger than memory; features are icosahedral vertices (FreeSurfer fsaverageN order) or
  ROIs; NaN marks a vertex outside cortex or a missing value;
* ``table``: a pandas DataFrame, one row per scan, in the same order, with at least ``subject`` and
  ``site`` (``session``, ``age``, ``sex`` and any covariate are optional).

It is what harmonizers, metrics and renderings consume (``cohort.maps``, ``cohort.sites``,
``cohort.covariates([...])``) and what writers write back (:meth:`Cohort.write`).

Constructors read the usual inputs: a FreeSurfer ``SUBJECTS_DIR`` plus a participants table
(:meth:`from_subjects_dir`), a stacked MGH plus an FSGD (:meth:`from_stacked_mgh`), per-scan
GIfTI/MGH/curv files plus a table (:meth:`from_files`) and ROI tables (:meth:`from_roi_table`). Each
fills one preallocated (n_scans, V) array, in memory or memory-mapped (``out=``), scan by scan: the
data is never held twice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from spherical_ops import VERTEX_COUNTS, level_of, n_vertices
from surfharm import io as sio
from surfharm.io.errors import InputFileError, InputTableError

#: Table columns that identify a scan or its site (never covariates).
ID_COLUMNS = ("subject", "session", "site")
#: Covariates that must be numeric when present.
NUMERIC_COVARIATES = ("age",)
_FSAVERAGE_NAMES = {7: "fsaverage", 6: "fsaverage6", 5: "fsaverage5", 4: "fsaverage4", 3: "fsaverage3"}


class CohortError(ValueError):
    """Maps and table that do not form a valid cohort; the message names the value at fault."""


class Cohort:
    """Maps of many scans plus their participants table.

    Args:
        maps: (n_scans, n_features) float32 array or memmap; NaN outside cortex. Other float/int
            arrays are converted (a copy); a memmap must already be float32.
        table: one row per scan, same order as ``maps``; columns ``subject`` and ``site`` required,
            ``session`` optional ((subject, session) must be unique), ``age`` numeric when present.
        hemi: 'lh' / 'rh' / None.
        measure: what the maps hold ('thickness', ...), used to name output files.
        feature_names: ROI names (one per column) for ROI data; None for vertex maps.
        sources: optional DataFrame, one row per scan, of the files the maps came from (columns
            ``map``, and ``sphere`` for native-space inputs); used to write results back next to them.
        validate_values: scan the maps for inf (chunked; set False to skip the pass on huge memmaps).

    Attributes:
        maps: (n_scans, n_features) float32.
        table: DataFrame, index 0..n_scans-1.
    """

    def __init__(self, maps, table: pd.DataFrame, *, hemi: str | None = None, measure: str | None = None,
                 feature_names: Sequence[str] | None = None, sources: pd.DataFrame | None = None,
                 validate_values: bool = True):
        self.maps = _check_maps(maps)
        self.table = _check_table(table, self.maps.shape[0])
        if hemi not in (None, "lh", "rh"):
            raise CohortError(f"hemi must be 'lh', 'rh' or None, got {hemi!r}")
        self.hemi = hemi
        self.measure = measure
        self.feature_names = None if feature_names is None else [str(f) for f in feature_names]
        if self.feature_names is not None and len(self.feature_names) != self.maps.shape[1]:
            raise CohortError(f"{len(self.feature_names)} feature names for {self.maps.shape[1]} map columns")
        if sources is not None and len(sources) != self.maps.shape[0]:
            raise CohortError(f"sources has {len(sources)} rows for {self.maps.shape[0]} scans")
        self.sources = None if sources is None else sources.reset_index(drop=True)
        if validate_values:
            _check_finite_or_nan(self.maps)

    # -- shape and identity ----------------------------------------------------------------------
    @property
    def n_scans(self) -> int:
        return int(self.maps.shape[0])

    @property
    def n_vertices(self) -> int:
        """Number of columns of ``maps`` (vertices, or ROIs for ROI data)."""
        return int(self.maps.shape[1])

    n_features = n_vertices

    @property
    def level(self) -> int | None:
        """Icosahedral level of vertex maps (7 = fsaverage), None for ROI data or other vertex counts."""
        if self.feature_names is not None or self.n_vertices not in VERTEX_COUNTS:
            return None
        return VERTEX_COUNTS.index(self.n_vertices)

    @property
    def sites(self) -> np.ndarray:
        """(n_scans,) site label of every scan, as given in the table."""
        return self.table["site"].to_numpy()

    @property
    def subjects(self) -> np.ndarray:
        """(n_scans,) subject id (str) of every scan."""
        return self.table["subject"].to_numpy()

    @property
    def scan_ids(self) -> list[str]:
        """One unique name per scan: ``subject`` or ``subject_session``."""
        if "session" not in self.table.columns:
            return [str(s) for s in self.table["subject"]]
        return [f"{s}_{t}" if isinstance(t, str) and t else str(s)
                for s, t in zip(self.table["subject"], self.table["session"])]

    def covariates(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The covariate columns (default: every column except subject, session and site).

        Raises CohortError naming a requested column that the table lacks.
        """
        if columns is None:
            columns = [c for c in self.table.columns if c not in ID_COLUMNS]
        columns = list(columns)
        missing = [c for c in columns if c not in self.table.columns]
        if missing:
            raise CohortError(f"covariate(s) {missing} not in the cohort table; columns are {list(self.table.columns)}")
        return self.table[columns].copy()

    def __len__(self) -> int:
        return self.n_scans

    def __repr__(self) -> str:
        what = f"level={self.level}" if self.level is not None else (
            f"n_rois={self.n_vertices}" if self.feature_names is not None else f"n_vertices={self.n_vertices}")
        kind = "memmap" if isinstance(self.maps, np.memmap) else "array"
        sites = pd.unique(self.table["site"])
        return (f"Cohort(n_scans={self.n_scans}, {what}, n_sites={len(sites)}, hemi={self.hemi!r}, "
                f"measure={self.measure!r}, maps={kind})")

    # -- derived cohorts -----------------------------------------------------------------------------
    def subset(self, selector) -> "Cohort":
        """A cohort of the scans picked by a boolean mask (n_scans,), integer indices or a slice.

        A slice keeps a view of ``maps`` (no copy, memmaps stay memmaps); a mask or indices copy
        the selected rows.
        """
        if isinstance(selector, slice):
            index = np.arange(self.n_scans)[selector]
            maps = self.maps[selector]
        else:
            sel = np.asarray(selector)
            if sel.dtype == bool:
                if sel.shape != (self.n_scans,):
                    raise CohortError(f"boolean selector has shape {sel.shape}, expected ({self.n_scans},)")
                index = np.flatnonzero(sel)
            elif sel.dtype.kind in "iu":
                index = sel.reshape(-1)
                if index.size and (index.min() < -self.n_scans or index.max() >= self.n_scans):
                    raise CohortError(f"scan index out of range 0..{self.n_scans - 1}: {index.min()}..{index.max()}")
            else:
                raise CohortError(f"selector must be a boolean mask, integer indices or a slice, got dtype {sel.dtype}")
            maps = np.asarray(self.maps[index])
        return self._like(maps, self.table.iloc[index], None if self.sources is None else self.sources.iloc[index])

    def with_maps(self, maps) -> "Cohort":
        """The same scans and table with new maps (e.g. harmonized ones) of shape (n_scans, n_features)."""
        maps = _check_maps(maps)
        if maps.shape[0] != self.n_scans:
            raise CohortError(f"new maps have {maps.shape[0]} scans, the cohort has {self.n_scans}")
        if self.feature_names is not None and maps.shape[1] != self.n_vertices:
            raise CohortError(f"new maps have {maps.shape[1]} columns, the cohort has {self.n_vertices} ROIs")
        return self._like(maps, self.table, self.sources)

    def iter_chunks(self, chunk_scans: int = 64) -> Iterator["Cohort"]:
        """Yield consecutive sub-cohorts of at most ``chunk_scans`` scans (views: no copy of the maps)."""
        if int(chunk_scans) < 1:
            raise CohortError(f"chunk_scans must be >= 1, got {chunk_scans}")
        for start in range(0, self.n_scans, int(chunk_scans)):
            yield self.subset(slice(start, start + int(chunk_scans)))

    def to_level(self, level: int) -> "Cohort":
        """Vertex maps cut to a lower icosahedral level by nesting (first V(level) columns, a view)."""
        if self.level is None:
            raise CohortError(f"cohort maps ({self.n_vertices} columns) are not icosahedral; cannot cut to level {level}")
        if level > self.level:
            raise CohortError(f"cohort is at level {self.level}; nesting only cuts down (asked for level {level}); "
                              "use surfharm.resample.upsample_ico to go up")
        return self._like(self.maps[:, :n_vertices(level)], self.table, self.sources)

    def _like(self, maps, table, sources) -> "Cohort":
        return Cohort(maps, table.reset_index(drop=True), hemi=self.hemi, measure=self.measure,
                      feature_names=self.feature_names, sources=sources, validate_values=False)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_files(cls, paths, table, *, level: int | None = None, spheres=None, cortex=None,
                   hemi: str | None = None, measure: str | None = None, out=None,
                   path_column: str = "path", n_jobs: int = 1, progress: bool = False) -> "Cohort":
        """Build a cohort from one map file per scan (MGH/MGZ, GIfTI, curv) and a participants table.

        Args:
            paths: one file per row of ``table``; or None to take them from ``table[path_column]``
                (relative paths are relative to the table file's folder).
            table: DataFrame or CSV/TSV path (subject, site, ...).
            level: icosahedral level wanted; maps on a higher level are cut by nesting; native maps
                need ``spheres``. None keeps the maps as they are (all must have the same length).
            spheres: one ``?h.sphere.reg`` per scan (or a single sphere shared by all) for maps in
                native space; each scan is resampled to ``level`` (default 7).
            cortex: (V,) bool mask, an annotation/label path, or one per scan; values outside are NaN.
            out: a ``.npy`` path to hold the maps as a memory-map (large cohorts), or None (in memory).
            n_jobs: scans read and resampled in parallel threads.
            progress: show a progress bar.
        """
        table = _read_participants(table)
        base = Path(table.attrs.get("source", ".")).parent
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

        maps = _fill(len(paths), read, out=out, n_jobs=n_jobs, progress=progress)
        sources = pd.DataFrame({"map": [str(p) for p in paths],
                                "sphere": [None if s is None else str(s) for s in sphere_list]})
        return cls(maps, table, hemi=hemi, measure=measure, sources=sources)

    @classmethod
    def from_subjects_dir(cls, subjects_dir, participants, hemi: str = "lh", measure: str = "thickness", *,
                          level: int = 7, fwhm: int | None = None, cortex: bool = True,
                          dir_pattern: str | None = None, out=None, n_jobs: int = 1,
                          progress: bool = False) -> "Cohort":
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
        table = _read_participants(participants)
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
            cortex_paths = [(f / "label" / f"{hemi}.cortex.label") if cortex and (f / "label" / f"{hemi}.cortex.label").exists()
                            else None for f in folders]
            for p in (*maps_paths, *sphere_paths):
                if not p.exists():
                    raise InputFileError(f"{p} does not exist (needed for subject folder {p.parent.parent.name})")
        loader = _MapLoader(level=level)
        maps = _fill(len(folders), lambda i: loader.load(maps_paths[i], sphere_paths[i], cortex_paths[i]),
                     out=out, n_jobs=n_jobs, progress=progress)
        sources = pd.DataFrame({"map": [str(p) for p in maps_paths],
                                "sphere": [None if s is None else str(s) for s in sphere_paths]})
        return cls(maps, table, hemi=hemi, measure=measure, sources=sources)

    @classmethod
    def from_stacked_mgh(cls, mgh, fsgd, *, site_column: str | None = None, participants=None, cortex=None,
                         hemi: str | None = None, measure: str | None = None, out=None,
                         chunk_frames: int = 64) -> "Cohort":
        """Build a cohort from a stacked MGH/MGZ (one frame per subject, ``mris_preproc``) and its FSGD.

        Frame ``i`` is the subject of the i-th ``Input`` line of the FSGD. ``participants`` (optional
        table with ``subject``) is joined by subject to add covariates. The site of each scan is the
        column ``site_column``; by default the participants' ``site`` column when there is one, else
        the FSGD class. ``cortex``: (V,) bool mask or an annot / label path; vertices outside are set to
        NaN. Frames are streamed into ``out`` (a ``.npy`` memmap) or one in-memory array.
        """
        sio.check_same_hemi(mgh, *([cortex] if isinstance(cortex, (str, os.PathLike)) else []))
        table, _ = sio.read_fsgd(fsgd)
        if participants is not None:
            table = sio.join_covariates(table, _read_participants(participants), on=("subject",),
                                        source=str(fsgd), covariates_source=str(participants))
        if site_column is None:
            site_column = "site" if "site" in table.columns else "class"
        if site_column not in table.columns:
            raise InputTableError(f"site column {site_column!r} is neither the FSGD class nor a participants column")
        if site_column != "site":
            table = table.drop(columns=["site"], errors="ignore").rename(columns={site_column: "site"})
        n_frames, n_vert = sio.mgh_shape(mgh)
        if n_frames != len(table):
            raise InputFileError(f"{mgh} has {n_frames} frames but {fsgd} lists {len(table)} subjects; "
                                 "expected one frame per FSGD Input line")
        mask = _cortex_mask(cortex, n_vert)
        maps = _allocate((n_frames, n_vert), out)
        for start, block in sio.iter_mgh_frames(mgh, chunk_frames=chunk_frames):
            block = block.astype(np.float32, copy=False)
            if mask is not None:
                block[:, ~mask] = np.nan
            maps[start:start + block.shape[0]] = block
        hemi = hemi or sio.hemi_of(mgh)
        sources = pd.DataFrame({"map": [str(mgh)] * n_frames, "sphere": [None] * n_frames})
        return cls(maps, table, hemi=hemi, measure=measure, sources=sources)

    @classmethod
    def from_roi_table(cls, table_path, covariates_path=None, *, id_column: str | None = None,
                       features=None, site_column: str = "site", measure: str | None = None) -> "Cohort":
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
        return cls(maps, rest, feature_names=features, measure=measure, hemi=hemi)

    # -- writing -----------------------------------------------------------------------------------
    def write(self, dest, *, format: str = "mgz", layout: str = "flat", suffix: str = "harmonized",
              space: str = "ico", fsgd=None, fill_value: float | None = None,
              overwrite: bool = False) -> list[Path]:
        """Write the maps next to the input conventions; never over an input, atomically.

        Args:
            dest: a folder (one file per scan), or a ``.mgh``/``.mgz`` file (one stacked MGH, frame i =
                scan i, as ``mris_preproc`` writes; pass ``fsgd`` to write the matching FSGD too), or a
                ``.csv``/``.tsv`` file for ROI cohorts (table + ROI columns).
            format: per-scan file format: 'mgz', 'mgh', 'gii' or 'curv'.
            layout: 'flat' (``dest/<scan>.<hemi>.<measure>.<suffix>.<space>.mgz``) or 'freesurfer'
                (``dest/<scan>/surf/<hemi>.<measure>.<suffix>.<space>.mgz``, qcache-style names).
            space: 'ico' writes the icosahedral maps; 'native' resamples each scan back onto its own
                ``sphere.reg`` (cohorts built from native maps) and writes curv files by default.
            fill_value: written instead of NaN (e.g. 0, FreeSurfer's value outside cortex); None keeps NaN.
            overwrite: replace existing output files (inputs are never replaced).

        Returns:
            The paths written (per-scan files; then the table written beside them).
        """
        dest = Path(dest)
        inputs = [] if self.sources is None else [p for p in self.sources["map"].dropna()]
        name = dest.name.lower()
        if self.feature_names is not None or name.endswith((".csv", ".tsv")):
            return [self._write_roi_table(dest, inputs, overwrite)]
        if name.endswith((".mgh", ".mgz")):
            maps = self.maps if fill_value is None else np.where(np.isnan(self.maps), np.float32(fill_value), self.maps)
            paths = [sio.write_mgh(dest, maps, inputs=inputs, overwrite=overwrite)]
            if fsgd is not None:
                variables = [c for c in self.covariates().columns if pd.api.types.is_numeric_dtype(self.table[c])]
                fs_table = self.table.assign(subject=self.scan_ids)
                paths.append(sio.write_fsgd(fsgd, fs_table, class_column="site", variables=variables,
                                            inputs=inputs, overwrite=overwrite))
            return paths
        if format not in ("mgz", "mgh", "gii", "curv"):
            raise CohortError(f"format must be 'mgz', 'mgh', 'gii' or 'curv', got {format!r}")
        if layout not in ("flat", "freesurfer"):
            raise CohortError(f"layout must be 'flat' or 'freesurfer', got {layout!r}")
        if space not in ("ico", "native"):
            raise CohortError(f"space must be 'ico' or 'native', got {space!r}")
        if space == "native":
            if self.sources is None or self.sources["sphere"].isna().any():
                raise CohortError("space='native' needs each scan's sphere.reg; this cohort was not built from native maps")
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for i, scan in enumerate(self.scan_ids):
            values = np.asarray(self.maps[i])
            space_name = _FSAVERAGE_NAMES.get(self.level, f"ic{self.level}") if self.level is not None else None
            if space == "native":
                values = _to_native(values, self.sources["sphere"].iloc[i])
                space_name = None
            if fill_value is not None:
                values = np.where(np.isnan(values), np.float32(fill_value), values)
            parts = [p for p in (self.hemi, self.measure, suffix, space_name) if p]
            ext = {"mgz": ".mgz", "mgh": ".mgh", "gii": ".shape.gii", "curv": ""}[format]
            if layout == "flat":
                path = dest / (".".join([scan, *parts]) + ext)
            else:
                (dest / scan / "surf").mkdir(parents=True, exist_ok=True)
                path = dest / scan / "surf" / (".".join(parts) + ext)
            written.append(sio.write_map(path, values, hemi=self.hemi, inputs=inputs, overwrite=overwrite))
        table = self.table.assign(path=[str(p.relative_to(dest)) for p in written])
        from surfharm._atomic import write_text_atomic

        written.append(write_text_atomic(dest / "cohort.tsv", table.to_csv(sep="\t", index=False),
                                         inputs=inputs, overwrite=overwrite))
        return written

    def _write_roi_table(self, dest: Path, inputs, overwrite) -> Path:
        from surfharm._atomic import write_text_atomic

        if self.feature_names is None:
            raise CohortError(f"{dest}: a CSV/TSV output holds ROI data; this cohort holds vertex maps")
        frame = pd.concat([self.table, pd.DataFrame(np.asarray(self.maps), columns=self.feature_names)], axis=1)
        sep = "\t" if dest.name.lower().endswith(".tsv") else ","
        return write_text_atomic(dest, frame.to_csv(sep=sep, index=False), inputs=inputs, overwrite=overwrite)


# -- validation and loading -----------------------------------------------------------------------------------------

def _check_maps(maps) -> np.ndarray:
    if isinstance(maps, np.memmap):
        if maps.dtype != np.float32:
            raise CohortError(f"memory-mapped maps must be float32, got {maps.dtype}")
        arr = maps
    else:
        arr = np.asarray(maps)
        if arr.dtype.kind not in "fiub":
            raise CohortError(f"maps must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim != 2:
        raise CohortError(f"maps must be 2-D (n_scans, n_vertices), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise CohortError(f"maps are empty: shape {arr.shape}")
    return arr


def _check_finite_or_nan(maps: np.ndarray, chunk: int = 64) -> None:
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start:start + chunk])
        if np.isinf(block).any():
            rows, cols = np.nonzero(np.isinf(block))
            raise CohortError(f"maps hold inf at scan {start + rows[0]}, vertex {cols[0]} ({len(rows)} values in "
                              "this chunk); use NaN for missing values")


def _check_table(table, n_scans: int) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise CohortError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    source = table.attrs.get("source", "table")
    table = table.reset_index(drop=True).copy()
    if len(table) != n_scans:
        raise CohortError(f"{source} has {len(table)} rows but maps have {n_scans} scans; expected one row per scan")
    for col in ("subject", "site"):
        if col not in table.columns:
            raise CohortError(f"{source} has no {col!r} column (columns: {list(table.columns)[:12]})")
    for col in ("subject", "site"):
        missing = table.index[table[col].isna() | (table[col].astype(str).str.strip() == "")].tolist()
        if missing:
            raise CohortError(f"{source}: {col} is missing in row(s) {missing[:5]}; every scan needs a {col}")
    table["subject"] = table["subject"].astype(str)
    keys = ["subject"]
    if "session" in table.columns:
        table["session"] = table["session"].map(lambda s: "" if pd.isna(s) else str(s))
        keys.append("session")
    dup = table[table.duplicated(keys, keep=False)]
    if not dup.empty:
        ids = dup[keys].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
        raise CohortError(f"{source}: duplicate scan id(s) {ids[:5]} ({'+'.join(keys)} must be unique per scan)")
    for col in table.columns:
        if col in ID_COLUMNS or pd.api.types.is_numeric_dtype(table[col]) or pd.api.types.is_bool_dtype(table[col]):
            continue
        values = table[col].dropna()
        parsed = pd.to_numeric(values, errors="coerce")
        must_be_numeric = col.lower() in NUMERIC_COVARIATES
        if must_be_numeric or (len(values) and parsed.notna().mean() >= 0.5):
            bad = values[parsed.isna()]
            if len(bad) and (must_be_numeric or parsed.notna().any()):
                raise CohortError(f"{source}: covariate {col!r} is numeric but row(s) {bad.index.tolist()[:5]} hold "
                                  f"{bad.tolist()[:5]}; expected numbers (leave the cell empty for missing)")
            table[col] = pd.to_numeric(table[col])
    table.attrs["source"] = source
    return table


def _read_participants(participants) -> pd.DataFrame:
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


def _fill(n_scans: int, read_one, *, out=None, n_jobs: int = 1, progress: bool = False) -> np.ndarray:
    """Allocate the (n_scans, V) array once (V from the first scan) and fill it scan by scan.

    ``n_jobs`` > 1 reads/resamples scans in that many threads (numpy and scipy release the GIL in
    the heavy parts); rows are still written in order into the one array.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    first = read_one(0)
    maps = _allocate((n_scans, first.shape[0]), out)
    maps[0] = first
    bar = tqdm(total=n_scans, initial=1, unit="scan", disable=not progress)

    def store(i, row):
        if row.shape != first.shape:
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


def _cortex_mask(cortex, n_vert: int):
    if cortex is None:
        return None
    if isinstance(cortex, np.ndarray):
        if cortex.shape != (n_vert,) or cortex.dtype != bool:
            raise CohortError(f"cortex mask must be a ({n_vert},) bool array, got {cortex.shape} {cortex.dtype}")
        return cortex
    return sio.cortex_mask(cortex, n_vert)


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
        mask = _cortex_mask(cortex, values.shape[0])
        if mask is not None:
            values[~mask] = np.nan
        if sphere is not None:
            resampler = self._resampler(sphere)
            if resampler.n_source != values.shape[0]:
                raise InputFileError(f"{path} has {values.shape[0]} values but sphere {sphere} has "
                                     f"{resampler.n_source} vertices; expected the same subject and hemisphere")
            return resampler(values, name=str(path))
        if self.level is None:
            return values
        try:
            have = level_of(values.shape[0], what=str(path))
        except ValueError as exc:
            raise InputFileError(f"{exc}; pass spheres=... (the scan's sphere.reg) to resample a native map") from None
        if have < self.level:
            raise InputFileError(f"{path} is on level {have} ({values.shape[0]} vertices), below the requested level "
                                 f"{self.level}; resample explicitly with surfharm.resample.upsample_ico")
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


def _to_native(values: np.ndarray, sphere_path) -> np.ndarray:
    from surfharm.resample import ico_to_native

    return ico_to_native(values, sio.read_surface(sphere_path), source_name=str(sphere_path))
