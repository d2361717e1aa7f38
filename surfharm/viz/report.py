"""One self-contained HTML page per harmonization run: did it work, in words, numbers, plots and 3D.

The first screen answers "did it work?": per method, one verdict per criterion (site effect removed,
biology kept, traveling subjects agree), each with the numbers before -> after and a colour
(green / amber / red), the best method on each criterion, and the thresholds used. The thresholds
(stated on the page too, :mod:`surfharm.viz.verdicts`):

* site effect: site AUROC within 0.05 of 0.5 green; 0.55-0.65 (residual) or 0.40-0.45 (mild
  over-correction) amber; above 0.65 (present) or below 0.40 (over-corrected) red. Without an
  AUROC, the share of the map with a site effect: at most 5% green, 5-20% amber, more red;
* biology: the age effect within 10% of the site-free truth's green, 10-25% amber, more red; with
  no truth, against raw: at least 90% of raw's green (higher is fine), 75-90% amber, less red;
* traveling subjects: error to the same brain on the target scanner reduced by at least 50% green,
  20-50% amber, less red.

Below come an interactive 3D viewer of one scan (before / after / difference; an embedded WebGL
viewer, :mod:`surfharm.viz.webgl`, with the static renderings as fallback), grouped bar charts
(site removal, biology, traveling subjects) with methods side by side, the metric tables under
plain names with a glossary (raw column names stay in the CSV), the cohort, per-method plots and
renderings, and the command and versions. The page fits a 1280-pixel-wide window.

Images are PNGs embedded as base64 ``data:`` URIs and the viewer's mesh and colours are embedded
too, so the file can be mailed, archived or opened offline; it loads nothing from the network. A
figure that cannot be drawn for this data (e.g. no age column, ROI data without a mesh) is replaced
by a sentence saying why, not by a failure.

Entry points: :func:`write_report` (Python objects) and :func:`report_from_run` (a run folder, see
:mod:`surfharm.viz.run_folder`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm._atomic import write_text_atomic
from surfharm.viz import verdicts as V
from surfharm.viz.mesh import MeshError
from surfharm.viz.verdicts import METRICS

VERSION_PACKAGES = ("surfharm", "numpy", "scipy", "pandas", "scikit-learn", "torch", "nibabel", "nilearn",
                    "pyvista", "vtk", "matplotlib")
#: Direction of the metrics ``surfharm benchmark`` writes (True: higher is better; a number: best near it),
#: from :data:`surfharm.viz.verdicts.METRICS`.
KNOWN_DIRECTIONS = {column: (info.better == "high" if info.better in ("high", "low") else float(info.better))
                    for column, info in METRICS.items() if info.better not in ("", "truth")}
# Errors that mean "this figure does not fit this data": reported in the page, not raised.
_FIGURE_ERRORS = (MeshError, ValueError, KeyError)

_CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1em auto; max-width: 1240px;
       color: #222; line-height: 1.4; padding: 0 16px; overflow-wrap: break-word; }
h1 { font-size: 1.5em; margin: .2em 0; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
h2.first { margin-top: .6em; } p.sub { color: #555; margin: 0 0 .4em 0; font-size: .92em; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; max-width: 70em; }
table.metrics { border-collapse: collapse; font-size: .88em; max-width: 100%; margin: .4em 0 1em 0; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
table.metrics thead th { background: #f4f4f4; vertical-align: bottom; font-weight: 600; }
table.metrics tbody th { text-align: left; font-weight: 600; }
table.metrics td.best { font-weight: 700; background: #eef5ff; }
table.metrics th small { display: block; font-weight: normal; color: #666; }
table.wide { width: 100%; table-layout: fixed; } table.wide thead th:first-child { width: 12em; }
pre { background: #f7f7f7; padding: .8em; font-size: .85em; white-space: pre-wrap; word-break: break-all; }
.note { color: #8a4b00; background: #fff6e5; padding: .4em .8em; border-left: 3px solid #e0a040; }
table.verdicts { border-collapse: separate; border-spacing: 0 6px; width: 100%; font-size: .95em; }
table.verdicts th { text-align: left; font-weight: 600; padding: 0 .6em; color: #444; }
table.verdicts tbody th { font-size: 1.05em; color: #111; vertical-align: middle; width: 11em; }
table.verdicts td { padding: .45em .7em; vertical-align: top; border-left: 5px solid #ddd; }
table.verdicts td b { display: block; }
table td.v-good { background: #e3f4e6; border-color: #2e8b46; } td.v-good b { color: #1f6b33; }
table td.v-warn { background: #fff3dc; border-color: #d28a00; } td.v-warn b { color: #8a5a00; }
table td.v-bad { background: #fde6e4; border-color: #c8372d; } td.v-bad b { color: #a1281f; }
table td.v-none { background: #f2f2f2; border-color: #9a9a9a; } td.v-none b { color: #555; }
table.verdicts tr.v-raw td { background: #fafafa; border-color: #ddd; color: #444; }
p.best { margin: .3em 0; } p.best span { white-space: nowrap; }
details.how { font-size: .9em; margin: .4em 0; } details.how summary { cursor: pointer; color: #2b5d9b; }
table.thresholds { border-collapse: collapse; font-size: .88em; margin: .4em 0; width: 100%; }
table.thresholds th, table.thresholds td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; }
table.thresholds td.v-good { border-left: 5px solid #2e8b46; }
table.thresholds td.v-warn { border-left: 5px solid #d28a00; }
table.thresholds td.v-bad { border-left: 5px solid #c8372d; }
dl.glossary { display: grid; grid-template-columns: minmax(12em, 22em) 1fr; gap: .15em 1em; font-size: .9em; }
dl.glossary dt { font-weight: 600; } dl.glossary dd { margin: 0; }
dl.glossary dd small { color: #666; }
"""


