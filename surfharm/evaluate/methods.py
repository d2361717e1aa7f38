"""Which harmonizers a benchmark runs, with which options: :class:`MethodSpec`.

A method is any harmonizer registered in :mod:`surfharm.harmonize` (``raw``, ``mean-shift``,
``combat``, ``s2sgan`` ...), a label for the tables, keyword options for its constructor and, for
``fit``, keyword arguments taken from table columns (e.g. longitudinal ComBat's ``subjects``).

Text form (command line): ``[LABEL=]NAME[:KEY=VALUE[,KEY=VALUE...]]``; a VALUE is read as JSON when
it parses (``true``, ``3``, ``0.5``, ``"A"``) and as a string otherwise; ``@column`` passes that table
column to ``fit``/``transform`` (keyword side data the method declares, such as ``subjects``)
instead of to the constructor. Examples::

    combat
    combat-ref=combat:reference_site=A
    long=combat-long:subjects=@subject
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from surfharm import harmonize


@dataclass(frozen=True)
class MethodSpec:
    """One harmonizer to benchmark.

    Attributes
    ----------
    name : str
        registry name (:func:`surfharm.harmonize.available`).
    label : str
        name shown in tables and plots (default: ``name``).
    options : dict[str, Any]
        constructor keyword arguments.
    column_kwargs : dict[str, str]
        ``fit``/``transform`` keyword -> table column (rows follow the data).
    """

    name: str
    label: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    column_kwargs: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name

    def build(self) -> harmonize.Harmonizer:
        """A new, unfitted harmonizer (one per fold: nothing is shared between fits)."""
        cls = harmonize.get(self.name)
        try:
            return cls(**self.options)
        except TypeError as exc:
            raise ValueError(f"method {self.display!r}: bad option for {self.name!r} ({exc})") from None

    def table_kwargs(self, table: pd.DataFrame, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The ``column_kwargs`` for the scans ``rows`` of ``table``: side data that the harmonizer
        declares (:attr:`surfharm.harmonize.Harmonizer.side_data`, e.g. ``subjects``), passed by
        keyword to both ``fit`` and ``transform``. Raises ValueError for a column it does not name or
        a keyword the method does not take."""
        cls = harmonize.get(self.name)
        takes = [n for n in cls.side_data if n != "covariates"]   # covariates come from the data's columns
        unknown = sorted(set(self.column_kwargs) - set(takes))
        if unknown:
            raise ValueError(f"method {self.display!r}: {self.name!r} takes no {', '.join(unknown)} from the table; "
                             f"it takes {', '.join(takes) if takes else 'no table column'}")
        missing = [c for c in self.column_kwargs.values() if c not in table.columns]
        if missing:
            raise ValueError(f"method {self.display!r} needs table column(s) {missing}; "
                             f"columns are {list(table.columns)}")
        return {k: table[c].to_numpy()[rows] for k, c in self.column_kwargs.items()}

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        """Read the text form described in the module docstring."""
        label, _, rest = text.partition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
        name, _, opts = rest.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"method {text!r}: no harmonizer name; expected [LABEL=]NAME[:KEY=VALUE,...]")
        options, columns = {}, {}
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"method {text!r}: option {item!r} is not KEY=VALUE")
            if value.startswith("@"):
                columns[key.strip()] = value[1:]
            else:
                options[key.strip()] = _parse_value(value)
        return cls(name=name, label=label.strip(), options=options, column_kwargs=columns)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | str) -> "MethodSpec":
        """From a config-file entry: a string (text form) or ``{name, label, options, column_kwargs}``."""
        if isinstance(values, str):
            return cls.parse(values)
        unknown = sorted(set(values) - {"name", "label", "options", "column_kwargs"})
        if unknown or "name" not in values:
            raise ValueError(f"method entry {values!r}: expected keys name, label, options, column_kwargs")
        return cls(name=values["name"], label=values.get("label", ""), options=dict(values.get("options", {})),
                   column_kwargs=dict(values.get("column_kwargs", {})))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def default_methods() -> list[MethodSpec]:
    """The baselines plus every registered ComBat-family method (learned models such as S2SGAN
    train for long and are run only when named)."""
    names = ["raw", "global-scaling", "mean-shift", "mean-std"]
    names += [n for n in harmonize.available() if n.startswith("combat") and n not in names]
    specs = []
    for name in names:
        # Longitudinal methods take the subject of each scan (fit(..., subjects=...)).
        takes_subjects = "subjects" in harmonize.get(name).side_data
        specs.append(MethodSpec(name, column_kwargs={"subjects": "subject"} if takes_subjects else {}))
    return specs
