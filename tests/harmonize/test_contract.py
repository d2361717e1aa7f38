"""The harmonizer contract, checked for every registered method.

Each method is tried in a small configuration on data shaped for it (icosahedral level 2 maps for
S2SGAN, positive intensities for the volumetric methods). The checks are scikit-learn's own
(``check_estimator``, with the expected failures listed and explained below) and the project's:
``fit`` returns self, ``clone`` and parameters, unknown sites and feature counts refused by name,
NaN pattern and dtype kept, ``transform`` of the training scans equal to ``fit_transform``, and
save -> :func:`surfharm.harmonize.load` -> transform identical.
"""
from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import check_estimator

import surfharm.harmonize as H

#: Small configurations: methods that learn networks train for two steps.
TINY = {
    "s2sgan": dict(depth=2, base_channels=4, disc_channels=4, disc_down=1, max_steps=2, epochs=1),
    "ravel": dict(normalize=None, control_quantile=0.1),
    "deepcombat": dict(ae_epochs=1, anneal_epochs=2, cycle_epochs=2, ramp_epochs=1, final_epochs=1),
    "cdae": dict(base_channels=4, max_steps=2),
    "paired-unet": dict(depth=2, base_channels=4, max_steps=2),
    "mispel-sphere": dict(base_channels=4, max_steps=2),
}
#: Methods whose input is MR intensities (positive, no covariates).
VOLUMETRIC = {"zscore", "white-stripe", "nyul", "mica", "ravel", "voxel-combat", "global-scaling-vol"}


def build(name: str):
    return H.get(name)(**TINY.get(name, {}))