def package_versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (read from package metadata, nothing imported) and Python's."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "surfharm":  # running from a source checkout
                import surfharm

                versions[name] = f"{surfharm.__version__} (source)"
            else:
                versions[name] = "not installed"
    return versions


# -- figures as embedded PNGs ---------------------------------------------------------------------

def _png_of_figure(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _png_of_plotter(draw) -> bytes:
    """Run ``draw(screenshot=path)`` (a surfharm.viz.surface function) off-screen and return the PNG bytes."""
    with tempfile.TemporaryDirectory(prefix="surfharm-report-") as tmp:
        path = Path(tmp) / "render.png"
        plotter = draw(screenshot=path, off_screen=True)
        plotter.close()
        return path.read_bytes()


def _img(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(make_png, alt: str, caption: str) -> str:
    """The figure, or a note saying why it was not drawn."""
    try:
        return _img(make_png(), alt, caption)
    except ImportError as exc:  # renderings need the viz extra (pyvista); the rest of the report does not
        return _note(f"{alt}: not drawn ({exc.name or exc} is not installed: pip install 'surfharm[viz]')")
    except _FIGURE_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return _note(f"{alt}: not drawn ({message})")


# -- inputs ---------------------------------------------------------------------------------------

def _maps_and_table(before, table) -> tuple[np.ndarray, pd.DataFrame, str | None]:
    if hasattr(before, "maps") and hasattr(before, "table"):  # a surfharm Cohort
        return before.maps, before.table.reset_index(drop=True), getattr(before, "hemi", None)
    if table is None:
        raise MeshError("pass table= (one row per scan with a 'site' column) when before is an array, not a Cohort")
    if not isinstance(table, pd.DataFrame):
        from surfharm.io import read_table

        table = read_table(table)
    return np.asarray(before), table.reset_index(drop=True), None


def _harmonized(after, shape) -> dict[str, np.ndarray]:
    if after is None:
        return {}
    if not isinstance(after, Mapping):
        after = {"harmonized": after}
    out = {}
    for name, maps in after.items():
        arr = maps.maps if hasattr(maps, "maps") else np.asarray(maps)
        if arr.shape != tuple(shape):
            raise MeshError(f"harmonized maps {name!r} have shape {arr.shape} but the raw maps {tuple(shape)}; "
                            "expected the same scans and vertices")
        out[str(name)] = arr
    return out


def _guess_hemi(hemi, n_vertices: int) -> str:
    from spherical_ops import VERTEX_COUNTS

    if hemi:
        return hemi
    if n_vertices not in VERTEX_COUNTS and n_vertices % 2 == 0 and n_vertices // 2 in VERTEX_COUNTS:
        return "both"
    return "lh"


def _model_metadata(model) -> dict | None:
    if model is None or isinstance(model, dict):
        return model
    from surfharm.viz.run_folder import read_model_metadata

    return read_model_metadata(model)


# -- sections -------------------------------------------------------------------------------------

def _cohort_section(maps, table: pd.DataFrame, hemi: str) -> str:
    from surfharm.viz.site_effects import site_order

    counts = table["site"].value_counts()
    rows = "".join(f"<tr><th>{html.escape(str(s))}</th><td>{int(counts[s])}</td></tr>"
                   for s in site_order(table["site"]))
    extra = []
    if "subject" in table.columns:
        extra.append(f"{table['subject'].nunique()} subjects")
    if "age" in table.columns and pd.api.types.is_numeric_dtype(table["age"]):
        extra.append(f"age {table['age'].min():.3g} to {table['age'].max():.3g}")
    nan_share = float(np.mean(~np.isfinite(np.asarray(maps[:1]))))
    return (f"<h2>Cohort</h2><p>{maps.shape[0]} scans, {maps.shape[1]} vertices per scan (hemisphere: "
            f"{html.escape(hemi)}; {100 * nan_share:.1f}% outside cortex), {len(counts)} sites"
            f"{'; ' + html.escape(', '.join(extra)) if extra else ''}.</p>"
            f'<table class="metrics"><thead><tr><th>site</th><th>scans</th></tr></thead><tbody>{rows}</tbody></table>')


def _fmt(value) -> str:
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.3g}"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return str(value)


def _metric_table(metrics) -> pd.DataFrame:
    from surfharm.viz.plots import read_metrics

    table = read_metrics(metrics).copy()
    table.index = [str(m) for m in table.index]
    return table


def _goal(column: str, directions: Mapping) -> str | float:
    """A column's direction as verdicts.Metric.better ("high", "low", "truth", a number or "")."""
    if column in directions and column not in METRICS:
        goal = directions[column]
        if isinstance(goal, bool):
            return "high" if goal else "low"
        return float(goal)
    return V.metric_info(column).better


def _best_row(values: pd.Series, goal, truth_value=np.nan):
    """The method (not raw, not a truth row) with the best value, or None."""
    candidates = {m: float(v) for m, v in values.items()
                  if not V.is_truth(m) and not V.is_raw(m) and isinstance(v, (int, float, np.number))
                  and np.isfinite(v)}
    if len(candidates) < 1 or goal == "":
        return None
    if goal == "high":
        return max(candidates, key=candidates.get)
    if goal == "low":
        return min(candidates, key=candidates.get)
    target = truth_value if goal == "truth" else float(goal)
    if not np.isfinite(target):
        return None
    return min(candidates, key=lambda m: abs(candidates[m] - target))


# -- "did it work?" -------------------------------------------------------------------------------

def _verdict_cell(verdict) -> str:
    return (f'<td class="v-{verdict.level}"><b>{V.SYMBOLS[verdict.level]} {html.escape(verdict.headline)}</b>'
            f"{html.escape(verdict.detail)}</td>")


def _summary_section(table: pd.DataFrame) -> str:
    """Per method, one coloured verdict per criterion; the best method on each; the thresholds used."""
    found = V.method_verdicts(table)
    if not found:
        return ('<h2 class="first">Did it work?</h2>' + _note(
            "no harmonized method in the metrics table (only raw or truth rows): nothing to judge yet"))
    criteria = [c for c in V.CRITERIA if any(c in v for v in found.values())]
    head = "".join(f"<th>{html.escape(V.CRITERIA[c])}</th>" for c in criteria)
    rows = []
    before = V.raw_summary(table)
    if before:
        cells = "".join(f"<td>{html.escape(before.get(c, ''))}</td>" for c in criteria)
        rows.append(f'<tr class="v-raw"><th>before (raw)</th>{cells}</tr>')
    for method, verdicts in found.items():
        cells = "".join(_verdict_cell(verdicts[c]) if c in verdicts else "<td></td>" for c in criteria)
        rows.append(f"<tr><th>{html.escape(str(method))}</th>{cells}</tr>")
    parts = ['<h2 class="first">Did it work?</h2>',
             f'<table class="verdicts"><thead><tr><th>method</th>{head}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>']
    best = V.best_methods(table)
    if best and len(found) > 1:
        words = {V.SITE: "removing the site effect", V.BIOLOGY: "keeping biology",
                 V.TRAVEL: "traveling-subject agreement"}
        items = "; ".join(f"<span>{html.escape(words[c])}: <b>{html.escape(str(m))}</b></span> ({html.escape(why)})"
                          for c, (m, why) in best.items())
        parts.append(f'<p class="best">Best at {items}.</p>')
    parts.append(_thresholds_block())
    return "".join(parts)


def _thresholds_block() -> str:
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td class=\"v-good\">{html.escape(g)}</td>"
                   f"<td class=\"v-warn\">{html.escape(a)}</td><td class=\"v-bad\">{html.escape(r)}</td></tr>"
                   for name, g, a, r in V.THRESHOLD_ROWS)
    return ('<details class="how" open><summary>Thresholds of the verdicts</summary>'
            '<table class="thresholds"><thead><tr><th>criterion</th><th>green</th><th>amber</th><th>red</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
            "<p>Site AUROC: how well a classifier tells the scanners apart from the maps (cross-validated); "
            "read it as the distance from 0.5. Far below 0.5 is over-correction, not success: the scanner is "
            "still encoded, inverted. Biology is compared with the site-free truth where the data have one "
            "(simulations), else with raw. Traveling subjects are the same brains scanned on both scanners.</p>"
            "</details>")


