"""CALAMITI / HACA3 (surfharm.harmonize.volumetric.calamiti): codes, training, harmonizing, persistence."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from surfharm import harmonize  # noqa: E402
from surfharm.harmonize.volumetric import slices as sl  # noqa: E402
from surfharm.harmonize.volumetric.calamiti import Calamiti  # noqa: E402
from surfharm.io.nifti import VolumeInputError  # noqa: E402
from surfharm.models.calamiti import ContrastEncoder, Decoder, gumbel_one_hot, one_hot  # noqa: E402
from surfharm.simulate.volumes import simulate_multicontrast_cohort  # noqa: E402

CONTRASTS = ("t1", "t2")
TINY = dict(contrasts=CONTRASTS, target_site="scanner1", depth=2, beta_channels=4, decoder_channels=4,
            theta_channels=4, batch_size=4)
TEST_SUBJECT = "sub-003"           # a traveling subject kept out of training


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    # 3 scanners, the last held out of training; every subject's sessions hold T1 and T2.
    return simulate_multicontrast_cohort(n_scanners=3, n_traveling=3, n_per_scanner=2, contrasts=CONTRASTS,
                                         step=2, seed=0)


def _train_rows(cohort, subjects=None):
    table = cohort.table
    keep = ~table["held_out"].to_numpy() & (table["subject"] != TEST_SUBJECT).to_numpy()
    if subjects is not None:
        keep &= table["subject"].isin(subjects).to_numpy()
    return np.flatnonzero(keep)


def _fit(cohort, rows, **params):
    scans = cohort.scans()
    model = Calamiti(**{**TINY, **params})
    return model.fit([scans[i] for i in rows], sites=cohort.sites[rows], masks=[cohort.masks[i] for i in rows])


def _one_scan(cohort, site):
    i = int(np.flatnonzero(((cohort.table["subject"] == TEST_SUBJECT) & (cohort.table["site"] == site)).to_numpy())[0])
    return i, cohort.scans()[i], cohort.masks[i]


@pytest.fixture(scope="module")
def quick(cohort):
    return _fit(cohort, _train_rows(cohort), steps=3)


# -- the networks --------------------------------------------------------------------------------------------

def test_codes_have_the_published_shapes():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 16, 16, requires_grad=True)
    beta = gumbel_one_hot(logits, torch.rand(3, 5, 16, 16), temperature=1.0)
    assert beta.shape == (3, 5, 16, 16)
    np.testing.assert_array_equal(beta.sum(1).detach().numpy(), 1.0)      # one class per pixel, forward
    assert set(np.unique(beta.detach().numpy())) <= {0.0, 1.0}
    beta[:, 0].sum().backward()
    assert logits.grad.abs().sum() > 0                                     # straight-through gradient
    mu, logvar = ContrastEncoder(1, theta_dim=2, base_channels=4)(torch.rand(3, 1, 16, 16), torch.ones(3, 16, 16))
    assert mu.shape == logvar.shape == (3, 2)
    decoder = Decoder(5, 2, n_sites=3, n_contrasts=2, depth=2, base_channels=4)
    assert decoder(one_hot(logits.detach()), mu.detach()).shape == (3, 1, 16, 16)
    assert decoder.site_theta.shape == (3, 2, 2) and "site_theta" in decoder.state_dict()


def test_the_contrast_code_reaches_the_decoder_output():
    # without normalisation layers the tiled theta cannot be subtracted away: two codes, two images
    torch.manual_seed(0)
    decoder = Decoder(5, 2, depth=2, base_channels=4)
    beta = one_hot(torch.randn(1, 5, 16, 16))
    out = [decoder(beta, torch.tensor([[v, 0.0]])) for v in (-2.0, 2.0)]
    assert (out[0] - out[1]).abs().mean() > 1e-3


def test_the_contrast_label_chooses_what_the_decoder_draws():
    torch.manual_seed(0)
    decoder = Decoder(5, 2, n_contrasts=2, depth=2, base_channels=4, contrast_label=True)
    beta, theta = one_hot(torch.randn(2, 5, 16, 16)), torch.zeros(2, 2)
    t1, t2 = decoder(beta, theta, torch.tensor([0, 0])), decoder(beta, theta, torch.tensor([1, 1]))
    assert (t1 - t2).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="contrast index"):
        decoder(beta, theta)
    # the published decoder (theta alone) has no label input: 5 + 2 channels, against 5 + 2 + 2
    assert Decoder(5, 2, n_contrasts=2, depth=2).net.encoder.stem[0].in_channels == 7
    assert decoder.net.encoder.stem[0].in_channels == 9


# -- inputs ---------------------------------------------------------------------------------------------------

def test_inputs_are_refused_with_clear_messages(cohort, quick):
    rows = _train_rows(cohort)
    scans = cohort.scans()
    with pytest.raises(harmonize.HarmonizerInputError, match="at least 2 contrasts"):
        Calamiti(contrasts=("t1",)).fit([cohort.images["t1"][i] for i in rows], sites=cohort.sites[rows])
    with pytest.raises(VolumeInputError, match="scan 0 has no contrast 't2'"):
        Calamiti(**TINY, steps=1).fit([{"t1": scans[i]["t1"]} for i in rows], sites=cohort.sites[rows])
    with pytest.raises(VolumeInputError, match="scan 0 has no contrast 't2'"):
        quick.transform([{"t1": scans[0]["t1"]}], sites=["scanner2"], masks=[cohort.masks[0]])
    with pytest.raises(harmonize.HarmonizerInputError, match="temperature"):
        Calamiti(**TINY, temperature=0.0).fit([scans[i] for i in rows], sites=cohort.sites[rows])
    with pytest.raises(harmonize.HarmonizerInputError, match="contrast_label must be True or False"):
        Calamiti(**TINY, contrast_label="yes").fit([scans[i] for i in rows], sites=cohort.sites[rows])
    assert harmonize.get("calamiti") is Calamiti and "calamiti" in harmonize.available()
    assert Calamiti.min_contrasts == 2 and Calamiti.supports_unseen_sites and Calamiti.maps_to_any_site
    assert not Calamiti.needs_pairs                                      # no traveling subject is needed


def test_shapes_units_and_the_held_out_scanner(cohort, quick):
    assert quick.site_theta_.shape == (2, 2, 2) and np.isfinite(quick.site_theta_).all()
    i, scan, mask = _one_scan(cohort, cohort.held_out_site)
    assert cohort.held_out_site not in quick.sites_
    out = quick.transform([scan], sites=[cohort.held_out_site], masks=[mask])[0]
    assert set(out) == set(CONTRASTS)
    for c in CONTRASTS:
        assert out[c].dtype == np.float32 and out[c].shape == scan[c].shape
        assert np.isfinite(out[c]).all() and (out[c][~mask] == 0).all()
    # any training site can be the target; target-site scans come back unchanged
    other = quick.transform([scan], sites=[cohort.held_out_site], masks=[mask], target_site="scanner2")[0]
    assert not np.array_equal(other["t1"], out["t1"])
    j, own, own_mask = _one_scan(cohort, "scanner1")
    np.testing.assert_array_equal(quick.transform([own], sites=["scanner1"], masks=[own_mask])[0]["t1"], own["t1"])


# -- persistence and reproducibility ------------------------------------------------------------------------------

def test_save_and_load_give_identical_outputs(cohort, quick, tmp_path):
    path = quick.save(tmp_path / "cal.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "calamiti" and meta["format"] == "surfharm-calamiti"
    loaded = harmonize.load(path)
    assert type(loaded) is Calamiti and loaded.get_params() == {**quick.get_params(), "progress": False}
    np.testing.assert_array_equal(loaded.site_theta_, quick.site_theta_)
    _, scan, mask = _one_scan(cohort, "scanner2")
    a = quick.transform([scan], sites=["scanner2"], masks=[mask])[0]
    b = loaded.transform([scan], sites=["scanner2"], masks=[mask])[0]
    for c in CONTRASTS:
        np.testing.assert_array_equal(a[c], b[c])


def test_the_published_decoder_is_kept_and_older_model_files_load(cohort, tmp_path):
    rows = _train_rows(cohort, ["sub-001", "sub-004", "sub-006"])
    published = _fit(cohort, rows, steps=2, contrast_label=False)
    assert published.network_["contrast_label"] is False
    path = published.save(tmp_path / "cal.safetensors")
    # a file written before the option existed: neither the parameter nor the network key
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["params"]["contrast_label"], meta["network"]["contrast_label"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    loaded = harmonize.load(path)
    assert loaded.networks_["decoder"].contrast_label is False
    _, scan, mask = _one_scan(cohort, "scanner2")
    a = published.transform([scan], sites=["scanner2"], masks=[mask])[0]
    b = loaded.transform([scan], sites=["scanner2"], masks=[mask])[0]
    for c in CONTRASTS:
        np.testing.assert_array_equal(a[c], b[c])


def test_training_is_deterministic_for_a_seed(cohort):
    rows = _train_rows(cohort, ["sub-001", "sub-004", "sub-006"])
    _, scan, mask = _one_scan(cohort, "scanner2")
    outs = [_fit(cohort, rows, steps=2, seed=s, cycle_start=1).transform([scan], sites=["scanner2"],
                                                                        masks=[mask])[0]["t2"] for s in (1, 1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def test_resumed_training_repeats_the_uninterrupted_run(cohort, tmp_path):
    rows = _train_rows(cohort, ["sub-001", "sub-004", "sub-006"])
    _, scan, mask = _one_scan(cohort, "scanner2")
    # the cycle term starts at step 2: the resumed half runs it, as the whole run does
    whole = _fit(cohort, rows, steps=4, cycle_start=2)
    checkpoint = tmp_path / "ck.safetensors"
    _fit(cohort, rows, steps=2, cycle_start=2, checkpoint=checkpoint)
    resumed = _fit(cohort, rows, steps=4, cycle_start=2, checkpoint=checkpoint, resume=True)
    assert resumed.history_[-1]["step"] == 4 and resumed.history_[-1]["cycle"] > 0
    np.testing.assert_array_equal(resumed.site_theta_, whole.site_theta_)
    a = whole.transform([scan], sites=["scanner2"], masks=[mask])[0]
    b = resumed.transform([scan], sites=["scanner2"], masks=[mask])[0]
    for c in CONTRASTS:
        np.testing.assert_array_equal(a[c], b[c])


# -- what training learns (slow) -------------------------------------------------------------------------------

def _relative_error(out, target, mask):
    return float(np.mean(np.abs(out[mask] - target[mask])) / np.mean(target[mask]))


@pytest.fixture(scope="module")
def trained(cohort):
    return _fit(cohort, _train_rows(cohort), steps=300, depth=3, beta_channels=8, decoder_channels=16,
                theta_channels=8, batch_size=8)


def _beta_probs(model, scan, mask):
    """Per contrast, the anatomy encoder's class probabilities of every slice: (C, S, K, H, W), and the masks."""
    geometry = sl.slice_geometry(mask.shape, model.slice_axis, model.pad_depth(), 0)
    data = np.stack([scan[c] / sl.intensity_factor(scan[c], mask) for c in CONTRASTS])
    images, masks, _ = sl.volume_to_slices(data, mask, geometry)
    with torch.no_grad():
        probs = [torch.softmax(model.networks_["beta"](torch.from_numpy(images[:, c:c + 1])), 1).numpy()
                 for c in range(len(CONTRASTS))]
    return np.stack(probs), masks


