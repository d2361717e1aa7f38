"""Where a run's data come from: one class per input kind, and the list of files a run would read.

Every input is an :class:`InputSource`; each kind is one subclass that knows its arguments (checked
when it is made, errors naming the option), the files it reads (``--dry-run``, and the check that no
output lies over an input), how to check its tables before any map is read, how to read its data,
which output spaces it offers, how harmonized data are written back in its own format and
conventions, and its name in config.json (``"input"``):

* :class:`SubjectsDirInput` (``subjects_dir``): a ``SUBJECTS_DIR`` and a participants table (one row
  per scan: subject, site, optional session and covariates); per scan ``surf/<hemi>.<measure>`` with
  ``surf/<hemi>.sphere.reg`` (resampled to the icosahedron), or the qcache output
  ``surf/<hemi>.<measure>.fwhm<N>.fsaverage.mgh`` when ``fwhm`` is given or when every scan has it;
* :class:`StackedMghInput` (``stacked_mgh``): one stacked MGH/MGZ per hemisphere (``mris_preproc``)
  and its FSGD, streamed frame block by frame block (into a memory map when asked);
* :class:`RoiTableInput` (``roi_table``): an ``aparcstats2table`` TSV or a CSV, with an optional
  covariate table;
* :class:`NiftiInput` (``nifti``): NIfTI volumes (files or a folder) with brain masks, for the
  volumetric methods (:mod:`surfharm.harmonize.volumetric`).

``source.check_tables()`` reads and checks every table (ids, sites, covariates) before any map is read;
``source.read()`` gives one :class:`surfharm.Cohort` per hemisphere (key ``lh``, ``rh``, ``maps`` for
a stacked file named without a hemisphere, ``roi`` for ROI tables; a :class:`VolumeSet` under
``volumes`` for NIfTI input) and refuses empty scans and implausible values
(:mod:`surfharm.io.plausibility`); ``source.files()`` lists the files without reading them.
The module functions :func:`check_tables`, :func:`read_cohorts` and :func:`planned_reads` call them.
"""
from __future__ import annotations

import abc
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import pandas as pd

from surfharm import io as sio
from surfharm.cohort import Cohort, check_covariates, single_scan_sites, validate_table
from surfharm.errors import SurfharmError
from surfharm.io import plausibility
from surfharm.readers import stacked_mgh_table


class SourceError(SurfharmError, ValueError):
    """An input description that cannot be read; the message says what is missing or wrong."""


#: Harmonizers that estimate a scale (variance) effect per site: a one-scan site needs ``mean_only``.
_SCALE_METHODS = ("combat", "combat-long")


def _paths(value) -> tuple[Path, ...]:
    """One path or several as a tuple of Paths (None -> ())."""
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        return (Path(value),)
    return tuple(Path(v) for v in value)


@dataclass(kw_only=True)
class InputSource(abc.ABC):
    """What a run reads: the options every input kind shares; each kind is a subclass.

    Attributes
    ----------
    participants : Path or None
        a table (CSV/TSV) of the scans: for ``SUBJECTS_DIR`` input the participants table
        (one row per scan); for the others an optional covariate table joined by subject (for NIfTI
        input, the table with an ``image`` column).
    measure : str or None
        map name, e.g. ``thickness`` (file ``surf/lh.thickness``); None: read from the file
        names (``lh.thickness.fsaverage.mgh``) or the ROI columns (``..._thickness``).
    site_column : str or None
        the table column naming each scan's site (scanner); None or ``site``: the ``site``
        column (for a stacked MGH without one, its FSGD class).
    value_range : tuple or None
        ``(low, high)`` plausible values of the maps, instead of the measure's default
        (:mod:`surfharm.io.plausibility`: thickness [0, 10] mm, area and volume >= 0).
    allow_implausible : bool
        skip the range check (measures that may be negative or leave the range).
    """

    #: The input's name in config.json (``"input"``) and in :data:`INPUTS`.
    name: ClassVar[str] = ""
    #: The command-line option that selects it.
    option: ClassVar[str] = ""
    #: True when the input holds volumes (:class:`VolumeSet`) rather than maps (:class:`surfharm.Cohort`).
    holds_volumes: ClassVar[bool] = False

    participants: Path | None = None
    measure: str | None = "thickness"
    site_column: str | None = "site"
    value_range: tuple | None = None
    allow_implausible: bool = False

    def __post_init__(self):
        if self.participants is not None:
            self.participants = Path(self.participants)
        if self.value_range is not None:
            self.value_range = tuple(self.value_range)
            plausibility.resolve_range(self.measure, self.value_range)  # refuses a malformed range early
        self.check()

    # -- what a subclass says ------------------------------------------------------------------------------
    def check(self) -> None:  # noqa: B027  (optional hook: a source with nothing to refuse keeps this no-op)
        """Refuse missing or contradictory arguments (SourceError naming the option)."""

    @abc.abstractmethod
    def files(self) -> list[tuple[str, Path]]:
        """``(what, path)`` for every file a run would read, without reading any map."""
        raise NotImplementedError

    def guarded(self) -> list[tuple[str, Path]]:
        """Every file and folder no output may lie over or inside (the files read, and their folders)."""
        return self.files()

    @abc.abstractmethod
    def keys(self) -> list[str]:
        """The keys of the data :meth:`read` returns (run folders), without reading any map."""
        raise NotImplementedError

    @abc.abstractmethod
    def tables(self) -> dict[str, pd.DataFrame]:
        """``{key: table}``: every table of the input, read and checked (ids, sites), no map read."""
        raise NotImplementedError

    @abc.abstractmethod
    def read(self, *, progress: bool = True, workdir=None) -> dict[str, Cohort]:
        """``{key: Cohort}``, each checked for empty scans and implausible values. ``workdir``: a folder for
        maps memory-mapped instead of held in memory (inputs that stream)."""
        raise NotImplementedError

    def spaces(self, space: str) -> tuple[str, ...]:
        """The per-scan output spaces of ``space`` (``ico``, ``native``, ``both``) this input offers."""
        if space == "native":
            raise SourceError(f"--space native needs native inputs (SUBJECTS_DIR without --fwhm): only they have a "
                              f"sphere.reg to resample back through; {self.describe()} has none")
        return ("ico", "native") if space == "both" else (space,)

    @abc.abstractmethod
    def write(self, data, harmonized, folder, *, spaces=("ico",), method: str | None = None) -> list[Path]:
        """Write harmonized data into ``folder`` in the input's own format and conventions; the paths written."""
        raise NotImplementedError

    @abc.abstractmethod
    def output_lines(self, out: Path, key: str, spaces) -> list[str]:
        """What :meth:`write` would write for ``key`` under ``out`` (``--dry-run``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short name of the input for messages."""
        return self.name

    # -- shared behaviour --------------------------------------------------------------------------------
    def check_tables(self, *, keep=None, smooth=(), method: str | None = None) -> dict[str, pd.DataFrame]:
        """Read and check the tables without reading any map; ``{key: table}``.

        Refuses, naming the file, rows and values: missing subject or site, duplicate scan ids
        (subject, or subject + session), covariates that look numeric but hold text, a stacked MGH whose
        frame count differs from its FSGD; the covariates to keep (``keep``; None = age and sex when
        present) that the table lacks or leaves empty, ``smooth`` terms that are not numeric; and, for
        ComBat-family ``method``s without ``mean_only``, sites with a single scan. Costs seconds where
        reading the maps may take an hour, so runs (and ``--dry-run``) call it first.
        """
        tables = self.tables()
        spec = None
        if method is not None:
            from surfharm.evaluate.methods import MethodSpec

            spec = MethodSpec.parse(method)
            self.check_method(spec.name)
        for table in tables.values():
            columns = list(keep) if keep is not None else [c for c in ("age", "sex") if c in table.columns]
            check_covariates(table, columns, numeric=list(smooth or ()), what="covariate")
            if spec is not None and spec.name in _SCALE_METHODS and not spec.options.get("mean_only"):
                single = single_scan_sites(table)
                if single:
                    raise SourceError(
                        f"{table.attrs.get('source', 'table')}: site(s) {single} have a single scan: {spec.name} "
                        "cannot estimate a site's scale (variance) effect from one scan; correct only the location "
                        f"with --method {spec.name}:mean_only=true, merge the site with another site of the same "
                        "scanner, or leave its scans out")
        return tables

    def check_method(self, name: str | None) -> None:
        """Refuse a method that harmonizes another kind of data (a volumetric method on maps, or the reverse)."""
        from surfharm import harmonize

        if not name:
            return
        cls = harmonize.get(name)
        base = sys.modules.get("surfharm.harmonize.volumetric.base")  # loaded by get() for volumetric names
        volumetric = base is not None and issubclass(cls, base.VolumeHarmonizer)
        if volumetric and not self.holds_volumes:
            raise SourceError(f"method {name!r} harmonizes NIfTI volumes; give the scans with --images "
                              f"(this input is the {self.describe()})")
        if self.holds_volumes and not volumetric:
            from surfharm.harmonize.volumetric import VOLUMETRIC_METHODS

            raise SourceError(f"method {name!r} harmonizes surface maps and ROI tables; NIfTI scans take a "
                              f"volumetric method: {', '.join(VOLUMETRIC_METHODS)}")

    def check_values(self, cohort: Cohort):
        """Refuse empty scans and values outside the plausible range (:meth:`surfharm.Cohort.check_values`)
        with the input's range options; returns the range checked (None when unchecked)."""
        return cohort.check_values(self.value_range, allow_implausible=self.allow_implausible)

    def output_range(self, cohort: Cohort | None = None):
        """The plausible range harmonized maps are counted (and clipped) against, or None."""
        measure = self.measure if cohort is None or self.measure is not None else cohort.measure
        return plausibility.resolve_range(measure, self.value_range, allow_implausible=self.allow_implausible)

    def _site_column(self) -> str | None:
        return None if self.site_column in (None, "site") else self.site_column


