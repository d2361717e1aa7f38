"""A multi-scanner T1 cohort built from the real MNI152 template, with the truth kept.

Source: the ICBM 2009a symmetric MNI152 T1 template and its grey/white-matter probability maps as
shipped by nilearn (offline), resampled by nilearn to a 2 mm grid and cropped to the brain.

Each **subject** is the template warped by a smooth random displacement field (anatomy differs
between subjects), with grey matter darkened in proportion to age (the biology to keep) and a
small subject-specific tissue-intensity jitter. Its scanner-free image, in the template's
intensity unit (0 to 1), is the **truth**.

Each **scanner** (site) sees a subject as::

    observed = (offset + gain * truth ** gamma) * bias + noise

* ``gamma``: a non-linear monotone intensity curve (changes the tissue contrast);
* ``gain``, ``offset``: the scanner's intensity unit;
* ``bias``: a smooth multiplicative field, ``exp(site_pattern + scan_pattern)``: a coil pattern
  shared by every scan of the site plus a weaker scan-specific one;
* ``noise``: Gaussian, standard deviation ``noise`` times the scan's median brain intensity.

With ``traveling=True`` every subject is scanned at every site (the same truth seen by each
scanner); otherwise each subject is scanned once, at one site.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}
# Grey matter darkens by this fraction of its intensity per standard deviation of age.
AGE_GM_EFFECT = 0.04


@dataclass(frozen=True)
class Scanner:
    """Intensity effects of one scanner (see the module docstring); unitless except ``smooth_mm``."""

    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    bias_amplitude: float = 0.08
    noise: float = 0.02


DEFAULT_SCANNERS = (
    Scanner(gain=1000.0, offset=0.0, gamma=1.0, bias_amplitude=0.06, noise=0.015),
    Scanner(gain=600.0, offset=40.0, gamma=1.5, bias_amplitude=0.10, noise=0.025),
    Scanner(gain=1500.0, offset=-20.0, gamma=0.7, bias_amplitude=0.08, noise=0.02),
    Scanner(gain=120.0, offset=5.0, gamma=1.25, bias_amplitude=0.12, noise=0.03),
)


@dataclass
class VolumetricCohort:
    """Simulated scans and their truth (all volumes share ``affine`` and one grid).

    Attributes
    ----------
    images : list of (X, Y, Z) float32 arrays, the observed scans (scanner unit).
    truth : list of (X, Y, Z) float32 arrays, the scanner-free images (template unit, 0 to 1).
    masks : list of (X, Y, Z) bool arrays, each subject's brain mask.
    tissue : list of (X, Y, Z) int8 arrays, 0 background, 1 CSF, 2 grey, 3 white matter.
    table : DataFrame, one row per scan: ``subject``, ``site``, ``age`` (years), ``sex`` (0/1).
    affine : (4, 4) voxel-to-MNI mm.
    scanners : dict site -> :class:`Scanner`.
    """

    images: list
    truth: list
    masks: list
    tissue: list
    table: pd.DataFrame
    affine: np.ndarray
    scanners: dict = field(default_factory=dict)

    @property
    def sites(self) -> np.ndarray:
        return self.table["site"].to_numpy(dtype=object)

    def common_mask(self) -> np.ndarray:
        """Voxels inside every scan's brain mask (the analysis mask of voxel-wise methods)."""
        return np.logical_and.reduce(self.masks)

    def subset(self, rows) -> "VolumetricCohort":
        """The cohort restricted to the scans at positions ``rows``."""
        rows = list(rows)
        pick = lambda seq: [seq[i] for i in rows]  # noqa: E731
        return VolumetricCohort(pick(self.images), pick(self.truth), pick(self.masks), pick(self.tissue),
                                self.table.iloc[rows].reset_index(drop=True), self.affine, self.scanners)


@lru_cache(maxsize=2)
def _template(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM prob, WM prob, brain mask, affine) on the 2 mm grid (every ``step``-th voxel), cropped."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    lo = np.argwhere(brain).min(axis=0) - 2
    hi = np.argwhere(brain).max(axis=0) + 3
    crop = tuple(slice(max(int(a), 0), int(b), step) for a, b in zip(lo, hi))
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ np.array([s.start for s in crop]) + t1.affine[:3, 3]
    affine[:3, :3] = t1.affine[:3, :3] * step
    arrays = [np.asarray(a, np.float32)[crop] for a in (t1.get_fdata(), gm, wm)]
    return arrays[0], arrays[1], arrays[2], brain[crop], affine


