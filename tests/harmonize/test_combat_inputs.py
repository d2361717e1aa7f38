"""ComBat on the inputs that break the peers: each case fails loudly or is handled on purpose."""
import numpy as np
import pandas as pd
import pytest

from surfharm.harmonize import ComBat, HarmonizerInputError, NotFittedError


def _cohort(seed=0, n_per_site=(20, 25, 15), n_features=40):
    rng = np.random.default_rng(seed)
    sites = np.repeat(["alpha", "beta", "gamma"], n_per_site)
    n = sites.size
    age = rng.uniform(20, 80, n)
    X = 2.5 - 0.004 * age[:, None] + rng.normal(0, 0.15, (n, n_features))
    X += np.select([sites == "beta", sites == "gamma"], [0.2, -0.1], 0.0)[:, None]
    X[sites == "beta"] *= 1.2
    return X, sites, pd.DataFrame({"age": age, "sex": rng.choice(["F", "M"], n)})


def test_a_site_with_one_scan_is_refused_with_its_name_and_the_remedy():
    X, sites, cov = _cohort()
    sites = sites.astype(object)
    sites[-1] = "lonely"
    with pytest.raises(HarmonizerInputError, match=r"\['lonely'\].*single scan.*mean_only=True"):
        ComBat().fit(X, sites=sites, covariates=cov)


def test_a_site_with_one_scan_is_corrected_in_location_with_mean_only():
    X, sites, cov = _cohort()
    sites = sites.astype(object)
    sites[-1] = "lonely"
    X[-1] += 0.5  # a strong shift of the lone scan
    out = ComBat(mean_only=True).fit_transform(X, sites=sites, covariates=cov)
    assert np.isfinite(out).all()
    # EB pulls the lone scan's site mean towards the shared prior, removing much of the shift
    assert abs((out[-1] - X[-1]).mean()) > 0.1


def test_nan_values_stay_nan_and_everything_else_is_harmonized():
    X, sites, cov = _cohort()
    X[3, 5] = np.nan            # one missing value
    X[sites == "beta", 6] = np.nan   # a feature missing at a whole site
    X[:, 7] = np.nan            # a medial-wall vertex: missing everywhere
    out = ComBat().fit_transform(X, sites=sites, covariates=cov)
    assert np.array_equal(np.isnan(out), np.isnan(X))
    finite = ~np.isnan(X)
    assert not np.allclose(out[finite], X[finite])  # really harmonized
    # the feature with one missing value is harmonized from its 59 observed scans: without EB the
    # features are independent, so it equals ComBat on that feature alone with the scan left out
    keep = np.arange(len(X)) != 3
    alone = ComBat(eb=False).fit_transform(X[keep][:, [5]], sites=sites[keep], covariates=cov[keep])
    full = ComBat(eb=False).fit_transform(X, sites=sites, covariates=cov)
    assert np.allclose(full[keep, 5], alone[:, 0], rtol=0, atol=1e-10)


def test_constant_features_are_returned_unchanged():
    X, sites, cov = _cohort()
    X[:, 2] = 3.25
    X[:, 3] = 0.0
    out = ComBat().fit_transform(X, sites=sites, covariates=cov)
    assert np.array_equal(out[:, 2], X[:, 2]) and np.array_equal(out[:, 3], X[:, 3])
    assert np.isfinite(out).all()


def test_a_single_feature_needs_eb_off_and_then_works():
    X, sites, cov = _cohort()
    with pytest.raises(HarmonizerInputError, match="at least 2 usable features.*eb=False"):
        ComBat().fit(X[:, :1], sites=sites, covariates=cov)
    out = ComBat(eb=False).fit_transform(X[:, :1], sites=sites, covariates=cov)
    assert out.shape == (len(X), 1) and np.isfinite(out).all()
    means = pd.Series(out[:, 0]).groupby(sites).mean()
    assert means.std() < pd.Series(X[:, 0]).groupby(sites).mean().std() / 5


def test_covariate_collinear_with_site_is_named():
    X, sites, cov = _cohort()
    cov = cov.assign(scanner_field=np.where(sites == "alpha", 1.5, 3.0))
    with pytest.raises(HarmonizerInputError, match=r"\['scanner_field'\].*confounded with site"):
        ComBat().fit(X, sites=sites, covariates=cov)