# -- FreeSurfer SUBJECTS_DIR ----------------------------------------------------------------------------------

@dataclass(kw_only=True)
class SubjectsDirInput(InputSource):
    """A FreeSurfer ``SUBJECTS_DIR`` and its participants table (required).

    Attributes
    ----------
    subjects_dir : Path or None
        the FreeSurfer tree.
    hemis : tuple[str, ...]
        hemispheres to read.
    level : int
        icosahedral level the maps are brought to (7 = fsaverage, 5 = fsaverage5).
    fwhm : int or None
        read ``<hemi>.<measure>.fwhm<fwhm>.fsaverage.mgh``; None = the native map, unless every
        scan has exactly one such qcache file (then that one).
    dir_pattern : str or None
        subject folder name (default ``{subject}`` or ``{subject}_{session}``).
    n_jobs : int
        scans read and resampled in parallel threads.
    """

    name: ClassVar[str] = "subjects_dir"
    option: ClassVar[str] = "--subjects-dir"

    subjects_dir: Path | None = None
    hemis: tuple[str, ...] = ("lh",)
    level: int = 7
    fwhm: int | None = None
    dir_pattern: str | None = None
    n_jobs: int = 1

    def check(self) -> None:
        self.hemis = (self.hemis,) if isinstance(self.hemis, str) else tuple(self.hemis)
        for hemi in self.hemis:
            if hemi not in ("lh", "rh"):
                raise SourceError(f"hemisphere must be 'lh' or 'rh', got {hemi!r}")
        if self.subjects_dir is None or self.participants is None:
            raise SourceError("a SUBJECTS_DIR input needs both the folder (--subjects-dir) and a participants "
                              "table (--participants: one row per scan with subject and site)")
        self.subjects_dir = Path(self.subjects_dir)

    def describe(self) -> str:
        return f"SUBJECTS_DIR {self.subjects_dir}"

    def participants_table(self) -> pd.DataFrame:
        """The participants table with the site column named ``site``."""
        table = sio.read_table(self.participants)
        column = self.site_column or "site"
        if column != "site":
            if column not in table.columns:
                raise SourceError(f"{self.participants}: no site column {column!r}; columns are "
                                  f"{list(table.columns)}")
            table = table.drop(columns=["site"], errors="ignore").rename(columns={column: "site"})
        elif "site" not in table.columns:
            raise SourceError(f"{self.participants}: no 'site' column (columns: {list(table.columns)}); name the "
                              "scanner/site column with --site-column")
        return table

    def subject_folders(self, table: pd.DataFrame) -> list[Path]:
        """One folder per table row: ``subjects_dir / dir_pattern.format(**row)``."""
        pattern = self.dir_pattern or ("{subject}_{session}" if "session" in table.columns else "{subject}")
        folders = []
        for i, row in enumerate(table.to_dict("records")):
            try:
                name = pattern.format(**{k: v for k, v in row.items() if isinstance(k, str)})
            except KeyError as exc:
                raise SourceError(f"folder pattern {pattern!r} names column {exc.args[0]!r}, which "
                                  f"{self.participants} lacks (row {i})") from None
            folders.append(self.subjects_dir / name)
        return folders

    def qcache_fwhm(self, folders: list[Path], hemi: str) -> int | None:
        """The qcache smoothing to read: ``fwhm``, else the one FWHM every folder has, else None."""
        if self.fwhm is not None:
            return self.fwhm
        common = None
        for folder in folders:
            found = {p.name.split(".fwhm")[1].split(".")[0]
                     for p in (folder / "surf").glob(f"{hemi}.{self.measure}.fwhm*.fsaverage.mg[hz]")}
            if len(found) != 1:
                return None
            common = found if common is None else common & found
            if not common:
                return None
        if not common:
            return None
        value = common.pop()
        return int(value) if value.isdigit() else None

    def files(self) -> list[tuple[str, Path]]:
        table = self.participants_table()
        folders = self.subject_folders(table)
        files = [("participants", self.participants)]
        for hemi in self.hemis:
            fwhm = self.qcache_fwhm(folders, hemi)
            for folder in folders:
                surf = folder / "surf"
                if fwhm is not None:
                    mgh = surf / f"{hemi}.{self.measure}.fwhm{fwhm}.fsaverage.mgh"
                    files.append(("map (fsaverage)", mgh if mgh.exists() or not mgh.with_suffix(".mgz").exists()
                                  else mgh.with_suffix(".mgz")))
                else:
                    files.append(("map", surf / f"{hemi}.{self.measure}"))
                    files.append(("sphere", surf / f"{hemi}.sphere.reg"))
                    label = folder / "label" / f"{hemi}.cortex.label"
                    if label.exists():
                        files.append(("cortex", label))
        return files

    def guarded(self) -> list[tuple[str, Path]]:
        return self.files() + [("SUBJECTS_DIR", self.subjects_dir)]

    def keys(self) -> list[str]:
        return list(self.hemis)

    def tables(self) -> dict[str, pd.DataFrame]:
        table = validate_table(self.participants_table())
        return {hemi: table for hemi in self.hemis}

    def read(self, *, progress: bool = True, workdir=None) -> dict[str, Cohort]:
        table = self.participants_table()
        folders = self.subject_folders(table)
        cohorts = {}
        for hemi in self.hemis:
            fwhm = self.qcache_fwhm(folders, hemi)
            if progress and fwhm is None:
                found = sorted({p.name for p in
                                (folders[0] / "surf").glob(f"{hemi}.{self.measure}.fwhm*.fsaverage.mg[hz]")})
                if found:
                    print(f"note: {folders[0] / 'surf'} has several qcache maps ({', '.join(found)}); reading the "
                          f"native map instead (pass --fwhm N to read {hemi}.{self.measure}.fwhmN.fsaverage.mgh)",
                          flush=True)
            if progress:
                what = (f"{hemi}.{self.measure}.fwhm{fwhm}.fsaverage.mgh" if fwhm is not None
                        else f"{hemi}.{self.measure} on {hemi}.sphere.reg, resampled to level {self.level}")
                print(f"reading {len(table)} scans: {what}", flush=True)
            out = None if workdir is None else Path(workdir) / f"{hemi}.npy"
            cohorts[hemi] = Cohort.from_subjects_dir(self.subjects_dir, table, hemi=hemi, measure=self.measure,
                                                     level=self.level, fwhm=fwhm, dir_pattern=self.dir_pattern,
                                                     out=out, n_jobs=self.n_jobs, progress=progress)
            self.check_values(cohorts[hemi])
        return cohorts

    def spaces(self, space: str) -> tuple[str, ...]:
        if space == "native" and self.fwhm is not None:
            return super().spaces(space)
        return ("ico", "native") if space == "both" else (space,)

    def write(self, data, harmonized, folder, *, spaces=("ico",), method: str | None = None) -> list[Path]:
        """Per-scan maps in FreeSurfer's layout (``fsaverage[N]/`` and, from native maps, ``native/``)."""
        from surfharm.pipeline.outputs import write_subject_maps

        native = "native" in spaces and data.sources is not None and data.sources["sphere"].notna().all()
        chosen = tuple(s for s in spaces if s != "native" or native)
        return write_subject_maps(data, harmonized, folder, spaces=chosen)

    def output_lines(self, out: Path, key: str, spaces) -> list[str]:
        lines = []
        for s in spaces:
            tree = "native" if s == "native" else ("fsaverage" if self.level == 7 else f"fsaverage{self.level}")
            lines.append(f"  {out / key / tree}/<scan>/surf/{key}.{self.measure}.harmonized"
                         f"{'' if s == 'native' else '.' + tree + '.mgz'}  (one per scan) + cohort.tsv")
        return lines


