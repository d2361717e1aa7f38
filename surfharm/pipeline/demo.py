"""``surfharm demo``: the whole job on embedded data, in minutes on a laptop CPU.

The cohort is simulated on nilearn's fsaverage5 anatomy (no download): an infant longitudinal
study (scans at 1-24 months, three sessions per infant) whose scanner was replaced half-way
through. The two scanners are the two "sites" to harmonize: ``A`` (before the change, the target)
and ``A2`` (after it: another additive and multiplicative effect and a smoother, lower-resolution
look). Traveling subjects were scanned on both, and the site-free truth of every scan is known.

Methods: no harmonization (``raw``), ComBat keeping log-age and sex, and a small S2SGAN (cycle-
consistent spherical U-Nets) conditioned on log-age. S2SGAN is skipped, with the reason printed,
when it cannot run. Every method goes through :func:`surfharm.evaluate.run_benchmark`: leakage-safe
cross-validated site AUROC, age effect kept (R^2 against the truth's), and traveling subjects held
out of every fit (MAE / PSNR to the same infant on the target scanner and to the truth).

The medial wall (no cortex) is given as 0 mm in every scan while methods run: the cross-validation
keeps features finite in every scan and S2SGAN needs the whole icosahedral mesh. The metrics to the
target scanner are then converted to cortex-only values (columns ``*_cortex``; the correlation to the
target, which the shared zeros would inflate, is left out), and the maps written to the output
folder have NaN on the medial wall again.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm.pipeline import outputs

TARGET, CHANGED = "A", "A2"


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo. ``quick``: about a minute of work; ``full``: a few minutes on 2 CPU cores.

    Attributes
    ----------
    level : int
        icosahedral level (5 = fsaverage5, 10242 vertices).
    n_subjects : int
        infants of the study (3 sessions each), split between the scanners by scan date.
    n_traveling : int
        infants scanned on both scanners (held out of every fit).
    n_splits : int
        cross-validation folds (each refits every method).
    s2sgan_steps : int
        S2SGAN training steps (batch 2) per fit; 0 skips S2SGAN.
    s2sgan_depth, s2sgan_channels : int
        U-Net resolutions and base channels.
    render : bool
        write pyvista renderings (before/after) and the renderings of the report.
    seed : int
        seed of the simulation, the folds and the training.
    """

    level: int = 5
    n_subjects: int = 30
    n_traveling: int = 6
    n_splits: int = 2
    s2sgan_steps: int = 24
    s2sgan_depth: int = 4
    s2sgan_channels: int = 8
    render: bool = True
    seed: int = 0


PRESETS = {
    "full": DemoSettings(),
    "quick": DemoSettings(n_subjects=16, n_traveling=4, n_splits=2, s2sgan_steps=8),
}


#: Title written into the run folder; also how a later run recognises its own earlier output.
RUN_TITLE = "surfharm demo: infant cohort with a scanner change"


def demo_config(settings: DemoSettings):
    """The :class:`surfharm.simulate.SimulationConfig` of the demo (site B is a 2-infant placeholder:
    the simulator asks for two sites; its scans are dropped by :func:`demo_data`)."""
    from surfharm.simulate import SiteSpec, preset

    config = preset("infant", n_per_site=settings.n_subjects, level=settings.level, seed=settings.seed,
                    n_traveling=settings.n_traveling)
    site_a, site_b = config.sites[0], config.sites[1]
    return config.replace(sites=(site_a, SiteSpec(site_b.name, 2, site_b.effect)))


def demo_data(settings: DemoSettings):
    """The demo cohort as :class:`surfharm.evaluate.BenchmarkData` (scanners A and A2 only), and the
    cortex mask (V,) bool."""
    from surfharm.evaluate.scenarios import simulated_data

    data = simulated_data(demo_config(settings), name="infant scanner change (demo)", target_site=TARGET)
    rows = np.flatnonzero(data.table["site"].isin([TARGET, CHANGED]).to_numpy())
    table = data.table.iloc[rows].reset_index(drop=True)
    X = np.nan_to_num(data.X[rows], nan=0.0).astype(np.float32)
    return replace(data, X=X, table=table, truth=data.truth[rows], truth_at_target=data.truth_at_target[rows],
                   traveling=data.traveling[rows]), data.mask


