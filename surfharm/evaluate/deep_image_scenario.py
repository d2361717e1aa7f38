"""Image-level harmonization scored on held-out traveling subjects of a multi-contrast cohort.

:func:`build_deep_image_scenario` simulates multi-contrast sessions
(:func:`surfharm.simulate.volumes.simulate_multicontrast_cohort`) and splits them, by subject:

* **train**: the non-traveling subjects designated for training and the training traveling
  subjects, on the training scanners only;
* **test**: the test traveling subjects on the training scanners (scored against the target
  scanner's scan of the same subject and against the truth), plus held-out non-traveling subjects
  (new people, for the age effect and the scanner classifier);
* **unseen**: the test traveling subjects on the scanner held out of training (scored only for
  methods that declare ``supports_unseen_sites``, or learn nothing per site).

No test subject and no held-out-scanner scan is seen by ``fit``. :func:`score_deep_images` fits
one method on the training scans, maps the test scans to the target scanner, and scores them per
contrast; :func:`run_deep_image_benchmark` does so for several methods with ``"raw"`` (the scans
as recorded) first, and :func:`summarize` averages the contrasts into one row per method.

Input forms. Multi-contrast methods (:data:`DEEP_METHODS`, or any class with ``multi_contrast =
True``) get one dict ``{contrast: volume}`` per session and return the same; the single-contrast
intensity methods are fitted and applied per contrast, one model per contrast.

Units. A method's output is mapped to a reference unit with ONE affine per method and contrast
(:func:`surfharm.evaluate.image_metrics.calibrate_units`): to the target scanner's unit, fitted on
the target scanner's own test scans only (the method's output of each against the scan as
recorded; the identity for methods that return the target's scans unchanged), so that no pair
across scanners informs it; and to the truth's unit, fitted on every test scan against its truth.
Being shared, the map converts units and leaves every difference between scanners in place.

Metrics (one row per method and contrast):

* ``ssim_target``, ``psnr_target_db``, ``mae_target``: test traveling scans from non-target
  scanners against the target scanner's scan of the same subject (target unit; data range: 99.5th
  percentile of the target scans in the mask); ``*_unseen``: the same for the held-out scanner;
* ``ssim_truth``, ``psnr_truth_db``, ``mae_truth``: every test traveling scan against its truth
  (truth unit, data range 1);
* ``volume_cv``: tissue volumes from one fixed segmentation rule (nearest tissue mean, the means
  fitted once on the target scanner's raw training scans with their tissue labels, applied in the
  target unit); coefficient of variation of GM and WM volumes across a subject's scanners,
  averaged over subjects and the two tissues; ``tissue_dice``: mean GM/WM Dice of that
  segmentation with the true labels;
* ``age_slope_ratio_gm_intensity``: slope of mean GM intensity (truth unit) on age over the test
  scans, divided by the same slope of the truth images (1: the biology kept; 0: removed);
  ``age_slope_ratio_gm_volume``: slope of the segmented GM volume on age over the slope of the
  GM volume that the same rule finds in the truth images;
* ``scanner_auroc``: a scanner classifier retrained on the method's outputs (logistic regression
  on the in-mask intensity histogram, truth unit), cross-validated macro one-vs-rest AUROC over the
  test scans of the training scanners (0.5: scanners indistinguishable);
* ``fit_s``, ``transform_s``: seconds (``transform_s``: the test scans, the unseen ones excluded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from surfharm.errors import SurfharmError
from surfharm.evaluate import image_metrics as metrics
from surfharm.harmonize.base import get, side_data_for
from surfharm.simulate.volumes import MultiContrastCohort, simulate_multicontrast_cohort

#: Registry names of the multi-contrast image-level deep methods, in the order reports list them.
DEEP_METHODS = ("deepharmony", "mispel", "calamiti", "imunity", "murd")
#: Single-contrast intensity methods run alongside (fitted per contrast).
INTENSITY_METHODS = ("white-stripe", "nyul", "ravel", "voxel-combat")
RAW = "raw"
COVARIATES = ["age", "sex"]
TRUTH_RANGE = 1.0
HISTOGRAM_BINS = 24


class ScenarioError(SurfharmError, ValueError):
    """A scenario that cannot be built or scored; the message names the value and what was expected."""


@dataclass
class DeepImageScenario:
    """One simulated cohort and its leakage-safe split (see the module docstring).

    ``train_rows``, ``test_rows``, ``unseen_rows`` are positions in ``cohort.table``;
    ``target_site`` the scanner every method maps to; ``reference_means`` (contrast -> (3,) CSF,
    GM, WM means on the target scanner's raw training scans) the fixed segmentation rule, and
    ``truth_means`` the same means on those scans' truth (the rule applied to the truth images).
    """

    cohort: MultiContrastCohort
    train_rows: np.ndarray
    test_rows: np.ndarray
    unseen_rows: np.ndarray
    target_site: str
    reference_means: dict
    truth_means: dict

    @property
    def contrasts(self) -> tuple[str, ...]:
        return self.cohort.contrasts

    @property
    def train(self) -> MultiContrastCohort:
        return self.cohort.subset(self.train_rows)


def build_deep_image_scenario(n_scanners: int = 4, n_train_traveling: int = 3, n_test_traveling: int = 2,
                              n_train_per_scanner: int = 4, n_test_per_scanner: int = 2, *,
                              contrasts=("t1", "t2", "flair"), target_site: str = "scanner1",
                              held_out: str | int | None = -1, step: int = 1, seed: int = 0) -> DeepImageScenario:
    """Simulate the cohort and split it (module docstring). ``step=2`` is a 4 mm grid for quick runs."""
    if n_test_traveling < 1:
        raise ScenarioError(f"n_test_traveling must be >= 1 (the scored subjects), got {n_test_traveling}")
    cohort = simulate_multicontrast_cohort(n_scanners, n_train_traveling + n_test_traveling,
                                           n_train_per_scanner + n_test_per_scanner, contrasts=contrasts,
                                           held_out=held_out, step=step, seed=seed)
    table = cohort.table
    if target_site not in cohort.scanners or target_site == cohort.held_out_site:
        raise ScenarioError(f"target_site {target_site!r} must be a training scanner, one of "
                            f"{[s for s in cohort.scanners if s != cohort.held_out_site]}")
    traveling = table.loc[table["traveling"], "subject"].drop_duplicates().tolist()
    test_traveling = set(traveling[n_train_traveling:])
    # Per training scanner, its last n_test_per_scanner non-traveling subjects are test subjects.
    single = table[~table["traveling"]]
    test_single = set()
    for _, group in single.groupby("site", sort=False):
        test_single |= set(group["subject"].tolist()[n_train_per_scanner:])
    held = table["held_out"].to_numpy()
    in_test = table["subject"].isin(test_traveling | test_single).to_numpy()
    train_rows = np.flatnonzero(~in_test & ~held)
    test_rows = np.flatnonzero(in_test & ~held)
    unseen_rows = np.flatnonzero(table["subject"].isin(test_traveling).to_numpy() & held)
    target_train = [i for i in train_rows if table["site"].iloc[i] == target_site]
    if not target_train:
        raise ScenarioError(f"no training scan on the target scanner {target_site!r}: the segmentation rule "
                            "is fitted on them; raise n_train_per_scanner or n_train_traveling")

    def tissue_means(images) -> np.ndarray:
        return np.array([np.concatenate([images[i][cohort.tissue[i] == k] for i in target_train]).mean()
                         for k in (1, 2, 3)])

    reference = {c: tissue_means(cohort.images[c]) for c in cohort.contrasts}
    truth_means = {c: tissue_means(cohort.truth[c]) for c in cohort.contrasts}
    return DeepImageScenario(cohort, train_rows, test_rows, unseen_rows, target_site, reference, truth_means)


# -- running a method --------------------------------------------------------------------------------------

def _make(method, params: dict | None, scenario: DeepImageScenario):
    """The estimator of ``method``; a registry name gets the scenario's ``target_site`` and ``contrasts``
    when its constructor takes them and ``params`` does not set them."""
    if isinstance(method, str) and method == RAW:
        return None
    if not isinstance(method, str):
        return method
    est = get(method)(**(params or {}))
    accepted = est.get_params()
    defaults = {"target_site": scenario.target_site, "contrasts": tuple(scenario.contrasts)}
    est.set_params(**{k: v for k, v in defaults.items() if k in accepted and k not in (params or {})})
    return est


def takes_contrast_dicts(est) -> bool:
    """Whether ``est`` takes one dict of contrasts per session (else one volume, fitted per contrast)."""
    flag = getattr(type(est), "multi_contrast", None)
    if isinstance(flag, bool):
        return flag
    # The deep image methods declare the fewest contrasts they take.
    return hasattr(type(est), "min_contrasts") or getattr(est, "registry_name", "") in DEEP_METHODS


def supports_unseen(est) -> bool:
    """Whether ``est`` may be applied to scans of a scanner it was not fitted on."""
    if est is None:
        return True
    flag = getattr(est, "supports_unseen_sites", None)
    return bool(flag) if flag is not None else not getattr(est, "requires_sites", True)


def _covariate_columns(scenario: DeepImageScenario) -> list[str]:
    # A covariate constant over the training scans (e.g. one sex) carries no information; the same
    # columns are given to fit and transform.
    table = scenario.cohort.table.iloc[scenario.train_rows]
    return [c for c in COVARIATES if table[c].nunique() > 1]


def _side(est, scenario: DeepImageScenario, rows) -> dict:
    table = scenario.cohort.table.iloc[rows]
    columns = _covariate_columns(scenario)
    return side_data_for(est, masks=[scenario.cohort.masks[i] for i in rows], subjects=table["subject"].to_numpy(),
                         covariates=table[columns].reset_index(drop=True) if columns else None)


def _apply(est, contrast_models, scenario: DeepImageScenario, rows) -> dict:
    """Outputs of ``rows`` as contrast -> list of arrays (``est`` None: the raw scans)."""
    rows, cohort = list(rows), scenario.cohort
    if est is None:
        return {c: [cohort.images[c][i] for i in rows] for c in cohort.contrasts}
    sites = cohort.table["site"].to_numpy(dtype=object)[rows]
    if contrast_models is None:
        side = _side(est, scenario, rows)
        outs = est.transform([{c: cohort.images[c][i] for c in cohort.contrasts} for i in rows], sites=sites, **side)
        return {c: [np.asarray(o[c], np.float32) for o in outs] for c in cohort.contrasts}
    result = {}
    for c, model in contrast_models.items():
        side = _side(model, scenario, rows)
        result[c] = [np.asarray(o, np.float32)
                     for o in model.transform([cohort.images[c][i] for i in rows], sites=sites, **side)]
    return result


def _fit(method, est, params, scenario: DeepImageScenario):
    """Fit on the training rows; returns the per-contrast models (None for a multi-contrast method)."""
    cohort, rows = scenario.cohort, list(scenario.train_rows)
    sites = cohort.table["site"].to_numpy(dtype=object)[rows]
    if takes_contrast_dicts(est):
        est.fit([{c: cohort.images[c][i] for c in cohort.contrasts} for i in rows], sites=sites,
                **_side(est, scenario, rows))
        return None
    from sklearn.base import clone

    models = {}
    for c in cohort.contrasts:
        # One model per contrast: a fresh instance of the same method and parameters.
        model = _make(method, params, scenario) if isinstance(method, str) else clone(est)
        models[c] = model.fit([cohort.images[c][i] for i in rows], sites=sites, **_side(model, scenario, rows))
    return models


# -- scores --------------------------------------------------------------------------------------------------

def _segment(image: np.ndarray, mask: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Nearest-tissue-mean labels (1 CSF, 2 GM, 3 WM) inside ``mask``, 0 outside."""
    labels = np.zeros(image.shape, np.int8)
    labels[mask] = (np.argmin(np.abs(image[mask][:, None] - means[None, :]), axis=1) + 1).astype(np.int8)
    return labels


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.polyfit(x - x.mean(), np.asarray(y, float), 1)[0])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def scanner_auroc(images, masks, sites, bins: int = HISTOGRAM_BINS, seed: int = 0) -> float:
    """Cross-validated macro one-vs-rest AUROC of a logistic-regression scanner classifier on the in-mask
    intensity histogram of each image (edges from the pooled 0.5-99.5th percentiles). 0.5 = chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sites = np.asarray(sites, dtype=object)
    labels, counts = np.unique(sites, return_counts=True)
    if len(labels) < 2 or counts.min() < 2:
        return float("nan")
    pooled = np.concatenate([np.asarray(im, np.float64)[m] for im, m in zip(images, masks)])
    edges = np.linspace(*np.percentile(pooled, [0.5, 99.5]), bins + 1)
    features = np.array([np.histogram(np.clip(im[m], edges[0], edges[-1]), edges, density=True)[0]
                         for im, m in zip(images, masks)])
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    proba = cross_val_predict(model, features, sites, cv=folds, method="predict_proba")
    if len(labels) == 2:
        return float(roc_auc_score(sites == labels[1], proba[:, 1]))
    return float(roc_auc_score(sites, proba, multi_class="ovr", average="macro", labels=labels))


def _image_scores(outs, refs, masks, data_range) -> tuple[float, float, float]:
    ssim = np.mean([metrics.ssim_volume(o, r, m, data_range) for o, r, m in zip(outs, refs, masks)])
    psnr = np.mean([metrics.psnr(o, r, m, data_range=data_range, clip=False) for o, r, m in zip(outs, refs, masks)])
    mae = np.mean([metrics.mae(o, r, m) for o, r, m in zip(outs, refs, masks)])
    return float(ssim), float(psnr), float(mae)


def _score_contrast(scenario: DeepImageScenario, c: str, test_out: list, unseen_out: list | None) -> dict:
    cohort, table = scenario.cohort, scenario.cohort.table
    rows = list(scenario.test_rows)
    sub = table.iloc[rows].reset_index(drop=True)
    masks = [cohort.masks[i] for i in rows]
    target_of = {s: i for i, (s, site) in enumerate(zip(table["subject"], table["site"]))
                 if site == scenario.target_site}
    trav = [k for k in range(len(rows)) if sub["traveling"].iloc[k]]
    tref = [cohort.images[c][target_of[sub["subject"].iloc[k]]] for k in trav]
    target_range = float(np.percentile(np.concatenate([r[masks[k]] for r, k in zip(tref, trav)]), 99.5))
    # One affine per method and contrast into the target scanner's unit, fitted on the target scanner's own
    # test scans (the method's output against the scan as recorded): no pair across scanners informs it.
    own = [k for k in range(len(rows)) if sub["site"].iloc[k] == scenario.target_site]
    _, (a_t, b_t) = metrics.calibrate_units([test_out[k] for k in own], [cohort.images[c][rows[k]] for k in own],
                                            [masks[k] for k in own])
    in_target = [(a_t * np.asarray(o, np.float64) + b_t).astype(np.float32) for o in test_out]
    scored = [j for j, k in enumerate(trav) if sub["site"].iloc[k] != scenario.target_site]
    ssim_t, psnr_t, mae_t = _image_scores([in_target[trav[j]] for j in scored], [tref[j] for j in scored],
                                          [masks[trav[j]] for j in scored], target_range)
    # One affine into the truth's unit, fitted on every test scan.
    truths = [cohort.truth[c][i] for i in rows]
    in_truth, _ = metrics.calibrate_units(test_out, truths, masks)
    ssim_u, psnr_u, mae_u = _image_scores([in_truth[k] for k in trav], [truths[k] for k in trav],
                                          [masks[k] for k in trav], TRUTH_RANGE)
    # Tissue volumes from the fixed segmentation rule, in the target unit.
    seg = [_segment(im, m, scenario.reference_means[c]) for im, m in zip(in_target, masks)]
    tissue = [cohort.tissue[i] for i in rows]
    gm_ml = np.array([(s == 2).sum() for s in seg]) * cohort.voxel_ml
    wm_ml = np.array([(s == 3).sum() for s in seg]) * cohort.voxel_ml
    cvs = []
    for _, group in sub.iloc[trav].groupby("subject"):
        for vol in (gm_ml, wm_ml):
            v = vol[group.index.to_numpy()]
            cvs.append(v.std() / v.mean() if v.mean() > 0 else np.nan)
    dice = np.mean([(_dice(s == 2, t == 2) + _dice(s == 3, t == 3)) / 2 for s, t in zip(seg, tissue)])
    # Biology: age slopes over the test scans, against the truth's.
    age = sub["age"].to_numpy()
    gm_int = [float(im[t == 2].mean()) for im, t in zip(in_truth, tissue)]
    gm_int_truth = [float(tr[t == 2].mean()) for tr, t in zip(truths, tissue)]
    # The truth's GM volume by the same rule (in the truth's unit): intensity-based volumes also move
    # with the age darkening of GM, so the rule is applied to both sides of the comparison.
    gm_true_ml = np.array([(_segment(tr, m, scenario.truth_means[c]) == 2).sum()
                           for tr, m in zip(truths, masks)]) * cohort.voxel_ml
    row = {
        "ssim_target": ssim_t, "psnr_target_db": psnr_t, "mae_target": mae_t,
        "ssim_truth": ssim_u, "psnr_truth_db": psnr_u, "mae_truth": mae_u,
        "volume_cv": float(np.nanmean(cvs)), "tissue_dice": float(dice),
        "age_slope_ratio_gm_intensity": _slope(age, gm_int) / _slope(age, gm_int_truth),
        "age_slope_ratio_gm_volume": _slope(age, gm_ml) / _slope(age, gm_true_ml),
        "scanner_auroc": scanner_auroc(in_truth, masks, sub["site"].to_numpy()),
        "ssim_target_unseen": np.nan, "psnr_target_unseen_db": np.nan, "mae_target_unseen": np.nan,
    }
    if unseen_out is not None and len(unseen_out):
        urows = list(scenario.unseen_rows)
        uref = [cohort.images[c][target_of[table["subject"].iloc[i]]] for i in urows]
        umasks = [cohort.masks[i] for i in urows]
        u_target = [(a_t * np.asarray(o, np.float64) + b_t).astype(np.float32) for o in unseen_out]
        (row["ssim_target_unseen"], row["psnr_target_unseen_db"],
         row["mae_target_unseen"]) = _image_scores(u_target, uref, umasks, target_range)
    return row


def score_deep_images(method, scenario: DeepImageScenario, params: dict | None = None,
                      name: str | None = None) -> pd.DataFrame:
    """Fit ``method`` (a registry name, ``"raw"``, or a harmonizer instance) on the training scans, map
    the test scans (and the unseen scanner's, where supported) to the target scanner and score them.
    Returns one row per contrast (columns: module docstring, plus ``method``, ``contrast``, ``unseen``)."""
    est = _make(method, params, scenario)
    fit_s = transform_s = 0.0
    models = None
    if est is not None:
        start = time.perf_counter()
        models = _fit(method, est, params, scenario)
        fit_s = time.perf_counter() - start
    start = time.perf_counter()
    test_out = _apply(est, models, scenario, scenario.test_rows)
    transform_s = time.perf_counter() - start if est is not None else 0.0
    unseen = supports_unseen(est) and len(scenario.unseen_rows) > 0
    unseen_out = _apply(est, models, scenario, scenario.unseen_rows) if unseen else None
    label = name or (method if isinstance(method, str) else (est.registry_name or type(est).__name__))
    rows = []
    for c in scenario.contrasts:
        row = {"method": label, "contrast": c}
        row.update(_score_contrast(scenario, c, test_out[c], None if unseen_out is None else unseen_out[c]))
        row.update({"unseen": unseen, "fit_s": fit_s, "transform_s": transform_s})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per method: the mean of every metric over contrasts (seconds: the method's totals)."""
    numeric = [c for c in scores.columns if c not in ("method", "contrast", "unseen", "fit_s", "transform_s")]
    grouped = scores.groupby("method", sort=False)
    out = grouped[numeric].mean()
    out["unseen"] = grouped["unseen"].first()
    out["fit_s"] = grouped["fit_s"].first()
    out["transform_s"] = grouped["transform_s"].first()
    return out.reset_index()


def run_deep_image_benchmark(methods=None, scenario: DeepImageScenario | None = None, params: dict | None = None,
                             *, skip_errors: bool = False, say=print) -> pd.DataFrame:
    """Score ``"raw"`` then every method of ``methods`` (default: the intensity and deep methods) that is
    registered; missing ones are skipped with a note through ``say``. ``params`` maps a name to keyword
    arguments. ``skip_errors``: a method whose fit or transform raises is skipped with the error noted.
    Returns the per-contrast scores of :func:`score_deep_images`, concatenated."""
    from surfharm.harmonize import available

    scenario = scenario or build_deep_image_scenario()
    names = [RAW] + [m for m in (methods or INTENSITY_METHODS + DEEP_METHODS) if m != RAW]
    known = set(available())
    frames = []
    for m in names:
        if isinstance(m, str) and m != RAW and m not in known:
            say(f"note: {m!r} is not registered in surfharm.harmonize; skipped")
            continue
        try:
            frames.append(score_deep_images(m, scenario, (params or {}).get(m)))
        except Exception as exc:  # noqa: BLE001 - reported and skipped on request
            if not skip_errors:
                raise
            say(f"note: {m!r} failed and is skipped: {type(exc).__name__}: {exc}")
    return pd.concat(frames, ignore_index=True)
