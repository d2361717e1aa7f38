"""What a run writes: the run folder read by ``surfharm report``, its metrics, and the user's maps.

Run folder (one per hemisphere, or ``roi``; layout of :mod:`surfharm.viz.run_folder`)::

    OUT/<key>/table.csv           one row per scan (subject, session, site, covariates)
    OUT/<key>/maps/raw.npy        (n_scans, n_features) float32 before harmonization, NaN outside cortex
    OUT/<key>/maps/<method>.npy   the same after harmonization
    OUT/<key>/metrics.csv         site-effect and biology metrics, one row per map set (raw, method)
    OUT/<key>/model.npz | model.safetensors (+ model.json)
    OUT/<key>/config.json         method, covariates kept, level, measure, hemisphere (read by ``apply``)
    OUT/<key>/run.json            command, versions, hemisphere, title; ``"complete": true`` and the
                                  list of the run's files (written last)
    OUT/<key>/report.html         the HTML report

NIfTI scans (key ``volumes``) have no maps, metrics or report: the harmonized volumes lie beside
table.csv, config.json, the model and run.json, as ``<scan name>_<method>.nii.gz`` (one contrast) or
``<session>_<contrast>.nii.gz`` (sessions of several contrasts), and run.json lists them.

A run folder holds exactly one complete run (:class:`RunTarget`): the run is written into a hidden
sibling ``.OUT.<pid>-<random>.staging`` and renamed onto ``OUT`` only when every file is written;
with ``overwrite`` the previous ``OUT`` is moved aside (``.OUT.<...>.old``) and removed once the new
one is in place. A lock file ``.OUT.lock`` beside it keeps a second run out while one is writing.
Inputs inside ``OUT`` are refused before anything is written. While a run folder is written it holds
the marker ``INCOMPLETE``; readers refuse a folder holding it (:mod:`surfharm.viz.run_folder`).
Every file is written atomically and never over an input (:mod:`surfharm._atomic`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm._atomic import (INCOMPLETE, OutputError, as_write_error, atomic_path, mark_complete, mark_incomplete,
                              pid_alive, write_text_atomic)
from surfharm.cohort import Cohort
from surfharm.evaluate import metrics

#: Columns of metrics.csv and what they mean (shown by the CLI after a run).
METRIC_COLUMNS = {
    "frac_sig_anova": "features with a site effect on the mean (ANCOVA, FDR 5%)",
    "frac_sig_levene": "features with a site effect on the spread (Levene, FDR 5%)",
    "site_eta2_median": "median share of variance explained by site",
    "age_r2": "mean partial R^2 of age (biology kept: should stay close to raw)",
}


class RunTarget:
    """The output folder of one run: checked, locked, written aside and moved into place when complete.

    Use as a context manager::

        with RunTarget(out, overwrite=False, inputs=[("participants", path), ...]) as target:
            folder = target.folder("lh")       # OUT/lh, written in a hidden staging sibling
            ...                                # write the run folder, then finish_run_folder(folder)
            target.commit()                    # OUT now holds exactly this run

    On entry, before anything is written: ``out`` must not be a file; no input may lie inside it; a
    non-empty ``out`` is refused unless ``overwrite`` (and then it must hold a previous surfharm run,
    which the new run replaces as a whole). A lock file ``.OUT.lock`` beside ``out`` refuses a second
    run into the same folder while this one is writing; stale staging folders, moved-aside folders
    and lock files of stopped runs are removed. Leaving the block without :meth:`commit` (an error,
    an interrupt) removes the staging folder: ``out`` keeps the previous run, or does not exist.
    """

    def __init__(self, out, *, overwrite: bool, inputs=()):
        self.out = Path(os.path.abspath(out))
        self.overwrite = overwrite
        self.inputs = [(what, Path(path)) for what, path in inputs if path is not None]
        self.staging: Path | None = None
        self._staged_at: Path | None = None  # the staging folder, also after the move
        self._lock: _FolderLock | None = None
        self.committed = False

    # -- entry ---------------------------------------------------------------------------------------
    def __enter__(self) -> "RunTarget":
        out = self.out
        if out.is_symlink():
            raise OutputError(f"--out {out} is a symbolic link; give the folder itself")
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file; expected a folder (created if missing)")
        check_inputs_outside(out, self.inputs)
        self._check_contents()      # early answer, before waiting for anything
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise (as_write_error(out, exc) or exc) from exc
        self._lock = _FolderLock(out)
        try:
            self._check_contents()  # again under the lock: a run that finished meanwhile counts
            _remove_stale_siblings(out)
            try:
                staging = tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".staging", dir=out.parent)
            except OSError as exc:
                raise (as_write_error(out, exc) or exc) from exc
            self.staging = self._staged_at = Path(staging)
            os.chmod(self.staging, 0o777 & ~_umask())
        except BaseException:
            self._lock.release()
            raise
        return self

    def _check_contents(self) -> None:
        out = self.out
        if not out.is_dir():
            return
        entries = sorted(p.name for p in out.iterdir())
        if not entries:
            return
        if not self.overwrite:
            raise OutputError(f"output folder {out} is not empty; choose a new folder, or pass --overwrite to "
                              "replace the previous run it holds (the whole folder is replaced)")
        if not holds_run(out):
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputError(f"output folder {out} holds files that are not a surfharm run ({shown}); --overwrite "
                              "replaces only a folder written by surfharm (it replaces the whole folder): choose "
                              "another --out")

    # -- while writing --------------------------------------------------------------------------------
    def folder(self, key: str | None = None) -> Path:
        """The folder to write ``key`` into (inside the staging folder), created with the INCOMPLETE marker."""
        if self.staging is None:
            raise RuntimeError("RunTarget.folder() is used inside the 'with' block")
        folder = self.staging / key if key else self.staging
        begin_run_folder(folder)
        return folder

    def final(self, path):
        """Where ``path`` (inside the staging folder) lies once the run is in place."""
        if path is None or self._staged_at is None:
            return path
        path = Path(path)
        try:
            return self.out / path.relative_to(self._staged_at)
        except ValueError:
            return path

    def commit(self) -> Path:
        """Move the complete run into place (replacing the previous run with ``overwrite``)."""
        out, staging = self.out, self.staging
        for marker in staging.rglob(INCOMPLETE):
            raise OutputError(f"{marker.parent} was not finished (it still holds {INCOMPLETE}); nothing was moved "
                              f"to {out}")
        old = None
        try:
            if out.is_dir():
                if any(out.iterdir()):
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=".old", dir=out.parent))
                    os.replace(out, old)
                else:
                    out.rmdir()
            try:
                os.replace(staging, out)
            except BaseException:
                if old is not None and not out.exists():
                    os.replace(old, out)
                    old = None
                raise
        except OSError as exc:
            raise (as_write_error(out, exc) or exc) from exc
        self.committed = True
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return out

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


class _FolderLock:
    """An exclusive lock on ``.OUT.lock`` beside ``out`` (``flock`` where available, else ``O_EXCL``).

    A lock of a process that was killed is released by the system (``flock``) or, with ``O_EXCL``,
    taken over when the process recorded in the file no longer runs."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.lock"
        self.out = out
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - platforms without flock
            fcntl = None
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o644)
            except FileExistsError:  # pragma: no cover - O_EXCL path
                holder = self._holder()
                if holder is not None and not pid_alive(holder):
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                    continue
                self._busy(holder)
            except OSError as exc:
                raise (as_write_error(self.path, exc) or exc) from exc
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    self._busy(self._holder())
                try:  # the file may have been removed by the previous holder between open and flock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise OutputError(f"could not lock {self.path} for writing {self.out}; try again")

    def _holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _busy(self, holder: int | None):
        who = f"process {holder}" if holder else "another process"
        raise OutputError(f"another surfharm run ({who}) is writing {self.out} (lock file {self.path}); wait for it "
                          "to finish or choose another --out")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _remove_stale_siblings(out: Path) -> None:
    """Staging and moved-aside folders of earlier runs into ``out`` that were stopped (called under the lock)."""
    prefix = f".{out.name}."
    for entry in out.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name.endswith((".staging", ".old")) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def holds_run(folder) -> bool:
    """True when ``folder`` holds a run written by surfharm (its run.json, or its subfolders')."""
    folder = Path(folder)
    candidates = [folder] + [p for p in folder.iterdir() if p.is_dir()]
    return any((p / "run.json").is_file() or (p / INCOMPLETE).is_file() for p in candidates)


