"""The Cohort: every scan's map (one row each) with the table that says who, where and what.

A :class:`Cohort` holds

* ``maps``: (n_scans, n_features) float32, an in-memory array or a ``numpy.memmap`` (``.npy``) for
  cohorts larger than memory; features are icosahedral vertices (FreeSurfer fsaverageN order) or
  ROIs; NaN marks a vertex outside cortex or a missing value;
* ``table``: a pandas DataFrame, one row per scan, in the same order, with at least ``subject`` and
  ``site`` (``session``, ``age``, ``sex`` and any covariate are optional).

It is what harmonizers, metrics and renderings consume (``cohort.maps``, ``cohort.sites``,
``cohort.covariates([...])``) and what writers write back (:meth:`Cohort.write`).

This module holds the container and the checks of its table and maps (:func:`validate_table`,
:func:`check_covariates`, :meth:`Cohort.check_values`), which need no map and run before any is read.
Reading and writing live beside it: the constructors (a FreeSurfer ``SUBJECTS_DIR`` plus a
participants table, :meth:`Cohort.from_subjects_dir`; a stacked MGH plus an FSGD, :meth:`Cohort.from_stacked_mgh`;
per-scan GIfTI/MGH/curv files plus a table, :meth:`Cohort.from_files`; ROI tables, :meth:`Cohort.from_roi_table`)
call :mod:`surfharm.readers`, and :meth:`Cohort.write` calls :mod:`surfharm.writers`. Readers fill
one preallocated (n_scans, V) array, in memory or memory-mapped (``out=``), scan by scan: the data is
never held twice.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spherical_ops import VERTEX_COUNTS, n_vertices
from surfharm.errors import SurfharmError
from surfharm.io import plausibility
from surfharm.io.errors import InputValueError

#: Table columns that identify a scan or its site (never covariates).
ID_COLUMNS = ("subject", "session", "site")
#: Covariates that must be numeric when present.
NUMERIC_COVARIATES = ("age",)
_FSAVERAGE_NAMES = {7: "fsaverage", 6: "fsaverage6", 5: "fsaverage5", 4: "fsaverage4", 3: "fsaverage3"}


class CohortError(SurfharmError, ValueError):
    """Maps and table that do not form a valid cohort; the message names the value at fault."""


class Cohort:
    """Maps of many scans plus their participants table.

    Parameters
    ----------
    maps : ndarray or memmap
        (n_scans, n_features) float32 array or memmap; NaN outside cortex. Other float/int
        arrays are converted (a copy); a memmap must already be float32.
    table : DataFrame
        one row per scan, same order as ``maps``; columns ``subject`` and ``site`` required,
        ``session`` optional ((subject, session) must be unique), ``age`` numeric when present.
    hemi : str or None
        'lh' / 'rh' / None.
    measure : str or None
        what the maps hold ('thickness', ...), used to name output files.
    feature_names : Sequence[str] or None
        ROI names (one per column) for ROI data; None for vertex maps.
    sources : DataFrame or None
        optional DataFrame, one row per scan, of the files the maps came from (columns
        ``map``, and ``sphere`` for native-space inputs); used to write results back next to them.
    validate_values : bool
        scan the maps for inf (chunked; set False to skip the pass on huge memmaps).

    Attributes
    ----------
    maps : ndarray
        (n_scans, n_features) float32.
    table : DataFrame
        DataFrame, index 0..n_scans-1.
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
            _check_finite_or_nan(self.maps, self.scan_labels)

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

    def scan_labels(self, index=None) -> list[str] | str:
        """How errors name scans: ``subject[_session]`` and the file the map came from (the frame of a
        stacked file). ``index``: one scan (returns a str), else every scan (a list)."""
        if index is not None:
            return self._scan_label(int(index))
        return [self._scan_label(i) for i in range(self.n_scans)]

    def _scan_label(self, i: int) -> str:
        name = self.scan_ids[i] if "session" in self.table.columns else str(self.table["subject"].iloc[i])
        if self.sources is None or pd.isna(self.sources["map"].iloc[i]):
            return name
        path = str(self.sources["map"].iloc[i])
        stacked = (self.sources["map"] == path).sum() > 1
        return f"{name} ({'frame ' + str(i) + ' of ' if stacked else ''}{path})"

    def check_values(self, value_range=None, *, allow_implausible: bool = False):
        """Refuse maps whose values cannot be right; returns the plausible range used (or None).

        Every scan must hold at least one value (an all-NaN scan is an empty map: wrong file, wrong
        cortex label), and, for measures that cannot be negative (:mod:`surfharm.io.plausibility`:
        thickness in [0, 10] mm, area and volume >= 0), every value must lie in the measure's range.
        ``value_range``: ``(low, high)`` instead of the measure's default; ``allow_implausible``:
        skip the range check (measures that may be negative). Reads the maps in chunks of scans.

        Raises InputValueError naming the scans (subject and file) and how many values are out of range.
        """
        empty = plausibility.empty_rows(self.maps)
        if empty.size:
            names = [self.scan_labels(i) for i in empty[:5]]
            more = f" and {empty.size - 5} more" if empty.size > 5 else ""
            raise InputValueError(
                f"{empty.size} scan(s) hold no value at all (every vertex NaN): {', '.join(names)}{more}; "
                "expected a map with values on cortex (check the file, its cortex label and its subject "
                "folder), or leave the scan out of the table")
        checked = plausibility.resolve_range(self.measure, value_range, allow_implausible=allow_implausible)
        if checked is None:
            return None
        found = plausibility.count_outside(self.maps, checked)
        if found.total:
            raise InputValueError(
                plausibility.describe(self.measure, checked, found, self.scan_labels) + "\n"
                f"expected {self.measure or 'values'} in {checked}: a negative or sign-flipped map is a broken input "
                "and would move the results of every other scan; fix or leave out these scans, or, for a measure "
                "that may leave this range, pass --value-range LO HI (value_range=(lo, hi)) or --allow-implausible "
                "(allow_implausible=True)")
        return checked

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
            raise CohortError(f"cohort maps ({self.n_vertices} columns) are not icosahedral; "
                              f"cannot cut to level {level}")
        if level > self.level:
            raise CohortError(f"cohort is at level {self.level}; nesting only cuts down (asked for level {level}); "
                              "use surfharm.resample.upsample_ico to go up")
        return self._like(self.maps[:, :n_vertices(level)], self.table, self.sources)

    def _like(self, maps, table, sources) -> "Cohort":
        return Cohort(maps, table.reset_index(drop=True), hemi=self.hemi, measure=self.measure,
                      feature_names=self.feature_names, sources=sources, validate_values=False)

    # -- constructors (the readers are in surfharm.readers) ---------------------------------------------
    @classmethod
    def from_files(cls, paths, table, *, level: int | None = None, spheres=None, cortex=None,
                   hemi: str | None = None, measure: str | None = None, out=None,
                   path_column: str = "path", n_jobs: int = 1, progress: bool = False) -> "Cohort":
        """A cohort from one map file per scan (MGH/MGZ, GIfTI, curv) and a participants table
        (:func:`surfharm.readers.read_files`: arguments and errors)."""
        from surfharm.readers import read_files

        return read_files(paths, table, level=level, spheres=spheres, cortex=cortex, hemi=hemi, measure=measure,
                          out=out, path_column=path_column, n_jobs=n_jobs, progress=progress)

    @classmethod
    def from_subjects_dir(cls, subjects_dir, participants, hemi: str = "lh", measure: str = "thickness", *,
                          level: int = 7, fwhm: int | None = None, cortex: bool = True,
                          dir_pattern: str | None = None, out=None, n_jobs: int = 1,
                          progress: bool = False) -> "Cohort":
        """A cohort from a FreeSurfer ``SUBJECTS_DIR`` and a participants table: native maps resampled
        to ``level``, or the qcache maps of ``fwhm`` (:func:`surfharm.readers.read_subjects_dir`)."""
        from surfharm.readers import read_subjects_dir

        return read_subjects_dir(subjects_dir, participants, hemi, measure, level=level, fwhm=fwhm, cortex=cortex,
                                 dir_pattern=dir_pattern, out=out, n_jobs=n_jobs, progress=progress)

    @classmethod
    def from_stacked_mgh(cls, mgh, fsgd, *, site_column: str | None = None, participants=None, cortex=None,
                         hemi: str | None = None, measure: str | None = None, out=None,
                         chunk_frames: int = 64) -> "Cohort":
        """A cohort from a stacked MGH/MGZ (one frame per subject, ``mris_preproc``) and its FSGD,
        streamed ``chunk_frames`` frames at a time (:func:`surfharm.readers.read_stacked_mgh`)."""
        from surfharm.readers import read_stacked_mgh

        return read_stacked_mgh(mgh, fsgd, site_column=site_column, participants=participants, cortex=cortex,
                                hemi=hemi, measure=measure, out=out, chunk_frames=chunk_frames)

    @classmethod
    def from_roi_table(cls, table_path, covariates_path=None, *, id_column: str | None = None,
                       features=None, site_column: str = "site", measure: str | None = None) -> "Cohort":
        """An ROI cohort from an ``aparcstats2table``/``asegstats2table`` TSV or a CSV, with an optional
        covariate table joined by subject (:func:`surfharm.readers.read_roi_table`)."""
        from surfharm.readers import read_roi_table

        return read_roi_table(table_path, covariates_path, id_column=id_column, features=features,
                              site_column=site_column, measure=measure)

    # -- writing (surfharm.writers) ------------------------------------------------------------------
    def write(self, dest, *, format: str = "mgz", layout: str = "flat", suffix: str = "harmonized",
              space: str = "ico", fsgd=None, fill_value: float | None = None,
              overwrite: bool = False) -> list[Path]:
        """Write the maps next to the input conventions; never over an input, atomically: per-scan
        files in a folder, one stacked ``.mgh``/``.mgz`` (and ``fsgd``), or a ``.csv``/``.tsv`` for ROI
        cohorts (:func:`surfharm.writers.write_cohort`: arguments). Returns the paths written."""
        from surfharm.writers import write_cohort

        return write_cohort(self, dest, format=format, layout=layout, suffix=suffix, space=space, fsgd=fsgd,
                            fill_value=fill_value, overwrite=overwrite)


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