# -- metrics: grouped plots, tables under plain names, glossary -------------------------------------

#: Metrics drawn in each group's chart, in order (the first four present are drawn).
PLOTTED = {
    V.SITE: ("site_auroc", "frac_sig_anova", "site_eta2_median", "frac_sig_levene", "site_balanced_accuracy"),
    V.BIOLOGY: ("age_r2_ratio", "age_r2", "age_pred_r2", "age_beta_r", "sex_d_r", "age_mae"),
    V.TRAVEL: ("tr_mae_target_cortex", "tr_mae_target", "tr_ssim_target", "tr_icc", "tr_psnr_target_cortex",
               "tr_psnr_target", "tr_mae_truth"),
}


def _group_columns(table: pd.DataFrame, directions: Mapping) -> dict[str, list[str]]:
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and table[c].notna().any()]
    groups: dict[str, list[str]] = {g: [] for g in V.GROUP_TITLES}
    for column in numeric:
        groups[V.metric_info(column).group].append(column)
    return {g: cols for g, cols in groups.items() if cols}


def _plot_columns(group: str, columns: list[str], directions: Mapping) -> list[str]:
    if group in PLOTTED:
        chosen = [c for c in PLOTTED[group] if c in columns]
        if "tr_mae_target_cortex" in chosen and "tr_mae_target" in chosen:
            chosen.remove("tr_mae_target")
        if "tr_psnr_target_cortex" in chosen and "tr_psnr_target" in chosen:
            chosen.remove("tr_psnr_target")
        return chosen[:4]
    # other: only columns without a known meaning (user metrics); run facts stay in the tables
    return [c for c in columns if c not in METRICS][:4]