# -- stacked MGH + FSGD -----------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class StackedMghInput(InputSource):
    """Stacked MGH/MGZ files (one frame per scan, one file per hemisphere) and the FSGD listing their frames.

    Attributes
    ----------
    mgh : tuple[Path, ...]
        the stacked files (``lh.``/``rh.`` in their names name the hemisphere).
    fsgd : Path or None
        the FSGD file (frame i = i-th ``Input`` line).
    cortex : Path or None
        label/annotation of the stacked MGH's mesh (vertices outside become NaN).
    chunk_frames : int
        frames read at a time (the stack is streamed).
    """

    name: ClassVar[str] = "stacked_mgh"
    option: ClassVar[str] = "--mgh"

    mgh: tuple[Path, ...] = ()
    fsgd: Path | None = None
    cortex: Path | None = None
    chunk_frames: int = 64

    def check(self) -> None:
        self.mgh = _paths(self.mgh)
        if not self.mgh or self.fsgd is None:
            raise SourceError("a stacked MGH input needs the MGH file(s) (--mgh, one per hemisphere) and the FSGD "
                              "file listing their frames (--fsgd)")
        self.fsgd = Path(self.fsgd)
        self.cortex = None if self.cortex is None else Path(self.cortex)

    def describe(self) -> str:
        return f"stacked MGH {', '.join(str(p) for p in self.mgh)}"

    def measure_of(self, mgh: Path) -> str | None:
        if self.measure is not None:
            return self.measure
        from surfharm.pipeline.outputs import measure_of

        return measure_of(mgh)

    def files(self) -> list[tuple[str, Path]]:
        files = [("FSGD", self.fsgd)] + [("stacked maps", p) for p in self.mgh]
        files += [("covariates", self.participants)] if self.participants else []
        return files + ([("cortex", self.cortex)] if self.cortex else [])

    def keyed(self) -> dict[str, Path]:
        """``{key: stacked file}``: the hemisphere of each file (``maps`` when its name has none)."""
        keyed = {}
        for mgh in self.mgh:
            key = sio.hemi_of(mgh) or "maps"
            if key in keyed:
                raise SourceError(f"two stacked MGH files of the same hemisphere ({key}): "
                                  f"{[str(p) for p in self.mgh]}; "
                                  "give one file per hemisphere with lh./rh. in their names")
            keyed[key] = mgh
        return keyed

    def keys(self) -> list[str]:
        return list(self.keyed())

    def tables(self) -> dict[str, pd.DataFrame]:
        return {key: validate_table(stacked_mgh_table(mgh, self.fsgd, participants=self.participants,
                                                      site_column=self._site_column()))
                for key, mgh in self.keyed().items()}

    def read(self, *, progress: bool = True, workdir=None) -> dict[str, Cohort]:
        cohorts = {}
        for key, mgh in self.keyed().items():
            out = None if workdir is None else Path(workdir) / f"{key}.npy"
            cohorts[key] = Cohort.from_stacked_mgh(mgh, self.fsgd, participants=self.participants,
                                                   site_column=self._site_column(), cortex=self.cortex,
                                                   hemi=sio.hemi_of(mgh), measure=self.measure_of(mgh), out=out,
                                                   chunk_frames=self.chunk_frames)
            self.check_values(cohorts[key])
        return cohorts

    def write(self, data, harmonized, folder, *, spaces=("ico",), method: str | None = None) -> list[Path]:
        """One stacked MGH (frame i = scan i, as ``mris_preproc`` writes) and its FSGD, for ``mri_glmfit``."""
        stem = ".".join(p for p in (data.hemi, data.measure, "harmonized") if p)
        return data.with_maps(harmonized).write(Path(folder) / f"{stem}.mgh", fsgd=Path(folder) / "harmonized.fsgd",
                                                overwrite=True)

    def output_lines(self, out: Path, key: str, spaces) -> list[str]:
        stem = ".".join(p for p in ((key if key != "maps" else None), self.measure_of(self.keyed()[key]),
                                    "harmonized") if p)
        return [f"  {out / key}/{stem}.mgh + harmonized.fsgd"]