def check_inputs_outside(out, inputs) -> None:
    """Refuse (before anything is written) any input that lies inside ``out``: the run replaces the
    whole folder. ``inputs``: ``(what, path)`` pairs."""
    target = Path(out).resolve()
    for what, path in inputs:
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved == target or target in resolved.parents:
            raise OutputError(f"the {what} {path} lies inside the output folder {out}, which this run replaces as a "
                              "whole; copy it elsewhere or choose another --out")


def begin_run_folder(folder) -> Path:
    """Create ``folder`` holding the INCOMPLETE marker (removed by :func:`finish_run_folder`)."""
    return mark_incomplete(folder)


#: Files of a run folder listed in its run.json (what ``surfharm report`` and ``surfharm apply`` read, and the
#: harmonized NIfTI volumes).
RUN_FILE_PATTERNS = ("table.csv", "metrics.csv", "config.json", "model.npz", "model.safetensors", "model.json",
                     "maps/*.npy", "*.nii.gz")


def finish_run_folder(folder) -> Path:
    """Mark ``folder`` complete: run.json gets ``"complete": true`` and the list of the run's files
    (written last), then the INCOMPLETE marker is removed."""
    folder = Path(folder)
    path = folder / "run.json"
    run = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    files = sorted({p.relative_to(folder).as_posix() for pattern in RUN_FILE_PATTERNS for p in folder.glob(pattern)
                    if p.is_file() and not p.name.startswith(".")})
    run.update({"complete": True, "files": files})
    write_text_atomic(path, json.dumps(run, indent=2) + "\n")
    mark_complete(folder)
    return path


