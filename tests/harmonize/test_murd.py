"""MURD: networks, published loss weights, training, harmonization (seen and unseen scanners), persistence."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from surfharm import harmonize  # noqa: E402
from surfharm.harmonize.volumetric import slices as sl  # noqa: E402
from surfharm.harmonize.volumetric.murd import MURD, PUBLISHED_WEIGHTS, MURDTrainingConfig  # noqa: E402
from surfharm.models.murd import ContentEncoder, Generator, MappingNetwork, StyleEncoder, pick  # noqa: E402
from surfharm.simulate.volumes import simulate_multicontrast_cohort  # noqa: E402

TINY = dict(base_channels=4, n_res=1, style_channels=4, disc_channels=4, disc_layers=2, batch_size=4)
TRAIN = ("sub-001", "sub-002")
TEST = ("sub-003",)


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    # scanner3 is held out of training (the unseen scanner)
    return simulate_multicontrast_cohort(n_scanners=3, n_traveling=3, n_per_scanner=1, contrasts=("t1",), step=2,
                                         seed=0)


def _rows(cohort, subjects=None, sites=None, held_out=False):
    t = cohort.table
    keep = (t["held_out"] == held_out) if held_out is not None else np.ones(len(t), bool)
    if subjects is not None:
        keep &= t["subject"].isin(subjects)
    if sites is not None:
        keep &= t["site"].isin(sites)
    return np.flatnonzero(keep.to_numpy())


def _train_rows(cohort):
    t = cohort.table
    return np.flatnonzero((~t["held_out"] & ~t["subject"].isin(TEST)).to_numpy())


def _fit(cohort, rows, **params):
    model = MURD(**{**TINY, **params})
    return model.fit([cohort.images["t1"][i] for i in rows], sites=cohort.sites[rows],
                     masks=[cohort.masks[i] for i in rows])


@pytest.fixture(scope="module")
def fitted(cohort):
    return _fit(cohort, _train_rows(cohort), steps=60, lr=2e-3)


def _relative_error(out, target, mask):
    return float(np.mean(np.abs(out[mask] - target[mask])) / np.mean(target[mask]))


def _errors(model, cohort, rows):
    """(MURD's, the identity's) relative error of each scan of ``rows`` against the target scanner's scan of
    its subject (the identity: the scan in the target's unit), and the in-mask correlation of MURD's with it."""
    target = {cohort.table["subject"][i]: i for i in _rows(cohort, sites=["scanner1"])}
    out = model.transform([cohort.images["t1"][i] for i in rows], sites=cohort.sites[rows],
                          masks=[cohort.masks[i] for i in rows])
    result = []
    for o, i in zip(out, rows):
        j = target[cohort.table["subject"][i]]
        mask = cohort.masks[i] & cohort.masks[j]
        img = cohort.images["t1"][i]
        identity = img / sl.intensity_factor(img, cohort.masks[i]) * model.site_scale_[model.target_, 0]
        assert o.dtype == np.float32 and o.shape == img.shape and np.isfinite(o).all()
        assert (o[~cohort.masks[i]] == 0).all()
        result.append((_relative_error(o, cohort.images["t1"][j], mask),
                       _relative_error(identity, cohort.images["t1"][j], mask),
                       float(np.corrcoef(o[mask], cohort.images["t1"][j][mask])[0, 1])))
    return result


# -- networks and configuration -------------------------------------------------------------------------------------

def test_network_shapes():
    x = torch.randn(2, 3, 16, 24)
    content = ContentEncoder(3, base_channels=4, n_res=2)(x)
    assert content.shape == (2, 16, 4, 6)
    styles = StyleEncoder(3, n_sites=3, style_dim=64, base_channels=4)(x)
    assert styles.shape == (2, 3, 64)
    mapped = MappingNetwork(n_sites=3)(torch.randn(2, 16))
    assert mapped.shape == (2, 3, 64)
    assert sum(isinstance(m, torch.nn.Linear) for m in MappingNetwork(3).shared) == 6
    out = Generator(3, base_channels=4, style_dim=64, n_res=2)(content, pick(styles, torch.tensor([2, 0])))
    assert out.shape == x.shape
    np.testing.assert_array_equal(pick(styles, torch.tensor([2, 0]))[1].detach(), styles[1, 0].detach())
    with pytest.raises(ValueError, match="multiple of 4"):
        ContentEncoder(3, 4)(torch.randn(1, 3, 10, 12))


def test_published_loss_weights_and_optimisers_are_the_defaults():
    cfg = MURDTrainingConfig(in_channels=3, out_channels=3, n_sites=2)
    assert {k: getattr(cfg, k) for k in PUBLISHED_WEIGHTS} == {
        "w_adversarial": 1.0, "w_r1": 1.0, "w_content": 10.0, "w_style": 10.0, "w_identity": 10.0,
        "w_cycle": 10.0, "w_gradient": 1.0, "w_magnitude": 0.01, "w_diversity": 1.0}
    assert cfg.betas == (0.0, 0.99) and cfg.ema_decay == 0.999 and cfg.latent_dim == 16
    assert MURDTrainingConfig.from_dict(cfg.to_dict()) == cfg
    model = MURD()
    assert model.context == 1 and model.style_dim == 64 and model.mapping_layers == 6 and model.mapping_dim == 128
    assert model.mapping_lr / model.lr == pytest.approx(1e-6 / 1e-4)      # the published ratio


def test_trained_model_uses_the_published_weights_and_three_optimisers(fitted, cohort):
    assert fitted.history_[-1]["step"] == 60
    with pytest.raises(harmonize.HarmonizerInputError, match="unknown name.*'cycles'"):
        _fit(cohort, _train_rows(cohort)[:2], steps=1, loss_weights={"cycles": 1.0})


# -- training --------------------------------------------------------------------------------------------------------

def test_losses_are_finite_and_reconstructions_improve(fitted):
    first, last = fitted.history_[0], fitted.history_[-1]
    assert all(np.isfinite(v) for h in fitted.history_ for v in h.values())
    for name in ("identity", "cycle", "content"):
        assert last[name] < 0.8 * first[name], (name, first[name], last[name])
    # the reference styles are set and differ between the sites
    codes = fitted.networks_["reference"].codes
    assert codes.shape == (2, 64) and torch.isfinite(codes).all() and not torch.equal(codes[0], codes[1])


def _relative_change(a, b, mask):
    return float((a - b)[mask].abs().mean() / a[mask].abs().mean())


def test_the_generator_uses_the_style(fitted, cohort):
    """One content code decoded with two styles gives different slices: two noise vectors of one site, and
    one noise vector through two sites' heads of the mapping network (after 60 short steps)."""
    i = _rows(cohort, subjects=TEST, sites=["scanner2"])[0]
    img, mask = cohort.images["t1"][i], cohort.masks[i]
    geometry = sl.slice_geometry(img.shape, fitted.slice_axis, fitted.pad_depth(), fitted.context)
    x, m, _ = sl.volume_to_slices((img / sl.intensity_factor(img, mask))[None], mask, geometry)
    x, m = torch.from_numpy(x), torch.from_numpy(m)[:, None].expand(-1, x.shape[1], -1, -1)
    nets = fitted.networks_
    z = torch.randn(2, len(x), fitted.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        content = nets["content_ema"](x)
        styles = [nets["mapping_ema"](z[j]) for j in range(2)]          # (B, n_sites, style_dim)
        site_a, site_a2, site_b = (nets["generator_ema"](content, s) for s in
                                   (styles[0][:, 0], styles[1][:, 0], styles[0][:, 1]))
    # measured (seeds 0, 1, 2): two noise vectors 0.99, 0.49, 0.13, two sites 2.3, 0.33, 1.2; with PyTorch's
    # default initialisation of the mapping network and style encoder, two noise vectors 0.0004 to 0.001
    assert _relative_change(site_a, site_a2, m) > 0.02
    assert _relative_change(site_a, site_b, m) > 0.02
    assert torch.isfinite(site_a).all()


def test_harmonized_traveling_subject_against_the_identity(fitted, cohort):
    rows = _rows(cohort, subjects=TEST, sites=["scanner2"])
    for err, base, corr in _errors(fitted, cohort, rows):
        # After 60 tiny CPU steps MURD does NOT beat the identity (measured: relative error 0.31 against
        # 0.08, in-mask correlation with the target scan only 0.28; seeds 1, 2: 0.35, 0.43 and 0.26, 0.35): a
        # blurred image whose generator already follows the style; the test pins what it does achieve: a
        # positively correlated image in about the target's unit.
        assert err < 0.4 and corr > 0.2, (err, base, corr)


def test_unseen_scanner_is_harmonized_without_its_site(fitted, cohort):
    rows = _rows(cohort, subjects=TEST, held_out=True)
    assert set(cohort.sites[rows]) == {"scanner3"}
    for err, _, corr in _errors(fitted, cohort, rows):
        assert err < 0.4 and corr > 0.2, (err, corr)       # measured: 0.31 (identity 0.11), correlation 0.26
    # the source site is not used: the same scan called scanner3 (unseen) or scanner2 maps identically
    X, masks = [cohort.images["t1"][rows[0]]], [cohort.masks[rows[0]]]
    np.testing.assert_array_equal(fitted.transform(X, sites=["scanner3"], masks=masks)[0],
                                  fitted.transform(X, sites=["scanner2"], masks=masks)[0])


def test_any_training_site_can_be_the_target(fitted, cohort):
    i = _rows(cohort, subjects=TEST, sites=["scanner1"])[0]
    X, masks = [cohort.images["t1"][i]], [cohort.masks[i]]
    to_2 = fitted.transform(X, sites=["scanner1"], masks=masks, target_site="scanner2")[0]
    assert np.isfinite(to_2).all() and not np.array_equal(to_2, X[0])
    np.testing.assert_array_equal(fitted.transform(X, sites=["scanner1"], masks=masks)[0], X[0])


# -- persistence, determinism, resume ----------------------------------------------------------------------------

def test_save_and_load_give_identical_outputs(fitted, cohort, tmp_path):
    path = fitted.save(tmp_path / "murd.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "murd" and meta["format"] == "surfharm-murd"
    loaded = harmonize.load(path)
    assert type(loaded) is MURD and harmonize.get("murd") is MURD
    torch.testing.assert_close(loaded.networks_["reference"].codes, fitted.networks_["reference"].codes)
    rows = _rows(cohort, subjects=TEST, held_out=None)
    X, masks = [cohort.images["t1"][i] for i in rows], [cohort.masks[i] for i in rows]
    for a, b in zip(fitted.transform(X, sites=cohort.sites[rows], masks=masks),
                    loaded.transform(X, sites=cohort.sites[rows], masks=masks)):
        np.testing.assert_array_equal(a, b)


def test_training_is_deterministic_for_a_seed(cohort):
    rows = _train_rows(cohort)[:4]
    i = _rows(cohort, subjects=TEST, sites=["scanner2"])[0]
    X, masks = [cohort.images["t1"][i]], [cohort.masks[i]]
    outs = [_fit(cohort, rows, steps=3, seed=s).transform(X, sites=["scanner2"], masks=masks)[0] for s in (1, 1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_resumed_training_repeats_the_uninterrupted_run(cohort, tmp_path):
    rows = _train_rows(cohort)[:4]
    i = _rows(cohort, subjects=TEST, sites=["scanner2"])[0]
    X, masks = [cohort.images["t1"][i]], [cohort.masks[i]]
    whole = _fit(cohort, rows, steps=4)
    checkpoint = tmp_path / "ck.safetensors"
    _fit(cohort, rows, steps=2, checkpoint=checkpoint)
    from safetensors import safe_open
    with safe_open(str(checkpoint), "pt") as f:
        keys = list(f.keys())
    for prefix in ("networks.content_ema.", "networks.generator_ema.", "networks.reference.codes",
                   "opt_g.state.", "opt_mapping.state.", "opt_d.state."):
        assert any(k.startswith(prefix) for k in keys), prefix
    resumed = _fit(cohort, rows, steps=4, checkpoint=checkpoint, resume=True)
    assert resumed.history_[-1]["step"] == 4
    for name, module in whole.networks_.items():
        for (key, a), b in zip(module.state_dict().items(), resumed.networks_[name].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name}.{key}")
    np.testing.assert_array_equal(resumed.transform(X, sites=["scanner2"], masks=masks)[0],
                                  whole.transform(X, sites=["scanner2"], masks=masks)[0])
