"""Harmonizers of a run: build one from its text form, fit it on a Cohort, save it, load it back.

The method is written as on ``surfharm benchmark``'s command line: ``NAME[:KEY=VALUE,...]`` with a
registered harmonizer name (``combat``, ``combat-long``, ``s2sgan``, ``mean-std`` ...), e.g.
``combat:reference_site=A`` or ``s2sgan:max_steps=400,condition_on=["age"]``.

Side data are passed as the harmonizer declares them (:func:`surfharm.harmonize.side_data_for`):
the kept covariates, and ``subjects`` from the cohort table for longitudinal ComBat. Model files:
``model`` plus the method's :attr:`~surfharm.harmonize.Harmonizer.model_suffix` (``model.npz``,
arrays + JSON, for every method except S2SGAN, which writes ``model.safetensors``); neither is ever
a pickle, and :func:`surfharm.harmonize.load` reads both back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from surfharm import harmonize
from surfharm.cohort import Cohort
from surfharm.evaluate.methods import MethodSpec
from surfharm.io.model_files import MODEL_SUFFIXES

#: Harmonizers that learn networks: maps are brought to this level by default (CPU-friendly).
LEARNED_DEFAULT_LEVEL = {"s2sgan": 5, "cdae": 5, "paired-unet": 5}


def parse_method(text: str, *, smooth=(), reference_site: str | None = None, progress: bool = True) -> MethodSpec:
    """The :class:`MethodSpec` of ``text``, with the run's ``--smooth`` / ``--reference-site`` added
    for harmonizers whose constructor takes them, and a progress bar for those that offer one."""
    spec = MethodSpec.parse(text)
    accepted = harmonize.get(spec.name)._get_param_names()
    options = dict(spec.options)
    if smooth:
        if "smooth_terms" not in accepted:
            raise ValueError(f"--smooth: method {spec.name!r} has no smooth terms (ComBat has)")
        options.setdefault("smooth_terms", list(smooth))
    if reference_site is not None:
        key = next((k for k in ("reference_site", "target", "target_site") if k in accepted), None)
        if key is None:
            raise ValueError(f"--reference-site: method {spec.name!r} has no reference site")
        options.setdefault(key, reference_site)
    if progress and "progress" in accepted:
        options.setdefault("progress", True)
    return MethodSpec(spec.name, spec.label, options, dict(spec.column_kwargs))


def side_data(harmonizer, cohort: Cohort, keep) -> dict:
    """The side data ``harmonizer`` takes (``fit`` and ``transform`` keywords besides ``sites``): the kept
    covariates and, for methods that declare them, the cohort's ``subjects``."""
    return harmonize.side_data_for(harmonizer, covariates=covariates_of(cohort, keep), subjects=cohort.subjects)


def covariates_of(cohort: Cohort, keep) -> pd.DataFrame | None:
    """The kept covariate columns of the cohort (None when none are kept)."""
    return cohort.covariates(list(keep)) if keep else None


def fit_and_transform(spec: MethodSpec, cohort: Cohort, keep) -> tuple[harmonize.Harmonizer, np.ndarray]:
    """Fit ``spec``'s harmonizer on every scan of ``cohort`` and harmonize them: (model, (n_scans, V) float32)."""
    harmonizer = spec.build()
    side = side_data(harmonizer, cohort, keep)
    harmonizer.fit(cohort.maps, sites=cohort.sites, **side)
    harmonized = harmonizer.transform(cohort.maps, sites=cohort.sites, **side)
    return harmonizer, np.asarray(harmonized, dtype=np.float32)


def transform(harmonizer, cohort: Cohort, keep) -> np.ndarray:
    """Harmonize the scans of ``cohort`` with a fitted model: (n_scans, V) float32."""
    harmonized = harmonizer.transform(cohort.maps, sites=cohort.sites, **side_data(harmonizer, cohort, keep))
    return np.asarray(harmonized, dtype=np.float32)


def model_file_name(harmonizer) -> str:
    """``model`` + the harmonizer's ``model_suffix``: ``model.safetensors`` for S2SGAN, ``model.npz`` for the others."""
    return f"model{harmonizer.model_suffix}"


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
                  for name in (f"model{suffix}" for suffix in MODEL_SUFFIXES)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no model in {path}: looked for {', '.join(str(c) for c in candidates)}")


def load_model(path) -> harmonize.Harmonizer:
    """Read a model written by :func:`save_model` (any registered harmonizer; see :func:`surfharm.harmonize.load`)."""
    return harmonize.load(path)
