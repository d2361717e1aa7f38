"""FreeSurfer Group Descriptor (FSGD) files: the class and covariates of each subject of ``mri_glmfit``.

Format (keywords case-insensitive, ``#`` starts a comment)::

    GroupDescriptorFile 1
    Title   thickness-by-site
    Class   siteA
    Class   siteB
    Variables  age  sex
    Input  subj001  siteA  34  1
    Input  subj002  siteB  51  0

The row order of the ``Input`` lines is the frame order of the stacked MGH that ``mris_preproc --fsgd``
writes, which is how :meth:`surfharm.Cohort.from_stacked_mgh` pairs frames with subjects.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from surfharm._atomic import write_text_atomic
from surfharm.io._files import existing_file, read_all_bytes
from surfharm.io.errors import InputFileError

_IGNORED = {"measurementname", "defaultvariable", "plotfile", "creationdate", "sumfile", "deltavariable",
            "classes", "variablecovariates"}


def read_fsgd(path: str | os.PathLike, *, class_column: str = "class") -> tuple[pd.DataFrame, dict]:
    """Parse an FSGD file.

    Returns
    -------
    tuple[DataFrame, dict]
        ``(table, info)``: table with one row per ``Input`` line, in file order, columns ``subject``,
        ``class_column`` and one numeric column per variable; info ``{"title": str, "classes": [...],
        "variables": [...]}``.
    """
    path = existing_file(path)
    try:
        text = read_all_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not a text FSGD file (binary content)") from None
    title, classes, variables, rows = "", [], [], []
    saw_header = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, *fields = line.split()
        key = key.lower()
        if key == "groupdescriptorfile":
            if fields[:1] != ["1"]:
                raise InputFileError(f"{path}:{lineno}: unsupported FSGD version {fields[:1]} (expected 1)")
            saw_header = True
        elif key == "title":
            title = " ".join(fields)
        elif key == "class":
            if not fields:
                raise InputFileError(f"{path}:{lineno}: 'Class' line without a class name")
            classes.append(fields[0])
        elif key == "variables":
            variables = fields
        elif key == "input":
            if len(fields) != 2 + len(variables):
                raise InputFileError(
                    f"{path}:{lineno}: 'Input' line has {len(fields)} fields, expected subject, class and "
                    f"{len(variables)} variable(s) {variables}")
            subject, klass, *values = fields
            if classes and klass not in classes:
                raise InputFileError(f"{path}:{lineno}: subject {subject} has class {klass!r}, not declared "
                                     f"by a 'Class' line (declared: {classes})")
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                raise InputFileError(f"{path}:{lineno}: variable values {values} of subject {subject} "
                                     "are not numbers") from None
            rows.append([subject, klass, *numbers])
        elif key not in _IGNORED:
            raise InputFileError(f"{path}:{lineno}: unknown FSGD keyword {key!r}")
    if not saw_header:
        raise InputFileError(f"{path}: not an FSGD file (no 'GroupDescriptorFile 1' line)")
    if not rows:
        raise InputFileError(f"{path}: FSGD file lists no subject ('Input' lines)")
    table = pd.DataFrame(rows, columns=["subject", class_column, *variables])
    duplicated = table["subject"][table["subject"].duplicated()].tolist()
    if duplicated:
        raise InputFileError(f"{path}: subject(s) {duplicated[:5]} listed more than once")
    return table, {"title": title, "classes": classes, "variables": variables}


def write_fsgd(path: str | os.PathLike, table: pd.DataFrame, *, class_column: str, variables=(),
               title: str = "surfharm", inputs=(), overwrite: bool = True) -> Path:
    """Write an FSGD file with one ``Input`` line per row of ``table`` (columns subject, class, variables)."""
    classes = list(dict.fromkeys(str(c) for c in table[class_column]))
    lines = ["GroupDescriptorFile 1", f"Title {title}"]
    lines += [f"Class {c}" for c in classes]
    if variables:
        lines.append("Variables " + " ".join(variables))
    for _, row in table.iterrows():
        values = " ".join(repr(float(row[v])) for v in variables)
        lines.append(f"Input {row['subject']} {row[class_column]} {values}".rstrip())
    return write_text_atomic(Path(path), "\n".join(lines) + "\n", inputs=inputs, overwrite=overwrite)