def _check_finite_or_nan(maps: np.ndarray, name_of=None, chunk: int = 64) -> None:
    """Refuse inf, and scans without any value (all NaN); ``name_of(i)`` names scan i (subject, file)."""
    empty = []
    for start in range(0, maps.shape[0], chunk):
        block = np.asarray(maps[start:start + chunk])
        if np.isinf(block).any():
            rows, cols = np.nonzero(np.isinf(block))
            first = rows == rows[0]
            where = f": {name_of(start + rows[0])}" if name_of is not None else ""
            raise CohortError(f"maps hold inf at scan {start + rows[0]}, vertex {cols[0]}{where} "
                              f"({int(first.sum())} inf value(s) in that scan); use NaN for missing values")
        empty += (start + np.flatnonzero(np.isnan(block).all(axis=1))).tolist()
    if empty:
        names = [name_of(i) if name_of is not None else f"scan {i}" for i in empty[:5]]
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise InputValueError(
            f"{len(empty)} scan(s) hold no value at all (every vertex NaN): {', '.join(names)}{more}; expected a "
            "map with values on cortex (check the file, its cortex label and its subject folder), or leave the "
            "scan out of the table")


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


def validate_table(table: pd.DataFrame) -> pd.DataFrame:
    """The checks every Cohort table passes, on a table alone (before any map is read).

    ``subject`` and ``site`` present in every row, (subject, session) unique, numeric-looking
    covariates numeric. Returns the table as a Cohort holds it; raises CohortError naming the file
    (``table.attrs["source"]``), the rows and the values at fault.
    """
    return _check_table(table, len(table))


