"""S2SGAN harmonizer: protocol, NaN handling, directions, save/load, resume, bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from surfharm import harmonize
from surfharm.harmonize import HarmonizerInputError, NotFittedError, S2SGAN
from surfharm.training import write_safetensors

V3 = 642


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**changes) -> S2SGAN:
    settings = dict(depth=2, base_channels=4, disc_channels=4, disc_down=2, max_steps=4, pool_size=2, seed=0)
    settings.update(changes)
    return S2SGAN(**settings)


@pytest.fixture
def pair():
    """6 scans per site at level 3, site B a saturating function of A-like maps; NaN medial wall."""
    rng = np.random.default_rng(0)
    base = 2.5 + 0.3 * rng.standard_normal((12, V3))
    X = base.copy()
    X[6:] = 4.0 * np.tanh(base[6:] / 4.0) + 0.2
    X[:, :20] = np.nan
    sites = np.array(["A"] * 6 + ["B"] * 6)
    cov = pd.DataFrame({"age": np.linspace(20, 70, 12), "female": np.tile([0, 1], 6)})
    return X.astype(np.float32), sites, cov


def test_registered_and_unfitted():
    assert harmonize.get("s2sgan") is S2SGAN
    with pytest.raises(NotFittedError):
        tiny().transform(np.zeros((1, V3)), sites=["A"])


@pytest.mark.slow
def test_transform_maps_source_keeps_target_and_nan(pair):
    X, sites, cov = pair
    model = tiny(source="B", target="A").fit(X, sites=sites, covariates=cov)
    assert model.sites_ == ["B", "A"] and model.level_ == 3
    out = model.transform(X, sites=sites)
    assert out.shape == X.shape and out.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(out), np.isnan(X))
    np.testing.assert_array_equal(out[sites == "A"], X[sites == "A"])
    # Source scans land on the target's per-vertex scale (the z-scored mapping), not left as they were.
    assert not np.allclose(out[sites == "B"][:, 20:], X[sites == "B"][:, 20:])
    target_mean = np.mean(X[sites == "A"][:, 20:], axis=0)
    assert np.mean(np.abs(out[sites == "B"][:, 20:].mean(0) - target_mean)) < \
        np.mean(np.abs(X[sites == "B"][:, 20:].mean(0) - target_mean))
    reverse = model.transform(X, sites=sites, direction="reverse")
    np.testing.assert_array_equal(reverse[sites == "B"], X[sites == "B"])
    assert not np.allclose(reverse[sites == "A"][:, 20:], X[sites == "A"][:, 20:])


@pytest.mark.slow
def test_calibration_matches_the_other_sites_moments_on_the_training_scans(pair):
    """Calibrated outputs of the training scans have the other site's per-vertex mean and SD exactly;
    without calibration the generator's output is used as it is (and differs)."""
    X, sites, cov = pair
    model = tiny(source="B", target="A", calibrate=True).fit(X, sites=sites, covariates=cov)
    raw = tiny(source="B", target="A").fit(X, sites=sites, covariates=cov)
    assert model.output_mean_.shape == (2, V3) and raw.output_mean_ is None
    cortex = slice(20, None)
    for domain, (direction, moving, other) in enumerate((("forward", "B", "A"), ("reverse", "A", "B"))):
        out = model.transform(X, sites=sites, direction=direction)[sites == moving][:, cortex].astype(np.float64)
        ref = X[sites == other][:, cortex].astype(np.float64)
        np.testing.assert_allclose(out.mean(0), ref.mean(0), atol=2e-4)
        # The SD is matched where the generator's own output SD is above the 0.05 z floor.
        free = model.output_std_[domain, cortex] > 0.05
        assert free.mean() > 0.5
        np.testing.assert_allclose(out.std(0)[free], ref.std(0)[free], rtol=2e-3)
        uncalibrated = raw.transform(X, sites=sites, direction=direction)[sites == moving][:, cortex]
        assert np.abs(uncalibrated.mean(0) - ref.mean(0)).max() > 1e-2