def _method_colours(methods: list[str]) -> dict[str, str]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, k = {}, 0
    for m in methods:
        if V.is_raw(m):
            out[m] = "#8c8c8c"
        elif V.is_truth(m):
            out[m] = "#d9d9d9"
        else:
            out[m] = cmap([0, 1, 2, 4, 6, 8, 9, 5, 7, 3][k % 10])
            k += 1
    return out


def plot_metric_group(table: pd.DataFrame, columns: Sequence[str], *, title: str, directions: Mapping | None = None):
    """One row of bar charts, one per metric, methods side by side in one colour each (raw grey,
    truth rows light grey); the best method is outlined and the reference (0.5, 1, the truth) drawn."""
    import textwrap

    from surfharm.viz.plots import _new_figure

    directions = directions or {}
    methods = list(table.index)
    colours = _method_colours(methods)
    truth = V.truth_row(table)
    fig = _new_figure(12.0, 3.3)
    axes = fig.subplots(1, max(len(columns), 1), squeeze=False)[0]
    x = np.arange(len(methods))
    for ax, column in zip(axes, columns):
        values = pd.to_numeric(table[column], errors="coerce")
        vals = values.to_numpy(dtype=float)
        goal = _goal(column, directions)
        truth_value = float(values[truth]) if truth is not None and np.isfinite(values[truth]) else np.nan
        best = _best_row(values, goal, truth_value)
        bars = ax.bar(x, np.nan_to_num(vals), color=[colours[m] for m in methods], width=0.7,
                      edgecolor=["#111" if m == best else "none" for m in methods],
                      linewidth=[2.0 if m == best else 0 for m in methods])
        for bar, v, m in zip(bars, vals, methods):
            label = "n/a" if not np.isfinite(v) else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
            top = max(v, 0) if np.isfinite(v) else 0
            ax.annotate(label + (" \u2605" if m == best else ""), (bar.get_x() + bar.get_width() / 2, top),
                        ha="center", va="bottom", fontsize=7.5, xytext=(0, 1), textcoords="offset points")
        if isinstance(goal, float):
            ax.axhline(goal, color="#2e8b46", linestyle="--", linewidth=1)
            if column == "site_auroc":
                ax.axhspan(0.5 - V.AUROC_NO_SIGNAL, 0.5 + V.AUROC_NO_SIGNAL, color="#2e8b46", alpha=0.12, linewidth=0)
        elif goal == "truth" and np.isfinite(truth_value):
            ax.axhline(truth_value, color="#2e8b46", linestyle="--", linewidth=1)
        info = V.metric_info(column)
        direction = V.direction_text(goal)
        ax.set_title("\n".join(textwrap.wrap(info.name, 34)) + (f"\n({direction})" if direction else ""), fontsize=9)
        ax.set_xticks(x, ["\n".join(textwrap.wrap(str(m), 11)) for m in methods], fontsize=7.5)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.18)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=11, fontweight="bold", x=0.01, ha="left")
    return fig


