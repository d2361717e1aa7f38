"""Where a harmonization run's maps come from, and the list of files it would read (``--dry-run``).

A :class:`Source` names one of the three inputs FreeSurfer users have:

* ``subjects_dir``: a ``SUBJECTS_DIR`` and a participants table (one row per scan: subject, site,
  optional session and covariates); per scan ``surf/<hemi>.<measure>`` with ``surf/<hemi>.sphere.reg``
  (resampled to the icosahedron), or the qcache output ``surf/<hemi>.<measure>.fwhm<N>.fsaverage.mgh``
  when ``fwhm`` is given or when every scan has it;
* ``stacked_mgh``: one stacked MGH/MGZ per hemisphere (``mris_preproc``) and its FSGD;
* ``roi_table``: an ``aparcstats2table`` TSV or a CSV, with an optional covariate table.

:func:`read_cohorts` turns a source into one :class:`surfharm.Cohort` per hemisphere (key ``lh``,
``rh``, or ``roi`` for ROI tables); :func:`planned_reads` lists the files without reading them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from surfharm import io as sio
from surfharm.cohort import Cohort

KINDS = ("subjects_dir", "stacked_mgh", "roi_table")


class SourceError(ValueError):
    """An input description that cannot be read; the message says what is missing or wrong."""


@dataclass
class Source:
    """What to read. Fields not used by ``kind`` stay at their defaults.

    Attributes:
        kind: one of :data:`KINDS`.
        subjects_dir, participants: the FreeSurfer tree and its table (``subjects_dir``); for
            ``stacked_mgh`` and ``roi_table`` ``participants`` is an optional covariate table joined
            by subject.
        hemis: hemispheres to read (``subjects_dir``).
        measure: map name, e.g. ``thickness`` (file ``surf/lh.thickness``).
        level: icosahedral level the maps are brought to (7 = fsaverage, 5 = fsaverage5).
        fwhm: read ``<hemi>.<measure>.fwhm<fwhm>.fsaverage.mgh``; None = the native map, unless every
            scan has exactly one such qcache file (then that one).
        dir_pattern: subject folder name (default ``{subject}`` or ``{subject}_{session}``).
        mgh, fsgd: stacked MGH files (one per hemisphere) and the FSGD listing their frames.
        cortex: label/annotation of the stacked MGH's mesh (vertices outside become NaN).
        roi_table: the ROI table path.
        site_column: the table column naming each scan's site (scanner).
        n_jobs: scans read and resampled in parallel threads.
    """

    kind: str
    subjects_dir: Path | None = None
    participants: Path | None = None
    hemis: tuple[str, ...] = ("lh",)
    measure: str = "thickness"
    level: int = 7
    fwhm: int | None = None
    dir_pattern: str | None = None
    mgh: tuple[Path, ...] = ()
    fsgd: Path | None = None
    cortex: Path | None = None
    roi_table: Path | None = None
    site_column: str = "site"
    n_jobs: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SourceError(f"input kind must be one of {KINDS}, got {self.kind!r}")
        for hemi in self.hemis:
            if hemi not in ("lh", "rh"):
                raise SourceError(f"hemisphere must be 'lh' or 'rh', got {hemi!r}")
        if self.kind == "subjects_dir" and (self.subjects_dir is None or self.participants is None):
            raise SourceError("a SUBJECTS_DIR input needs both the folder (--subjects-dir) and a participants "
                              "table (--participants: one row per scan with subject and site)")
        if self.kind == "stacked_mgh" and (not self.mgh or self.fsgd is None):
            raise SourceError("a stacked MGH input needs the MGH file(s) (--mgh, one per hemisphere) and the FSGD "
                              "file listing their frames (--fsgd)")
        if self.kind == "roi_table" and self.roi_table is None:
            raise SourceError("an ROI input needs the table (--roi-table)")


# -- the participants table of a SUBJECTS_DIR ------------------------------------------------------------

def participants_table(source: Source) -> pd.DataFrame:
    """The participants table with the site column named ``site`` (SUBJECTS_DIR inputs)."""
    table = sio.read_table(source.participants)
    if source.site_column != "site":
        if source.site_column not in table.columns:
            raise SourceError(f"{source.participants}: no site column {source.site_column!r}; columns are "
                              f"{list(table.columns)}")
        table = table.drop(columns=["site"], errors="ignore").rename(columns={source.site_column: "site"})
    elif "site" not in table.columns:
        raise SourceError(f"{source.participants}: no 'site' column (columns: {list(table.columns)}); name the "
                          "scanner/site column with --site-column")
    return table


def subject_folders(source: Source, table: pd.DataFrame) -> list[Path]:
    """One folder per table row: ``subjects_dir / dir_pattern.format(**row)``."""
    pattern = source.dir_pattern or ("{subject}_{session}" if "session" in table.columns else "{subject}")
    folders = []
    for i, row in enumerate(table.to_dict("records")):
        try:
            name = pattern.format(**{k: v for k, v in row.items() if isinstance(k, str)})
        except KeyError as exc:
            raise SourceError(f"folder pattern {pattern!r} names column {exc.args[0]!r}, which "
                              f"{source.participants} lacks (row {i})") from None
        folders.append(Path(source.subjects_dir) / name)
    return folders


def qcache_fwhm(source: Source, folders: list[Path], hemi: str) -> int | None:
    """The qcache smoothing to read: ``source.fwhm``, else the one FWHM every folder has, else None."""
    if source.fwhm is not None:
        return source.fwhm
    common = None
    for folder in folders:
        found = {p.name.split(".fwhm")[1].split(".")[0]
                 for p in (folder / "surf").glob(f"{hemi}.{source.measure}.fwhm*.fsaverage.mg[hz]")}
        if len(found) != 1:
            return None
        common = found if common is None else common & found
        if not common:
            return None
    if not common:
        return None
    value = common.pop()
    return int(value) if value.isdigit() else None


def planned_reads(source: Source) -> list[tuple[str, Path]]:
    """``(what, path)`` for every file the run would read, without reading any map."""
    if source.kind == "roi_table":
        return [("ROI table", Path(source.roi_table))] + (
            [("covariates", Path(source.participants))] if source.participants else [])
    if source.kind == "stacked_mgh":
        files = [("FSGD", Path(source.fsgd))] + [("stacked maps", Path(p)) for p in source.mgh]
        files += [("covariates", Path(source.participants))] if source.participants else []
        return files + ([("cortex", Path(source.cortex))] if source.cortex else [])
    table = participants_table(source)
    folders = subject_folders(source, table)
    files = [("participants", Path(source.participants))]
    for hemi in source.hemis:
        fwhm = qcache_fwhm(source, folders, hemi)
        for folder in folders:
            surf = folder / "surf"
            if fwhm is not None:
                mgh = surf / f"{hemi}.{source.measure}.fwhm{fwhm}.fsaverage.mgh"
                files.append(("map (fsaverage)", mgh if mgh.exists() or not mgh.with_suffix(".mgz").exists()
                              else mgh.with_suffix(".mgz")))
            else:
                files.append(("map", surf / f"{hemi}.{source.measure}"))
                files.append(("sphere", surf / f"{hemi}.sphere.reg"))
                label = folder / "label" / f"{hemi}.cortex.label"
                if label.exists():
                    files.append(("cortex", label))
    return files


def roi_features(source: Source) -> list[str] | None:
    """The ROI columns of an ROI table: those ending in ``_<measure>`` (``lh_bankssts_thickness``) when
    there are any, so that covariates kept in the same table (age, ...) are never harmonized as
    ROIs; else None (every numeric column that is not an id or a covariate)."""
    columns = sio.read_table(source.roi_table).columns
    named = [c for c in columns if str(c).endswith(f"_{source.measure}")]
    return named or None


# -- reading ----------------------------------------------------------------------------------------------

def read_cohorts(source: Source, *, progress: bool = True) -> dict[str, Cohort]:
    """One Cohort per hemisphere (``{"lh": ..., "rh": ...}``) or ``{"roi": ...}`` for ROI tables.

    Errors name the file (or the subject and the file) that is missing or unreadable.
    """
    if source.kind == "roi_table":
        cohort = Cohort.from_roi_table(source.roi_table, source.participants, site_column=source.site_column,
                                       measure=source.measure, features=roi_features(source))
        return {"roi": cohort}
    if source.kind == "stacked_mgh":
        cohorts = {}
        for mgh in source.mgh:
            hemi = sio.hemi_of(mgh)
            key = hemi or "maps"
            if key in cohorts:
                raise SourceError(f"two stacked MGH files of the same hemisphere ({key}): {list(source.mgh)}; "
                                  "give one file per hemisphere with lh./rh. in their names")
            cohorts[key] = Cohort.from_stacked_mgh(mgh, source.fsgd, participants=source.participants,
                                                   site_column=None if source.site_column == "site" else source.site_column,
                                                   cortex=source.cortex, hemi=hemi, measure=source.measure)
        return cohorts
    table = participants_table(source)
    folders = subject_folders(source, table)
    cohorts = {}
    for hemi in source.hemis:
        fwhm = qcache_fwhm(source, folders, hemi)
        if progress and fwhm is None:
            found = sorted({p.name for p in (folders[0] / "surf").glob(f"{hemi}.{source.measure}.fwhm*.fsaverage.mg[hz]")})
            if found:
                print(f"note: {folders[0] / 'surf'} has several qcache maps ({', '.join(found)}); reading the native "
                      f"map instead (pass --fwhm N to read {hemi}.{source.measure}.fwhmN.fsaverage.mgh)", flush=True)
        if progress:
            what = (f"{hemi}.{source.measure}.fwhm{fwhm}.fsaverage.mgh" if fwhm is not None
                    else f"{hemi}.{source.measure} on {hemi}.sphere.reg, resampled to level {source.level}")
            print(f"reading {len(table)} scans: {what}", flush=True)
        cohorts[hemi] = Cohort.from_subjects_dir(source.subjects_dir, table, hemi=hemi, measure=source.measure,
                                                 level=source.level, fwhm=fwhm, dir_pattern=source.dir_pattern,
                                                 n_jobs=source.n_jobs, progress=progress)
    return cohorts