# -- what a model was fitted on ----------------------------------------------------------------------------

#: Properties of the data a model records (``fitted_on``) and ``apply`` compares with new scans.
FITTED_ON_KEYS = ("hemi", "measure", "level", "n_features")


def describe_data(cohort: Cohort, *, measure: str | None = None) -> dict:
    """The ``fitted_on`` record of a cohort: hemisphere, measure, icosahedral level, number of features."""
    return {"hemi": cohort.hemi, "measure": measure if measure is not None else cohort.measure,
            "level": cohort.level, "n_features": int(cohort.n_features)}


def measure_of(path, feature_names=None) -> str | None:
    """The measure of an input named the FreeSurfer way: ``lh.thickness.fwhm10.fsaverage.mgh`` ->
    ``thickness``; for ROI columns (``lh_bankssts_thickness``, ...) their common last part; else None."""
    if feature_names:
        endings = {str(name).rsplit("_", 1)[-1] for name in feature_names if "_" in str(name)}
        if len(endings) == 1 and all("_" in str(name) for name in feature_names):
            return endings.pop()
        return None
    parts = Path(str(path)).name.split(".")
    if len(parts) >= 3 and parts[0] in ("lh", "rh"):
        return parts[1]
    return None


def read_fitted_on(model_path) -> dict:
    """What a model file records it was fitted on (``{}`` when it records nothing)."""
    from surfharm.io.model_files import read_metadata

    try:
        meta = read_metadata(model_path)
    except (OSError, ValueError):
        return {}
    fitted = meta.get("fitted_on")
    return dict(fitted) if isinstance(fitted, dict) else {}


def check_fitted_on(model_path, fitted: dict, data: dict, *, what: str, allow_mismatch: bool = False) -> list[str]:
    """Refuse to apply a model to data of another hemisphere, measure or level.

    ``fitted``: what the model was fitted on (``fitted_on`` / config.json); ``data``: the same for the
    new scans (``what`` names them). Properties unknown on either side are not compared. Returns the
    differences (as text) when ``allow_mismatch``; else raises ValueError naming them.
    """
    names = {"hemi": "hemisphere", "measure": "measure", "level": "icosahedral level", "n_features": "features"}
    differences = [f"{names[k]} {fitted[k]!r} (model) vs {data[k]!r} ({what})" for k in FITTED_ON_KEYS
                   if fitted.get(k) is not None and data.get(k) is not None and str(fitted[k]) != str(data[k])]
    if differences and not allow_mismatch:
        raise ValueError(f"model {model_path} was fitted on other data than {what}: " + "; ".join(differences)
                         + ". Use a model fitted on the same hemisphere and measure, or pass --allow-mismatch "
                           "to apply it anyway")
    return differences


def prepare_folder(out, *, overwrite: bool) -> Path:
    """Create ``out``; refuse a folder that already holds files unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; expected a folder (created if missing)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out} is not empty; choose a new folder or pass --overwrite "
                          "(files of the same name are replaced, others are left alone)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def numeric_covariates(table: pd.DataFrame, keep) -> pd.DataFrame | None:
    """The kept covariates as numbers for the metrics: two-level categories (e.g. sex F/M) as 0/1;
    columns with other categories or missing values are left out."""
    columns = {}
    for name in keep or ():
        values = table[name]
        if pd.api.types.is_numeric_dtype(values):
            if values.notna().all():
                columns[name] = values.astype(float).to_numpy()
        else:
            levels = sorted(values.dropna().astype(str).unique())
            if len(levels) == 2 and values.notna().all():
                columns[name] = (values.astype(str) == levels[0]).astype(float).to_numpy()
    return pd.DataFrame(columns) if columns else None


def summary_metrics(cohort: Cohort, maps_by_method: dict[str, np.ndarray], keep) -> pd.DataFrame:
    """Site-effect and age metrics of each map set (rows: ``raw`` then the methods).

    No ground truth exists for real data, so these are the within-study checks: how much site
    explains (vertex-wise tests, adjusted for the kept covariates) and how much age still explains.
    """
    covariates = numeric_covariates(cohort.table, keep)
    age_columns = [c for c in ("age", "log_age") if covariates is not None and c in covariates.columns]
    rows = []
    for name, maps in maps_by_method.items():
        row = {"method": name}
        with warnings.catch_warnings():  # constant features (e.g. a filled medial wall) give NaN tests
            warnings.simplefilter("ignore", RuntimeWarning)
            if len(pd.unique(cohort.sites)) > 1:
                row.update(metrics.site_effect_tests(maps, cohort.sites, covariates))
            if age_columns:
                effects = metrics.covariate_effects(maps, covariates, age_columns[:1])
                row["age_r2"] = float(np.nanmean(effects["age_r2"]))
        rows.append(row)
    return pd.DataFrame(rows)


class _Writer:
    """A file object numpy does not recognise as a real file: it then writes with ``write()``, whose
    errors carry the cause (``No space left on device``) instead of ``n requested and m written``."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        return self._handle.write(data)

    def tell(self):
        return self._handle.tell()

    def seek(self, *args):
        return self._handle.seek(*args)