BEST_ATTR = ' class="best"'


def _table_html(table: pd.DataFrame, columns: list[str], directions: Mapping) -> str:
    truth = V.truth_row(table)
    head = []
    best_of = {}
    for column in columns:
        goal = _goal(column, directions)
        values = pd.to_numeric(table[column], errors="coerce")
        truth_value = float(values[truth]) if truth is not None and np.isfinite(values[truth]) else np.nan
        best_of[column] = _best_row(values, goal, truth_value)
        direction = V.direction_text(goal)
        head.append(f"<th>{html.escape(V.plain_name(column))}"
                    f"{'<small>' + html.escape(direction) + '</small>' if direction else ''}</th>")
    rows = []
    for method in table.index:
        cells = "".join(f"<td{BEST_ATTR if best_of[c] == method else ''}>{html.escape(_fmt(table.at[method, c]))}</td>"
                        for c in columns)
        rows.append(f"<tr><th>{html.escape(str(method))}</th>{cells}</tr>")
    wide = " wide" if len(columns) > 3 else ""
    return (f'<table class="metrics{wide}"><thead><tr><th>method</th>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _glossary(columns: list[str], directions: Mapping) -> str:
    items = []
    for column in columns:
        info = V.metric_info(column)
        direction = V.direction_text(_goal(column, directions))
        meaning = info.meaning or "(no description: a metric this version of surfharm does not know)"
        items.append(f"<dt>{html.escape(info.name)}</dt><dd>{html.escape(meaning)}"
                     f"{' <small>(' + html.escape(direction) + ')</small>' if direction else ''}</dd>")
    return ('<h3>Glossary</h3><dl class="glossary">' + "".join(items) + "</dl>"
            "<p class=\"sub\">The metrics CSV of the run keeps the column names that scripts read.</p>")


def _metrics_section(table: pd.DataFrame, directions: Mapping) -> str:
    groups = _group_columns(table, directions)
    parts = ["<h2>Metrics by criterion</h2>"]
    MAX_COLUMNS = 6
    for group, columns in groups.items():
        parts.append(f"<h3>{html.escape(V.GROUP_TITLES[group])}</h3>")
        shown = _plot_columns(group, columns, directions)
        # rows without any value in this group (e.g. truth rows have no traveling subjects) are not drawn
        rows = table.loc[table[shown].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)] if shown else table
        if shown and len(rows):
            title = V.GROUP_TITLES[group]
            parts.append(_figure(lambda s=shown, t=title, r=rows: _png_of_figure(plot_metric_group(
                r, s, title=t, directions=directions)),
                                 f"{title.lower()} metrics by method",
                                 f"{title}: methods side by side (raw dark grey, truth light grey); the best method is "
                                 "outlined and starred; dashed green line: the value to reach."))
        for start in range(0, len(columns), MAX_COLUMNS):
            parts.append(_table_html(table, columns[start:start + MAX_COLUMNS], directions))
    text_columns = [c for c in table.columns if c not in sum(groups.values(), []) and table[c].notna().any()
                    and table[c].astype(str).str.strip().ne("").any()]
    for column in text_columns:
        notes = [f"{m}: {v}" for m, v in table[column].items() if isinstance(v, str) and v.strip()]
        if notes:
            parts.append(_note(f"{V.plain_name(column)}: " + "; ".join(notes)))
    parts.append(_glossary(sum(groups.values(), []), directions))
    return "".join(parts)