# -- ROI tables -----------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class RoiTableInput(InputSource):
    """An ROI table (``aparcstats2table`` TSV or CSV, one row per scan), with an optional covariate table
    (``participants``) joined by subject.

    Attributes
    ----------
    roi_table : Path or None
        the table.
    """

    name: ClassVar[str] = "roi_table"
    option: ClassVar[str] = "--roi-table"

    roi_table: Path | None = None

    def check(self) -> None:
        if self.roi_table is None:
            raise SourceError("an ROI input needs the table (--roi-table)")
        self.roi_table = Path(self.roi_table)

    def describe(self) -> str:
        return f"ROI table {self.roi_table}"

    def roi_features(self) -> list[str] | None:
        """The ROI columns: those ending in ``_<measure>`` (``lh_bankssts_thickness``) when there are any,
        so that covariates kept in the same table (age, ...) are never harmonized as ROIs; else None
        (every numeric column that is not an id or a covariate)."""
        if self.measure is None:
            return None
        columns = sio.read_table(self.roi_table).columns
        named = [c for c in columns if str(c).endswith(f"_{self.measure}")]
        return named or None

    def files(self) -> list[tuple[str, Path]]:
        return [("ROI table", self.roi_table)] + ([("covariates", self.participants)] if self.participants else [])

    def keys(self) -> list[str]:
        return ["roi"]

    def _cohort(self) -> Cohort:
        cohort = Cohort.from_roi_table(self.roi_table, self.participants, site_column=self.site_column or "site",
                                       measure=self.measure, features=self.roi_features())
        if self.measure is None:
            from surfharm.pipeline.outputs import measure_of

            cohort.measure = measure_of(self.roi_table, cohort.feature_names)
        return cohort

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"roi": self._cohort().table}

    def _ranged(self, cohort: Cohort) -> bool:
        # ROI columns that do not name the measure (an aseg volume table, say) are checked only
        # against a range the user gives.
        named = self.roi_features() is not None if self.measure is not None else cohort.measure is not None
        return named or self.value_range is not None

    def read(self, *, progress: bool = True, workdir=None) -> dict[str, Cohort]:
        cohort = self._cohort()
        if self._ranged(cohort):
            self.check_values(cohort)
        return {"roi": cohort}

    def output_range(self, cohort: Cohort | None = None):
        if cohort is None:
            cohort = self._cohort()
        if not self._ranged(cohort):
            return None
        return super().output_range(cohort)

    def write(self, data, harmonized, folder, *, spaces=("ico",), method: str | None = None) -> list[Path]:
        """The table with harmonized ROI columns: ``<table name>.harmonized.csv``."""
        return data.with_maps(harmonized).write(Path(folder) / f"{self.roi_table.name.split('.')[0]}.harmonized.csv",
                                                overwrite=True)

    def output_lines(self, out: Path, key: str, spaces) -> list[str]:
        return [f"  {out / key}/{self.roi_table.name.split('.')[0]}.harmonized.csv"]


# -- NIfTI volumes ------------------------------------------------------------------------------------------------

@dataclass
class VolumeSet:
    """The scans of a NIfTI input: image paths, masks as the volumetric methods take them (None, one
    path for all, or one per scan), the site of each scan (or None) and a table (one row per scan:
    ``image``, ``subject``, ``site`` when known, covariates).

    With several contrasts per session (``contrasts`` not empty) each scan is one session: ``images[i]``
    is ``{contrast: path}``, ``sessions[i]`` its key (the ``<session>`` of ``<session>_<contrast>.nii.gz``)
    and ``ignored`` the files of the folder that match no contrast (left out).
    """

    images: list
    masks: object
    sites: list | None
    table: pd.DataFrame
    contrasts: tuple[str, ...] = ()
    sessions: list[str] | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def n_scans(self) -> int:
        return len(self.images)

    def covariates(self, columns) -> pd.DataFrame | None:
        """The covariate columns (None when none are asked for)."""
        return self.table[list(columns)].reset_index(drop=True) if columns else None

    def __repr__(self) -> str:
        sites = "unknown" if self.sites is None else len(set(map(str, self.sites)))
        if self.contrasts:
            return f"VolumeSet(n_sessions={self.n_scans}, contrasts={list(self.contrasts)}, n_sites={sites})"
        return f"VolumeSet(n_scans={self.n_scans}, n_sites={sites})"


