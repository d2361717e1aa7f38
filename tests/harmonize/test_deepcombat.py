"""DeepComBat: networks, schedule, determinism, stored estimates, model files, PCA front end."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

import surfharm.harmonize as H  # noqa: E402
from surfharm.harmonize.combat import ComBat  # noqa: E402
from surfharm.harmonize.covbat import CovBat  # noqa: E402
from surfharm.models.cvae import ConditionalVAE, default_latent_dim, hidden_widths, kl_schedule  # noqa: E402

#: A few epochs, every phase of the schedule present.
TINY = dict(ae_epochs=1, anneal_epochs=2, cycle_epochs=2, ramp_epochs=1, final_epochs=1)


def cohort(n: int = 80, p: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    sites = np.array(["a", "b", "c", "d"] * (n // 4), dtype=object)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    shift = {"a": 0.0, "b": 0.3, "c": -0.2, "d": 0.1}
    X = (2.5 + rng.normal(0, 0.2, (n, p)) - 0.01 * age[:, None] + 0.05 * (sex == "F")[:, None]
         + np.array([shift[s] for s in sites])[:, None])
    return X, sites, pd.DataFrame({"age": age, "sex": sex})


def fit(**options):
    X, sites, cov = cohort()
    return H.get("deepcombat")(**{**TINY, **options}).fit(X, sites=sites, covariates=cov), X, sites, cov


def test_registered_lazily_and_loaded_by_name():
    assert "deepcombat" in H.available()
    assert H.get("deepcombat").__name__ == "DeepComBat"


def test_architecture_follows_the_published_sizes():
    assert default_latent_dim(68) == 16 and default_latent_dim(24) == 8 and default_latent_dim(200) == 64
    assert hidden_widths(68, 16) == [55, 42, 29]
    net = ConditionalVAE(68, 4, 3)
    linear = [m for m in net.encoder.modules() if m.__class__.__name__ == "Linear"]
    assert [m.in_features for m in linear] == [68 + 4 + 3, 55, 42] and net.mu.out_features == 16
    decoder = [m for m in net.decoder if m.__class__.__name__ == "Linear"]
    assert [m.out_features for m in decoder] == [29, 42, 55, 68]
    assert net.decoder[-1].__class__.__name__ == "Linear"                  # last layer linear
    assert sum(m.__class__.__name__ == "Tanh" for m in net.decoder) == 3


def test_kl_schedule_values():
    values = [kl_schedule(e) for e in range(40)]
    assert values[:5] == [(0.0, 0.0)] * 5                                  # autoencoder
    assert [b for b, _ in values[5:15]] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [b for b, _ in values[15:20]] == [0.0, 0.2, 0.4, 0.6, 0.8]      # the next cycle starts again at 0
    assert all(lam == 1.0 for _, lam in values[5:35])
    assert values[35:] == [(1.0, 0.1)] * 5
    assert H.get("deepcombat")().n_epochs == 40


def test_shapes_losses_finite_and_history_follows_the_schedule():
    model, X, sites, cov = fit()
    out = model.transform(X, sites=sites, covariates=cov)
    assert out.shape == X.shape and np.isfinite(out).all()
    assert model.network_.latent_dim == 8 and model.latent_model_.gamma_star_.shape == (4, 8)
    assert model.residual_model_.gamma_star_.shape == (4, X.shape[1])
    assert len(model.history_) == model.n_epochs == 4
    assert all(np.isfinite([h["loss"], h["sse"], h["kl"]]).all() for h in model.history_)
    assert [(h["beta"], h["lambda"]) for h in model.history_] == [model.schedule(e) for e in range(4)]
    assert model.cov_min_.min() == 0 and ((model._covariate_input(cov, len(X)) >= 0)
                                          & (model._covariate_input(cov, len(X)) <= 1)).all()


def test_site_means_are_removed_and_age_kept():
    model, X, sites, cov = fit()
    out = model.transform(X, sites=sites, covariates=cov)
    resid = lambda Y: Y.mean(axis=1) + 0.01 * cov["age"].to_numpy()  # noqa: E731
    raw_gap = np.ptp([resid(X)[sites == s].mean() for s in "abcd"])
    gap = np.ptp([resid(out)[sites == s].mean() for s in "abcd"])
    assert gap < 0.3 * raw_gap
    assert np.corrcoef(out.mean(axis=1), cov["age"])[0, 1] < -0.5


def test_deterministic_with_a_seed_and_seed_matters():
    a, X, sites, cov = fit(seed=3)
    b, *_ = fit(seed=3)
    c, *_ = fit(seed=4)
    out_a, out_b, out_c = (m.transform(X, sites=sites, covariates=cov) for m in (a, b, c))
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, out_c)


def test_transform_of_the_training_scans_equals_fit_transform():
    model, X, sites, cov = fit()
    again = H.get("deepcombat")(**TINY).fit_transform(X, sites=sites, covariates=cov)
    np.testing.assert_array_equal(again, model.transform(X, sites=sites, covariates=cov))


@pytest.mark.parametrize("residual_method", ["combat", "covbat"])
def test_save_load_identical(residual_method, tmp_path):
    model, X, sites, cov = fit(residual_method=residual_method)
    path = model.save(tmp_path / "deepcombat.safetensors")
    assert path.with_suffix(".json").exists()
    loaded = H.load(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert isinstance(loaded.residual_model_, CovBat if residual_method == "covbat" else ComBat)
    np.testing.assert_array_equal(loaded.transform(X, sites=sites, covariates=cov),
                                  model.transform(X, sites=sites, covariates=cov))
    assert loaded.history_ == model.history_


def test_new_scans_use_the_stored_estimates():
    model, X, sites, cov = fit()
    new_X, new_sites, new_cov = cohort(n=20, seed=7)
    before = {k: v.clone() for k, v in model.network_.state_dict().items()}
    gamma = model.latent_model_.gamma_star_.copy()
    out = model.transform(new_X, sites=new_sites, covariates=new_cov)
    # Each new scan is harmonized alone exactly as in the batch: nothing is re-estimated from new data.
    one = model.transform(new_X[:1], sites=new_sites[:1], covariates=new_cov.iloc[:1])
    np.testing.assert_allclose(one[0], out[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(model.latent_model_.gamma_star_, gamma)
    assert all((before[k] == v).all() for k, v in model.network_.state_dict().items())
    # A scan of the training set transformed among new scans gives its training output.
    mixed = model.transform(np.vstack([X[:3], new_X]), sites=np.concatenate([sites[:3], new_sites]),
                            covariates=pd.concat([cov.iloc[:3], new_cov], ignore_index=True))
    np.testing.assert_allclose(mixed[:3], model.transform(X, sites=sites, covariates=cov)[:3], rtol=0, atol=1e-6)


def test_nan_stays_nan_and_others_are_finite():
    model, X, sites, cov = fit()
    X = X.copy()
    X[2, 5] = np.nan
    out = model.transform(X, sites=sites, covariates=cov)
    assert np.isnan(out[2, 5]) and np.isfinite(np.delete(out.ravel(), 2 * X.shape[1] + 5)).all()


def test_options_are_checked():
    X, sites, cov = cohort()
    with pytest.raises(ValueError, match="residual_method"):
        H.get("deepcombat")(residual_method="relief").fit(X, sites=sites, covariates=cov)
    with pytest.raises(ValueError, match="reference_site"):
        H.get("deepcombat")(**TINY, reference_site="z").fit(X, sites=sites, covariates=cov)


def test_a_diverging_run_stops_with_a_clear_error():
    from surfharm.training.trainer import TrainingDivergedError

    X, sites, cov = cohort()
    with pytest.raises(TrainingDivergedError, match="non-finite loss"):
        H.get("deepcombat")(**TINY, lr=1e30).fit(X * 1e6, sites=sites, covariates=cov)


def test_pca_front_end_for_vertex_maps(tmp_path):
    rng = np.random.default_rng(1)
    n, p = 60, 1500
    sites = np.array(["a", "b", "c"] * (n // 3), dtype=object)
    age = rng.uniform(20, 80, n)
    patterns = rng.normal(0, 1, (5, p))
    X = 2.5 + rng.normal(0, 1, (n, 5)) @ patterns * 0.05 + rng.normal(0, 0.05, (n, p)) - 0.005 * age[:, None]
    X += 0.2 * (sites == "b")[:, None]
    X[:, :10] = np.nan                                     # a medial wall
    cov = pd.DataFrame({"age": age})
    model = H.get("deepcombat")(**TINY, n_components=16).fit(X, sites=sites, covariates=cov)
    assert model.components_.shape == (16, p) and model.pca_residual_model_ is not None
    assert model.network_.n_features == 16
    out = model.transform(X, sites=sites, covariates=cov)
    assert np.isnan(out[:, :10]).all() and np.isfinite(out[:, 10:]).all()
    gap = abs(np.nanmean(out[sites == "b"]) - np.nanmean(out[sites == "a"]))
    assert gap < 0.05 < abs(np.nanmean(X[sites == "b"]) - np.nanmean(X[sites == "a"]))
    path = model.save(tmp_path / "vertex.safetensors")
    np.testing.assert_array_equal(H.load(path).transform(X, sites=sites, covariates=cov), out)


# -- the sphere front end -------------------------------------------------------------------------------

def sphere_cohort(n: int = 60, seed: int = 0, level: int = 3):
    """Smooth maps on the level-3 icosphere (642 vertices): 6 smooth patterns per subject, noise, age, a
    spatially varying shift at site b and a medial wall (the first 20 vertices NaN)."""
    from spherical_ops import icosphere

    rng = np.random.default_rng(seed)
    xyz = np.asarray(icosphere(level).vertices, dtype=float)
    xyz = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    basis = np.stack([xyz[:, 0], xyz[:, 1], xyz[:, 2], xyz[:, 0] * xyz[:, 1], xyz[:, 2] ** 2, xyz[:, 1] * xyz[:, 2]])
    sites = np.array(["a", "b", "c"] * (n // 3), dtype=object)
    age = rng.uniform(20, 80, n)
    X = (2.5 + rng.normal(0, 1, (n, len(basis))) @ basis * 0.1 + rng.normal(0, 0.02, (n, xyz.shape[0]))
         - 0.003 * age[:, None] + 0.1 * (sites == "b")[:, None] * (1 + xyz[:, 0]))
    X[:, :20] = np.nan
    return X, sites, pd.DataFrame({"age": age})


#: Code at level 1 (42 vertices x 4 channels); 10 epochs take a few seconds.
SPHERE = dict(TINY, front_end="sphere", sphere_level=1, sphere_epochs=10)


@pytest.fixture(scope="module")
def sphere_fit():
    X, sites, cov = sphere_cohort()
    return H.get("deepcombat")(**SPHERE).fit(X, sites=sites, covariates=cov), X, sites, cov


def test_sphere_autoencoder_shapes():
    import torch

    from surfharm.models.sphere_autoencoder import SphereAutoencoder, default_widths

    net = SphereAutoencoder(3, bottleneck_level=1, code_channels=4)
    assert net.widths == default_widths(3, 1) == [8, 16, 32] and net.code_size == 4 * 42
    x = torch.zeros(5, 642)
    code = net.encode(x)
    assert code.shape == (5, 168) and net.decode(code).shape == (5, 642)
    with pytest.raises(ValueError, match="642"):
        net.encode(torch.zeros(5, 162))
    with pytest.raises(ValueError, match="bottleneck_level"):
        SphereAutoencoder(3, bottleneck_level=4)


def test_sphere_front_end_feeds_its_code_to_deepcombat(sphere_fit):
    model, X, sites, cov = sphere_fit
    assert model.sphere_network_.code_size == model.network_.n_features == 168
    assert model.components_.shape == (0, X.shape[1]) and model.pca_residual_model_ is not None
    assert len(model.sphere_history_) == 10 and model.sphere_history_[-1]["mse"] < model.sphere_history_[0]["mse"]
    out = model.transform(X, sites=sites, covariates=cov)
    assert out.shape == X.shape and out.dtype == X.dtype
    gap = abs(np.nanmean(out[sites == "b"]) - np.nanmean(out[sites == "a"]))
    assert gap < 0.03 < abs(np.nanmean(X[sites == "b"]) - np.nanmean(X[sites == "a"]))


def test_sphere_front_end_reconstructs_new_maps_better_than_the_mean_map(sphere_fit):
    model, *_ = sphere_fit
    new_X, *_ = sphere_cohort(seed=5)
    _, remainder = model._network_input(new_X)
    Z = model._z(new_X, slice(0, new_X.shape[1]))
    observed = np.isfinite(Z)
    # The mean map (0 in z-units) leaves the whole variance; measured after 10 epochs: 0.18 of it.
    assert np.mean(remainder[observed] ** 2) < 0.5 * np.mean(Z[observed] ** 2)


def test_sphere_front_end_keeps_nan_vertices_nan(sphere_fit):
    model, X, sites, cov = sphere_fit
    X = X.copy()
    X[3, 100] = np.nan
    out = model.transform(X, sites=sites, covariates=cov)
    assert np.isnan(out[:, :20]).all() and np.isnan(out[3, 100])
    assert np.isfinite(out[:, 20:]).sum() == out[:, 20:].size - 1


def test_sphere_front_end_save_load_identical(sphere_fit, tmp_path):
    model, X, sites, cov = sphere_fit
    path = model.save(tmp_path / "sphere.safetensors")
    loaded = H.load(path)
    assert loaded.get_params() == model.get_params()
    assert loaded.sphere_network_.config() == model.sphere_network_.config()
    np.testing.assert_array_equal(loaded.transform(X, sites=sites, covariates=cov),
                                  model.transform(X, sites=sites, covariates=cov))
    assert loaded.sphere_history_ == model.sphere_history_


def test_sphere_front_end_deterministic_with_a_seed():
    X, sites, cov = sphere_cohort(n=30)
    options = {**SPHERE, "sphere_epochs": 2}
    a, b, c = (H.get("deepcombat")(**options, seed=s).fit(X, sites=sites, covariates=cov) for s in (1, 1, 2))
    out_a, out_b, out_c = (m.transform(X, sites=sites, covariates=cov) for m in (a, b, c))
    np.testing.assert_array_equal(out_a, out_b)
    assert not np.array_equal(out_a, out_c)


def test_sphere_front_end_needs_icosphere_maps():
    X, sites, cov = cohort()
    with pytest.raises(ValueError, match="icosphere"):
        H.get("deepcombat")(**SPHERE).fit(X, sites=sites, covariates=cov)
    X, sites, cov = sphere_cohort(n=30)
    with pytest.raises(ValueError, match="sphere_level"):
        H.get("deepcombat")(**{**SPHERE, "sphere_level": 4}).fit(X, sites=sites, covariates=cov)
