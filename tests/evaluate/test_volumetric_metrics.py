"""Volumetric metrics, the MNI152 fixture and the benchmark scenario."""
import numpy as np
import pytest

from surfharm.evaluate import image_metrics as metrics
from surfharm.evaluate.volumetric_scenario import build_volumetric_scenario, run_volumetric_benchmark
from surfharm.simulate.volumes import TISSUE_LABELS, simulate_volumetric_cohort


def _smooth_image(seed=0, shape=(16, 18, 14)):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return (img - img.min()) / np.ptp(img)


def test_mae_psnr_against_a_known_error():
    truth = _smooth_image()
    mask = np.ones(truth.shape, bool)
    shifted = truth + 0.05
    assert metrics.mae(shifted, truth, mask) == pytest.approx(0.05)
    assert metrics.psnr(shifted, truth, mask, data_range=1.0, clip=False) == pytest.approx(10 * np.log10(1 / 0.05 ** 2))
    assert metrics.psnr(truth, truth, mask, 1.0, clip=False) == float("inf")


def test_ssim_is_one_for_equal_images_and_drops_with_noise():
    truth = _smooth_image()
    mask = np.zeros(truth.shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    rng = np.random.default_rng(1)
    assert metrics.ssim_volume(truth, truth, mask, 1.0) == pytest.approx(1.0)
    mild = metrics.ssim_volume(truth + 0.02 * rng.standard_normal(truth.shape), truth, mask, 1.0)
    strong = metrics.ssim_volume(truth + 0.2 * rng.standard_normal(truth.shape), truth, mask, 1.0)
    assert 1.0 > mild > strong
    # SSIM is not blind to contrast: a halved image is less similar than a mildly noisy one.
    assert metrics.ssim_volume(0.5 * truth, truth, mask, 1.0) < mild


def test_calibrate_units_undoes_one_shared_affine_only():
    truths = [_smooth_image(s) for s in range(3)]
    masks = [np.ones(truths[0].shape, bool)] * 3
    images = [300.0 * t + 20.0 for t in truths]
    calibrated, (gain, offset) = metrics.calibrate_units(images, truths, masks)
    assert gain == pytest.approx(1 / 300.0) and offset == pytest.approx(-20.0 / 300.0)
    for c, t in zip(calibrated, truths):
        np.testing.assert_allclose(c, t, atol=1e-5)
    # A scan-specific gain cannot be undone by the shared map.
    images[1] = 600.0 * truths[1] + 20.0
    calibrated, _ = metrics.calibrate_units(images, truths, masks)
    assert metrics.mae(calibrated[1], truths[1], masks[1]) > 0.05


def test_between_site_distances():
    rng = np.random.default_rng(0)
    shape = (10, 10, 10)
    mask = np.ones(shape, bool)
    same = [rng.normal(0.5, 0.1, shape) for _ in range(4)]
    d_same = metrics.between_site_distances(same, [mask] * 4, ["a", "a", "b", "b"])
    shifted = same[:2] + [s + 0.2 for s in same[2:]]
    d_shift = metrics.between_site_distances(shifted, [mask] * 4, ["a", "a", "b", "b"])
    assert d_same["wasserstein"] < 0.01 and d_same["ks"] < 0.05
    assert d_shift["wasserstein"] == pytest.approx(0.2, abs=0.01) and d_shift["ks"] > 0.6
    with pytest.raises(ValueError, match="at least 2 sites"):
        metrics.between_site_distances(same, [mask] * 4, ["a"] * 4)


def test_wm_gm_ratio():
    image = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    tissue = np.array([[[2, 2, 3, 3]]])
    assert metrics.wm_gm_ratio(image, tissue) == pytest.approx(3.5 / 1.5)


@pytest.fixture(scope="module")
def cohort():
    return simulate_volumetric_cohort(n_sites=3, n_subjects=3, traveling=True, step=2, seed=3)


def test_fixture_keeps_the_truth_and_applies_scanner_effects(cohort):
    table = cohort.table
    assert len(cohort.images) == 9 and table["site"].nunique() == 3 and table["subject"].nunique() == 3
    for _subject, rows in table.groupby("subject").groups.items():
        first = cohort.truth[rows[0]]
        for r in rows[1:]:
            np.testing.assert_array_equal(cohort.truth[r], first)       # traveling: one truth
            assert not np.allclose(cohort.images[r], cohort.images[rows[0]])
    for truth, mask, tissue in zip(cohort.truth, cohort.masks, cohort.tissue):
        assert truth.min() >= 0 and truth.max() <= 1.2
        assert set(np.unique(tissue[mask])) == {TISSUE_LABELS["csf"], TISSUE_LABELS["gm"], TISSUE_LABELS["wm"]}
        # T1 contrast of the template: WM brighter than GM brighter than CSF.
        means = [truth[tissue == TISSUE_LABELS[t]].mean() for t in ("csf", "gm", "wm")]
        assert means[0] < means[1] < means[2]
    again = simulate_volumetric_cohort(n_sites=3, n_subjects=3, traveling=True, step=2, seed=3)
    np.testing.assert_array_equal(again.images[4], cohort.images[4])


def test_fixture_subjects_differ_in_anatomy_and_age_darkens_grey_matter():
    cohort = simulate_volumetric_cohort(n_sites=1, n_subjects=8, step=2, seed=5)
    assert not np.array_equal(cohort.masks[0], cohort.masks[1])
    gm = [t[lab == TISSUE_LABELS["gm"]].mean() / t[lab == TISSUE_LABELS["wm"]].mean()
          for t, lab in zip(cohort.truth, cohort.tissue)]
    assert np.corrcoef(cohort.table["age"], gm)[0, 1] < -0.5


def test_scenario_scores_methods_before_and_after():
    scenario = build_volumetric_scenario(n_sites=2, n_train_subjects=3, n_test_subjects=2, step=2, seed=1)
    assert len(scenario.train.images) == 6 and len(scenario.test.images) == 4
    assert not set(scenario.train.table["subject"]) & set(scenario.test.table["subject"])
    table = run_volumetric_benchmark(["nyul", "voxel-combat"], scenario)
    assert list(table["method"]) == ["none", "nyul", "voxel-combat"]
    assert table.notna().all().all()
    none, nyul = table.iloc[0], table.iloc[1]
    # Raw scans from scanners with different units and curves are far apart; Nyul brings them together.
    assert none["ks_sites"] > 0.5 and nyul["ks_sites"] < 0.5 * none["ks_sites"]
    assert nyul["ssim"] > none["ssim"] and nyul["mae"] < none["mae"]
