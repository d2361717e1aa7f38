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

Multi-contrast cohort
---------------------
:func:`simulate_multicontrast_cohort` builds sessions of several contrasts ("t1", "t2", "flair")
from the template's tissue probability maps ``p_csf, p_gm, p_wm`` (CSF = brain mask minus grey
and white matter), warped per subject as above. A subject's scanner-free image of contrast ``c``
(the **truth**, unit 0 to about 1) is::

    truth_c = (p_csf mu_c,csf + p_gm a mu_c,gm + p_wm mu_c,wm) * (1 + texture)

with the tissue intensities ``mu_c`` of :data:`CONTRAST_TISSUE_INTENSITY` (T1: WM > GM > CSF;
T2: CSF > GM > WM; FLAIR: GM > WM > CSF, CSF dark), a smooth subject texture (amplitude
:data:`TEXTURE_AMPLITUDE`) shared by the contrasts, and the biology to keep: grey matter darkens
with age in every contrast, ``a = 1 - AGE_GM_EFFECT * age_z``, and thins with age: a fraction
``AGE_GM_ATROPHY * age_z`` of the grey-matter probability turns into CSF (so GM volume falls).

A :class:`ContrastScanner` sees contrast ``c`` of a session as::

    signal   = sum_k p_k mu_c,k shift_c,k (age term on GM) * (1 + texture)
    observed = blur_fwhm(offset + gain * signal ** gamma) * bias + noise