def _method_section(name: str, before, after, table: pd.DataFrame, hemi: str, surface, covariates,
                    render: bool, age_label: str, log_age: bool) -> str:
    from surfharm.viz import covariance as cov_maps, plots, surface as surf

    sites = table["site"].to_numpy()
    labels = ("raw", name)
    parts = [f"<h2>{html.escape(name)}: raw vs harmonized</h2>" if after is not None else "<h2>Raw data</h2>"]
    parts.append(_figure(lambda: _png_of_figure(plots.plot_site_distributions(before, sites, after, labels=labels)),
                         "mean thickness by site", "Each scan's mean over cortex, by site: raw (left) and "
                         "harmonized (right). Site boxes that line up after harmonization show the site offset "
                         "removed."))
    parts.append(_figure(lambda: _png_of_figure(plots.plot_pca_by_site(before, sites, after, labels=labels)),
                         "PCA by site", "First two principal components of the maps (vertices without NaN), "
                         "scans coloured by site; one PCA per panel."))
    if "age" in table.columns:
        subjects = table["subject"].to_numpy() if "subject" in table.columns else None
        parts.append(_figure(
            lambda: _png_of_figure(plots.plot_age_trajectories(
                before, sites, table["age"].to_numpy(dtype=float), after, subjects=subjects, labels=labels,
                age_label=age_label, log_age=log_age)),
            "age trajectories by site", "Mean thickness against age with a quadratic fit per site; grey lines join "
            "the scans of one subject. The age effect must survive harmonization; the gaps between sites must not."))
    else:
        parts.append(_note("age trajectories: not drawn (the scan table has no 'age' column)"))
    if not render:
        return "".join(parts)
    parts.append(_figure(
        lambda: _png_of_plotter(lambda **kw: surf.plot_site_maps(before, sites, after, surface, covariates=covariates,
                                                                 hemi=hemi, stage_labels=labels, **kw)),
        "site effect maps", "Each site's mean minus the mean of the site means (mm)"
        f"{', at the mean ' + ', '.join(covariates.columns) + ' of the cohort' if covariates is not None else ''}; "
        "raw and harmonized, one colour scale centred on 0. Grey: outside cortex."))
    parts.append(_figure(
        lambda: _png_of_plotter(lambda **kw: surf.plot_site_effect(before, sites, after, covariates, surface,
                                                                   hemi=hemi, stage_labels=labels, **kw)),
        "site test maps", "-log10 p of the per-vertex F-test of site"
        f"{' adjusted for ' + ', '.join(covariates.columns) if covariates is not None else ''}; "
        "raw and harmonized share the colour scale."))
    parts.append(_figure(
        lambda: _png_of_plotter(lambda **kw: cov_maps.plot_covariance_heterogeneity(
            before, sites, after, covariates, surface, hemi=hemi, stage_labels=labels, **kw)),
        "covariance heterogeneity maps", cov_maps.CAPTION))
    return "".join(parts)


def _scan_rendering(name: str, before, after, table: pd.DataFrame, hemi: str, surface, scan: int) -> str:
    """The static rendering of one scan before and after (the 3D viewer's fallback)."""
    from surfharm.viz import surface as surf

    return _figure(
        lambda: _png_of_plotter(lambda **kw: surf.plot_before_after(
            np.asarray(before[scan], dtype=np.float64), np.asarray(after[scan], dtype=np.float64), surface,
            hemi=hemi, labels=("raw", name), **kw)),
        f"one scan before and after: {name}", f"Scan {_scan_name(table, scan)}: raw, {name} and their difference "
        f"({name} - raw, mm, centred on 0).")


def _viewer_section(maps, harmonized: dict, table: pd.DataFrame, hemi: str, surface, render: bool) -> str:
    """One scan in the embedded 3D viewer (before / after / difference per method); static renderings as fallback."""
    from surfharm.viz import webgl

    scan = _example_scan(table)
    head = "<h2>Explore one scan in 3D</h2>"
    try:
        data = webgl.scene_for_maps(np.asarray(maps[scan], dtype=np.float64),
                                    {m: np.asarray(a[scan], dtype=np.float64) for m, a in harmonized.items()},
                                    surface=surface, hemi=hemi)
    except _FIGURE_ERRORS as exc:
        data, reason = None, exc
    fallback = ""
    if render:
        fallback = "".join(_scan_rendering(m, maps, a, table, hemi, surface, scan) for m, a in harmonized.items())
    if data is None:
        return head + _note(f"3D viewer: not drawn ({reason})") + fallback
    caption = (f"Scan {_scan_name(table, scan)}. Drag to rotate, wheel to zoom; the buttons switch between before "
               "(raw), after (harmonized) and their difference (after - raw, centred on 0). Before and after share one "
               "colour scale.")
    if not render:
        fallback = _note("static renderings: not drawn (render=False)")
    return head + webgl.viewer_html(data, element_id="viewer3d", fallback_html=fallback, caption=caption)