def methods(settings: DemoSettings, progress: bool) -> list:
    """The demo's :class:`MethodSpec` list (S2SGAN only when ``s2sgan_steps`` > 0)."""
    from surfharm.evaluate import MethodSpec

    specs = [MethodSpec("raw"), MethodSpec("combat")]
    if settings.s2sgan_steps > 0:
        specs.append(MethodSpec("s2sgan", options=dict(
            source=CHANGED, target=TARGET, condition_on=("log_age",), depth=settings.s2sgan_depth,
            base_channels=settings.s2sgan_channels, disc_channels=settings.s2sgan_channels,
            max_steps=settings.s2sgan_steps, batch_size=2, seed=settings.seed, progress=progress)))
    return specs


def s2sgan_unavailable() -> str | None:
    """Why S2SGAN cannot run here (None when it can)."""
    try:
        from surfharm import harmonize

        harmonize.get("s2sgan")
    except Exception as exc:  # any import failure (torch missing, broken install) is reported, not raised
        return f"{type(exc).__name__}: {exc}"
    return None


def _cortex_columns(table: pd.DataFrame, n_vertices: int, n_cortex: int) -> pd.DataFrame:
    """MAE/PSNR to the target scanner over cortex only (the medial wall was 0 in both maps)."""
    ratio = n_vertices / n_cortex
    # Pearson r over all vertices would be inflated by the shared zeros of the medial wall.
    table = table.drop(columns=["tr_r_target"], errors="ignore")
    if "tr_mae_target" in table:
        table["tr_mae_target_cortex"] = table["tr_mae_target"] * ratio
    if "tr_psnr_target" in table:
        table["tr_psnr_target_cortex"] = table["tr_psnr_target"] - 10 * np.log10(ratio)
    return table


SHOWN = {
    "site_auroc": "site AUROC (0.5 = scanner cannot be told)",
    "age_r2": "age R^2 (biology kept)",
    "age_r2_ratio": "age R^2 / truth's",
    "tr_mae_target_cortex": "traveling MAE to target scanner (mm)",
    "tr_psnr_target_cortex": "traveling PSNR to target (dB)",
    "tr_mae_truth": "traveling MAE to truth (mm)",
    "tr_psnr_truth": "traveling PSNR to truth (dB)",
}


