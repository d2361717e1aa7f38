"""Participants / covariate tables and ROI tables (``aparcstats2table``, ``asegstats2table``, CSV).

Column names are normalised so that the rest of surfharm sees one vocabulary: ``subject``,
``session``, ``site`` (BIDS ``participant_id`` / ``session_id``, ENIGMA ``SubjID`` and FreeSurfer's
``lh.aparc.thickness``-style first column of ``aparcstats2table`` are recognised). Identifiers are
kept as strings (``"001"`` stays ``"001"``); other columns become numeric when every value parses.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pandas as pd

from surfharm.io._files import existing_file, is_gzip
from surfharm.io.errors import InputTableError

#: Accepted spellings of the identifier columns, mapped to surfharm's names.
COLUMN_ALIASES = {
    "participant_id": "subject", "subject_id": "subject", "subjid": "subject", "subj": "subject",
    "fsid": "subject", "sub": "subject", "subject": "subject",
    "session_id": "session", "ses": "session", "session": "session",
    "site": "site", "site_id": "site", "scanner": "site",
}
#: Global columns of ``aparcstats2table``/``asegstats2table`` that are covariates, not ROI features.
GLOBAL_COLUMNS = ("BrainSegVolNotVent", "eTIV", "EstimatedTotalIntraCranialVol")
#: Per-scan descriptors that may sit in the ROI table itself; never taken as ROI features (any case).
DESCRIPTOR_COLUMNS = ("age", "sex", "gender", "time", "visit", "interval", "years", "group", "diagnosis",
                      "dx", "handedness", "icv", "tiv")
_ID_COLUMNS = ("subject", "session", "site")
_STATS_TABLE_SUFFIXES = (".thickness", ".area", ".volume", ".meancurv", ".thicknessstd", ".gauscurv")


def _first_line(path: Path) -> str:
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return fh.readline()


def _separator(path: Path) -> str:
    """Tab for .tsv/.txt/.dat (FreeSurfer's stats tables) or when the header has more tabs than commas."""
    first_line = _first_line(path)
    if path.name.lower().removesuffix(".gz").endswith((".tsv", ".txt", ".dat")):
        return "\t"
    return "\t" if first_line.count("\t") > first_line.count(",") else ","


def _canonical_names(columns, id_column: str | None, path) -> dict[str, str]:
    """Renames to surfharm's id vocabulary; an alias is used only when the canonical name is free."""
    rename: dict[str, str] = {}
    if id_column is not None:
        if id_column not in columns:
            raise InputTableError(f"{path}: no column {id_column!r}; columns are {list(columns)[:10]}")
        rename[id_column] = "subject"
    for col in columns:
        canonical = COLUMN_ALIASES.get(col.lower())
        if col in rename or canonical is None or canonical in rename.values():
            continue
        if canonical == col or canonical not in columns:
            rename[col] = canonical
    if "subject" not in rename.values() and "subject" not in columns:
        first = columns[0]
        # aparcstats2table names its id column after the table ("lh.aparc.thickness"),
        # asegstats2table "Measure:volume".
        if first.endswith(_STATS_TABLE_SUFFIXES) or first.startswith("Measure:"):
            rename[first] = "subject"
    return rename


def read_table(path: str | os.PathLike, *, id_column: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV participants, covariate or ROI table (``.gz`` too) with normalised column names.

    ``id_column``: the column holding subject ids when it is not one of :data:`COLUMN_ALIASES`
    (for ``aparcstats2table``/``asegstats2table`` output the first column is used).

    Returns
    -------
    DataFrame
        DataFrame, one row per line; id columns as str, columns whose every value parses as a number
        as numbers, the rest as str. ``table.attrs["source"]`` is the file name.
    """
    path = existing_file(path)
    try:
        table = pd.read_csv(path, sep=_separator(path), dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputTableError(f"{path}: cannot parse as a CSV/TSV table ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise InputTableError(f"{path}: table has no rows")
    table = table.rename(columns=_canonical_names(list(table.columns), id_column, path))
    for col in table.columns:
        if col in _ID_COLUMNS:
            table[col] = table[col].str.strip()
            continue
        converted = pd.to_numeric(table[col], errors="coerce")
        if converted.notna().sum() == table[col].notna().sum():
            table[col] = converted
    table.attrs["source"] = str(path)
    return table


def join_covariates(table: pd.DataFrame, covariates: pd.DataFrame, *, on=("subject",),
                    source: str = "table", covariates_source: str = "covariates") -> pd.DataFrame:
    """Left-join ``covariates`` onto ``table`` by the id columns ``on``; every row must find its match.

    Raises InputTableError naming the ids missing from the covariates, or duplicated in them.
    """
    on = [c for c in on if c in table.columns and c in covariates.columns]
    if not on:
        raise InputTableError(f"{source} and {covariates_source} share no id column (expected 'subject')")
    dup = covariates[covariates.duplicated(on, keep=False)]
    if not dup.empty:
        raise InputTableError(f"{covariates_source}: duplicate ids {dup[on].drop_duplicates().values.tolist()[:5]}")
    extra = [c for c in covariates.columns if c not in table.columns or c in on]
    merged = table.merge(covariates[extra], on=on, how="left", indicator=True)
    missing = merged.loc[merged["_merge"] == "left_only", on].values.tolist()
    if missing:
        raise InputTableError(f"{covariates_source}: no row for {len(missing)} id(s) of {source}, e.g. {missing[:5]}")
    return merged.drop(columns="_merge")


def read_roi_table(path: str | os.PathLike, *, covariates: str | os.PathLike | pd.DataFrame | None = None,
                   id_column: str | None = None, features=None) -> tuple[pd.DataFrame, list[str]]:
    """Read an ROI table (``aparcstats2table``/``asegstats2table`` TSV or a CSV with one row per scan).

    ``covariates``: a table (path or DataFrame) joined by subject (and session when both have it).
    ``features``: the ROI columns to keep; default every numeric column that is not an id, a global
    measure (:data:`GLOBAL_COLUMNS`, kept as covariates), a per-scan descriptor such as age or sex
    (:data:`DESCRIPTOR_COLUMNS`, any case) or a column of ``covariates``.

    Returns
    -------
    tuple[DataFrame, list[str]]
        ``(table, feature_names)``: one row per scan with id, covariate and feature columns.
    """
    table = read_table(path, id_column=id_column)
    if "subject" not in table.columns:
        raise InputTableError(f"{path}: no subject id column (expected one of "
                              f"{sorted(k for k, v in COLUMN_ALIASES.items() if v == 'subject')} or id_column=...)")
    cov_columns: list[str] = []
    if covariates is not None:
        cov_table = covariates if isinstance(covariates, pd.DataFrame) else read_table(covariates)
        cov_columns = [c for c in cov_table.columns if c not in _ID_COLUMNS or c == "site"]
        table = join_covariates(table, cov_table, on=("subject", "session"), source=str(path),
                                covariates_source=str(cov_table.attrs.get("source", "covariates")))
    if features is None:
        features = [c for c in table.columns
                    if c not in _ID_COLUMNS and c not in GLOBAL_COLUMNS and c not in cov_columns
                    and str(c).lower() not in DESCRIPTOR_COLUMNS and pd.api.types.is_numeric_dtype(table[c])]
    else:
        features = list(features)
        absent = [f for f in features if f not in table.columns]
        if absent:
            raise InputTableError(f"{path}: feature column(s) {absent[:5]} not found")
    if not features:
        raise InputTableError(f"{path}: no numeric ROI column found")
    bad = [f for f in features if not pd.api.types.is_numeric_dtype(table[f])]
    if bad:
        raise InputTableError(f"{path}: ROI column(s) {bad[:5]} hold non-numeric values")
    return table, features
