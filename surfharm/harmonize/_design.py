"""Design matrices for the ComBat family: site indicators, covariate encoding, spline bases.

A ComBat design is ``[S | C]``: ``S`` (n_scans, n_sites) one-hot site indicators (no intercept:
the indicators sum to one) and ``C`` (n_scans, n_covariate_columns) the encoded covariates:

- numeric DataFrame columns are used as they are (one column each);
- non-numeric columns (object, string, category, bool) are one-hot encoded with the first level
  (in sorted order) dropped, because the site indicators already span the intercept;
- columns named in ``smooth_terms`` become a cubic B-spline basis (scikit-learn's
  ``SplineTransformer`` with explicit knots at quantiles, linear extrapolation beyond them, last
  spline dropped for the same reason), shared by every feature so that all features are solved in
  one least-squares product.

The fitted encoding is plain data (column names, levels, knots) stored in the model file, so that
``transform`` on new scans builds exactly the columns ``fit`` used.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from surfharm.harmonize.base import HarmonizerInputError

SPLINE_DEGREE = 3


# -- sites -----------------------------------------------------------------------------------------

def site_levels(sites: np.ndarray) -> list:
    """Sorted distinct site labels (ints sort numerically, everything else as strings)."""
    labels = pd.unique(pd.Series(sites, dtype=object))
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in labels):
        return sorted(int(s) for s in labels)
    return sorted(str(s) for s in labels)


def site_codes(sites: np.ndarray, levels: Sequence, *, what: str = "sites") -> np.ndarray:
    """Index of each scan's site in ``levels``; an unseen label raises an error naming it."""
    lookup = {_site_key(s): i for i, s in enumerate(levels)}
    codes = np.empty(len(sites), dtype=np.int64)
    unseen = []
    for i, s in enumerate(sites):
        code = lookup.get(_site_key(s))
        if code is None:
            unseen.append(s)
            continue
        codes[i] = code
    if unseen:
        names = sorted({str(s) for s in unseen})
        raise HarmonizerInputError(
            f"{what} holds site(s) {names} that the model was not fitted on (known sites: "
            f"{[str(s) for s in levels]}); ComBat cannot estimate the effect of a scanner it has not seen: "
            "refit including scans of that site (at least 2), or map the site to a known one if it is the same scanner")
    return codes


def _site_key(label) -> str:
    if isinstance(label, (np.integer,)):
        label = int(label)
    return str(label)