def summary_table(table: pd.DataFrame) -> str:
    """The columns the demo prints, as Markdown."""
    shown = table[["method", *[c for c in SHOWN if c in table.columns]]]
    header = "| " + " | ".join(["method", *[SHOWN[c] for c in shown.columns[1:]]]) + " |"
    rule = "|---|" + "---:|" * (len(shown.columns) - 1)
    body = ["| " + " | ".join([str(r[0]), *("" if pd.isna(v) else f"{v:.3f}" for v in r[1:])]) + " |"
            for r in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def run_demo(out, settings: DemoSettings = PRESETS["full"], *, overwrite: bool = False, progress: bool = True,
             command=None) -> dict:
    """Simulate, harmonize, benchmark, render and report into ``out``; returns what was written.

    Returns ``{"out", "report", "table" (DataFrame), "skipped" ({method: reason}), "seconds"}``.
    """
    from surfharm.cohort import Cohort
    from surfharm.evaluate import run_benchmark

    start = time.perf_counter()
    say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
    # Written aside and moved into place when complete: the folder holds exactly one whole demo.
    with outputs.RunTarget(out, overwrite=overwrite) as target:
        out = target.folder()
        say(f"simulating an infant cohort on fsaverage{settings.level if settings.level < 7 else ''} anatomy: "
            f"{settings.n_subjects} infants x 3 sessions, scanner {TARGET} replaced by {CHANGED} mid-study, "
            f"{settings.n_traveling} traveling infants scanned on both")
        data, mask = demo_data(settings)
        specs = methods(settings, progress)
        skipped = {}
        reason = s2sgan_unavailable() if any(s.name == "s2sgan" for s in specs) else None
        if settings.s2sgan_steps <= 0:
            skipped["s2sgan"] = "turned off (--no-s2sgan)"
        elif reason:
            skipped["s2sgan"] = reason
            specs = [s for s in specs if s.name != "s2sgan"]

        # 1. Fit every method once on the study scans: the maps and models a user would keep.
        study = data.study
        cov = data.table[data.covariate_columns]
        maps = {"raw": np.asarray(data.X)}
        (out / "models").mkdir(exist_ok=True)
        for spec in specs[1:]:
            say(f"fitting {spec.display} on {int(study.sum())} study scans")
            try:
                harmonizer = spec.build()
                from surfharm.harmonize import side_data_for

                harmonizer.fit(data.X[study], sites=data.table["site"][study].to_numpy(),
                               **side_data_for(harmonizer, covariates=cov[study].reset_index(drop=True)))
                maps[spec.name] = np.asarray(harmonizer.transform(data.X, sites=data.table["site"].to_numpy(),
                                                                  **side_data_for(harmonizer, covariates=cov)),
                                             np.float32)
                harmonizer.save(out / "models" / f"{spec.name}{harmonizer.model_suffix}")
            except Exception as exc:  # the demo goes on with the other methods and says why
                skipped[spec.name] = f"{type(exc).__name__}: {exc}"
                say(f"{spec.display} FAILED and is skipped: {skipped[spec.name]}")
        specs = [s for s in specs if s.name not in skipped]

        # 2. The benchmark: every method refit inside every fold; traveling infants held out.
        say(f"benchmark: {settings.n_splits}-fold leakage-safe cross-validation (each method refit per fold)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = run_benchmark(data, specs, n_splits=settings.n_splits, seed=settings.seed,
                                   progress=say if progress else None)
        table = _cortex_columns(result.table, data.X.shape[1], int(mask.sum()))

        # 3. The run folder (read by 'surfharm report'), renderings and the report.
        shown_maps = {name: np.where(mask, m, np.nan).astype(np.float32) for name, m in maps.items()}
        cohort = Cohort(shown_maps["raw"], data.table, hemi="lh", measure="thickness")
        config = {"demo": asdict(settings), "simulation": data.config.get("simulation"), "skipped": skipped,
                  "methods": [vars(s) | {"options": {k: v for k, v in s.options.items() if k != "progress"}}
                              for s in specs]}
        outputs.write_run_folder(out, cohort, shown_maps, metrics_table=table, config=config,
                                 title=RUN_TITLE, command=command)
        from surfharm._atomic import write_text_atomic
        from surfharm.evaluate.benchmark import to_markdown

        write_text_atomic(out / "benchmark.md", to_markdown(replace(result, table=table)))
        report = None
        if settings.render:
            say("rendering before/after maps and writing the report")
            _render_before_after(out, shown_maps, data.table)
        outputs.finish_run_folder(out)     # the report reads a complete run folder
        if settings.render:
            report = outputs.write_report(out, log_age=True, age_label="age (years)")
        target.commit()
    report = target.final(report)
    out = target.out
    return {"out": out, "report": report, "table": table, "skipped": skipped,
            "seconds": time.perf_counter() - start}



def _render_before_after(out: Path, maps: dict[str, np.ndarray], table: pd.DataFrame) -> list[Path]:
    """One traveling infant scanned on the changed scanner: raw vs each method, next to the same
    infant on the target scanner (what harmonization should reproduce)."""
    from surfharm.viz import plot_before_after

    (out / "renderings").mkdir(exist_ok=True)
    trav = table[table["traveling"].astype(bool)]
    subject = trav["subject"].iloc[0]
    source = int(trav.index[(trav["subject"] == subject) & (trav["site"] == CHANGED)][0])
    written = []
    for name, values in maps.items():
        if name == "raw":
            continue
        path = out / "renderings" / f"before_after_{name}.png"
        plotter = plot_before_after(maps["raw"][source], values[source], "inflated", hemi="lh",
                                    labels=(f"scanner {CHANGED}", name),
                                    title=f"{subject} (traveling infant) on scanner {CHANGED}: raw and {name}",
                                    screenshot=str(path))
        plotter.close()
        written.append(path)
    return written
