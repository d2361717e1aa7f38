"""Read a harmonization run folder: what ``surfharm report`` turns into an HTML page.

Layout of a run folder (written by ``surfharm harmonize`` / ``surfharm benchmark``, or by hand)::

    RUN/
      table.csv            one row per scan, in the row order of the maps: subject, site
                           (session, age, sex, any covariate optional). Also accepted: table.tsv,
                           cohort.tsv, cohort.csv (what Cohort.write writes).
      maps/raw.npy         the maps before harmonization, (n_scans, n_vertices) float, NaN outside
                           cortex; a stacked MGH (maps/raw.mgh or .mgz, frame i = scan i) also works.
      maps/<method>.npy    the harmonized maps of each method (same shape), e.g. maps/combat.npy;
                           every file in maps/ other than raw.* is a method, named after its stem.
      metrics.csv          rows = methods (first column ``method``), columns = metrics; ``results.csv``
                           (what ``surfharm benchmark`` writes) is read when metrics.csv is absent.
      model.json           the model's metadata (or model.npz written by
                           surfharm.harmonize.base.save_state: only its metadata.json is read).
      config.json          the run's configuration (e.g. the benchmark's), shown as it is.
      run.json             {"command": "surfharm ..." or [argv], "versions": {"surfharm": ...},
                           "hemi": "lh" | "rh" | "both", "surface": "inflated", "title": "..."}

Everything is optional except that a folder must hold maps (table + maps/raw.*) or metrics: a
benchmark folder without maps gives a report of its metrics and provenance only.
``.npy`` files are memory-mapped and never unpickled. Hidden files (``.NAME.<...>.part.npy``, the
temporary files of an interrupted write) are not maps.

Incomplete folders are refused (:func:`check_complete`): a folder holding the marker
``INCOMPLETE`` (present while surfharm writes a folder in place, left behind when the writer was
stopped), or whose run.json says ``"complete": false`` or lists files (``"files"``) that are missing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm.errors import SurfharmError

TABLE_NAMES = ("table.csv", "table.tsv", "cohort.tsv", "cohort.csv")
METRICS_NAMES = ("metrics.csv", "results.csv")
MAP_SUFFIXES = (".npy", ".mgh", ".mgz")
RAW_NAME = "raw"


class RunFolderError(SurfharmError, ValueError):
    """A run folder that cannot be reported on; the message names the file and what was expected."""


class IncompleteRunError(RunFolderError):
    """A run folder whose writer did not finish (stopped, failed, or files missing since)."""


def check_complete(folder: str | os.PathLike, *, what: str = "run folder") -> None:
    """Refuse a folder that a surfharm writer did not finish (see the module docstring)."""
    from surfharm._atomic import INCOMPLETE

    folder = Path(folder)
    fix = ("re-run the command that wrote it (with --overwrite to replace it), or use another folder")
    if (folder / INCOMPLETE).exists():
        raise IncompleteRunError(f"{what} {folder} is incomplete: the run writing it was stopped or failed before "
                                 f"it finished (it holds {INCOMPLETE}); {fix}")
    run_json = folder / "run.json"
    if not run_json.is_file():
        return
    try:
        settings = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # read_run names a damaged run.json
    if not isinstance(settings, dict):
        return
    if settings.get("complete") is False:
        raise IncompleteRunError(f"{what} {folder} is incomplete: its run.json says the run did not finish; {fix}")
    files = settings.get("files")
    if isinstance(files, list):
        missing = [name for name in files if isinstance(name, str) and not (folder / name).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise IncompleteRunError(f"{what} {folder} is incomplete: {len(missing)} file(s) of the run are missing "
                                     f"({shown}); {fix}")


@dataclass
class RunData:
    """Everything read from a run folder (see the module docstring); maps are (n_scans, n_vertices)."""

    folder: Path
    table: pd.DataFrame | None = None
    before: np.ndarray | None = None
    after: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: pd.DataFrame | None = None
    model: dict | None = None
    config: dict | None = None
    command: str | None = None
    versions: dict | None = None
    hemi: str | None = None
    surface: str | None = None
    title: str | None = None
    inputs: list[Path] = field(default_factory=list)  # the files read: an output must not replace any


def read_maps_file(path: Path) -> np.ndarray:
    """(n_scans, n_vertices) maps from a .npy (memory-mapped, no pickle) or a stacked MGH/MGZ."""
    if path.suffix == ".npy":
        try:
            maps = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise RunFolderError(f"{path}: not a numeric .npy array ({exc})") from None
    else:
        from surfharm.io import read_maps

        maps = read_maps(path)
    if maps.ndim != 2 or maps.dtype.kind not in "fiu":
        raise RunFolderError(f"{path}: expected numeric maps of shape (n_scans, n_vertices), got shape "
                             f"{maps.shape} and dtype {maps.dtype}")
    return maps


def read_model_metadata(path: str | os.PathLike) -> dict:
    """Model metadata from a JSON file or from the metadata.json inside a save_state ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".npz":
        from surfharm.io.model_files import read_npz

        return read_npz(path)[1]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path}: expected a JSON object of model metadata, got {type(meta).__name__}")
    return meta


