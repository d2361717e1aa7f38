"""matplotlib figures: what they draw is checked against numbers computed here independently."""
import numpy as np
import pandas as pd
import pytest

from surfharm.viz.mesh import MeshError
from surfharm.viz.plots import (
    mean_per_scan,
    plot_age_trajectories,
    plot_method_comparison,
    plot_pca_by_site,
    plot_site_distributions,
    read_metrics,
)


@pytest.fixture
def cohort():
    rng = np.random.default_rng(7)
    sites = np.repeat(np.array(["B", "A", "C"]), 10)  # not in sorted order on purpose
    age = rng.uniform(0.1, 2.0, sites.size)
    maps = 2.0 + 0.4 * np.log1p(age)[:, None] + rng.normal(0, 0.1, (sites.size, 50))
    offset = pd.Series({"A": 0.0, "B": 0.3, "C": -0.2})[sites].to_numpy()
    before = maps + offset[:, None]
    before[:, 0] = np.nan  # outside cortex
    after = before - offset[:, None]
    return before, after, sites, age


def test_mean_per_scan_ignores_nan(cohort):
    before, _, _, _ = cohort
    np.testing.assert_allclose(mean_per_scan(before), np.nanmean(before, axis=1))
    with pytest.raises(MeshError, match="scan 1 has no finite value"):
        mean_per_scan(np.array([[1.0, 2.0], [np.nan, np.nan]]))


def test_distributions_show_each_sites_median(cohort, tmp_path):
    before, after, sites, _ = cohort
    out = tmp_path / "dist.png"
    fig = plot_site_distributions(before, sites, after, output=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw_ax, harm_ax = fig.axes
    assert [t.get_text() for t in raw_ax.get_xticklabels()] == ["A", "B", "C"]
    expected = pd.Series(np.nanmean(before, axis=1)).groupby(sites).median()
    # median lines span the whole box width (0.6); caps are half as wide, whiskers vertical
    medians = [line.get_ydata()[0] for line in raw_ax.lines
               if np.ptp(line.get_xdata()) == pytest.approx(0.6) and np.ptp(line.get_ydata()) == 0]
    np.testing.assert_allclose(sorted(medians), sorted(expected.to_numpy()))
    assert raw_ax.get_title() == "raw" and harm_ax.get_title() == "harmonized"
    assert raw_ax.get_shared_y_axes().joined(raw_ax, harm_ax)


def test_pca_axes_report_explained_variance(cohort):
    from sklearn.decomposition import PCA

    before, after, sites, _ = cohort
    fig = plot_pca_by_site(before, sites, after)
    ratio = PCA(2).fit(before[:, 1:]).explained_variance_ratio_
    assert fig.axes[0].get_xlabel() == f"PC1 ({100 * ratio[0]:.1f}% of variance)"
    # raw: site offsets dominate, so PC1 separates the sites; after: they are gone
    raw_points = np.vstack([c.get_offsets() for c in fig.axes[0].collections])
    assert raw_points.shape == (30, 2)
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert legend == ["A", "B", "C"]


def test_pca_needs_complete_features():
    with pytest.raises(MeshError, match="at least 2 features without NaN"):
        plot_pca_by_site(np.full((5, 3), np.nan), ["a"] * 5)


def test_age_trajectories_draw_one_fit_per_site_and_subject_lines(cohort):
    before, after, sites, age = cohort
    subjects = [f"s{i // 2}" for i in range(sites.size)]  # pairs of scans per subject
    fig = plot_age_trajectories(before, sites, age, after, subjects=subjects, log_age=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    fits = [line for line in ax.lines if line.get_linewidth() == 2]
    subject_lines = [line for line in ax.lines if line.get_linewidth() == 0.5]
    assert len(fits) == 3 and len(subject_lines) == 15
    # site B's fit lies above site C's by about their offset difference (0.5 mm)
    means = {line.get_color(): np.mean(line.get_ydata()) for line in fits}
    assert max(means.values()) - min(means.values()) == pytest.approx(0.5, abs=0.15)
    after_fits = [line for line in fig.axes[1].lines if line.get_linewidth() == 2]
    after_means = [np.mean(line.get_ydata()) for line in after_fits]
    assert max(after_means) - min(after_means) < 0.15


def test_age_errors(cohort):
    before, _, sites, age = cohort
    with pytest.raises(MeshError, match="age has 29 values but the maps have 30 scans"):
        plot_age_trajectories(before, sites, age[:-1])
    with pytest.raises(MeshError, match="log_age=True needs ages > 0"):
        plot_age_trajectories(before, sites, age - 5, log_age=True)


def test_method_comparison_from_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("method,site_auroc,age_r2,notes\nraw,0.97,0.41,x\ncombat,0.52,0.40,y\nmean-shift,0.61,0.38,z\n")
    table = read_metrics(path)
    assert list(table.index) == ["raw", "combat", "mean-shift"]
    fig = plot_method_comparison(table, higher_is_better={"site_auroc": False})
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["site_auroc (lower is better)", "age_r2"]  # 'notes' skipped
    widths = [p.get_width() for p in visible[0].patches]
    assert widths == [0.97, 0.52, 0.61]
    best = [p for p in visible[0].patches if p.get_facecolor()[:3] != visible[0].patches[0].get_facecolor()[:3]]
    assert [p.get_width() for p in best] == [0.52]


def test_method_comparison_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        read_metrics(tmp_path / "missing.csv")
    with pytest.raises(MeshError, match="no numeric metric"):
        plot_method_comparison(pd.DataFrame({"note": ["a"]}, index=["raw"]))
    with pytest.raises(MeshError, match=r"metrics \['psnr'\] are not numeric columns"):
        plot_method_comparison(pd.DataFrame({"mae": [0.1]}, index=["raw"]), metrics_to_show=["psnr"])


def test_shape_mismatch_is_refused(cohort):
    before, after, sites, _ = cohort
    with pytest.raises(MeshError, match="differ in shape"):
        plot_site_distributions(before, sites, after[:, :10])
    with pytest.raises(MeshError, match="sites has 29 labels"):
        plot_site_distributions(before, sites[:-1])


@pytest.mark.parametrize("n_scans, n_features", [(30, 50), (40, 6)])
def test_pca_scores_match_scikit_learn(n_scans, n_features):
    from sklearn.decomposition import PCA

    from surfharm.viz.plots import _pca_scores

    rng = np.random.default_rng(5)
    maps = rng.normal(size=(n_scans, n_features)) * np.linspace(3, 1, n_features)
    scores, ratio = _pca_scores(maps)
    pca = PCA(2, svd_solver="full").fit(maps)
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-10)
    expected = pca.transform(maps)
    np.testing.assert_allclose(np.abs(scores), np.abs(expected), rtol=1e-8, atol=1e-10)  # signs are conventions
    assert (scores[np.abs(scores).argmax(axis=0), [0, 1]] > 0).all()


def test_best_method_by_target_value_ignores_truth_rows():
    table = pd.DataFrame({"site_auroc": [0.45, 0.99, 0.58, 0.40]},
                         index=["truth (site-free)", "raw", "combat", "over-corrected"])
    fig = plot_method_comparison(table, higher_is_better={"site_auroc": 0.5})
    ax = fig.axes[0]
    assert ax.get_title() == "site_auroc (best near 0.5)"
    base = ax.patches[0].get_facecolor()
    highlighted = [p.get_width() for p in ax.patches if p.get_facecolor() != base]
    assert highlighted == [0.58]  # |0.58 - 0.5| < |0.40 - 0.5|; the truth row is a reference