def dataset(name: str, n_scans: int = 24, seed: int = 0):
    """``(X, side data)`` for ``name``: sites 'a'/'b', age/sex covariates, two scans per subject."""
    rng = np.random.default_rng(seed)
    sites = np.array(["a", "b"] * (n_scans // 2), dtype=object)
    if name in ("s2sgan", "san", "cdae", "paired-unet", "mispel-sphere"):  # vertex maps of icosahedral level 2
        X = 2.5 + rng.normal(0, 0.3, (n_scans, 162)) + 0.2 * (sites == "b")[:, None]
    elif name in VOLUMETRIC:
        # An image of 300 voxels from dark (CSF-like) to bright, with noise and a site effect.
        X = np.linspace(20, 200, 300) + rng.normal(0, 5, (n_scans, 300)) + 10 * (sites == "b")[:, None]
    else:
        X = 2.5 + rng.normal(0, 0.2, (n_scans, 40)) + 0.3 * (sites == "b")[:, None]
    side = {"sites": sites}
    cls = H.get(name)
    if "covariates" in cls.side_data and name not in VOLUMETRIC:
        side["covariates"] = pd.DataFrame({"age": rng.uniform(20, 60, n_scans), "sex": rng.integers(0, 2, n_scans)})
    if "subjects" in cls.side_data:
        side["subjects"] = np.repeat(np.arange(n_scans // 2), 2)
    return X, side


#: Methods that take the (n_scans, n_features) matrix; the slice-based image methods take whole volumes only
#: (``matrix_input = False``) and are checked in test_deep_images.py.
METHODS = [n for n in H.available() if getattr(H.get(n), "matrix_input", True)]


@pytest.fixture(scope="module")
def fitted():
    """One fitted model per method, shared by the checks that only read it."""
    models = {}
    for name in METHODS:
        X, side = dataset(name)
        models[name] = (build(name).fit(X, **side), X, side)
    return models


@pytest.mark.parametrize("name", METHODS)
def test_fit_returns_self_and_clone_gives_an_unfitted_copy(name):
    X, side = dataset(name)
    est = build(name)
    assert est.fit(X, **side) is est
    copy = clone(est)
    assert type(copy) is type(est) and copy.get_params() == est.get_params()
    assert not hasattr(copy, est.fitted_attribute)
    if getattr(est, "needs_fit", True):
        with pytest.raises(H.NotFittedError):
            copy.transform(X, **side)
    else:                                               # methods that learn nothing transform unfitted
        np.testing.assert_array_equal(np.asarray(copy.transform(X, **side)), np.asarray(est.transform(X, **side)))


@pytest.mark.parametrize("name", METHODS)
def test_parameters_are_keyword_only_and_settable(name):
    est = build(name)
    params = est.get_params(deep=True)
    assert params == est.get_params(deep=False)
    assert est.set_params(**params) is est and est.get_params() == params
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(no_such_parameter=1)
    if params:
        with pytest.raises(TypeError):
            type(est)(*params.values())                # positional arguments are refused
    assert repr(est).startswith(type(est).__name__ + "(")


@pytest.mark.parametrize("name", METHODS)
def test_unknown_arguments_are_refused(name, fitted):
    model, X, side = fitted[name]
    with pytest.raises(TypeError):
        build(name).fit(X, **side, not_a_metadata=np.zeros(len(X)))
    with pytest.raises(TypeError):
        model.transform(X, **side, not_a_metadata=np.zeros(len(X)))


@pytest.mark.parametrize("name", [n for n in METHODS if H.get(n).requires_sites])
def test_an_unknown_site_is_refused_by_name(name, fitted):
    model, X, side = fitted[name]
    sites = side["sites"].copy()
    sites[0] = "scanner-never-seen"
    with pytest.raises(ValueError, match="scanner-never-seen"):
        model.transform(X, **{**side, "sites": sites})


@pytest.mark.parametrize("name", [n for n in METHODS if H.get(n).requires_sites])
def test_missing_sites_are_refused_with_the_way_to_pass_them(name):
    X, side = dataset(name)
    side.pop("sites")
    with pytest.raises(ValueError, match="sites="):
        build(name).fit(X, **side)


@pytest.mark.parametrize("name", METHODS)
def test_a_feature_count_mismatch_is_refused_naming_both_counts(name, fitted):
    model, X, side = fitted[name]
    n = X.shape[1]
    with pytest.raises(ValueError, match=rf"{n - 2}.*{n}|{n}.*{n - 2}"):
        model.transform(X[:, :-2], **side)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_pattern_and_dtype_are_kept(name, dtype, fitted):
    model, X, side = fitted[name]
    X = X.astype(dtype)
    X[1, 3] = np.nan
    if not get_tags(model).input_tags.allow_nan:       # methods that need complete data say so
        with pytest.raises(ValueError, match="NaN"):
            model.transform(X, **side)
        X[1, 3] = 1.0
    out = np.asarray(model.transform(X, **side))
    assert out.shape == X.shape and out.dtype == dtype
    np.testing.assert_array_equal(np.isnan(out), np.isnan(X))


@pytest.mark.parametrize("name", METHODS)
def test_transform_of_the_training_scans_equals_fit_transform(name, fitted):
    model, X, side = fitted[name]
    np.testing.assert_array_equal(np.asarray(build(name).fit_transform(X, **side)),
                                  np.asarray(model.transform(X, **side)))


@pytest.mark.parametrize("name", METHODS)
def test_save_load_transform_is_identical(name, fitted, tmp_path):
    model, X, side = fitted[name]
    path = model.save(tmp_path / f"model{model.model_suffix}")
    loaded = H.load(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(np.asarray(loaded.transform(X, **side)), np.asarray(model.transform(X, **side)))
    assert type(loaded).load(path).get_params() == model.get_params()


# -- scikit-learn's own checks --------------------------------------------------------------------------

#: Checks any harmonizer may fail, and why.
EXPECTED_FAILURES = {
    "check_dtype_object": "object arrays are refused: numbers given as text are not parsed silently",
    "check_fit2d_1sample": "the refusal speaks of scans and design columns, not of samples",
    "check_fit2d_1feature": "the refusal explains the method's own limit (empirical Bayes pools features)",
    "check_fit2d_predict1d": "a 1-D input is refused with an explanation that does not use sklearn's wording",
    "check_estimators_dtypes": "integer maps are harmonized as float64 (the output is never integer)",
    "check_transformer_general": "with sites taken from the scans' values, a fit on a copy is not always alike",
    "check_transformer_preserve_dtypes": "float32 stays float32 and float64 float64; other dtypes give float64",
}
#: Methods that cannot fit scikit-learn's small random matrices at all, and why: for them every check
#: that fits data may fail, and the checks of the estimator API (REQUIRED_CHECKS) must pass.
NEEDS_STRUCTURED_DATA = {
    "s2sgan": "maps of an icosahedral level (162, 642, ... vertices)", "cdae": "maps of an icosahedral level",
    "paired-unet": "maps of an icosahedral level and traveling subjects", "san": "maps of an icosahedral level",
    "mispel-sphere": "maps of an icosahedral level and traveling subjects",
    "relief": "at least 10 scans per site", "white-stripe": "an MR intensity histogram with a white-matter peak",
    "global-scaling-vol": "positive intensities (it divides by each scan's mean)",
    "nyul": "distinct intensity percentiles per scan", "mica": "distinct intensity quantiles per scan",
    "zscore": "a scan whose intensities are not constant", "ravel": "a dark control region of voxels",
    "voxel-combat": "volumes or a voxel matrix (its inner ComBat is checked as combat)",
}
#: The estimator API every harmonizer must pass, whatever data it needs.
REQUIRED_CHECKS = {
    "check_estimator_cloneable", "check_estimator_repr", "check_no_attributes_set_in_init",
    "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params", "check_estimator_tags_renamed", "check_valid_tag_types",
    "check_mixin_order", "check_complex_data", "check_estimator_sparse_array", "check_estimators_empty_data_messages",
}
#: Checks of behaviour on data that every method fitting scikit-learn's matrices must pass.
REQUIRED_ON_DATA = {
    "check_n_features_in_after_fitting", "check_fit_idempotent", "check_estimators_pickle",
    "check_methods_subset_invariance", "check_methods_sample_order_invariance", "check_estimators_fit_returns_self",
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters", "check_fit_check_is_fitted",
    "check_pipeline_consistency", "check_readonly_memmap_input", "check_dict_unchanged",
}


def _content_sites(X):
    # Sites from each scan's own values, so that a scan keeps its site in any subset or order.
    if hasattr(X, "toarray"):
        return None                                   # sparse: the method must refuse it by name
    X = np.nan_to_num(np.asarray(X, dtype=float))
    return np.array(["ab"[zlib.crc32(row.tobytes()) % 2] for row in X])


class _SitesFromScans:
    """Supplies ``sites`` (and ``subjects``) when scikit-learn's checks call fit/transform without them."""

    def fit(self, X, y=None, **side):
        return super().fit(X, y, **self._side(X, side))

    def transform(self, X, **side):
        return super().transform(X, **self._side(X, side))

    def fit_transform(self, X, y=None, **side):
        return super().fit_transform(X, y, **self._side(X, side))

    def _side(self, X, side):
        if self.requires_sites:
            side.setdefault("sites", _content_sites(X))
        if "subjects" in self.side_data and not hasattr(X, "toarray"):
            side.setdefault("subjects", np.arange(np.asarray(X).shape[0]))
        return side


def _for_checks(name: str):
    """The method's class with sites supplied from the scans (module-level, so that it pickles)."""
    cls = H.get(name)
    adapter_name = f"{cls.__name__}ForChecks_{name.replace('-', '_')}"
    if adapter_name not in globals():
        globals()[adapter_name] = type(adapter_name, (_SitesFromScans, cls), {"__module__": __name__})
    return globals()[adapter_name]


@pytest.mark.parametrize("name", METHODS)
def test_scikit_learn_check_estimator(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(_for_checks(name)(**TINY.get(name, {})), on_fail=None)
    failed = {r["check_name"]: str(r["exception"])[:300] for r in results if r["status"] == "failed"}
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    missing = {c: failed.get(c, "not run") for c in REQUIRED_CHECKS if c not in passed}
    assert not missing, f"{name}: the estimator API checks failed: {missing}"
    if name in NEEDS_STRUCTURED_DATA:
        return                                        # its data checks are the project's own, above
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_FAILURES}
    assert not unexpected, f"{name}: checks failed that are expected to pass: {unexpected}"
    missing = {c: failed.get(c, "not run") for c in REQUIRED_ON_DATA if c not in passed}
    assert not missing, f"{name}: {missing}"