def write_npy(path, array: np.ndarray, *, overwrite: bool = True) -> Path:
    """One (n, V) float32 ``.npy`` array, written atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            np.save(_Writer(handle), np.asarray(array, dtype=np.float32))
    return Path(path)


def write_run_folder(folder, cohort: Cohort, maps_by_method: dict[str, np.ndarray], *, metrics_table=None,
                     config: dict, title: str, command=None) -> list[Path]:
    """Write table.csv, maps/*.npy, metrics.csv, config.json and run.json into ``folder`` (created)."""
    from surfharm.viz.report import package_versions

    folder = Path(folder)
    (folder / "maps").mkdir(parents=True, exist_ok=True)
    inputs = [] if cohort.sources is None else list(cohort.sources["map"].dropna().unique())
    written = [write_text_atomic(folder / "table.csv", cohort.table.to_csv(index=False), inputs=inputs)]
    for name, maps in maps_by_method.items():
        written.append(write_npy(folder / "maps" / f"{name}.npy", maps))
    if metrics_table is not None:
        written.append(write_text_atomic(folder / "metrics.csv", metrics_table.to_csv(index=False)))
    written.append(write_text_atomic(folder / "config.json", json.dumps(config, indent=2, default=str) + "\n"))
    run = {"command": list(command) if command is not None else ["surfharm", *sys.argv[1:]],
           "versions": package_versions(), "hemi": cohort.hemi if cohort.feature_names is None else None,
           "title": title}
    written.append(write_text_atomic(folder / "run.json", json.dumps(run, indent=2) + "\n"))
    return written


def write_volume_run_folder(folder, table, *, config: dict, title: str, command=None) -> list[Path]:
    """The run folder of NIfTI scans: table.csv (one row per scan, ``image`` naming its file), config.json
    and run.json; the harmonized volumes are written beside them by the input."""
    from surfharm.viz.report import package_versions

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = [str(p) for p in table["image"]] if "image" in table.columns else []
    written = [write_text_atomic(folder / "table.csv", table.to_csv(index=False), inputs=inputs),
               write_text_atomic(folder / "config.json", json.dumps(config, indent=2, default=str) + "\n")]
    run = {"command": list(command) if command is not None else ["surfharm", *sys.argv[1:]],
           "versions": package_versions(), "hemi": None, "title": title}
    written.append(write_text_atomic(folder / "run.json", json.dumps(run, indent=2) + "\n"))
    return written


def write_report(folder, *, log_age: bool = False, age_label: str = "age (years)") -> Path | None:
    """The HTML report of a run folder (vertex maps only; ROI runs keep their metrics table)."""
    from surfharm.viz import report_from_run

    return report_from_run(folder, log_age=log_age, age_label=age_label)


def write_subject_maps(cohort: Cohort, harmonized: np.ndarray, folder, *, spaces=("ico",),
                       overwrite: bool = True) -> list[Path]:
    """Harmonized maps per scan in FreeSurfer's layout, one tree per vertex order:

    * ``ico``: ``folder/fsaverage[N]/<scan>/surf/<hemi>.<measure>.harmonized.fsaverage[N].mgz``;
    * ``native``: ``folder/native/<scan>/surf/<hemi>.<measure>.harmonized`` (curv file in the scan's own
      vertex order, resampled back through its ``sphere.reg``; for ``mris_*`` tools and freeview).

    Each tree holds a ``cohort.tsv`` listing its files.
    """
    result = cohort.with_maps(harmonized)
    written = []
    if "ico" in spaces:
        name = {7: "fsaverage"}.get(cohort.level, f"fsaverage{cohort.level}")
        written += result.write(Path(folder) / name, format="mgz", layout="freesurfer", space="ico",
                                overwrite=overwrite)
    if "native" in spaces:
        written += result.write(Path(folder) / "native", format="curv", layout="freesurfer", space="native",
                                overwrite=overwrite)
    return written