def check_covariates(table: pd.DataFrame, columns, *, numeric=(), what: str = "covariate") -> None:
    """Refuse covariate ``columns`` that the table lacks or leaves empty in some rows, and ``numeric``
    columns (smooth terms, time for random slopes) that do not hold numbers; before any map is read.
    """
    source = table.attrs.get("source", "table")
    columns = list(dict.fromkeys([*columns, *numeric]))
    missing = [c for c in columns if c not in table.columns]
    if missing:
        others = [c for c in table.columns if c not in ID_COLUMNS]
        raise CohortError(f"{source}: {what}(s) {missing} not found; its columns are {list(table.columns)} "
                          f"(covariates available: {others})")
    for col in columns:
        if col in ("subject", "session"):
            raise CohortError(f"{source}: {col!r} identifies scans; it cannot be a {what}")
        empty = table.index[table[col].isna()].tolist()
        if empty:
            raise CohortError(f"{source}: {what} {col!r} is empty in row(s) {empty[:5]} ({len(empty)} in all); "
                              "every scan needs a value (fill it in, or leave those scans out)")
    for col in numeric:
        values = table[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            continue
        parsed = pd.to_numeric(values, errors="coerce")
        bad = values[parsed.isna()]
        raise CohortError(f"{source}: {what} {col!r} must be numeric (a smooth term or a time column), but "
                          f"row(s) {bad.index.tolist()[:5]} hold {bad.astype(str).tolist()[:5]}")


def single_scan_sites(table: pd.DataFrame) -> list[str]:
    """Sites (as str) with only one scan in ``table``."""
    counts = table["site"].astype(str).value_counts()
    return sorted(counts.index[counts < 2].tolist())


def space_name(level: int | None) -> str | None:
    """``fsaverage``, ``fsaverage5``, ... for an icosahedral level (``icN`` beyond them); None for None."""
    return None if level is None else _FSAVERAGE_NAMES.get(level, f"ic{level}")


def __getattr__(name):
    # Readers that lived here: ``from surfharm.cohort import stacked_mgh_table`` keeps working.
    if name in ("stacked_mgh_table", "read_participants"):
        from surfharm import readers

        return getattr(readers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