def one_hot(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """(n, n_levels) float64 indicator matrix of integer ``codes``."""
    out = np.zeros((len(codes), n_levels))
    out[np.arange(len(codes)), codes] = 1.0
    return out


# -- covariates ------------------------------------------------------------------------------------

@dataclass
class CovariateEncoder:
    """Turns a covariate table into design columns; fitted once, applied to new scans unchanged.

    Attributes set by :meth:`fit`: ``columns`` (input column names, in order), ``kinds`` (per
    column: "numeric", "categorical" or "smooth"), ``levels`` (categorical levels, sorted, as
    strings), ``knots`` (spline breakpoints of smooth columns), ``names`` (output column names).
    """

    smooth_terms: tuple = ()
    spline_df: int = 5
    columns: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)
    knots: dict = field(default_factory=dict)
    names: list = field(default_factory=list)

    def fit(self, covariates, n_scans: int) -> "CovariateEncoder":
        table = as_table(covariates, n_scans)
        missing = [t for t in self.smooth_terms if t not in table.columns]
        if missing:
            raise HarmonizerInputError(
                f"smooth_terms names column(s) {missing} that the covariates do not have "
                f"(columns: {list(table.columns)})")
        if self.smooth_terms and self.spline_df < 2:
            raise HarmonizerInputError(f"spline_df must be >= 2 (got {self.spline_df})")
        self.columns = [str(c) for c in table.columns]
        self.kinds, self.levels, self.knots = {}, {}, {}
        for col in self.columns:
            values = table[col]
            if col in self.smooth_terms:
                numeric = _numeric_column(values, col, why="a smooth term must be numeric")
                self.kinds[col] = "smooth"
                self.knots[col] = _quantile_knots(numeric, self.spline_df, col)
            elif _is_numeric(values):
                self.kinds[col] = "numeric"
            else:
                self.kinds[col] = "categorical"
                self.levels[col] = sorted(values.astype(str).unique())
        self.names = []
        for col in self.columns:
            kind = self.kinds[col]
            if kind == "numeric":
                self.names.append(col)
            elif kind == "categorical":
                self.names += [f"{col}[{lev}]" for lev in self.levels[col][1:]]
            else:
                n_basis = len(self.knots[col]) + SPLINE_DEGREE - 2
                self.names += [f"{col}:spline{k}" for k in range(n_basis)]
        return self

    def transform(self, covariates, n_scans: int) -> np.ndarray:
        """(n_scans, len(names)) float64 design columns."""
        table = as_table(covariates, n_scans)
        got = [str(c) for c in table.columns]
        if got != self.columns:
            raise HarmonizerInputError(
                f"covariates have columns {got}; the model was fitted with {self.columns} (same names, same order)")
        blocks = [np.zeros((n_scans, 0))]
        for col in self.columns:
            kind, values = self.kinds[col], table[col]
            if kind == "numeric":
                blocks.append(_numeric_column(values, col, why="it was numeric at fit time")[:, None])
            elif kind == "categorical":
                text = values.astype(str).to_numpy()
                unknown = sorted(set(text) - set(self.levels[col]))
                if unknown:
                    raise HarmonizerInputError(
                        f"covariate {col!r} has level(s) {unknown} not seen at fit time (known: {self.levels[col]})")
                blocks.append(np.stack([(text == lev).astype(float) for lev in self.levels[col][1:]], axis=1)
                              if len(self.levels[col]) > 1 else np.zeros((n_scans, 0)))
            else:
                values = _numeric_column(values, col, why="it is a smooth term")
                blocks.append(spline_basis(values, self.knots[col]))
        return np.hstack(blocks)

    def to_state(self) -> dict[str, Any]:
        return {"smooth_terms": list(self.smooth_terms), "spline_df": self.spline_df, "columns": self.columns,
                "kinds": self.kinds, "levels": self.levels,
                "knots": {k: np.asarray(v).tolist() for k, v in self.knots.items()}, "names": self.names}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CovariateEncoder":
        return cls(smooth_terms=tuple(state["smooth_terms"]), spline_df=int(state["spline_df"]),
                   columns=list(state["columns"]), kinds=dict(state["kinds"]), levels=dict(state["levels"]),
                   knots={k: np.asarray(v, dtype=float) for k, v in state["knots"].items()},
                   names=list(state["names"]))


def as_table(covariates, n_scans: int) -> pd.DataFrame:
    """Covariates as a DataFrame with one row per scan (None gives zero columns).

    Arrays become numeric columns ``x0, x1, ...``; an array that is not numeric is refused (pass a
    DataFrame so that the categorical columns are named).
    """
    if covariates is None:
        return pd.DataFrame(index=range(n_scans))
    if isinstance(covariates, pd.Series):
        covariates = covariates.to_frame()
    if isinstance(covariates, pd.DataFrame):
        table = covariates.reset_index(drop=True)
    else:
        arr = np.asarray(covariates)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise HarmonizerInputError(f"covariates must be 2-D (n_scans, n_covariates), got shape {arr.shape}")
        if arr.dtype.kind not in "fiub":
            raise HarmonizerInputError(
                f"covariates array has non-numeric dtype {arr.dtype}; pass a pandas DataFrame so that "
                "categorical columns are named and one-hot encoded")
        table = pd.DataFrame(arr.astype(float), columns=[f"x{i}" for i in range(arr.shape[1])])
    if len(table) != n_scans:
        raise HarmonizerInputError(f"covariates have {len(table)} rows but X has {n_scans} scans; "
                                   "expected one row per scan")
    for col in table.columns:
        bad = np.flatnonzero(pd.isna(table[col]).to_numpy())
        if bad.size:
            raise HarmonizerInputError(
                f"covariate {col!r} is missing at scans {bad[:5].tolist()} ({bad.size} in all); "
                "ComBat needs every covariate for every scan: impute it or drop those scans")
    return table


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _numeric_column(values: pd.Series, col: str, *, why: str) -> np.ndarray:
    if not _is_numeric(values):
        raise HarmonizerInputError(f"covariate {col!r} must be numeric ({why}), got dtype {values.dtype}")
    out = values.to_numpy(dtype=float)
    if not np.isfinite(out).all():
        raise HarmonizerInputError(f"covariate {col!r} holds non-finite values")
    return out


