"""matplotlib figures of site effects before and after harmonization, and of the benchmark's methods.

Every function returns a :class:`matplotlib.figure.Figure` (built without pyplot, so nothing
depends on a display or a global backend) and writes it to ``output`` (PNG/SVG/PDF, atomically)
when given. ``before``/``after`` are ``(n_scans, n_features)`` maps (vertices or ROIs; NaN =
outside cortex), ``sites`` one label per scan. Sites keep one colour across all panels.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from surfharm._atomic import atomic_path
from surfharm.viz.mesh import MeshError
from surfharm.viz.site_effects import site_order

DPI = 100


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig, output: str | os.PathLike, *, inputs: Sequence = ()) -> None:
    """Write ``fig`` to ``output`` atomically; the format follows the suffix (.png, .svg, .pdf)."""
    fmt = os.fspath(output).rsplit(".", 1)[-1].lower()
    with atomic_path(output, inputs=inputs) as tmp:
        # No creation date in the file: the same data gives the same bytes.
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Software": None} if fmt == "png" else None)


def site_colors(sites) -> dict:
    """One colour per site (matplotlib's tab10/tab20 cycle), in :func:`site_order`."""
    from matplotlib import colormaps

    order = site_order(sites)
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {site: cmap(i % cmap.N) for i, site in enumerate(order)}


def _stages(before, after, labels: tuple[str, str]) -> dict[str, np.ndarray]:
    # No copy: memory-mapped cohorts stay on disk; functions below read them in chunks of scans.
    stages = {labels[0]: before if isinstance(before, np.ndarray) else np.asarray(before, dtype=np.float64)}
    if after is not None:
        stages[labels[1]] = after if isinstance(after, np.ndarray) else np.asarray(after, dtype=np.float64)
    for name, arr in stages.items():
        if arr.ndim != 2:
            raise MeshError(f"{name} maps must be 2-D (n_scans, n_features), got shape {arr.shape}")
    shapes = {arr.shape for arr in stages.values()}
    if len(shapes) > 1:
        raise MeshError(f"before and after maps differ in shape: {sorted(shapes)}; "
                        "expected the same scans and features")
    return stages


def _check_sites(sites, n_scans: int) -> np.ndarray:
    labels = np.asarray(sites, dtype=object).reshape(-1)
    if labels.shape[0] != n_scans:
        raise MeshError(f"sites has {labels.shape[0]} labels but the maps have {n_scans} scans; "
                        "expected one site label per scan")
    return labels


def mean_per_scan(maps, chunk_scans: int = 32) -> np.ndarray:
    """Mean over features of each scan, ignoring NaN (e.g. mean cortical thickness in mm): (n_scans,).

    Reads ``chunk_scans`` rows at a time (sums in float64), so a memory-mapped cohort is never
    loaded whole.
    """
    means = np.empty(maps.shape[0])
    for start in range(0, maps.shape[0], chunk_scans):
        block = np.asarray(maps[start:start + chunk_scans])
        counts = np.isfinite(block).sum(axis=1)
        if (counts == 0).any():
            raise MeshError(f"scan {start + int(np.flatnonzero(counts == 0)[0])} has no finite value; "
                            "cannot take its mean")
        means[start:start + block.shape[0]] = np.nansum(block, axis=1, dtype=np.float64) / counts
    return means


def pca_features(n_features: int, max_features: int = 10242) -> np.ndarray:
    """Columns used for PCA: all, or for finer icosahedral maps their fsaverage5 vertices (the first
    10242, spread evenly over the sphere), else ``max_features`` evenly spaced columns."""
    from spherical_ops import VERTEX_COUNTS

    if n_features <= max_features:
        return np.arange(n_features)
    if n_features in VERTEX_COUNTS and max_features in VERTEX_COUNTS:
        return np.arange(max_features)
    return np.linspace(0, n_features - 1, max_features).round().astype(np.int64)


def plot_site_distributions(before, sites, after=None, *, labels: tuple[str, str] = ("raw", "harmonized"),
                            quantity: str = "mean thickness", units: str | None = "mm", output=None):
    """Box plots of each scan's mean value (e.g. mean thickness) by site; one panel per stage, shared y axis."""
    stages = _stages(before, after, labels)
    site_labels = _check_sites(sites, next(iter(stages.values())).shape[0])
    order, colors = site_order(site_labels), site_colors(site_labels)
    fig = _new_figure(max(4.0, 1.2 + 0.45 * len(order)) * len(stages), 3.6)
    axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    for ax, (stage, arr) in zip(axes, stages.items()):
        means = mean_per_scan(arr)
        groups = [means[site_labels == s] for s in order]
        box = ax.boxplot(groups, patch_artist=True, widths=0.6, showfliers=False)
        for patch, site in zip(box["boxes"], order):
            patch.set_facecolor(colors[site])
            patch.set_alpha(0.55)
        for median in box["medians"]:
            median.set_color("black")
        rng = np.random.default_rng(0)  # fixed jitter: the same data draws the same figure
        for i, (site, vals) in enumerate(zip(order, groups), start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, vals.size), vals, s=8, color=colors[site], edgecolor="none")
        ax.set_xticks(range(1, len(order) + 1), [str(s) for s in order], rotation=45 if len(order) > 4 else 0,
                      ha="right" if len(order) > 4 else "center")
        ax.set_title(stage)
        ax.set_xlabel("site")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"{quantity} ({units})" if units else quantity)
    if output is not None:
        save_figure(fig, output)
    return fig