def _example_scan(table: pd.DataFrame) -> int:
    """The first scan of the last site in site order (often not the reference site), a traveling subject's
    when the table marks them: a fixed, visible choice."""
    from surfharm.viz.site_effects import site_order

    last = site_order(table["site"])[-1]
    rows = table["site"].to_numpy() == last
    if "traveling" in table.columns:  # a traveling subject: the same brain exists on the other scanner
        traveling = rows & table["traveling"].astype(str).str.lower().isin(("true", "1", "yes")).to_numpy()
        if traveling.any():
            rows = traveling
    return int(np.flatnonzero(rows)[0])


def _scan_name(table: pd.DataFrame, row: int) -> str:
    fields = [f"{c} {table[c].iloc[row]}" for c in ("subject", "session", "site") if c in table.columns]
    return f"#{row} ({', '.join(fields)})"


def _covariates(table: pd.DataFrame, names: Sequence[str] | None) -> pd.DataFrame | None:
    if names is None:
        names = [c for c in ("age", "sex") if c in table.columns]
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise MeshError(f"covariate(s) {missing} not in the scan table (columns: {', '.join(map(str, table.columns))})")
    return table[list(names)] if names else None


def _provenance_section(model, config, command, versions) -> str:
    parts = ["<h2>How this was made</h2>"]
    parts.append(f"<h3>Command</h3><pre>{html.escape(command or '(not recorded)')}</pre>")
    vers = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in versions.items())
    parts.append(f'<h3>Versions</h3><table class="metrics"><tbody>{vers}</tbody></table>')
    if model is not None:
        text = json.dumps(model, indent=2, sort_keys=True, default=str)
        parts.append(f"<h3>Model</h3><pre>{html.escape(text)}</pre>")
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        parts.append(f"<h3>Configuration</h3><pre>{html.escape(text)}</pre>")
    return "".join(parts)


# -- public API -----------------------------------------------------------------------------------

def build_report_html(before=None, after=None, *, table=None, metrics=None, model=None, config=None,
                      command: str | None = None, versions: dict | None = None, surface="inflated",
                      hemi: str | None = None, covariates: Sequence[str] | None = None,
                      title: str = "surfharm harmonization report", render: bool = True,
                      higher_is_better: dict[str, bool | float] | None = None, age_label: str = "age (years)",
                      log_age: bool = False) -> str:
    """The report as an HTML string (see :func:`write_report` for the arguments)."""
    if before is None and metrics is None:
        raise MeshError("nothing to report: give the maps (before, and after) and/or a metrics table")
    versions = versions or package_versions()
    if command is None:
        command = shlex.join(sys.argv)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    written = f"Written {now} by surfharm {package_versions(('surfharm',))['surfharm']}."
    body = []
    harmonized = {}
    if before is not None:
        maps, table, cohort_hemi = _maps_and_table(before, table)
        if "site" not in table.columns:
            raise MeshError(f"the scan table has no 'site' column (columns: {', '.join(map(str, table.columns))})")
        if len(table) != maps.shape[0]:
            raise MeshError(f"the scan table has {len(table)} rows but the maps {maps.shape[0]} scans; "
                            "expected one row per scan")
        harmonized = _harmonized(after, maps.shape)
        hemi = _guess_hemi(hemi or cohort_hemi, maps.shape[1])
        covs = _covariates(table, covariates)
        written = (f"{maps.shape[0]} scans from {table['site'].nunique()} sites, hemisphere {hemi}; "
                   f"methods: {', '.join(harmonized) or 'none'}. {written}")
    body.append(f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(written)}</p>')
    directions = {**KNOWN_DIRECTIONS, **(higher_is_better or {})}
    metric_table = _metric_table(metrics) if metrics is not None else None
    if metric_table is not None:
        body.append(_summary_section(metric_table))
    else:
        body.append('<h2 class="first">Did it work?</h2>' + _note(
            "no metrics table in this run: no verdicts (surfharm harmonize and surfharm benchmark write "
            "metrics.csv); the plots below show the site effect before and after"))
    if before is not None:
        body.append(_viewer_section(maps, harmonized, table, hemi, surface, render and bool(harmonized)))
    if metric_table is not None:
        body.append(_metrics_section(metric_table, directions))
    if before is not None:
        body.append(_cohort_section(maps, table, hemi))
    if before is None:
        body.append(_note("no maps in this run: metrics only (write maps/raw.npy and maps/<method>.npy with a "
                          "scan table to see renderings and plots)"))
    elif not harmonized:
        body.append(_note("no harmonized maps given: only the raw data is shown"))
        body.append(_method_section("raw", maps, None, table, hemi, surface, covs, False, age_label, log_age))
    else:
        for name, arr in harmonized.items():
            body.append(_method_section(name, maps, arr, table, hemi, surface, covs, render, age_label, log_age))
    body.append(_provenance_section(_model_metadata(model), config, command, versions))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title>"
            f"<style>{_CSS}{_webgl_css()}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _webgl_css() -> str:
    from surfharm.viz.webgl import CSS

    return CSS