def smooth_field(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit peak amplitude, ``shape`` float32."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return (noise / np.abs(noise).max()).astype(np.float32)


def _warp(arrays, displacement, order=1):
    grid = np.indices(arrays[0].shape, dtype=np.float32)
    coords = grid + displacement
    return [ndimage.map_coordinates(a, coords, order=order, mode="nearest").astype(np.float32) for a in arrays]


def simulate_subject(rng: np.random.Generator, age_z: float, step: int = 1, deform_mm: float = 4.0):
    """One subject's ``(truth, brain mask, tissue labels)`` (see the module docstring).

    ``age_z`` is the subject's age in standard deviations from the cohort mean; ``deform_mm`` the
    largest displacement of the random warp.
    """
    t1, gm, wm, brain, affine = _template(step)
    voxel_mm = float(np.abs(affine[0, 0]))
    displacement = np.stack([smooth_field(t1.shape, 12.0 / voxel_mm, rng) for _ in range(3)])
    displacement *= deform_mm / voxel_mm
    t1_w, gm_w, wm_w, brain_w = _warp([t1, gm, wm, brain.astype(np.float32)], displacement)
    mask = brain_w > 0.5
    csf_w = np.clip(brain_w - gm_w - wm_w, 0.0, 1.0)
    tissue = np.zeros(t1.shape, dtype=np.int8)
    probs = np.stack([csf_w, gm_w, wm_w])
    tissue[mask] = (np.argmax(probs, axis=0)[mask] + 1).astype(np.int8)
    jitter = 1.0 + 0.02 * rng.standard_normal()
    truth = t1_w * jitter * (1.0 - AGE_GM_EFFECT * age_z * gm_w)
    truth = np.clip(truth, 0.0, None) * mask
    return truth.astype(np.float32), mask, tissue


def scan(truth: np.ndarray, mask: np.ndarray, scanner: Scanner, site_pattern: np.ndarray,
         rng: np.random.Generator, voxel_mm: float) -> np.ndarray:
    """What ``scanner`` records of ``truth`` (float32, zero outside ``mask``, as a skull-stripped T1)."""
    scan_pattern = smooth_field(truth.shape, 40.0 / voxel_mm, rng)
    bias = np.exp(scanner.bias_amplitude * (site_pattern + 0.3 * scan_pattern))
    signal = (scanner.offset + scanner.gain * np.power(truth, scanner.gamma)) * bias
    level = float(np.median(signal[mask]))
    observed = signal + scanner.noise * level * rng.standard_normal(truth.shape).astype(np.float32)
    # Keep the foreground positive (a skull-stripped scan has zeros outside the brain only).
    observed = np.where(mask, np.maximum(observed, 1e-3 * level), 0.0)
    return observed.astype(np.float32)


def simulate_volumetric_cohort(n_sites: int = 3, n_subjects: int = 6, *, traveling: bool = False,
                               scanners=None, step: int = 1, deform_mm: float = 4.0,
                               seed: int = 0) -> VolumetricCohort:
    """Simulate a multi-scanner T1 cohort from the MNI152 template (see the module docstring).

    Parameters
    ----------
    n_sites : number of scanners (at most ``len(scanners)``).
    n_subjects : subjects per site; with ``traveling=True``, subjects scanned at every site.
    scanners : sequence of :class:`Scanner` (default :data:`DEFAULT_SCANNERS`).
    step : take every ``step``-th voxel of the 2 mm grid (2: a 4 mm grid for quick tests).
    deform_mm : largest displacement of each subject's random warp, mm.
    seed : seed of every random draw; the same seed gives the same cohort.
    """
    scanners = tuple(scanners or DEFAULT_SCANNERS)
    if not 1 <= n_sites <= len(scanners):
        raise ValueError(f"n_sites must be between 1 and {len(scanners)} (the scanners given), got {n_sites}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    rng = np.random.default_rng(seed)
    _, _, _, _, affine = _template(step)
    shape = _template(step)[0].shape
    voxel_mm = float(np.abs(affine[0, 0]))
    site_names = [f"scanner{k + 1}" for k in range(n_sites)]
    site_patterns = {s: smooth_field(shape, 40.0 / voxel_mm, rng) for s in site_names}
    n_people = n_subjects if traveling else n_subjects * n_sites
    ages = rng.uniform(20.0, 80.0, n_people)
    sexes = rng.integers(0, 2, n_people)
    age_z = (ages - ages.mean()) / (ages.std() or 1.0)
    people = [simulate_subject(rng, age_z[p], step, deform_mm) for p in range(n_people)]
    images, truth, masks, tissue, rows = [], [], [], [], []
    for p in range(n_people):
        visited = site_names if traveling else [site_names[p // n_subjects]]
        for site in visited:
            t, m, lab = people[p]
            images.append(scan(t, m, scanners[site_names.index(site)], site_patterns[site], rng, voxel_mm))
            truth.append(t)
            masks.append(m)
            tissue.append(lab)
            rows.append({"subject": f"sub-{p + 1:03d}", "site": site, "age": float(ages[p]), "sex": int(sexes[p])})
    return VolumetricCohort(images, truth, masks, tissue, pd.DataFrame(rows), affine,
                            {s: scanners[k] for k, s in enumerate(site_names)})