def _read_table(folder: Path) -> tuple[pd.DataFrame, Path]:
    for name in TABLE_NAMES:
        path = folder / name
        if path.is_file():
            from surfharm.io import read_table

            table = read_table(path)
            if "site" not in table.columns:
                raise RunFolderError(f"{path}: no 'site' column (columns: {', '.join(map(str, table.columns))})")
            return table.reset_index(drop=True), path
    raise RunFolderError(f"{folder}: no scan table; expected one of {', '.join(TABLE_NAMES)} "
                         "(one row per scan: subject, site, age, ...)")


def _find_maps(folder: Path) -> tuple[Path, dict[str, Path]]:
    maps_dir = folder / "maps"
    if not maps_dir.is_dir():
        raise RunFolderError(f"{folder}: no maps/ folder; expected maps/raw.npy (maps before harmonization) "
                             "and maps/<method>.npy (after)")
    files = sorted(p for p in maps_dir.iterdir()
                   if p.is_file() and p.suffix in MAP_SUFFIXES and not p.name.startswith("."))
    raw = [p for p in files if p.stem == RAW_NAME]
    if not raw:
        raise RunFolderError(f"{maps_dir}: no raw maps; expected raw.npy (or raw.mgh / raw.mgz) with the "
                             "maps before harmonization")
    methods = {p.stem: p for p in files if p.stem != RAW_NAME}
    return raw[0], methods


def read_run(folder: str | os.PathLike) -> RunData:
    """Read a run folder (layout in the module docstring); maps are checked against the table.

    Raises :class:`IncompleteRunError` for a folder whose writer did not finish."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    check_complete(folder)
    run = RunData(folder=folder)
    if (folder / "maps").is_dir():
        _read_maps_and_table(run)
    for name in METRICS_NAMES:
        if (folder / name).is_file():
            from surfharm.viz.plots import read_metrics

            run.metrics = read_metrics(folder / name)
            run.inputs.append(folder / name)
            break
    if run.before is None and run.metrics is None:
        raise RunFolderError(f"{folder}: nothing to report; expected maps/raw.npy with a scan table "
                             f"({', '.join(TABLE_NAMES)}) and/or a metrics table ({', '.join(METRICS_NAMES)})")
    for name in ("model.json", "model.npz"):
        if (folder / name).is_file():
            run.model = read_model_metadata(folder / name)
            run.inputs.append(folder / name)
            break
    if (folder / "config.json").is_file():
        run.config = read_model_metadata(folder / "config.json")
        run.inputs.append(folder / "config.json")
    settings = {}
    if (folder / "run.json").is_file():
        settings = read_model_metadata(folder / "run.json")
        run.inputs.append(folder / "run.json")
    command = settings.get("command")
    if isinstance(command, list):
        import shlex

        command = shlex.join(str(c) for c in command)
    run.command, run.versions = command, settings.get("versions")
    run.hemi, run.surface, run.title = settings.get("hemi"), settings.get("surface"), settings.get("title")
    return run


def _read_maps_and_table(run: RunData) -> None:
    table, table_path = _read_table(run.folder)
    raw_path, method_paths = _find_maps(run.folder)
    before = read_maps_file(raw_path)
    if before.shape[0] != len(table):
        raise RunFolderError(f"{raw_path} holds {before.shape[0]} scans but the scan table {table_path.name} has "
                             f"{len(table)} rows; expected one row per scan, in the same order")
    for name, path in method_paths.items():
        maps = read_maps_file(path)
        if maps.shape != before.shape:
            raise RunFolderError(f"{path} has shape {maps.shape} but {raw_path} has {before.shape}; "
                                 "expected the same scans and vertices")
        run.after[name] = maps
    run.table, run.before = table, before
    run.inputs += [table_path, raw_path, *method_paths.values()]
