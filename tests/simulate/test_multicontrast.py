"""The multi-contrast MR fixture: tissue contrasts, traveling design, held-out scanner, truth, determinism."""
import numpy as np
import pytest

from surfharm.simulate.volumes import (
    CohortConfigError,
    ContrastScanner,
    simulate_multicontrast_cohort,
)


@pytest.fixture(scope="module")
def cohort():
    return simulate_multicontrast_cohort(3, 2, 2, step=2, seed=3)


def _tissue_means(image, tissue):
    return [float(image[tissue == k].mean()) for k in (1, 2, 3)]  # CSF, GM, WM


def test_tissue_intensity_order_of_each_contrast(cohort):
    for i in range(len(cohort.table)):
        for source in (cohort.truth, cohort.images):
            csf, gm, wm = _tissue_means(source["t1"][i], cohort.tissue[i])
            assert wm > gm > csf
            csf, gm, wm = _tissue_means(source["t2"][i], cohort.tissue[i])
            assert csf > gm > wm
        csf, gm, wm = _tissue_means(cohort.truth["flair"][i], cohort.tissue[i])
        assert gm > wm > csf


def test_traveling_design_and_held_out_scanner(cohort):
    table = cohort.table
    assert list(cohort.scanners) == ["scanner1", "scanner2", "scanner3"]
    assert cohort.held_out_site == "scanner3"
    np.testing.assert_array_equal(table["held_out"], table["site"] == "scanner3")
    for _, group in table[table["traveling"]].groupby("subject"):
        assert sorted(group["site"]) == ["scanner1", "scanner2", "scanner3"]
        assert group["age"].nunique() == 1
    single = table[~table["traveling"]]
    assert single["subject"].is_unique
    assert not single["held_out"].any()
    assert single["site"].value_counts().to_dict() == {"scanner1": 2, "scanner2": 2}
    # Every session holds every contrast, and scans() returns them by session.
    assert all(len(v) == len(table) for v in cohort.images.values())
    scans = cohort.scans(["t1", "flair"])
    assert len(scans) == len(table) and set(scans[0]) == {"t1", "flair"}
    with pytest.raises(CohortConfigError, match="pd"):
        cohort.scans(["pd"])


def test_truth_does_not_depend_on_the_scanner_but_images_do(cohort):
    table = cohort.table
    rows = np.flatnonzero(table["subject"] == table["subject"].iloc[0])
    for c in cohort.contrasts:
        for i in rows[1:]:
            np.testing.assert_array_equal(cohort.truth[c][i], cohort.truth[c][rows[0]])
        m = cohort.masks[rows[0]]
        medians = [np.median(cohort.images[c][i][m]) for i in rows]
        assert max(medians) / min(medians) > 2  # the scanners' units differ


def test_age_darkens_grey_matter_in_the_truth(cohort):
    table = cohort.table.drop_duplicates("subject")
    gm = [np.mean(cohort.truth["t1"][i][cohort.tissue[i] == 2]) for i in table.index]
    assert np.corrcoef(table["age"], gm)[0, 1] < -0.5


def test_blur_follows_the_scanner_resolution():
    sharp = ContrastScanner(noise=0.0, bias_amplitude=0.0, fwhm_mm=0.5)
    blurry = ContrastScanner(noise=0.0, bias_amplitude=0.0, fwhm_mm=8.0)
    c = simulate_multicontrast_cohort(2, 1, 0, contrasts=("t1",), held_out=None, scanners=(sharp, blurry),
                                      step=2, seed=0)
    m = c.masks[0]
    edges = [np.abs(np.diff(im, axis=0))[m[1:] & m[:-1]].mean() / im[m].mean() for im in c.images["t1"]]
    assert edges[1] < 0.8 * edges[0]


def test_same_seed_same_cohort(cohort):
    again = simulate_multicontrast_cohort(3, 2, 2, step=2, seed=3)
    for c in cohort.contrasts:
        for a, b in zip(again.images[c], cohort.images[c]):
            np.testing.assert_array_equal(a, b)
    other = simulate_multicontrast_cohort(3, 2, 2, step=2, seed=4)
    assert not np.allclose(other.images["t1"][0], cohort.images["t1"][0])


def test_subset_and_bad_parameters(cohort):
    sub = cohort.subset([0, 4])
    assert list(sub.table.index) == [0, 1]
    np.testing.assert_array_equal(sub.images["t2"][1], cohort.images["t2"][4])
    with pytest.raises(CohortConfigError, match="contrast"):
        simulate_multicontrast_cohort(2, 1, 0, contrasts=("t1", "dwi"), step=2)
    with pytest.raises(CohortConfigError, match="held_out"):
        simulate_multicontrast_cohort(2, 1, 0, held_out="scanner9", step=2)
    with pytest.raises(CohortConfigError, match="n_scanners"):
        simulate_multicontrast_cohort(9, 1, 0, step=2)