class _Identity(torch.nn.Module):
    """A stand-in generator that returns its input (z-units in, z-units out)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, cond=None):
        return x


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_kept_covariates_survive_the_site_normalisation(keep):
    """Site A is older than site B; thickness falls 0.01 mm per year and B reads 0.3 mm thicker. With
    ``keep_covariates=("age",)`` the slope is fitted within the sites and A's scans keep their age
    difference (identity generator: the site shift alone); without it, it is removed as site."""
    rng = np.random.default_rng(1)
    age = np.concatenate([np.linspace(60, 80, 8), np.linspace(20, 40, 8)])
    sites = np.array(["A"] * 8 + ["B"] * 8)
    X = (3.0 - 0.01 * age[:, None] + 0.3 * (sites == "B")[:, None]
         + 0.02 * rng.standard_normal((16, V3))).astype(np.float32)
    cov = pd.DataFrame({"age": age})
    model = tiny(source="A", target="B", max_steps=1, keep_covariates=("age",) if keep else ())
    model.fit(X, sites=sites, covariates=cov)
    model.generator_xy_ = _Identity()
    out = model.transform(X, sites=sites, covariates=cov)[sites == "A"].mean(axis=1)
    if keep:
        # Slope SE per vertex 0.0008 (noise 0.02 mm over 16 ages).
        assert abs(model.keep_beta_[0].mean() + 0.01) < 3e-4 and np.abs(model.keep_beta_[0] + 0.01).max() < 4e-3
        np.testing.assert_allclose(out, 3.3 - 0.01 * age[sites == "A"], atol=0.01)
        with pytest.raises(HarmonizerInputError, match="keep_covariates=\\['age'\\] needs covariates"):
            model.transform(X, sites=sites)
    else:
        assert abs(out.mean() - X[sites == "B"].mean()) < 0.01          # the 0.4 mm age gap is gone


@pytest.mark.slow
def test_per_site_slopes_give_mapped_scans_the_target_slope():
    """Site B attenuates the age effect (0.005 instead of 0.01 mm per year) and reads 0.3 mm thicker.
    With ``covariate_slopes="per-site"`` each site's slope is fitted, and A's scans mapped to B (identity
    generator: the site shift alone) take B's slope; with pooled slopes they keep their own."""
    rng = np.random.default_rng(2)
    age = np.tile(np.linspace(20, 80, 10), 2)
    sites = np.array(["A"] * 10 + ["B"] * 10)
    slope = np.where(sites == "A", -0.01, -0.005)
    X = (3.0 + 0.3 * (sites == "B") + slope * age)[:, None] + 0.01 * rng.standard_normal((20, V3))
    cov = pd.DataFrame({"age": age})
    for slopes in ("per-site", "pooled"):
        model = tiny(source="A", target="B", max_steps=1, keep_covariates=("age",), covariate_slopes=slopes)
        model.fit(X.astype(np.float32), sites=sites, covariates=cov)
        model.generator_xy_ = _Identity()
        mapped = model.transform(X.astype(np.float32), sites=sites, covariates=cov)[sites == "A"].mean(axis=1)
        fitted = np.polyfit(age[sites == "A"], mapped, 1)
        if slopes == "per-site":
            np.testing.assert_allclose(model.keep_beta_[:, 0].mean(axis=1), [-0.01, -0.005], atol=2e-4)
            np.testing.assert_allclose(mapped, 3.3 - 0.005 * age[sites == "A"], atol=0.01)
        else:
            np.testing.assert_array_equal(model.keep_beta_[0], model.keep_beta_[1])
            assert abs(fitted[0] + 0.01) < 3e-4
    with pytest.raises(HarmonizerInputError, match="covariate_slopes must be 'pooled' or 'per-site', got 'site'"):
        tiny(keep_covariates=("age",), covariate_slopes="site").fit(X, sites=sites, covariates=cov)


def test_keep_covariates_errors_name_the_problem(pair):
    X, sites, cov = pair
    with pytest.raises(HarmonizerInputError, match="covariates lack column.*'weight'.*keep_covariates"):
        tiny(keep_covariates=("weight",)).fit(X, sites=sites, covariates=cov)
    cov = cov.assign(site_code=(sites == "B").astype(float))
    with pytest.raises(HarmonizerInputError, match="do not vary independently within the sites"):
        tiny(keep_covariates=("site_code",)).fit(X, sites=sites, covariates=cov)


@pytest.mark.slow
def test_default_target_is_first_sorted_site(pair):
    X, sites, _ = pair
    assert tiny(max_steps=1).fit(X, sites=sites).sites_ == ["B", "A"]
    assert tiny(max_steps=1, source="A").fit(X, sites=sites).sites_ == ["A", "B"]