@pytest.mark.slow
def test_losses_fall_and_the_cycle_term_runs(trained):
    first, last = trained.history_[0], trained.history_[-1]
    # measured with these settings: reconstruction L1 0.36 (first epoch) -> 0.12 (step 300)
    assert last["rec"] < 0.5 * first["rec"] and last["loss"] < first["loss"], (first, last)
    assert first["cycle"] == 0 and last["cycle"] > 0                 # the cycle term starts with the second epoch


def _fused_classes(model, scan, mask):
    """The fused anatomy class of every brain voxel of a scan's slices and its true tissue (1 CSF, 2 GM, 3 WM)."""
    probs, masks = _beta_probs(model, scan, mask)
    return np.moveaxis(probs.mean(0), 1, -1)[masks].argmax(-1), masks


@pytest.mark.slow
def test_beta_classes_follow_the_tissue(cohort, trained):
    from sklearn.metrics import normalized_mutual_info_score

    i, scan, mask = _one_scan(cohort, "scanner2")           # a held-out subject
    classes, masks = _fused_classes(trained, scan, mask)
    geometry = sl.slice_geometry(mask.shape, trained.slice_axis, trained.pad_depth(), 0)
    tissue, _, _ = sl.volume_to_slices(cohort.tissue[i].astype(np.float32), mask, geometry)
    truth = np.rint(tissue[:, 0][masks]).astype(int)
    # measured (300 steps): NMI 0.19 with the contrast label; 0.02 with the published decoder (theta alone)
    assert normalized_mutual_info_score(truth, classes) > 0.1