def _pca_scores(maps, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n_scans, n_components) and explained variance ratios of a PCA of the complete features.

    Solved through the smaller of the two cross-product matrices (scans x scans or features x
    features) with a symmetric eigensolver: exact, and fast for a few hundred scans x 10242 vertices.
    Each component's sign makes its largest score positive, so the picture does not flip between runs.
    """
    arr = np.asarray(maps[:, pca_features(maps.shape[1])], dtype=np.float64)
    complete = np.isfinite(arr).all(axis=0)
    if complete.sum() < n_components:
        raise MeshError(f"PCA needs at least {n_components} features without NaN; found {int(complete.sum())}")
    if arr.shape[0] <= n_components:
        raise MeshError(f"PCA needs more than {n_components} scans; got {arr.shape[0]}")
    centred = arr[:, complete] - arr[:, complete].mean(axis=0)
    if centred.shape[0] <= centred.shape[1]:
        gram = centred @ centred.T
        evals, evecs = np.linalg.eigh(gram)
        top = np.argsort(evals)[::-1][:n_components]
        scores = evecs[:, top] * np.sqrt(np.clip(evals[top], 0.0, None))
    else:
        gram = centred.T @ centred
        evals, evecs = np.linalg.eigh(gram)
        top = np.argsort(evals)[::-1][:n_components]
        scores = centred @ evecs[:, top]
    total = np.trace(gram)
    ratio = evals[top] / total if total > 0 else np.zeros(n_components)
    flip = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(n_components)])
    return scores * np.where(flip == 0, 1.0, flip), ratio


def plot_pca_by_site(before, sites, after=None, *, labels: tuple[str, str] = ("raw", "harmonized"), output=None):
    """First two principal components of the maps, scans coloured by site; one PCA per stage.

    Features with a NaN in any scan (outside cortex) are left out; maps finer than fsaverage5 are
    analysed at their fsaverage5 vertices (:func:`pca_features`). Site clusters that separate
    before and mix after are the picture of a removed site effect.
    """
    stages = _stages(before, after, labels)
    site_labels = _check_sites(sites, next(iter(stages.values())).shape[0])
    order, colors = site_order(site_labels), site_colors(site_labels)
    fig = _new_figure(4.2 * len(stages) + 1.4, 3.8)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, (stage, arr) in zip(axes, stages.items()):
        scores, ratio = _pca_scores(arr)
        for site in order:
            rows = site_labels == site
            ax.scatter(scores[rows, 0], scores[rows, 1], s=14, color=colors[site], label=str(site),
                       alpha=0.8, edgecolor="none")
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}%)")
        ax.set_title(stage)
        ax.grid(alpha=0.3)
    axes[-1].legend(title="site", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    if output is not None:
        save_figure(fig, output)
    return fig


def plot_age_trajectories(before, sites, age, after=None, *, subjects=None,
                          labels: tuple[str, str] = ("raw", "harmonized"), age_label: str = "age (years)",
                          quantity: str = "mean thickness", units: str | None = "mm", log_age: bool = False,
                          output=None):
    """Each scan's mean value against age, coloured by site, with a quadratic fit per site.

    ``subjects`` (one id per scan) joins the scans of one subject with a thin line (longitudinal
    infant cohorts). ``log_age=True`` fits and draws on a logarithmic age axis (steep early growth).
    One panel per stage, shared axes: site curves that lie apart before and together after show a
    removed site effect with the growth curve kept.
    """
    stages = _stages(before, after, labels)
    n_scans = next(iter(stages.values())).shape[0]
    site_labels = _check_sites(sites, n_scans)
    ages = np.asarray(age, dtype=np.float64).reshape(-1)
    if ages.shape[0] != n_scans:
        raise MeshError(f"age has {ages.shape[0]} values but the maps have {n_scans} scans; expected one per scan")
    if not np.isfinite(ages).all():
        raise MeshError(f"age is missing (NaN) for scan {int(np.flatnonzero(~np.isfinite(ages))[0])}")
    if log_age and (ages <= 0).any():
        raise MeshError("log_age=True needs ages > 0")
    subj = None if subjects is None else np.asarray(subjects, dtype=object).reshape(-1)
    if subj is not None and subj.shape[0] != n_scans:
        raise MeshError(f"subjects has {subj.shape[0]} ids but the maps have {n_scans} scans")
    order, colors = site_order(site_labels), site_colors(site_labels)
    fig = _new_figure(4.2 * len(stages) + 1.4, 3.8)
    axes = fig.subplots(1, len(stages), sharex=True, sharey=True, squeeze=False)[0]
    x_all = np.log(ages) if log_age else ages
    for ax, (stage, arr) in zip(axes, stages.items()):
        means = mean_per_scan(arr)
        if subj is not None:
            for s in pd.unique(subj):
                rows = np.flatnonzero(subj == s)
                if rows.size > 1:
                    rows = rows[np.argsort(ages[rows])]
                    ax.plot(ages[rows], means[rows], color="0.6", lw=0.5, zorder=1)
        for site in order:
            rows = site_labels == site
            ax.scatter(ages[rows], means[rows], s=12, color=colors[site], label=str(site), alpha=0.8,
                       edgecolor="none", zorder=2)
            if np.unique(x_all[rows]).size >= 4:
                fit = np.polynomial.Polynomial.fit(x_all[rows], means[rows], deg=2)
                grid = np.linspace(x_all[rows].min(), x_all[rows].max(), 100)
                ax.plot(np.exp(grid) if log_age else grid, fit(grid), color=colors[site], lw=2, zorder=3)
        if log_age:
            ax.set_xscale("log")
        ax.set_title(stage)
        ax.set_xlabel(age_label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{quantity} ({units})" if units else quantity)
    axes[-1].legend(title="site", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    if output is not None:
        save_figure(fig, output)
    return fig


def read_metrics(metrics) -> pd.DataFrame:
    """A metrics table as a DataFrame (rows = methods, columns = metrics) from a DataFrame or a CSV path.

    In a CSV the first column names the methods (``method`` or unnamed).
    """
    if isinstance(metrics, pd.DataFrame):
        return metrics
    path = os.fspath(metrics)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics table {path} does not exist")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MeshError(f"{path}: not a CSV metrics table ({exc})") from None
    if table.shape[1] < 2:
        raise MeshError(f"{path}: expected a method column and at least one metric column, "
                        f"got columns {list(table.columns)}")
    key = "method" if "method" in table.columns else table.columns[0]
    return table.set_index(key)


def plot_method_comparison(metrics, *, metrics_to_show: Sequence[str] | None = None,
                           higher_is_better: dict[str, bool | float] | None = None, output=None):
    """One horizontal bar chart per metric, methods in the table's order (the benchmark's comparison).

    ``metrics``: DataFrame (rows = methods, columns = metrics) or a CSV path (see :func:`read_metrics`);
    non-numeric columns are skipped. ``higher_is_better`` gives each metric's direction, True
    (higher is better), False (lower is better) or a number (best near it, e.g. 0.5 for a site
    AUROC): the title says it and the best method is highlighted (rows named ``truth...`` are a
    reference and never highlighted).
    """
    table = read_metrics(metrics)
    numeric = table.select_dtypes("number")
    if metrics_to_show is not None:
        missing = [m for m in metrics_to_show if m not in numeric.columns]
        if missing:
            raise MeshError(f"metrics {missing} are not numeric columns of the table; available: "
                            f"{', '.join(map(str, numeric.columns))}")
        numeric = numeric[list(metrics_to_show)]
    if numeric.shape[1] == 0 or numeric.shape[0] == 0:
        raise MeshError(f"the metrics table has no numeric metric to plot "
                        f"(columns: {', '.join(map(str, table.columns))})")
    direction = higher_is_better or {}
    n = numeric.shape[1]
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig = _new_figure(3.6 * ncols, 0.6 + (0.9 + 0.28 * numeric.shape[0]) * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    methods = [str(m) for m in numeric.index]
    # Rows of the ground truth are a reference, never "the best method".
    reference_rows = np.array([m.lower().startswith("truth") for m in methods])
    ypos = np.arange(len(methods))[::-1]
    for ax, metric in zip(axes, numeric.columns):
        vals = numeric[metric].to_numpy(dtype=float)
        colors = ["#4c72b0"] * len(vals)
        title = str(metric)
        goal = direction.get(metric)
        candidates = np.isfinite(vals) & ~reference_rows
        if goal is not None and candidates.any():
            if isinstance(goal, bool):
                score = vals if goal else -vals
                title += " (higher is better)" if goal else " (lower is better)"
            else:  # a target value, e.g. 0.5 for a site AUROC at chance
                score = -np.abs(vals - float(goal))
                title += f" (best near {float(goal):g})"
            best = int(np.flatnonzero(candidates)[np.argmax(score[candidates])])
            colors[best] = "#dd8452"
        ax.barh(ypos, np.nan_to_num(vals), color=colors)
        for y, v in zip(ypos, vals):
            ax.text(v if np.isfinite(v) else 0, y, f" {v:.3g}" if np.isfinite(v) else " n/a", va="center", fontsize=7)
        ax.set_yticks(ypos, methods, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.25)
    for ax in axes[n:]:
        ax.set_visible(False)
    if output is not None:
        save_figure(fig, output)
    return fig
