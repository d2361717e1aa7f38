"""Writing a cohort's maps back in its input's conventions (:meth:`surfharm.Cohort.write`).

Per-scan files (MGH/MGZ, GIfTI, curv) in a flat or a FreeSurfer-like tree, in icosahedral order or
resampled back onto each scan's own ``sphere.reg``; one stacked MGH (and its FSGD); or an ROI table.
Every file is written atomically and never over an input (:mod:`surfharm._atomic`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from surfharm import io as sio
from surfharm.cohort import Cohort, CohortError, space_name


def write_cohort(cohort: Cohort, dest, *, format: str = "mgz", layout: str = "flat", suffix: str = "harmonized",
                 space: str = "ico", fsgd=None, fill_value: float | None = None,
                 overwrite: bool = False) -> list[Path]:
    """Write the maps next to the input conventions; never over an input, atomically.

    Parameters
    ----------
    dest
        a folder (one file per scan), or a ``.mgh``/``.mgz`` file (one stacked MGH, frame i =
        scan i, as ``mris_preproc`` writes; pass ``fsgd`` to write the matching FSGD too), or a
        ``.csv``/``.tsv`` file for ROI cohorts (table + ROI columns).
    format : str
        per-scan file format: 'mgz', 'mgh', 'gii' or 'curv'.
    layout : str
        'flat' (``dest/<scan>.<hemi>.<measure>.<suffix>.<space>.mgz``) or 'freesurfer'
        (``dest/<scan>/surf/<hemi>.<measure>.<suffix>.<space>.mgz``, qcache-style names).
    space : str
        'ico' writes the icosahedral maps; 'native' resamples each scan back onto its own
        ``sphere.reg`` (cohorts built from native maps) and writes curv files by default.
    fill_value : float or None
        written instead of NaN (e.g. 0, FreeSurfer's value outside cortex); None keeps NaN.
    overwrite : bool
        replace existing output files (inputs are never replaced).

    Returns
    -------
    list[Path]
        The paths written (per-scan files; then the table written beside them).
    """
    dest = Path(dest)
    inputs = [] if cohort.sources is None else [p for p in cohort.sources["map"].dropna()]
    name = dest.name.lower()
    if cohort.feature_names is not None or name.endswith((".csv", ".tsv")):
        return [_write_roi_table(cohort, dest, inputs, overwrite)]
    if name.endswith((".mgh", ".mgz")):
        maps = (cohort.maps if fill_value is None
                else np.where(np.isnan(cohort.maps), np.float32(fill_value), cohort.maps))
        paths = [sio.write_mgh(dest, maps, inputs=inputs, overwrite=overwrite)]
        if fsgd is not None:
            variables = [c for c in cohort.covariates().columns if pd.api.types.is_numeric_dtype(cohort.table[c])]
            fs_table = cohort.table.assign(subject=cohort.scan_ids)
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
        if cohort.sources is None or cohort.sources["sphere"].isna().any():
            raise CohortError("space='native' needs each scan's sphere.reg; this cohort was not built from native maps")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for i, scan in enumerate(cohort.scan_ids):
        values = np.asarray(cohort.maps[i])
        level_name = space_name(cohort.level)
        if space == "native":
            values = _to_native(values, cohort.sources["sphere"].iloc[i])
            level_name = None
        if fill_value is not None:
            values = np.where(np.isnan(values), np.float32(fill_value), values)
        parts = [p for p in (cohort.hemi, cohort.measure, suffix, level_name) if p]
        ext = {"mgz": ".mgz", "mgh": ".mgh", "gii": ".shape.gii", "curv": ""}[format]
        if layout == "flat":
            path = dest / (".".join([scan, *parts]) + ext)
        else:
            (dest / scan / "surf").mkdir(parents=True, exist_ok=True)
            path = dest / scan / "surf" / (".".join(parts) + ext)
        written.append(sio.write_map(path, values, hemi=cohort.hemi, inputs=inputs, overwrite=overwrite))
    table = cohort.table.assign(path=[str(p.relative_to(dest)) for p in written])
    from surfharm._atomic import write_text_atomic

    written.append(write_text_atomic(dest / "cohort.tsv", table.to_csv(sep="\t", index=False),
                                     inputs=inputs, overwrite=overwrite))
    return written

def _write_roi_table(cohort: Cohort, dest: Path, inputs, overwrite) -> Path:
    from surfharm._atomic import write_text_atomic

    if cohort.feature_names is None:
        raise CohortError(f"{dest}: a CSV/TSV output holds ROI data; this cohort holds vertex maps")
    frame = pd.concat([cohort.table, pd.DataFrame(np.asarray(cohort.maps), columns=cohort.feature_names)], axis=1)
    sep = "\t" if dest.name.lower().endswith(".tsv") else ","
    return write_text_atomic(dest, frame.to_csv(sep=sep, index=False), inputs=inputs, overwrite=overwrite)


def _to_native(values: np.ndarray, sphere_path) -> np.ndarray:
    from surfharm.resample import ico_to_native

    return ico_to_native(values, sio.read_surface(sphere_path), source_name=str(sphere_path))