@pytest.mark.slow
def test_a_subject_harmonized_from_two_scanners_agrees_and_keeps_its_anatomy(cohort, trained):
    # The held-out subject from a training scanner and from the scanner never seen: the two harmonized scans
    # must be far closer to each other than the raw ones (measured 0.013 / 0.011 against 0.16 / 0.07) and
    # still show the subject (correlation with its scanner1 scan, measured 0.72 / 0.62; a collapsed code
    # agrees too, but gave 0.42 / -0.16).
    (_, s2, m2), (_, s3, m3) = _one_scan(cohort, "scanner2"), _one_scan(cohort, cohort.held_out_site)
    _, target, target_mask = _one_scan(cohort, "scanner1")
    o2 = trained.transform([s2], sites=["scanner2"], masks=[m2])[0]
    o3 = trained.transform([s3], sites=[cohort.held_out_site], masks=[m3])[0]
    both = m2 & m3
    for c in CONTRASTS:
        raw = _relative_error(s2[c] / sl.intensity_factor(s2[c], m2), s3[c] / sl.intensity_factor(s3[c], m3), both)
        assert _relative_error(o2[c], o3[c], both) < 0.3 * raw, c
        inside = m2 & target_mask
        assert np.corrcoef(o2[c][inside], target[c][inside])[0, 1] > 0.5, c


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at CPU scale (300 steps) the anatomy code stays soft (mean top-class "
                   "probability 0.42) and the contrasts' classes agree on 86 % of voxels, not 90 %")