#: A contrast name: the BIDS suffix of its files (``T1w``, ``FLAIR``); ``_`` separates it from the session.
_CONTRAST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def contrast_names(value) -> tuple[str, ...]:
    """``--contrasts`` as a tuple of names: a comma-separated string or a sequence; each name letters,
    digits and ``-`` (the suffix of ``<session>_<contrast>.nii.gz``), distinct."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = tuple(item.strip() for item in items)
    if not names or names == ("",):
        return ()
    bad = [n for n in names if not _CONTRAST_NAME.match(n)]
    if bad:
        raise SourceError(f"--contrasts {','.join(names)}: {bad[0]!r} is not a contrast name; expected names of "
                          "letters, digits and '-', the suffix of the files <session>_<contrast>.nii.gz, e.g. "
                          "--contrasts T1w,T2w,FLAIR")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"--contrasts {','.join(names)}: {repeated} given more than once")
    return names


def group_sessions(paths, contrasts, *, sort: bool) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group NIfTI files into sessions by their suffix: ``<session>_<contrast>.nii[.gz]``.

    Parameters
    ----------
    paths : list of str
        the NIfTI files.
    contrasts : tuple of str
        the contrast names (the longest matching suffix wins: ``ce-T1w`` before ``T1w``).
    sort : bool
        sessions sorted by key (a folder); else in the order of their first file (a list of files).

    Returns
    -------
    sessions : dict
        ``{session: {contrast: path}}`` with every contrast, in ``contrasts`` order.
    unmatched : list of str
        the files whose name ends in none of the contrasts.

    Raises SourceError naming the session for two files of one contrast, and every incomplete
    session with the contrast(s) it lacks.
    """
    from surfharm.io.nifti import nifti_stem

    by_length = sorted(contrasts, key=len, reverse=True)
    found: dict[str, dict[str, str]] = {}
    unmatched = []
    for path in paths:
        stem = nifti_stem(path)
        contrast = next((c for c in by_length if stem.endswith(f"_{c}") and len(stem) > len(c) + 1), None)
        if contrast is None:
            unmatched.append(str(path))
            continue
        files = found.setdefault(stem[: -len(contrast) - 1], {})
        if contrast in files:
            raise SourceError(f"session {stem[: -len(contrast) - 1]!r} has two {contrast} files: {files[contrast]} "
                              f"and {path}; keep one")
        files[contrast] = str(path)
    incomplete = {key: [c for c in contrasts if c not in files] for key, files in found.items()}
    incomplete = {key: lacks for key, lacks in incomplete.items() if lacks}
    if incomplete:
        shown = "; ".join(f"session {key!r} lacks {', '.join(lacks)} (has {', '.join(found[key])})"
                          for key, lacks in list(incomplete.items())[:5])
        more = f"; and {len(incomplete) - 5} more session(s)" if len(incomplete) > 5 else ""
        raise SourceError(f"{len(incomplete)} incomplete session(s): {shown}{more}. Every session needs one file "
                          f"<session>_<contrast>.nii[.gz] for each of --contrasts {','.join(contrasts)}; add the "
                          "missing files or leave the session's files out")
    keys = sorted(found) if sort else list(found)
    return {key: {c: found[key][c] for c in contrasts} for key in keys}, unmatched


def _subject_of_session(key: str) -> str:
    """The subject of a session key without a table: its BIDS ``sub-<label>`` entity, else the whole key."""
    first = key.split("_", 1)[0]
    return first if first.startswith("sub-") and len(first) > 4 else key