def test_collinear_covariates_are_named():
    X, sites, cov = _cohort()
    cov = cov.assign(age_months=cov["age"] * 12)
    with pytest.raises(HarmonizerInputError, match=r"\['age', 'age_months'\].*collinear"):
        ComBat().fit(X, sites=sites, covariates=cov)


def test_non_numeric_covariate_columns_are_one_hot_encoded_but_arrays_must_be_numeric():
    X, sites, cov = _cohort()
    model = ComBat().fit(X, sites=sites, covariates=cov.assign(group=np.tile(["ctl", "pat", "mci"], 20)))
    assert model.encoder_.names == ["age", "sex[M]", "group[mci]", "group[pat]"]
    with pytest.raises(HarmonizerInputError, match="non-numeric dtype.*DataFrame"):
        ComBat().fit(X, sites=sites, covariates=np.array([["a"]] * len(X)))


def test_missing_covariate_values_are_named():
    X, sites, cov = _cohort()
    cov.loc[4, "age"] = np.nan
    with pytest.raises(HarmonizerInputError, match=r"'age' is missing at scans \[4\]"):
        ComBat().fit(X, sites=sites, covariates=cov)


def test_sites_as_strings_or_ints_give_the_same_result():
    X, sites, cov = _cohort()
    as_int = pd.Series(sites).map({"alpha": 1, "beta": 2, "gamma": 3}).to_numpy()
    a = ComBat().fit_transform(X, sites=sites, covariates=cov)
    b = ComBat().fit_transform(X, sites=as_int, covariates=cov)
    assert np.allclose(a, b, rtol=0, atol=1e-12)
    assert ComBat().fit(X, sites=as_int, covariates=cov).sites_ == [1, 2, 3]


def test_unseen_site_at_transform_names_it_and_the_remedy():
    X, sites, cov = _cohort()
    model = ComBat().fit(X, sites=sites, covariates=cov)
    new_sites = sites.copy()
    new_sites[:2] = "delta"
    with pytest.raises(HarmonizerInputError, match=r"\['delta'\].*not fitted on.*refit including scans"):
        model.transform(X, sites=new_sites, covariates=cov)


def test_mismatched_feature_count_at_transform():
    X, sites, cov = _cohort()
    model = ComBat().fit(X, sites=sites, covariates=cov)
    with pytest.raises(HarmonizerInputError, match="X has 39 features.* 40"):
        model.transform(X[:, :39], sites=sites, covariates=cov)


def test_mismatched_covariates_at_transform():
    X, sites, cov = _cohort()
    model = ComBat().fit(X, sites=sites, covariates=cov)
    with pytest.raises(HarmonizerInputError, match="columns"):
        model.transform(X, sites=sites, covariates=cov[["age"]])
    with pytest.raises(HarmonizerInputError, match=r"level\(s\) \['U'\] not seen"):
        model.transform(X, sites=sites, covariates=cov.assign(sex="U"))


def test_inf_and_bad_shapes_are_refused():
    X, sites, cov = _cohort()
    X[2, 9] = np.inf
    with pytest.raises(HarmonizerInputError, match="inf at scan 2, feature 9"):
        ComBat().fit(X, sites=sites, covariates=cov)
    with pytest.raises(HarmonizerInputError, match="2-D"):
        ComBat().fit(X[:, 0], sites=sites, covariates=cov)
    with pytest.raises(HarmonizerInputError, match="one label per scan"):
        ComBat().fit(X, sites=sites[:-1], covariates=cov)


def test_unknown_reference_site_and_unfitted_model():
    X, sites, cov = _cohort()
    with pytest.raises(HarmonizerInputError, match="reference_site 'omega' is not among the sites"):
        ComBat(reference_site="omega").fit(X, sites=sites, covariates=cov)
    with pytest.raises(NotFittedError):
        ComBat().transform(X, sites=sites, covariates=cov)


def test_too_few_scans_for_the_design():
    X, sites, cov = _cohort(n_per_site=(2, 2, 2))
    with pytest.raises(HarmonizerInputError, match="6 scans cannot fit"):
        ComBat().fit(X, sites=sites, covariates=cov.assign(extra=np.arange(6.0), more=np.arange(6.0) ** 2))