@pytest.mark.slow
def test_save_load_round_trip_is_bit_exact(pair, tmp_path):
    X, sites, cov = pair
    model = tiny(condition_on=("age",), keep_covariates=("age", "female"), validation_fraction=0.2,
                 calibrate=True).fit(X, sites=sites, covariates=cov)
    assert any("val_cycle_mae_mm" in h for h in model.history_)
    path = model.save(tmp_path / "model.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sites"] == ["B", "A"] and meta["level"] == 3 and meta["params"]["condition_on"] == ["age"]
    loaded = S2SGAN.load(path)
    np.testing.assert_array_equal(loaded.output_std_, model.output_std_)
    np.testing.assert_array_equal(loaded.transform(X, sites=sites, covariates=cov),
                                  model.transform(X, sites=sites, covariates=cov))
    for a, b in zip(model.generator_xy_.state_dict().values(), loaded.generator_xy_.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_fit_is_deterministic(pair):
    X, sites, _ = pair
    a = tiny().fit(X, sites=sites).transform(X, sites=sites)
    b = tiny().fit(X, sites=sites).transform(X, sites=sites)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_same_model(pair, tmp_path, monkeypatch):
    X, sites, _ = pair
    straight = tiny(max_steps=4).fit(X, sites=sites).transform(X, sites=sites)

    from surfharm.training import CycleGANTrainer
    real_step = CycleGANTrainer.train_step

    def interrupt_at_2(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(CycleGANTrainer, "train_step", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt):
        tiny(max_steps=4, checkpoint_dir=tmp_path).fit(X, sites=sites)
    monkeypatch.setattr(CycleGANTrainer, "train_step", real_step)
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["step"] == 2 and saved["extra"]["sites"] == ["B", "A"]
    resumed = tiny(max_steps=4, checkpoint_dir=tmp_path, resume=True).fit(X, sites=sites).transform(X, sites=sites)
    np.testing.assert_array_equal(resumed, straight)


def test_bad_inputs_have_clear_errors(pair, tmp_path):
    X, sites, cov = pair
    with pytest.raises(HarmonizerInputError, match="got 1 site"):
        tiny().fit(X[:6], sites=sites[:6])
    three = np.array(["A"] * 4 + ["B"] * 4 + ["C"] * 4)
    with pytest.raises(HarmonizerInputError, match="exactly two"):
        tiny().fit(X, sites=three)
    with pytest.raises(HarmonizerInputError, match="exactly two sites, the data hold 3"):
        tiny(source="A", target="B").fit(X, sites=three)
    with pytest.raises(HarmonizerInputError, match="'Z' is not among"):
        tiny(target="Z").fit(X, sites=sites)
    with pytest.raises(HarmonizerInputError, match="expected one of .*10242"):
        tiny().fit(X[:, :600], sites=sites)
    bad = X.copy()
    bad[0, 30] = np.inf
    with pytest.raises(HarmonizerInputError, match="inf"):
        tiny().fit(bad, sites=sites)
    with pytest.raises(HarmonizerInputError, match="condition_on"):
        tiny(condition_on=("age",)).fit(X, sites=sites, covariates=None)

    model = tiny(max_steps=1).fit(X, sites=sites)
    level4 = np.zeros((2, 2562), np.float32)
    with pytest.raises(HarmonizerInputError, match=r"2562 features \(level 4\).*level 3, the level it was trained at"):
        model.transform(level4, sites=["A", "B"])
    with pytest.raises(HarmonizerInputError, match=r"\['C'\] are not in this model"):
        model.transform(X[:2], sites=["A", "C"])
    with pytest.raises(HarmonizerInputError, match="direction"):
        model.transform(X, sites=sites, direction="backwards")


def test_load_refuses_other_files(tmp_path):
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"w": torch.zeros(2)}, {"format": "something-else", "surfharm_version": "0.1.0"})
    with pytest.raises(ValueError, match="names no method; expected a file written by surfharm"):
        S2SGAN.load(other)
    future = tmp_path / "future.safetensors"
    write_safetensors(future, {"w": torch.zeros(2)}, {"format": "surfharm-s2sgan", "surfharm_version": "9.0.0"})
    with pytest.raises(ValueError, match="another major version"):
        S2SGAN.load(future)
    with pytest.raises(FileNotFoundError):
        S2SGAN.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        S2SGAN.load(junk)


def test_masked_losses_ignore_vertices_outside_the_mask():
    from surfharm.models import masked_l1, masked_pearson

    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 1, 50, generator=gen), torch.randn(2, 1, 50, generator=gen)
    an, bn = a.numpy(), b.numpy()
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[0, :10] = False
    changed = a.clone()
    changed[0, 0, :10] = 1e6                          # garbage outside the mask changes nothing
    assert masked_l1(changed, b, mask) == masked_l1(a, b, mask)
    expected_l1 = np.mean([np.abs(an[0, 0, 10:] - bn[0, 0, 10:]).mean(), np.abs(an[1, 0] - bn[1, 0]).mean()])
    assert float(masked_l1(a, b, mask)) == pytest.approx(expected_l1, rel=1e-5)
    r = masked_pearson(changed, b, mask)
    assert float(r[0]) == pytest.approx(np.corrcoef(an[0, 0, 10:], bn[0, 0, 10:])[0, 1], abs=1e-5)
    assert float(r[1]) == pytest.approx(np.corrcoef(an[1, 0], bn[1, 0])[0, 1], abs=1e-5)


def test_image_pool_fills_then_swaps():
    from surfharm.models import ImagePool

    pool = ImagePool(size=2, seed=0)
    first = torch.zeros(2, 1, 4)
    assert torch.equal(pool.query(first, step=0), first) and len(pool.images) == 2
    returned = [pool.query(torch.full((1, 1, 4), float(s + 1)), step=s) for s in range(1, 20)]
    # Some queries return a stored (older) map instead of the new one, as the pool is meant to.
    assert any(float(r[0, 0, 0]) != s + 2 for s, r in enumerate(returned))
    assert torch.equal(ImagePool(0).query(first, step=0), first)
