"""Per-scan intensity methods: z-score, global scaling, WhiteStripe, Nyul, MICA."""
import json

import numpy as np
import pytest

from surfharm.harmonize import Harmonizer, NotFittedError, get
from surfharm.harmonize.volumetric import MICA, GlobalScaling, Nyul, VolumeHarmonizer, WhiteStripe, ZScore
from surfharm.harmonize.volumetric.white_stripe import tissue_mode

# Three tissue classes of a T1 brain: (mean, sd, fraction of voxels).
CSF, GM, WM = (0.30, 0.04, 0.15), (0.62, 0.05, 0.40), (0.86, 0.03, 0.45)
SHAPE = (20, 22, 18)


def _tissue_volume(seed, curve=lambda x: x):
    """A skull-stripped 'T1' whose brain voxels follow the three-class mixture, then ``curve``."""
    rng = np.random.default_rng(seed)
    data = np.zeros(SHAPE, np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    n = int(mask.sum())
    labels = rng.choice(3, size=n, p=[CSF[2], GM[2], WM[2]])
    means = np.array([CSF[0], GM[0], WM[0]])[labels]
    sds = np.array([CSF[1], GM[1], WM[1]])[labels]
    data[mask] = curve(np.clip(rng.normal(means, sds), 0.01, None))
    return data, mask


def _scanners():
    """Six scans from three 'scanners' that differ by monotone curves of intensity."""
    curves = [lambda x: 1000 * x, lambda x: 400 * x ** 1.6 + 30, lambda x: 2500 * x ** 0.7 - 100]
    vols, masks = zip(*[_tissue_volume(seed, curves[seed % 3]) for seed in range(6)])
    return list(vols), list(masks)


def test_methods_are_registered_harmonizers():
    for name, cls in [("zscore", ZScore), ("global-scaling-vol", GlobalScaling), ("white-stripe", WhiteStripe),
                      ("nyul", Nyul), ("mica", MICA)]:
        assert get(name) is cls
        assert issubclass(cls, Harmonizer)


def test_zscore_standardizes_inside_the_mask_and_ignores_affine_changes():
    vol, mask = _tissue_volume(0)
    out = ZScore().transform([vol], masks=[mask])[0]
    assert abs(out[mask].mean()) < 1e-5
    assert abs(out[mask].std() - 1.0) < 1e-5
    rescaled = ZScore().transform([3.0 * vol + 50.0], masks=[mask])[0]
    np.testing.assert_allclose(rescaled[mask], out[mask], atol=1e-4)


def test_global_scaling_brings_every_mean_to_the_training_average():
    vols, masks = _scanners()
    est = GlobalScaling().fit(vols, masks=masks)
    expected = np.mean([v[m].mean() for v, m in zip(vols, masks)])
    assert est.reference_mean_ == pytest.approx(expected, rel=1e-6)
    for out, m in zip(est.transform(vols, masks=masks), masks):
        assert out[m].mean() == pytest.approx(expected, rel=1e-5)


def test_white_stripe_finds_the_white_matter_peak():
    vol, mask = _tissue_volume(1)
    values = vol[mask].astype(float)
    assert tissue_mode(values, "last") == pytest.approx(WM[0], abs=0.01)
    mean, sd = WhiteStripe().stripe_stats(values)
    assert mean == pytest.approx(WM[0], abs=0.01)
    assert 0 < sd < WM[1]
    out = WhiteStripe().transform([vol], masks=[mask])[0]
    wm_voxels = vol[mask] > 0.8
    # White matter lands near 0 in stripe units; grey matter well below.
    assert abs(np.median(out[mask][wm_voxels])) < 2.0
    assert np.median(out[mask][(vol[mask] > 0.5) & (vol[mask] < 0.7)]) < -10


def test_white_stripe_is_invariant_to_positive_affine_changes():
    vol, mask = _tissue_volume(2)
    out = WhiteStripe().transform([vol], masks=[mask])[0]
    again = WhiteStripe().transform([250.0 * vol + 40.0], masks=[mask])[0]
    np.testing.assert_allclose(again[mask], out[mask], atol=1e-3)


def test_white_stripe_largest_peak_for_t2_like_contrast():
    vol, mask = _tissue_volume(3)
    # Reverse the contrast (T2-like): white matter darkest but still the largest class.
    t2 = np.where(mask, 1.2 - vol, 0).astype(np.float32)
    mean, _ = WhiteStripe(peak="largest").stripe_stats(t2[mask].astype(float))
    assert mean == pytest.approx(1.2 - WM[0], abs=0.02)
    with pytest.raises(ValueError, match="peak must be 'last'"):
        WhiteStripe(peak="middle").stripe_stats(t2[mask].astype(float))


def test_nyul_maps_training_landmarks_onto_the_standard_scale():
    vols, masks = _scanners()
    est = Nyul().fit(vols, masks=masks)
    assert est.standard_scale_[0] == pytest.approx(1.0) and est.standard_scale_[-1] == pytest.approx(100.0)
    for out, m in zip(est.transform(vols, masks=masks), masks):
        np.testing.assert_allclose(np.percentile(out[m], est.percentiles), est.standard_scale_, atol=0.05)


def test_nyul_and_mica_remove_monotone_scanner_curves():
    vols, masks = _scanners()
    truth_like = [_tissue_volume(seed)[0] for seed in range(6)]  # the same draws before the curves
    for est in (Nyul(), MICA()):
        outs = est.fit(vols, masks=masks).transform(vols, masks=masks)
        # After harmonization, a scan is a fixed function of its scanner-free intensities: check that
        # scans of different scanners agree on the tissue means (before: they differ by x10).
        gm_means = [o[m][(t[m] > 0.55) & (t[m] < 0.7)].mean() for o, m, t in zip(outs, masks, truth_like)]
        wm_means = [o[m][t[m] > 0.8].mean() for o, m, t in zip(outs, masks, truth_like)]
        spread = (max(wm_means) - min(wm_means)) / (np.mean(wm_means) - np.mean(gm_means))
        assert spread < 0.05, (type(est).__name__, spread)


def test_mica_aligns_quantiles_to_the_average_and_to_a_chosen_scan():
    vols, masks = _scanners()
    est = MICA().fit(vols, masks=masks)
    average = np.mean([np.quantile(v[m], est.probabilities) for v, m in zip(vols, masks)], axis=0)
    np.testing.assert_allclose(est.target_quantiles_, average, rtol=1e-6)
    for out, m in zip(est.transform(vols, masks=masks), masks):
        np.testing.assert_allclose(np.quantile(out[m], est.probabilities), average, rtol=1e-3)
    to_first = MICA(target=0).fit(vols, masks=masks).transform(vols[:1], masks=masks[:1])[0]
    np.testing.assert_allclose(to_first[masks[0]], vols[0][masks[0]], rtol=1e-3)


def test_mica_warp_is_monotone_even_outside_the_knots():
    vols, masks = _scanners()
    est = MICA(n_knots=8).fit(vols, masks=masks)
    fmap = est.intensity_map(vols[1][masks[1]])
    x = np.linspace(-500, 5000, 2001)
    assert np.all(np.diff(fmap(x)) > 0)


@pytest.mark.parametrize("cls", [GlobalScaling, Nyul, MICA])
def test_transform_before_fit_is_refused(cls):
    vols, masks = _scanners()
    with pytest.raises(NotFittedError, match="not fitted"):
        cls().transform(vols, masks=masks)


@pytest.mark.parametrize("cls", [ZScore, GlobalScaling, WhiteStripe, Nyul, MICA])
def test_volumes_and_matrix_forms_agree(cls):
    vols, masks = _scanners()
    matrix = np.stack([np.where(m, v, np.nan) for v, m in zip(vols, masks)]).reshape(len(vols), -1)
    est = cls().fit(vols, masks=masks)
    from_volumes = est.transform(vols, masks=masks)
    from_matrix = cls().fit(matrix).transform(matrix)
    assert np.isnan(from_matrix).sum() == np.isnan(matrix).sum()
    for i, (out, m) in enumerate(zip(from_volumes, masks)):
        np.testing.assert_allclose(from_matrix[i][m.ravel()], out[m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, params", [(GlobalScaling, {}), (Nyul, {"scale_range": [0.0, 10.0]}),
                                         (MICA, {"target": 2, "n_knots": 11}), (WhiteStripe, {"width": 0.1})])
def test_save_load_round_trip(tmp_path, cls, params):
    vols, masks = _scanners()
    est = cls(**params).fit(vols[:4], masks=masks[:4])
    path = est.save(tmp_path / "model.npz")
    loaded = VolumeHarmonizer.load(path)
    as_json = lambda d: json.loads(json.dumps(d))  # noqa: E731  (tuples come back as lists)
    assert type(loaded) is cls and as_json(loaded.get_params()) == as_json({**est.get_params(), **params})
    for a, b in zip(est.transform(vols[4:], masks=masks[4:]), loaded.transform(vols[4:], masks=masks[4:])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=f"holds a '{cls.registry_name}' model, not 'zscore'"):
        ZScore.load(path)
