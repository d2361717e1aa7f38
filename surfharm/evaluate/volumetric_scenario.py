"""The volumetric benchmark scenario: simulated traveling subjects, methods fitted and scored alike.

:func:`build_volumetric_scenario` simulates traveling subjects (each scanned on every scanner) from
the MNI152 template (:mod:`surfharm.simulate.volumes`) and splits them by subject into training
and test scans. :func:`score_volumetric` fits one method on the training scans, applies it to the
test scans (new subjects: the fit/apply use of every method) and returns one row of metrics;
:func:`run_volumetric_benchmark` does so for several methods, ``"none"`` (the scans as recorded)
first, so that "before" and "after" sit in one table.

Every score is computed on the test scans inside the voxels common to all brain masks, after
mapping each method's output to the truth's unit with one affine shared by all scans
(:func:`surfharm.evaluate.image_metrics.calibrate_units`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from surfharm.evaluate import image_metrics as metrics
from surfharm.harmonize.base import Harmonizer, get, side_data_for
from surfharm.simulate.volumes import VolumetricCohort, simulate_volumetric_cohort

#: The scanner-free template intensities lie in [0, 1]: the data range of PSNR and SSIM.
TRUTH_RANGE = 1.0
COVARIATES = ["age", "sex"]


@dataclass
class VolumetricScenario:
    """Training and test scans of one simulated cohort (see the module docstring)."""

    train: VolumetricCohort
    test: VolumetricCohort
    mask: np.ndarray  # (X, Y, Z) bool, voxels inside every scan's brain mask: where scores are computed


def build_volumetric_scenario(n_sites: int = 3, n_train_subjects: int = 6, n_test_subjects: int = 3, *,
                              step: int = 1, seed: int = 0) -> VolumetricScenario:
    """Simulate ``n_train_subjects + n_test_subjects`` traveling subjects on ``n_sites`` scanners.

    ``step=1`` is the 2 mm grid (about 236k brain voxels per scan); ``step=2`` a 4 mm grid for
    quick runs.
    """
    cohort = simulate_volumetric_cohort(n_sites, n_train_subjects + n_test_subjects, traveling=True,
                                        step=step, seed=seed)
    subjects = cohort.table["subject"].drop_duplicates().tolist()
    test_subjects = set(subjects[n_train_subjects:])
    is_test = cohort.table["subject"].isin(test_subjects).to_numpy()
    return VolumetricScenario(cohort.subset(np.flatnonzero(~is_test)), cohort.subset(np.flatnonzero(is_test)),
                              cohort.common_mask())


def _make(method, params: dict | None) -> Harmonizer | None:
    if method == "none":
        return None
    if isinstance(method, Harmonizer):
        return method
    return get(method)(**(params or {}))


def score_volumetric(method, scenario: VolumetricScenario, params: dict | None = None) -> pd.DataFrame:
    """Fit ``method`` (a registry name, ``"none"``, or a harmonizer instance) on the training scans,
    apply it to the test scans and score them. Returns a one-row DataFrame:

    ``method``; ``ssim``, ``psnr_db``, ``mae`` against the truth (means over test scans, truth unit);
    ``wasserstein_sites`` and ``ks_sites`` between the scanners' intensity distributions;
    ``wm_gm_ratio_error``: mean ``|ratio / true ratio - 1|`` of the WM/GM intensity ratio;
    ``fit_s``, ``transform_s``: seconds; ``unit_gain``, ``unit_offset``: the unit calibration.
    """
    est = _make(method, params)
    train, test = scenario.train, scenario.test
    fit_s = transform_s = 0.0
    outputs = test.images
    if est is not None:
        # A covariate constant over the training scans (e.g. one sex) carries no information.
        covariates = [c for c in COVARIATES if train.table[c].nunique() > 1]
        # Each method gets the side data it declares (masks; covariates for the voxel-wise ones).
        fit_side = side_data_for(est, covariates=train.table[covariates], masks=train.masks)
        transform_side = side_data_for(est, covariates=test.table[covariates], masks=test.masks)
        start = time.perf_counter()
        est.fit(train.images, sites=train.sites, **fit_side)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        outputs = est.transform(test.images, sites=test.sites, **transform_side)
        transform_s = time.perf_counter() - start
    masks = [scenario.mask] * len(outputs)
    calibrated, (gain, offset) = metrics.calibrate_units(outputs, test.truth, masks)
    distances = metrics.between_site_distances(calibrated, masks, test.sites)
    ratio_errors = [abs(metrics.wm_gm_ratio(out, tis * scenario.mask)
                        / metrics.wm_gm_ratio(tru, tis * scenario.mask) - 1)
                    for out, tru, tis in zip(calibrated, test.truth, test.tissue)]
    name = method if isinstance(method, str) else (getattr(est, "registry_name", "") or type(est).__name__)
    row = {
        "method": name,
        "ssim": np.mean([metrics.ssim_volume(o, t, scenario.mask, TRUTH_RANGE)
                         for o, t in zip(calibrated, test.truth)]),
        "psnr_db": np.mean([metrics.psnr(o, t, scenario.mask, data_range=TRUTH_RANGE, clip=False)
                            for o, t in zip(calibrated, test.truth)]),
        "mae": np.mean([metrics.mae(o, t, scenario.mask) for o, t in zip(calibrated, test.truth)]),
        "wasserstein_sites": distances["wasserstein"],
        "ks_sites": distances["ks"],
        "wm_gm_ratio_error": float(np.mean(ratio_errors)),
        "fit_s": fit_s,
        "transform_s": transform_s,
        "unit_gain": gain,
        "unit_offset": offset,
    }
    return pd.DataFrame([row])


def run_volumetric_benchmark(methods=None, scenario: VolumetricScenario | None = None,
                             params: dict | None = None) -> pd.DataFrame:
    """Score ``"none"`` then every method of ``methods`` (default: all volumetric methods) on one
    scenario; ``params`` maps a method name to its keyword arguments. One row per method."""
    from surfharm.harmonize.volumetric import VOLUMETRIC_METHODS

    scenario = scenario or build_volumetric_scenario()
    names = ["none"] + [m for m in (methods or VOLUMETRIC_METHODS) if m != "none"]
    rows = [score_volumetric(m, scenario, (params or {}).get(m)) for m in names]
    return pd.concat(rows, ignore_index=True)