@dataclass(kw_only=True)
class NiftiInput(InputSource):
    """NIfTI volumes (``.nii``/``.nii.gz``) for the volumetric methods.

    One contrast (``contrasts`` empty, the default): every NIfTI file is one scan, written back as
    ``<scan name>_<method>.nii.gz``.

    Several contrasts per session (``contrasts``, e.g. ``("T1w", "T2w", "FLAIR")``; the deep image methods,
    whose class declares ``min_contrasts``): the files are grouped into sessions by their BIDS-style
    suffix, ``<session>_<contrast>.nii[.gz]`` (``sub-01_ses-1_T1w.nii.gz`` is contrast ``T1w`` of session
    ``sub-01_ses-1``; the longest matching contrast name wins). One session is one scan
    ``{contrast: path}``, given to the method with ``contrasts=`` these names, and each harmonized contrast
    is written as ``<session>_<contrast>.nii.gz``. A session lacking a contrast is refused, naming the
    session and the contrast(s); of a folder, files whose name ends in no contrast (a mask, another
    contrast) are left out with a note; listed one by one, they are refused. Sessions come in the order
    of their key (a folder) or of their first file (a list of files).

    Attributes
    ----------
    images : tuple[Path, ...]
        NIfTI files, or one folder (every NIfTI in it, sorted by name).
    masks : tuple[Path, ...]
        brain masks (> 0.5 = brain): one per scan (session), one for every scan, or a folder holding a
        mask named like each scan (one contrast: the scan's file name; several contrasts:
        ``<session>_mask.nii.gz`` or ``<session>_mask.nii``); none: derived from each skull-stripped scan
        (voxels > 0; of a session, from its first contrast).
    sites : tuple
        the site of each scan (session), in the order of ``images`` (or a ``site`` column in
        ``participants``).
    participants : Path or None
        a table with a column ``image`` and ``site``, plus ``subject`` and covariates. ``image`` names
        each scan by its file name (one contrast) or each session by its ``<session>`` key (several
        contrasts, e.g. ``sub-01_ses-1``). Without a ``subject`` column the subject is the file name
        without extension (one contrast), or the session key's ``sub-<label>`` entity, else the whole key.
    control_mask : Path or None
        RAVEL's control (CSF) region mask, read at fit time.
    contrasts : tuple[str, ...]
        the contrast names of every session (``--contrasts T1w,T2w``; a comma-separated string is split);
        empty: one contrast, one file per scan.
    """

    name: ClassVar[str] = "nifti"
    option: ClassVar[str] = "--images"
    holds_volumes: ClassVar[bool] = True

    measure: str | None = None
    images: tuple[Path, ...] = ()
    masks: tuple[Path, ...] = ()
    sites: tuple = ()
    control_mask: Path | None = None
    contrasts: tuple[str, ...] = ()

    def check(self) -> None:
        self.images, self.masks = _paths(self.images), _paths(self.masks)
        self.sites = tuple(self.sites or ())
        if not self.images:
            raise SourceError("a NIfTI input needs the scans (--images: NIfTI files, or one folder of them)")
        if self.sites and self.participants is not None:
            raise SourceError("give the sites either with --sites or in the table, not both")
        self.control_mask = None if self.control_mask is None else Path(self.control_mask)
        self.contrasts = contrast_names(self.contrasts)

    def describe(self) -> str:
        return f"NIfTI scans {', '.join(str(p) for p in self.images[:3])}{' ...' if len(self.images) > 3 else ''}"

    # -- the scans --------------------------------------------------------------------------------------------
    def image_paths(self) -> list[str]:
        """The scans: the NIfTI files of the one folder given, or the files given (each checked)."""
        from surfharm.io.nifti import VolumeInputError, is_nifti_path, list_niftis

        if len(self.images) == 1 and self.images[0].is_dir():
            try:
                return [str(p) for p in list_niftis(self.images[0])]
            except VolumeInputError as exc:
                raise SourceError(f"--images {exc}") from None
        for p in self.images:
            if p.is_dir():
                raise SourceError(f"--images {p} is a folder; give one folder, or a list of files")
            if not p.is_file():
                raise SourceError(f"--images {p}: file does not exist")
            if not is_nifti_path(p):
                raise SourceError(f"--images {p}: expected a .nii or .nii.gz file")
        return [str(p) for p in self.images]

    def mask_paths(self, images: list[str]):
        """``None``, one path for every scan, or one path per scan (from a folder: same file name)."""
        if not self.masks:
            return None
        if len(self.masks) == 1 and self.masks[0].is_dir():
            folder = self.masks[0]
            paired = [folder / Path(img).name for img in images]
            missing = [str(p) for p in paired if not p.is_file()]
            if missing:
                raise SourceError(f"mask folder {folder} has no mask named like scan(s) {missing[:3]}"
                                  f"{' ...' if len(missing) > 3 else ''}; expected one mask per scan with the scan's "
                                  "file name")
            return [str(p) for p in paired]
        if len(self.masks) == 1:
            return str(self.masks[0])
        if len(self.masks) != len(images):
            raise SourceError(f"got {len(self.masks)} masks for {len(images)} scans; expected one per scan, one for "
                              "all, or a folder")
        return [str(p) for p in self.masks]

    def scan_table(self, images: list[str]) -> pd.DataFrame:
        """One row per scan: ``image``, ``subject`` (the table's, else the file name without extension),
        ``site`` when known, and the table's other columns."""
        from surfharm.io.nifti import nifti_stem

        if self.participants is None:
            table = pd.DataFrame({"image": images, "subject": [nifti_stem(p) for p in images]})
            if self.sites:
                if len(self.sites) != len(images):
                    raise SourceError(f"got {len(self.sites)} --sites labels for {len(images)} scans; expected one "
                                      "per scan")
                table["site"] = list(self.sites)
            table.attrs["source"] = "--images"
            return table
        given = self._given_table()
        by_name = {Path(str(v)).name: i for i, v in enumerate(given["image"])}
        rows = []
        for img in images:
            row = by_name.get(Path(img).name)
            if row is None:
                raise SourceError(f"{self.participants} has no row for scan {Path(img).name} (column 'image')")
            rows.append(row)
        table = given.iloc[rows].reset_index(drop=True)
        table["image"] = images
        if "subject" not in table.columns:
            table.insert(1, "subject", [nifti_stem(p) for p in images])
        self._check_sites(table, [Path(p).name for p in images])
        table.attrs["source"] = str(self.participants)
        return table

    def scans(self) -> VolumeSet:
        """The scans, their masks, sites and table (checked; no volume read)."""
        if self.contrasts:
            return self._sessions()
        images = self.image_paths()
        masks = self.mask_paths(images)
        table = self.scan_table(images)
        sites = table["site"].tolist() if "site" in table.columns else None
        return VolumeSet(images=images, masks=masks, sites=sites, table=table)

    # -- several contrasts per session ------------------------------------------------------------------------
    def session_files(self) -> tuple[dict[str, dict[str, str]], list[str]]:
        """``({session: {contrast: path}}, files of the folder matching no contrast)`` (class docstring)."""
        paths = self.image_paths()
        folder = len(self.images) == 1 and self.images[0].is_dir()
        sessions, unmatched = group_sessions(paths, self.contrasts, sort=folder)
        if unmatched and not folder:
            raise SourceError(f"--images {unmatched[0]}: the name ends in none of --contrasts "
                              f"{','.join(self.contrasts)}; expected <session>_<contrast>.nii[.gz]"
                              + (f" ({len(unmatched) - 1} more such file(s))" if len(unmatched) > 1 else ""))
        if not sessions:
            where = self.images[0] if folder else "--images"
            raise SourceError(f"{where}: no file named <session>_<contrast>.nii[.gz] for --contrasts "
                              f"{','.join(self.contrasts)} (e.g. sub-01_ses-1_{self.contrasts[0]}.nii.gz)")
        return sessions, unmatched

    def session_masks(self, keys: list[str]):
        """``None``, one path for every session, or one per session (a folder: ``<session>_mask.nii[.gz]``)."""
        if not self.masks:
            return None
        if len(self.masks) == 1 and self.masks[0].is_dir():
            folder = self.masks[0]
            paths, missing = [], []
            for key in keys:
                present = [p for p in (folder / f"{key}_mask.nii.gz", folder / f"{key}_mask.nii") if p.is_file()]
                if len(present) > 1:
                    raise SourceError(f"mask folder {folder} holds both {present[0].name} and {present[1].name} "
                                      f"for session {key!r}; keep one")
                if not present:
                    missing.append(key)
                else:
                    paths.append(str(present[0]))
            if missing:
                raise SourceError(f"mask folder {folder} has no mask for session(s) {missing[:3]}"
                                  f"{' ...' if len(missing) > 3 else ''}; expected one mask per session named "
                                  f"<session>_mask.nii.gz (e.g. {missing[0]}_mask.nii.gz)")
            return paths
        if len(self.masks) == 1:
            return str(self.masks[0])
        if len(self.masks) != len(keys):
            raise SourceError(f"got {len(self.masks)} masks for {len(keys)} sessions; expected one per session (in "
                              "the order of the sessions), one for all, or a folder of <session>_mask.nii.gz")
        return [str(p) for p in self.masks]

    def session_table(self, sessions: dict[str, dict[str, str]]) -> pd.DataFrame:
        """One row per session: ``image`` (the session key), ``subject``, ``site`` when known, the table's
        other columns and ``image_<contrast>`` (the file of each contrast)."""
        keys = list(sessions)
        if self.participants is None:
            table = pd.DataFrame({"image": keys, "subject": [_subject_of_session(k) for k in keys]})
            if self.sites:
                if len(self.sites) != len(keys):
                    raise SourceError(f"got {len(self.sites)} --sites labels for {len(keys)} sessions; expected one "
                                      "per session, in the order of the sessions")
                table["site"] = list(self.sites)
            table.attrs["source"] = "--images"
        else:
            given = self._given_table()
            by_key = {str(v).strip(): i for i, v in enumerate(given["image"])}
            missing = [k for k in keys if k not in by_key]
            if missing:
                raise SourceError(f"{self.participants} has no row for session(s) {missing[:3]}"
                                  f"{' ...' if len(missing) > 3 else ''}; with --contrasts its column 'image' names "
                                  f"each session by the <session> part of its file names (e.g. {missing[0]})")
            table = given.iloc[[by_key[k] for k in keys]].reset_index(drop=True)
            table["image"] = keys
            if "subject" not in table.columns:
                table.insert(1, "subject", [_subject_of_session(k) for k in keys])
            self._check_sites(table, keys)
            table.attrs["source"] = str(self.participants)
        for contrast in self.contrasts:
            table[f"image_{contrast}"] = [sessions[k][contrast] for k in keys]
        return table

    def _sessions(self) -> VolumeSet:
        sessions, unmatched = self.session_files()
        keys = list(sessions)
        masks = self.session_masks(keys)
        table = self.session_table(sessions)
        sites = table["site"].tolist() if "site" in table.columns else None
        return VolumeSet(images=list(sessions.values()), masks=masks, sites=sites, table=table,
                         contrasts=self.contrasts, sessions=keys, ignored=unmatched)

    def _given_table(self) -> pd.DataFrame:
        """The participants table with its site column named ``site`` (both ``image`` and it required)."""
        given = sio.read_table(self.participants)
        column = self.site_column or "site"
        for needed in ("image", column):
            if needed not in given.columns:
                raise SourceError(f"{self.participants} has no column {needed!r}; columns: {list(given.columns)}")
        if column != "site":
            given = given.drop(columns=["site"], errors="ignore").rename(columns={column: "site"})
        return given

    def _check_sites(self, table: pd.DataFrame, names: list[str]) -> None:
        missing = table.index[table["site"].isna() | (table["site"].astype(str).str.strip() == "")].tolist()
        if missing:
            raise SourceError(f"{self.participants}: site is missing for scan(s) "
                              f"{[names[i] for i in missing[:5]]}; every scan needs a site")

    def check_method(self, name: str | None) -> None:
        """As :meth:`InputSource.check_method`; with ``contrasts``, also refuse a method that takes one volume
        per scan (only classes declaring ``min_contrasts`` take sessions) or more contrasts than given."""
        if name and self.contrasts:
            from surfharm import harmonize

            minimum = getattr(harmonize.get(name), "min_contrasts", None)
            if minimum is None:
                raise SourceError(f"--contrasts: method {name!r} takes one volume per scan; sessions of several "
                                  "contrasts are harmonized by the deep image methods (e.g. deepharmony). Leave "
                                  "--contrasts out to harmonize every file as one scan")
            if len(self.contrasts) < minimum:
                raise SourceError(f"--contrasts {','.join(self.contrasts)}: method {name!r} needs at least "
                                  f"{minimum} contrasts per session")
        super().check_method(name)

    # -- the protocol -------------------------------------------------------------------------------------------
    def files(self) -> list[tuple[str, Path]]:
        try:
            images = ([p for files in self.session_files()[0].values() for p in files.values()] if self.contrasts
                      else self.image_paths())
        except SourceError:
            images = [str(p) for p in self.images]
        files = [("scan", Path(p)) for p in images]
        files += [("mask", p) for p in self.masks]
        files += [("table", self.participants)] if self.participants else []
        return files + ([("control mask", self.control_mask)] if self.control_mask else [])

    def keys(self) -> list[str]:
        return ["volumes"]

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"volumes": self.scans().table}

    def check_tables(self, *, keep=None, smooth=(), method: str | None = None) -> dict[str, pd.DataFrame]:
        if method is not None:
            from surfharm.evaluate.methods import MethodSpec

            self.check_method(MethodSpec.parse(method).name)
        tables = self.tables()
        wanted = list(dict.fromkeys([*(keep or ()), *(smooth or ())]))
        if wanted and self.participants is None:
            raise SourceError(f"covariate(s) {wanted} are columns of a table of the scans: give one (--participants; "
                              "columns image, site and the covariates)")
        for table in tables.values():
            missing = [c for c in wanted if c not in table.columns]
            if missing:
                columns = list(sio.read_table(self.participants).columns)
                raise SourceError(f"{self.participants} has no column {missing[0]!r}; columns: {columns}")
            check_covariates(table, wanted, numeric=list(smooth or ()), what="covariate")
        return tables


    def read(self, *, progress: bool = True, workdir=None) -> dict[str, VolumeSet]:
        scans = self.scans()
        if scans.ignored:  # said even when quiet: files the user may have meant to include
            print(f"note: {self._ignored_note(scans.ignored)}", file=sys.stderr, flush=True)
        if progress:
            what = (f"session(s) of {len(self.contrasts)} contrasts ({', '.join(self.contrasts)})" if self.contrasts
                    else "scan(s)")
            print(f"{scans.n_scans} NIfTI {what}, read one at a time by the method", flush=True)
        return {"volumes": scans}

    def _ignored_note(self, ignored: list[str]) -> str:
        names = ", ".join(Path(p).name for p in ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        return (f"{len(ignored)} file(s) of {self.images[0]} end in none of --contrasts {','.join(self.contrasts)} "
                f"and are left out: {names}")

    def spaces(self, space: str) -> tuple[str, ...]:
        if space not in ("ico",):
            raise SourceError(f"--space {space} applies to surface maps; NIfTI scans are written on their own grid")
        return ("ico",)

    def output_range(self, cohort=None):
        return None

    def outputs_of(self, images: list[str], folder, method: str | None) -> list[Path]:
        """``folder/<scan name>_<method>.nii.gz`` for each scan; two scans on one name are refused."""
        from surfharm.io.nifti import nifti_stem

        suffix = method or "harmonized"
        outputs = [Path(folder) / f"{nifti_stem(p)}_{suffix}.nii.gz" for p in images]
        duplicates = {str(o) for o in outputs if outputs.count(o) > 1}
        if duplicates:
            raise SourceError(f"two scans would be written to the same file(s) {sorted(duplicates)}; rename the scans")
        return outputs

    def write(self, data: VolumeSet, harmonized, folder, *, spaces=("ico",), method: str | None = None,
              say=None) -> list[Path]:
        """Each harmonized volume (``harmonized``: one 3-D array per scan, e.g. ``transform_iter``, consumed
        one at a time) as ``folder/<scan name>_<method>.nii.gz`` with its scan's affine and header; with
        several contrasts (one dict ``{contrast: array}`` per session), each contrast as
        ``folder/<session>_<contrast>.nii.gz`` with the affine and header of that contrast's input."""
        from surfharm.io.nifti import save_volume

        if data.contrasts:
            return self._write_sessions(data, harmonized, folder, say=say)
        outputs = self.outputs_of(data.images, folder, method)
        inputs = [p for _, p in self.files()]
        Path(folder).mkdir(parents=True, exist_ok=True)
        written = []
        for image, out, volume in zip(data.images, outputs, harmonized):
            written.append(save_volume(volume, out, like=image, inputs=inputs))
            if say is not None:
                say(f"wrote {out}")
        return written

    def _write_sessions(self, data: VolumeSet, harmonized, folder, *, say=None) -> list[Path]:
        from collections.abc import Mapping

        from surfharm.io.nifti import save_volume

        inputs = [p for _, p in self.files()]
        Path(folder).mkdir(parents=True, exist_ok=True)
        written = []
        for key, files, volumes in zip(data.sessions, data.images, harmonized):
            if not isinstance(volumes, Mapping) or set(volumes) != set(data.contrasts):
                got = sorted(volumes) if isinstance(volumes, Mapping) else type(volumes).__name__
                raise SourceError(f"session {key!r}: the method returned {got}, not one volume per contrast "
                                  f"{list(data.contrasts)}")
            for contrast in data.contrasts:
                out = Path(folder) / f"{key}_{contrast}.nii.gz"
                written.append(save_volume(volumes[contrast], out, like=files[contrast], inputs=inputs))
                if say is not None:
                    say(f"wrote {out}")
        return written

    def output_lines(self, out: Path, key: str, spaces) -> list[str]:
        if not self.contrasts:
            return [f"  {out / key}/<scan name>_<method>.nii.gz  (one per scan)"]
        lines = [f"  {out / key}/<session>_<contrast>.nii.gz  (one per session and contrast: "
                 f"{', '.join(self.contrasts)})"]
        try:
            ignored = self.session_files()[1]
        except SourceError:
            ignored = []
        return lines + ([f"  note: {self._ignored_note(ignored)}"] if ignored else [])


#: Input kinds by their config.json name.
INPUTS: dict[str, type[InputSource]] = {cls.name: cls for cls in (SubjectsDirInput, StackedMghInput, RoiTableInput,
                                                                  NiftiInput)}
KINDS = tuple(INPUTS)


def Source(kind: str, **options) -> InputSource:
    """The input of kind ``kind`` (a name of :data:`INPUTS`) with ``options``; options of other kinds left
    at their defaults (None, empty) are dropped, others are refused."""
    if kind not in INPUTS:
        raise SourceError(f"input kind must be one of {KINDS}, got {kind!r}")
    cls = INPUTS[kind]
    accepted = {f.name for f in fields(cls)}
    unused = [k for k, v in options.items() if k not in accepted and v not in (None, (), [], "")]
    if unused:
        raise SourceError(f"a {kind} input takes no {', '.join(unused)}")
    return cls(**{k: v for k, v in options.items() if k in accepted})


# -- module functions (the methods of the input) ------------------------------------------------------------------

def planned_reads(source: InputSource) -> list[tuple[str, Path]]:
    """``(what, path)`` for every file the run would read, without reading any map."""
    return source.files()


def check_tables(source: InputSource, *, keep=None, smooth=(), method: str | None = None) -> dict[str, pd.DataFrame]:
    """:meth:`InputSource.check_tables`: every table checked before any map is read."""
    return source.check_tables(keep=keep, smooth=smooth, method=method)


def read_cohorts(source: InputSource, *, progress: bool = True, workdir=None) -> dict[str, Cohort]:
    """:meth:`InputSource.read`: one Cohort per hemisphere (``{"lh": ..., "rh": ...}``), ``{"roi": ...}``
    for ROI tables, ``{"volumes": VolumeSet}`` for NIfTI scans. Errors name the file (or the subject
    and the file) that is missing or unreadable."""
    return source.read(progress=progress, workdir=workdir)


def review_output(cohort: Cohort, harmonized, source: InputSource, *, clip: bool = False) -> dict | None:
    """Count the harmonized values outside the plausible range of the measure (a harmonizer can push a
    thin region below 0 mm), and clip them into it in place when ``clip``.

    Returns None when the measure has no range (or the check is off), else ``{"range", "raw_values",
    "values", "scans", "min", "max", "clipped", "message"}``: values out of range in the input and in the
    output (before clipping), the output scans holding them, their extremes, how many were clipped.
    """
    checked = source.output_range(cohort)
    if checked is None:
        return None
    raw = plausibility.count_outside(cohort.maps, checked)
    found = plausibility.count_outside(harmonized, checked)
    clipped = plausibility.clip_inplace(harmonized, checked) if clip and found.total else 0
    summary = {"range": str(checked), "raw_values": raw.total, "values": found.total, "scans": int(found.scans.size),
               "min": None if not found.total else found.minimum, "max": None if not found.total else found.maximum,
               "clipped": clipped}
    if not found.total:
        summary["message"] = f"every harmonized {cohort.measure or 'value'} lies in {checked}"
    else:
        summary["message"] = (
            f"{found.total} harmonized {cohort.measure or 'value'}(s) in {found.scans.size} scan(s) lie outside "
            f"{checked} (found {found.minimum:g} .. {found.maximum:g}); "
            + (f"clipped into the range ({clipped} values)" if clipped
               else "kept as they are (--clip-output clips them)"))
    return summary


__all__ = ["INPUTS", "InputSource", "KINDS", "NiftiInput", "RoiTableInput", "Source", "SourceError",
           "StackedMghInput", "SubjectsDirInput", "VolumeSet", "check_tables", "planned_reads", "read_cohorts",
           "review_output"]
