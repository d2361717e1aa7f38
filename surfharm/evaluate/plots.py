"""Benchmark figures (matplotlib, off-screen): per-method bars and distributions by site."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from surfharm._atomic import atomic_path

#: Metrics shown as bars (when present): (column, title, reference line or None).
BAR_METRICS = (
    ("site_auroc", "site AUROC (CV; 0.5 = none)", 0.5),
    ("frac_sig_anova", "vertices with site effect (ANCOVA)", 0.0),
    ("age_r2_ratio", "age R$^2$ / truth", 1.0),
    ("age_pred_r2", "age prediction R$^2$ (CV)", None),
    ("tr_mae_target", "traveling MAE to target site (mm)", 0.0),
    ("tr_ssim_target", "traveling SSIM to target site", 1.0),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_metric_bars(result):
    """One bar chart per metric, one bar per method; returns the matplotlib Figure."""
    plt = _pyplot()
    table = result.table
    shown = [(c, t, ref) for c, t, ref in BAR_METRICS if c in table.columns and table[c].notna().any()]
    n = max(len(shown), 1)
    ncols = min(3, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 0.35 * len(table) * nrows + 1.8 * nrows),
                             squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(len(table)) % 10)
    for ax, (column, title, ref) in zip(axes.flat, shown):
        values = table[column].to_numpy(dtype=float)
        y = np.arange(len(table))
        ax.barh(y, np.nan_to_num(values), color=colors)
        ax.set_yticks(y, table["method"])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        if ref is not None:
            ax.axvline(ref, color="k", lw=0.8, ls="--")
        for yi, v in zip(y, values):
            if np.isfinite(v):
                ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(f"surfharm benchmark: {result.data_name}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_site_distributions(result):
    """Per method, boxplots by site of each scan's mean over features (mm for thickness maps)."""
    plt = _pyplot()
    methods = list(result.scan_means)
    sites = np.asarray(result.sites).astype(str)
    labels = list(dict.fromkeys(sites))
    ncols = min(4, max(len(methods), 1))
    nrows = int(np.ceil(len(methods) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods):
        values = result.scan_means[method]
        ax.boxplot([values[sites == s] for s in labels], tick_labels=labels, showfliers=False)
        ax.set_title(method, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=90 if len(labels) > 6 else 0)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("scan mean")
    fig.suptitle("distribution of scan means by site", fontsize=10)
    fig.tight_layout()
    return fig


def write_plots(result, out_dir) -> dict[str, Path]:
    """Write ``metrics.png`` and (when scan means are known) ``site_distributions.png``."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    paths = {}
    figures = [("metrics", plot_metric_bars)]
    if result.scan_means:
        figures.append(("site_distributions", plot_site_distributions))
    for name, make in figures:
        fig = make(result)
        path = out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths[name] = path
    return paths
