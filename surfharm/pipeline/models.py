"""Harmonizers of a run: build one from its text form, fit it on a Cohort, save it, load it back.

The method is written as on ``surfharm benchmark``'s command line: ``NAME[:KEY=VALUE,...]`` with a
registered harmonizer name (``combat``, ``combat-long``, ``s2sgan``, ``mean-std`` ...), e.g.
``combat:reference_site=A`` or ``s2sgan:max_steps=400,condition_on=["age"]``.

Table-derived arguments are passed for the harmonizer when its ``fit``/``transform`` names them
(``subjects`` for longitudinal ComBat). Model files: ``model.npz`` (``save_state``: arrays + JSON)
for every method except S2SGAN, which writes ``model.safetensors`` with a ``model.json`` copy of
its metadata; neither is ever a pickle.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm import harmonize
from surfharm.cohort import Cohort
from surfharm.evaluate.methods import MethodSpec

#: Harmonizers that learn networks: maps are brought to this level by default (CPU-friendly).
LEARNED_DEFAULT_LEVEL = {"s2sgan": 5}


def parse_method(text: str, *, smooth=(), reference_site: str | None = None, progress: bool = True) -> MethodSpec:
    """The :class:`MethodSpec` of ``text``, with the run's ``--smooth`` / ``--reference-site`` added
    for harmonizers whose constructor takes them, and a progress bar for those that offer one."""
    spec = MethodSpec.parse(text)
    accepted = inspect.signature(harmonize.get(spec.name).__init__).parameters
    options = dict(spec.options)
    if smooth:
        if "smooth_terms" not in accepted:
            raise ValueError(f"--smooth: method {spec.name!r} has no smooth terms (ComBat has)")
        options.setdefault("smooth_terms", list(smooth))
    if reference_site is not None:
        key = "reference_site" if "reference_site" in accepted else ("target" if "target" in accepted else None)
        if key is None:
            raise ValueError(f"--reference-site: method {spec.name!r} has no reference site")
        options.setdefault(key, reference_site)
    if progress and "progress" in accepted:
        options.setdefault("progress", True)
    return MethodSpec(spec.name, spec.label, options, dict(spec.column_kwargs))


def table_arguments(harmonizer, cohort: Cohort, method: str = "fit") -> dict[str, np.ndarray]:
    """Keyword arguments of ``harmonizer.<method>`` that come from the cohort table (``subjects``)."""
    accepted = inspect.signature(getattr(harmonizer, method)).parameters
    return {"subjects": cohort.subjects} if "subjects" in accepted else {}


def covariates_of(cohort: Cohort, keep) -> pd.DataFrame | None:
    """The kept covariate columns of the cohort (None when none are kept)."""
    return cohort.covariates(list(keep)) if keep else None


def fit_and_transform(spec: MethodSpec, cohort: Cohort, keep) -> tuple[harmonize.Harmonizer, np.ndarray]:
    """Fit ``spec``'s harmonizer on every scan of ``cohort`` and harmonize them: (model, (n_scans, V) float32)."""
    harmonizer = spec.build()
    covariates = covariates_of(cohort, keep)
    harmonizer.fit(cohort.maps, cohort.sites, covariates, **table_arguments(harmonizer, cohort, "fit"))
    harmonized = harmonizer.transform(cohort.maps, cohort.sites, covariates,
                                      **table_arguments(harmonizer, cohort, "transform"))
    return harmonizer, np.asarray(harmonized, dtype=np.float32)


def transform(harmonizer, cohort: Cohort, keep) -> np.ndarray:
    """Harmonize the scans of ``cohort`` with a fitted model: (n_scans, V) float32."""
    harmonized = harmonizer.transform(cohort.maps, cohort.sites, covariates_of(cohort, keep),
                                      **table_arguments(harmonizer, cohort, "transform"))
    return np.asarray(harmonized, dtype=np.float32)


def model_file_name(harmonizer) -> str:
    """``model.safetensors`` for S2SGAN, ``model.npz`` for the others."""
    return "model.safetensors" if harmonizer.registry_name == "s2sgan" else "model.npz"


def save_model(harmonizer, folder) -> Path:
    """Write the fitted ``harmonizer`` into ``folder`` (name from :func:`model_file_name`)."""
    return Path(harmonizer.save(Path(folder) / model_file_name(harmonizer)))


def find_model(path, key: str | None = None) -> Path:
    """The model file of ``path``: the file itself, or ``path/<key>/model.*`` / ``path/model.*``
    for an output folder of ``surfharm harmonize``. Raises FileNotFoundError naming what was looked for."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist; expected a model file (model.npz, "
                                "model.safetensors) or the output folder of 'surfharm harmonize'")
    candidates = [folder / name for folder in ([path / key] if key else []) + [path]
                  for name in ("model.npz", "model.safetensors")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no model in {path}: looked for {', '.join(str(c) for c in candidates)}")


def load_model(path) -> harmonize.Harmonizer:
    """Read a model written by :func:`save_model` (any registered harmonizer)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return harmonize.get("s2sgan").load(path)
    from surfharm.harmonize.base import load_state

    _, meta = load_state(path)
    name = meta.get("method")
    if not name:
        raise ValueError(f"{path}: the model metadata names no method; expected a file written by surfharm")
    return harmonize.get(name).load(path)
