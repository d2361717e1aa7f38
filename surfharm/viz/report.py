"""One self-contained HTML page per harmonization run: metrics, renderings, plots, command and versions.

Images are PNGs embedded as base64 ``data:`` URIs, so the file can be mailed, archived or opened
offline; it loads nothing from the network. A figure that cannot be drawn for this data (e.g. no
age column, ROI data without a mesh) is replaced by a sentence saying why, not by a failure.

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
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from surfharm._atomic import write_text_atomic
from surfharm.viz.mesh import MeshError

VERSION_PACKAGES = ("surfharm", "numpy", "scipy", "pandas", "scikit-learn", "torch", "nibabel", "nilearn",
                    "pyvista", "vtk", "matplotlib")
#: Direction of the metrics ``surfharm benchmark`` writes (True: higher is better; a number: best near it).
KNOWN_DIRECTIONS = {
    "site_auroc": 0.5, "site_balanced_accuracy": False, "site_eta2_median": False, "frac_sig_anova": False,
    "frac_sig_kruskal": False, "frac_sig_levene": False, "age_pred_r2": True, "age_mae": False,
    "tr_mae_target": False, "tr_mae_truth": False, "tr_psnr_target": True, "tr_psnr_truth": True,
    "tr_r_target": True, "tr_r_truth": True, "tr_ssim_target": True, "tr_ssim_truth": True,
}
# Errors that mean "this figure does not fit this data": reported in the page, not raised.
_FIGURE_ERRORS = (MeshError, ValueError, KeyError)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; max-width: 70em; }
table.metrics { border-collapse: collapse; font-size: .9em; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
table.metrics th { background: #f4f4f4; } table.metrics tbody th { text-align: left; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
div.wide { overflow-x: auto; }
.note { color: #8a4b00; background: #fff6e5; padding: .4em .8em; border-left: 3px solid #e0a040; }
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
    return "left"


def _model_metadata(model) -> dict | None:
    if model is None or isinstance(model, dict):
        return model
    from surfharm.viz.run_folder import read_model_metadata

    return read_model_metadata(model)


# -- sections -------------------------------------------------------------------------------------

def _cohort_section(maps, table: pd.DataFrame, hemi: str) -> str:
    from surfharm.viz.site_effects import site_order

    counts = table["site"].value_counts()
    rows = "".join(f"<tr><th>{html.escape(str(s))}</th><td>{int(counts[s])}</td></tr>" for s in site_order(table["site"]))
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


def _metrics_section(metrics, higher_is_better) -> str:
    from surfharm.viz.plots import plot_method_comparison, read_metrics

    table = read_metrics(metrics)
    body = ('<div class="wide">' + table.to_html(classes="metrics", float_format=lambda v: f"{v:.4g}", border=0,
                                                 na_rep="n/a") + "</div>")
    fig = _figure(lambda: _png_of_figure(plot_method_comparison(table, higher_is_better=higher_is_better)),
                  "method comparison", "Each metric by method (orange: the best where the direction is known).")
    return f"<h2>Metrics</h2>{body}{fig}"


def _method_section(name: str, before, after, table: pd.DataFrame, hemi: str, surface, covariates,
                    render: bool, age_label: str, log_age: bool) -> str:
    from surfharm.viz import plots, surface as surf

    sites = table["site"].to_numpy()
    labels = ("raw", name)
    parts = [f"<h2>{html.escape(name)}: raw vs harmonized</h2>" if after is not None else "<h2>Raw data</h2>"]
    parts.append(_figure(lambda: _png_of_figure(plots.plot_site_distributions(before, sites, after, labels=labels)),
                         "mean thickness by site", "Each scan's mean over cortex, by site: raw (left) and "
                         "harmonized (right). Site boxes that line up after harmonization show the site offset removed."))
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
    scan = _example_scan(table)
    parts.append(_figure(
        lambda: _png_of_plotter(lambda **kw: surf.plot_before_after(
            np.asarray(before[scan], dtype=np.float64), np.asarray(after[scan], dtype=np.float64), surface,
            hemi=hemi, labels=labels, **kw)),
        "one scan before and after", f"Scan {_scan_name(table, scan)}: raw, harmonized and their difference "
        "(harmonized - raw, mm, centred on 0)."))
    return "".join(parts)


def _example_scan(table: pd.DataFrame) -> int:
    """The first scan of the last site in site order (often not the reference site): a fixed, visible choice."""
    from surfharm.viz.site_effects import site_order

    last = site_order(table["site"])[-1]
    return int(np.flatnonzero(table["site"].to_numpy() == last)[0])


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
    vers = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in versions.items())
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
    body = [f"<h1>{html.escape(title)}</h1><p>Written {now} by surfharm {html.escape(package_versions(('surfharm',))['surfharm'])}.</p>"]
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
        body.append(_cohort_section(maps, table, hemi))
    if metrics is not None:
        directions = {**KNOWN_DIRECTIONS, **(higher_is_better or {})}
        body.append(_metrics_section(metrics, directions))
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
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


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
        default: the Cohort's, else left (or both for a 2 x icosahedral vertex count).
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