* ``shift_c,k``: the scanner's tissue-intensity shift (its contrast curve, per contrast and tissue);
* ``gamma``, ``gain``, ``offset``: its monotone intensity curve and unit (shared by contrasts);
* ``blur_fwhm``: its resolution, a Gaussian of ``fwhm_mm`` full width at half maximum (mm);
* ``bias``: ``exp(bias_amplitude * (site_pattern + 0.3 session_pattern))``, one coil pattern per
  scanner and one per session (shared by the session's contrasts);
* ``noise``: Gaussian, ``noise`` times the scan's median brain intensity.

Design: ``n_traveling`` traveling subjects are scanned on every scanner (held-out one included);
``n_per_scanner`` other subjects are scanned once on each training scanner. One scanner (the last
by default) is held out of training: its scans have ``held_out=True`` in the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage

from surfharm.errors import SurfharmError

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


# -- multi-contrast cohort (see "Multi-contrast cohort" in the module docstring) ---------------------

#: Scanner-free tissue intensities (CSF, GM, WM) of each contrast, unit 0 to 1.
CONTRAST_TISSUE_INTENSITY = {
    "t1": (0.25, 0.60, 0.90),
    "t2": (0.95, 0.60, 0.40),
    "flair": (0.10, 0.80, 0.50),
}
#: Fraction of grey-matter probability that turns into CSF per standard deviation of age.
AGE_GM_ATROPHY = 0.05
#: Peak amplitude of the subject's smooth intensity texture (relative).
TEXTURE_AMPLITUDE = 0.05


class CohortConfigError(SurfharmError, ValueError):
    """Simulation parameters that cannot make a cohort; the message names the value and what was expected."""


@dataclass(frozen=True)
class ContrastScanner:
    """Effects of one scanner on every contrast (see the module docstring).

    ``shifts`` maps a contrast to its (CSF, GM, WM) intensity multipliers (missing: no shift);
    ``fwhm_mm`` is the resolution in mm; the others are unitless.
    """

    gain: float = 1000.0
    offset: float = 0.0
    gamma: float = 1.0
    shifts: tuple = ()
    bias_amplitude: float = 0.08
    noise: float = 0.02
    fwhm_mm: float = 3.0

    def shift(self, contrast: str) -> np.ndarray:
        """(CSF, GM, WM) multipliers of ``contrast``, float64 (3,)."""
        return np.asarray(dict(self.shifts).get(contrast, (1.0, 1.0, 1.0)), dtype=np.float64)


DEFAULT_CONTRAST_SCANNERS = (
    ContrastScanner(gain=1000.0, offset=0.0, gamma=1.0, bias_amplitude=0.06, noise=0.015, fwhm_mm=2.5),
    ContrastScanner(gain=600.0, offset=40.0, gamma=1.4, bias_amplitude=0.10, noise=0.025, fwhm_mm=4.0,
                    shifts=(("t1", (1.10, 0.95, 1.00)), ("t2", (0.90, 1.05, 1.00)), ("flair", (1.30, 1.00, 0.95)))),
    ContrastScanner(gain=1500.0, offset=-20.0, gamma=0.75, bias_amplitude=0.08, noise=0.02, fwhm_mm=3.0,
                    shifts=(("t1", (0.90, 1.05, 0.97)), ("t2", (1.05, 0.95, 1.05)), ("flair", (0.80, 1.05, 1.00)))),
    ContrastScanner(gain=150.0, offset=5.0, gamma=1.2, bias_amplitude=0.12, noise=0.03, fwhm_mm=5.0,
                    shifts=(("t1", (1.15, 1.00, 0.95)), ("t2", (0.95, 1.08, 0.95)), ("flair", (1.20, 0.95, 1.05)))),
)


@dataclass
class MultiContrastCohort:
    """Simulated multi-contrast sessions and their truth (all volumes share ``affine`` and one grid).

    Attributes
    ----------
    images : dict contrast -> list of (X, Y, Z) float32 arrays, the observed scans (scanner unit), one per row.
    truth : dict contrast -> list of (X, Y, Z) float32 arrays, the scanner-free images (unit 0 to about 1).
    masks : list of (X, Y, Z) bool arrays, each session's brain mask (its subject's).
    tissue : list of (X, Y, Z) int8 arrays, 0 background, 1 CSF, 2 grey, 3 white matter.
    table : DataFrame, one row per session: ``subject``, ``site``, ``age`` (years), ``sex`` (0/1),
        ``traveling`` (scanned on every scanner), ``held_out`` (on the scanner left out of training).
    affine : (4, 4) voxel-to-MNI mm.
    scanners : dict site -> :class:`ContrastScanner`, in scanner order (the held-out one included).
    held_out_site : the scanner left out of training, or None.
    """

    images: dict
    truth: dict
    masks: list
    tissue: list
    table: pd.DataFrame
    affine: np.ndarray
    scanners: dict = field(default_factory=dict)
    held_out_site: str | None = None

    @property
    def contrasts(self) -> tuple[str, ...]:
        return tuple(self.images)

    @property
    def sites(self) -> np.ndarray:
        return self.table["site"].to_numpy(dtype=object)

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def scans(self, contrasts=None, *, truth: bool = False) -> list[dict]:
        """One dict ``{contrast: (X, Y, Z) array}`` per session (the observed images, or the truth)."""
        source = self.truth if truth else self.images
        names = self.contrasts if contrasts is None else tuple(contrasts)
        unknown = [c for c in names if c not in source]
        if unknown:
            raise CohortConfigError(f"contrast(s) {unknown} are not in the cohort; it holds {list(source)}")
        return [{c: source[c][i] for c in names} for i in range(len(self.table))]

    def subset(self, rows) -> "MultiContrastCohort":
        """The cohort restricted to the sessions at positions ``rows``."""
        rows = list(rows)
        pick = lambda seq: [seq[i] for i in rows]  # noqa: E731
        return MultiContrastCohort({c: pick(v) for c, v in self.images.items()},
                                   {c: pick(v) for c, v in self.truth.items()}, pick(self.masks),
                                   pick(self.tissue), self.table.iloc[rows].reset_index(drop=True), self.affine,
                                   self.scanners, self.held_out_site)


def simulate_multicontrast_subject(rng: np.random.Generator, age_z: float, step: int = 1,
                                   deform_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One subject's anatomy: ``(probs, texture, mask, tissue)``.

    ``probs`` (3, X, Y, Z) float32 are the CSF/GM/WM probabilities after the warp and the age
    atrophy; ``texture`` (X, Y, Z) float32 the relative intensity texture; ``mask`` bool; ``tissue``
    int8 labels (argmax of ``probs`` inside the mask). ``age_z``: age in SD from the cohort mean.
    """
    _, gm, wm, brain, affine = _template(step)
    voxel_mm = float(np.abs(affine[0, 0]))
    displacement = np.stack([smooth_field(gm.shape, 12.0 / voxel_mm, rng) for _ in range(3)])
    displacement *= deform_mm / voxel_mm
    gm_w, wm_w, brain_w = _warp([gm, wm, brain.astype(np.float32)], displacement)
    mask = brain_w > 0.5
    gm_w = np.clip(gm_w, 0.0, 1.0)
    wm_w = np.clip(wm_w, 0.0, 1.0 - gm_w)
    # Atrophy: older subjects lose grey matter to CSF (clipped so that probabilities stay in [0, 1]).
    gm_w = np.clip(gm_w * (1.0 - AGE_GM_ATROPHY * age_z), 0.0, 1.0 - wm_w)
    csf_w = np.clip(brain_w - gm_w - wm_w, 0.0, 1.0)
    probs = np.stack([csf_w, gm_w, wm_w]) * mask
    tissue = np.zeros(gm.shape, dtype=np.int8)
    tissue[mask] = (np.argmax(probs, axis=0)[mask] + 1).astype(np.int8)
    texture = TEXTURE_AMPLITUDE * smooth_field(gm.shape, 4.0 / voxel_mm, rng)
    return probs.astype(np.float32), texture, mask, tissue


def contrast_signal(probs: np.ndarray, texture: np.ndarray, contrast: str, age_z: float,
                    shift=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Tissue-mixture image of ``contrast`` (unit 0 to about 1), float32 (X, Y, Z); ``shift`` the
    scanner's (CSF, GM, WM) multipliers (ones: the truth)."""
    if contrast not in CONTRAST_TISSUE_INTENSITY:
        raise CohortConfigError(f"unknown contrast {contrast!r}; expected one of {list(CONTRAST_TISSUE_INTENSITY)}")
    mu = np.asarray(CONTRAST_TISSUE_INTENSITY[contrast]) * np.asarray(shift, dtype=np.float64)
    mu[1] *= 1.0 - AGE_GM_EFFECT * age_z
    mixture = np.tensordot(mu.astype(np.float32), probs, axes=1)
    return (mixture * (1.0 + texture)).astype(np.float32)


def scan_contrast(probs: np.ndarray, texture: np.ndarray, mask: np.ndarray, contrast: str, age_z: float,
                  scanner: ContrastScanner, bias: np.ndarray, rng: np.random.Generator, voxel_mm: float) -> np.ndarray:
    """What ``scanner`` records of one contrast of a session (float32, zero outside ``mask``)."""
    signal = contrast_signal(probs, texture, contrast, age_z, scanner.shift(contrast))
    curve = scanner.offset + scanner.gain * np.power(np.clip(signal, 0.0, None), scanner.gamma)
    sigma_vox = scanner.fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel_mm
    # Blur the in-brain signal only, renormalised by the blurred mask, so that the brain edge is not
    # darkened by the zeros of a skull-stripped background.
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma_vox, mode="nearest")
    blurred = ndimage.gaussian_filter(curve * mask, sigma_vox, mode="nearest") / np.maximum(weight, 1e-3)
    signal_obs = blurred * bias
    level = float(np.median(signal_obs[mask]))
    observed = signal_obs + scanner.noise * level * rng.standard_normal(mask.shape).astype(np.float32)
    observed = np.where(mask, np.maximum(observed, 1e-3 * abs(level)), 0.0)
    return observed.astype(np.float32)


def simulate_multicontrast_cohort(n_scanners: int = 4, n_traveling: int = 4, n_per_scanner: int = 4, *,
                                  contrasts=("t1", "t2", "flair"), held_out: str | int | None = -1,
                                  scanners=None, step: int = 1, deform_mm: float = 4.0,
                                  seed: int = 0) -> MultiContrastCohort:
    """Simulate multi-contrast sessions on several scanners (see "Multi-contrast cohort" in the module docstring).

    Parameters
    ----------
    n_scanners : number of scanners (at most ``len(scanners)``), named ``scanner1``, ``scanner2``, ...
    n_traveling : subjects scanned on every scanner (held-out one included).
    n_per_scanner : further subjects scanned once on each training scanner.
    contrasts : contrasts of every session, among :data:`CONTRAST_TISSUE_INTENSITY`.
    held_out : the scanner left out of training: its index (-1: the last) or name; None: none.
    scanners : sequence of :class:`ContrastScanner` (default :data:`DEFAULT_CONTRAST_SCANNERS`).
    step : take every ``step``-th voxel of the 2 mm grid (2: a 4 mm grid for quick tests).
    deform_mm : largest displacement of each subject's random warp, mm.
    seed : seed of every random draw; the same seed gives the same cohort.
    """
    scanners = tuple(scanners or DEFAULT_CONTRAST_SCANNERS)
    contrasts = tuple(contrasts)
    if not 1 <= n_scanners <= len(scanners):
        raise CohortConfigError(f"n_scanners must be between 1 and {len(scanners)} (the scanners given), "
                                f"got {n_scanners}")
    if n_traveling < 0 or n_per_scanner < 0 or n_traveling + n_per_scanner == 0:
        raise CohortConfigError(f"n_traveling ({n_traveling}) and n_per_scanner ({n_per_scanner}) must be >= 0 "
                                "and not both 0")
    if not contrasts or len(set(contrasts)) != len(contrasts):
        raise CohortConfigError(f"contrasts must be distinct and at least one, got {contrasts}")
    for c in contrasts:
        if c not in CONTRAST_TISSUE_INTENSITY:
            raise CohortConfigError(f"unknown contrast {c!r}; expected some of {list(CONTRAST_TISSUE_INTENSITY)}")
    site_names = [f"scanner{k + 1}" for k in range(n_scanners)]
    if held_out is None:
        held = None
    elif isinstance(held_out, (int, np.integer)):
        if not -n_scanners <= held_out < n_scanners:
            raise CohortConfigError(f"held_out index {held_out} is outside the {n_scanners} scanners")
        held = site_names[held_out]
    elif held_out in site_names:
        held = held_out
    else:
        raise CohortConfigError(f"held_out {held_out!r} is not a scanner; expected an index or one of {site_names}")
    if held is not None and n_scanners < 2:
        raise CohortConfigError("holding a scanner out needs at least 2 scanners")
    training_sites = [s for s in site_names if s != held]

    rng = np.random.default_rng(seed)
    _, _, _, _, affine = _template(step)
    shape = _template(step)[0].shape
    voxel_mm = float(np.abs(affine[0, 0]))
    site_patterns = {s: smooth_field(shape, 40.0 / voxel_mm, rng) for s in site_names}
    n_people = n_traveling + n_per_scanner * len(training_sites)
    ages = rng.uniform(20.0, 80.0, n_people)
    sexes = rng.integers(0, 2, n_people)
    age_z = (ages - ages.mean()) / (ages.std() or 1.0)
    images = {c: [] for c in contrasts}
    truth = {c: [] for c in contrasts}
    masks, tissue, rows = [], [], []
    for p in range(n_people):
        probs, texture, mask, labels = simulate_multicontrast_subject(rng, age_z[p], step, deform_mm)
        subject_truth = {c: contrast_signal(probs, texture, c, age_z[p]) * mask for c in contrasts}
        traveling = p < n_traveling
        visited = site_names if traveling else [training_sites[(p - n_traveling) // n_per_scanner]]
        for site in visited:
            scanner = scanners[site_names.index(site)]
            session_pattern = smooth_field(shape, 40.0 / voxel_mm, rng)
            bias = np.exp(scanner.bias_amplitude * (site_patterns[site] + 0.3 * session_pattern)).astype(np.float32)
            for c in contrasts:
                images[c].append(scan_contrast(probs, texture, mask, c, age_z[p], scanner, bias, rng, voxel_mm))
                truth[c].append(subject_truth[c].astype(np.float32))
            masks.append(mask)
            tissue.append(labels)
            rows.append({"subject": f"sub-{p + 1:03d}", "site": site, "age": float(ages[p]), "sex": int(sexes[p]),
                         "traveling": traveling, "held_out": site == held})
    return MultiContrastCohort(images, truth, masks, tissue, pd.DataFrame(rows), affine,
                               {s: scanners[k] for k, s in enumerate(site_names)}, held)