def test_beta_is_one_hot_and_shared_by_the_contrasts(cohort, trained):
    _, scan, mask = _one_scan(cohort, "scanner2")          # a held-out subject
    probs, masks = _beta_probs(trained, scan, mask)
    in_mask = np.moveaxis(probs, 2, -1)[:, masks]          # (C, n_pixels, K)
    confidence = in_mask.max(-1).mean()
    agreement = (in_mask[0].argmax(-1) == in_mask[1].argmax(-1)).mean()
    assert confidence > 0.9 and agreement > 0.9, (confidence, agreement)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at CPU scale the harmonized scans are farther from the target scanner's than "
                   "the identity (relative MAE 0.14-0.15 against 0.06-0.11); on this 4 mm grid even an oracle "
                   "5-class code with the target scan's own class intensities gives 0.06 (module docstring)")
def test_held_out_traveling_subject_moves_towards_the_target_scanner(cohort, trained):
    j, target, target_mask = _one_scan(cohort, "scanner1")
    for site in ("scanner2", cohort.held_out_site):       # a training scanner and the one never seen
        i, scan, mask = _one_scan(cohort, site)
        out = trained.transform([scan], sites=[site], masks=[mask])[0]
        both = mask & target_mask
        for k, c in enumerate(CONTRASTS):
            identity = scan[c] / sl.intensity_factor(scan[c], mask) * trained.site_scale_[0, k]
            err, base = _relative_error(out[c], target[c], both), _relative_error(identity, target[c], both)
            assert err < base, (site, c, err, base)