# -- splines ---------------------------------------------------------------------------------------

def _quantile_knots(values: np.ndarray, df: int, col: str) -> np.ndarray:
    """Knot breakpoints at evenly spaced quantiles so that each spline covers similar scan counts."""
    n_knots = df - SPLINE_DEGREE + 2
    if n_knots < 2:
        n_knots = 2
    knots = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_knots)))
    if knots.size < n_knots:
        raise HarmonizerInputError(
            f"smooth term {col!r} has only {np.unique(values).size} distinct values: too few for a spline with "
            f"{df} degrees of freedom; lower spline_df or model {col!r} as a linear covariate")
    return knots


def spline_basis(values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis (n, len(knots) + 1) at ``values``, last spline dropped, linear beyond the knots.

    The full basis sums to one (a partition of unity) and would duplicate the intercept that the
    site indicators carry; dropping one spline keeps the column space free of it.
    """
    from sklearn.preprocessing import SplineTransformer

    transformer = SplineTransformer(knots=np.asarray(knots, dtype=float)[:, None], degree=SPLINE_DEGREE,
                                    extrapolation="linear", include_bias=False)
    transformer.fit(np.asarray(knots, dtype=float)[:, None])
    return transformer.transform(np.asarray(values, dtype=float)[:, None])


# -- identifiability --------------------------------------------------------------------------------

def check_identifiable(site_design: np.ndarray, cov_design: np.ndarray, names: Sequence[str]) -> None:
    """Refuse a design whose covariates are confounded with site or collinear among themselves.

    A covariate column that is a combination of the site indicators (constant within every site,
    e.g. a diagnosis recruited at one site only) cannot be told apart from the site effect: ComBat
    would remove the biology with the scanner. The error names those columns.
    """
    if cov_design.shape[1] == 0:
        return
    full = np.hstack([site_design, cov_design])
    if np.linalg.matrix_rank(full) == full.shape[1]:
        return
    scale = np.maximum(np.abs(cov_design).max(axis=0), 1e-300)
    confounded = []
    for j, name in enumerate(names):
        column = cov_design[:, j]
        coef, *_ = np.linalg.lstsq(site_design, column, rcond=None)
        if np.abs(column - site_design @ coef).max() <= 1e-9 * scale[j]:
            confounded.append(name)
    if confounded:
        sources = sorted({_source_column(name) for name in confounded})
        detail = "" if sources == confounded else f" (design columns {confounded})"
        raise HarmonizerInputError(
            f"covariate column(s) {sources}{detail} are confounded with site (constant within each site, or a "
            "combination of the sites): their effect cannot be separated from the site effect. Drop them, or "
            "add scans that vary them within a site")
    collinear = []
    for j, name in enumerate(names):
        others = np.hstack([site_design, np.delete(cov_design, j, axis=1)])
        if np.linalg.matrix_rank(others) == np.linalg.matrix_rank(full):
            collinear.append(name)
    raise HarmonizerInputError(
        f"covariate columns {collinear} are collinear (one is a combination of the others and the sites); "
        "drop one of them")


def _source_column(design_name: str) -> str:
    """Input column of a design column name: ``sex[M]`` -> ``sex``, ``age:spline2`` -> ``age``."""
    return design_name.split("[", 1)[0].split(":spline", 1)[0]