def write_report(output: str | os.PathLike, before=None, after=None, *, table=None, metrics=None, model=None,
                 config=None, command: str | None = None, versions: dict | None = None, surface="inflated",
                 hemi: str | None = None, covariates: Sequence[str] | None = None,
                 title: str = "surfharm harmonization report", render: bool = True,
                 higher_is_better: dict[str, bool | float] | None = None, age_label: str = "age (years)",
                 log_age: bool = False, inputs: Sequence = ()) -> Path:
    """Write a self-contained HTML report of a harmonization run to ``output``; return its path.

    Parameters
    ----------
    before : Cohort, or (n_scans, n_vertices) maps with ``table``; NaN outside cortex.
    after : harmonized maps of the same shape (array or Cohort), or a dict ``{method: maps}``.
    table : DataFrame or CSV/TSV path, one row per scan: ``site`` (required), ``subject``,
        ``session``, ``age``, ``sex`` used when present.
    metrics : DataFrame (rows = methods, columns = metrics) or a CSV path.
    model : dict, JSON path or save_state ``.npz``: its metadata is printed.
    config : dict of the run's configuration (e.g. a benchmark's), printed.
    command, versions : provenance; default: this process's command line and installed versions.
    surface, hemi : mesh for the renderings (see :func:`surfharm.viz.plot_surface_map`); hemi
        default: the Cohort's, else "lh" (or "both" for a 2 x icosahedral vertex count).
    covariates : table columns the site test adjusts for (default: age and sex when present).
    render : False skips the pyvista renderings (plots only).
    higher_is_better : direction of each metric, for the method comparison (added to
        :data:`KNOWN_DIRECTIONS`, the benchmark's metric names).
    age_label, log_age : age axis of the trajectories (e.g. ``"age (months)"``, ``log_age=True`` for infants).
    inputs : files the report was made from; ``output`` must not be one of them.
    """
    text = build_report_html(before, after, table=table, metrics=metrics, model=model, config=config, command=command,
                             versions=versions, surface=surface, hemi=hemi, covariates=covariates, title=title,
                             render=render, higher_is_better=higher_is_better, age_label=age_label, log_age=log_age)
    return write_text_atomic(output, text, inputs=inputs)


def report_from_run(folder: str | os.PathLike, output: str | os.PathLike | None = None, *,
                    methods: Sequence[str] | None = None, surface=None, hemi: str | None = None,
                    metrics=None, model=None, report_command: str | None = None, **kwargs) -> Path:
    """Write the HTML report of a run folder (layout: :mod:`surfharm.viz.run_folder`); default output RUN/report.html.

    ``methods`` restricts the harmonized maps shown (names = stems of maps/<method>.npy);
    ``surface``, ``hemi``, ``metrics`` and ``model`` override what the folder holds. The page shows
    the run's command (run.json) and ``report_command`` (default: this process's command line).
    Other keywords go to :func:`write_report`.
    """
    from surfharm.viz.run_folder import RunFolderError, read_run

    run = read_run(folder)
    after = run.after
    if methods is not None:
        unknown = [m for m in methods if m not in after]
        if unknown:
            raise RunFolderError(f"{run.folder}: no maps for method(s) {unknown}; found: {', '.join(after) or 'none'}")
        after = {m: after[m] for m in methods}
    output = Path(output) if output is not None else run.folder / "report.html"
    inputs = list(run.inputs) + [p for p in (metrics, model) if isinstance(p, (str, os.PathLike))]
    kwargs.setdefault("title", run.title or f"surfharm report: {run.folder.resolve().name}")
    report_command = report_command or shlex.join(sys.argv)
    command = f"{run.command}\n# report:\n{report_command}" if run.command else report_command
    return write_report(output, run.before, after, table=run.table,
                        metrics=metrics if metrics is not None else run.metrics,
                        model=model if model is not None else run.model, config=run.config, command=command,
                        versions=run.versions,
                        surface=surface or run.surface or "inflated", hemi=hemi or run.hemi, inputs=inputs, **kwargs)
