"""The main job: read -> resample -> Cohort -> fit (or apply) -> write maps, model, metrics, report.

:func:`harmonize` fits a harmonizer on a study and writes everything; :func:`apply` harmonizes new
scans of known sites with a saved model; :func:`plan` lists what either would read and write
(``--dry-run``). Outputs are described in :mod:`surfharm.pipeline.outputs`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surfharm.pipeline import models, outputs
from surfharm.pipeline.inputs import Source, planned_reads, read_cohorts


@dataclass
class RunResult:
    """What a run wrote, per cohort key (``lh``, ``rh``, ``roi``)."""

    out: Path
    folders: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    maps: dict[str, list[Path]] = field(default_factory=dict)
    metrics: dict[str, object] = field(default_factory=dict)


def default_keep(table_columns, keep) -> list[str]:
    """Covariates to preserve: ``keep`` when given, else ``age`` and ``sex`` when the table has them."""
    if keep is not None:
        return list(keep)
    return [c for c in ("age", "sex") if c in table_columns]


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


def _spaces(source: Source, space: str) -> tuple[str, ...]:
    if space == "both":
        return ("ico", "native")
    if space == "native" and (source.kind != "subjects_dir" or source.fwhm is not None):
        raise ValueError("--space native needs native inputs (SUBJECTS_DIR without --fwhm): only they have a "
                         "sphere.reg to resample back through")
    return (space,)


def _write_harmonized(cohort, harmonized, folder: Path, spaces, source: Source, key: str) -> list[Path]:
    """The user's files: per-scan maps (SUBJECTS_DIR), a stacked MGH + FSGD, or an ROI table."""
    if source.kind == "roi_table":
        return cohort.with_maps(harmonized).write(folder / f"{Path(source.roi_table).name.split('.')[0]}.harmonized.csv",
                                                  overwrite=True)
    if source.kind == "stacked_mgh":
        stem = ".".join(p for p in (cohort.hemi, cohort.measure, "harmonized") if p)
        return cohort.with_maps(harmonized).write(folder / f"{stem}.mgh", fsgd=folder / "harmonized.fsgd",
                                                  overwrite=True)
    native = "native" in spaces and cohort.sources is not None and cohort.sources["sphere"].notna().all()
    chosen = tuple(s for s in spaces if s != "native" or native)
    return outputs.write_subject_maps(cohort, harmonized, folder, spaces=chosen)


def harmonize(source: Source, method: str, out, *, keep=None, smooth=(), reference_site: str | None = None,
              space: str = "ico", report: bool = True, overwrite: bool = False, progress: bool = True,
              command=None) -> RunResult:
    """Fit ``method`` on the scans of ``source`` and write harmonized maps, model, metrics and report.

    Args:
        source: what to read (:class:`surfharm.pipeline.Source`).
        method: ``NAME[:KEY=VALUE,...]`` (:func:`surfharm.pipeline.models.parse_method`).
        out: output folder (created; refused when not empty unless ``overwrite``).
        keep: covariate columns whose effects are preserved (default: age and sex when present).
        smooth: covariates modelled by a spline (ComBat-GAM), e.g. ``["age"]`` for infants.
        reference_site: harmonize to this site (ComBat's reference, S2SGAN's target).
        space: per-scan maps in ``ico`` (fsaverageN) order, ``native`` order or ``both`` (SUBJECTS_DIR).
        report: write the HTML report of each run folder.
    """
    spaces = _spaces(source, space)
    out = outputs.prepare_folder(out, overwrite=overwrite)
    spec = models.parse_method(method, smooth=smooth, reference_site=reference_site, progress=progress)
    cohorts = read_cohorts(source, progress=progress)
    result = RunResult(out=out)
    for key, cohort in cohorts.items():
        kept = default_keep(cohort.table.columns, keep)
        _say(progress, f"{key}: {cohort!r}; fitting {spec.display} (keeping {', '.join(kept) or 'no covariates'})")
        harmonizer, harmonized = models.fit_and_transform(spec, cohort, kept)
        folder = out / key
        maps = {"raw": np.asarray(cohort.maps), spec.name: harmonized}
        table = outputs.summary_metrics(cohort, maps, kept)
        options = {k: v for k, v in spec.options.items() if k != "progress"}
        config = {"method": spec.name, "options": options, "keep": kept, "level": cohort.level,
                  "measure": cohort.measure, "hemi": cohort.hemi, "input": source.kind}
        outputs.write_run_folder(folder, cohort, maps, metrics_table=table, config=config,
                                 title=f"surfharm harmonize: {spec.name}, {key}", command=command)
        result.models[key] = models.save_model(harmonizer, folder)
        result.maps[key] = _write_harmonized(cohort, harmonized, folder, spaces, source, key)
        result.folders[key], result.metrics[key] = folder, table
        if report and cohort.feature_names is None:
            _say(progress, f"{key}: writing the report")
            result.reports[key] = outputs.write_report(folder)
    return result


def apply(source: Source, model, out, *, space: str = "ico", report: bool = True, overwrite: bool = False,
          progress: bool = True, command=None) -> RunResult:
    """Harmonize the scans of ``source`` (sites known to the model) with a saved model.

    ``model``: a model file, or the output folder of :func:`harmonize` (its ``<key>/model.*`` is used
    for each hemisphere). The covariates kept at fit time are read from the ``config.json`` beside
    the model and must be columns of the new table.
    """
    spaces = _spaces(source, space)
    if not Path(model).exists():  # before reading any scan
        raise FileNotFoundError(f"model {model} does not exist; expected a model file (model.npz, "
                                "model.safetensors) or the output folder of 'surfharm harmonize'")
    out = outputs.prepare_folder(out, overwrite=overwrite)
    cohorts = read_cohorts(source, progress=progress)
    result = RunResult(out=out)
    for key, cohort in cohorts.items():
        path = models.find_model(model, key)
        harmonizer = models.load_model(path)
        config_path = path.parent / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        kept = config.get("keep") or _model_covariates(harmonizer)
        name = getattr(harmonizer, "registry_name", "model")
        _say(progress, f"{key}: {cohort!r}; applying {name} from {path}")
        harmonized = models.transform(harmonizer, cohort, kept)
        folder = out / key
        maps = {"raw": np.asarray(cohort.maps), name: harmonized}
        table = outputs.summary_metrics(cohort, maps, kept)
        outputs.write_run_folder(folder, cohort, maps, metrics_table=table,
                                 config={**config, "applied_model": str(path)},
                                 title=f"surfharm apply: {name}, {key}", command=command)
        result.maps[key] = _write_harmonized(cohort, harmonized, folder, spaces, source, key)
        result.folders[key], result.models[key], result.metrics[key] = folder, path, table
        if report and cohort.feature_names is None:
            result.reports[key] = outputs.write_report(folder)
    return result


def _model_covariates(harmonizer) -> list[str]:
    """Covariate columns a fitted model needs when no config.json says (ComBat's encoder, S2SGAN's conditions)."""
    encoder = getattr(harmonizer, "encoder_", None)
    if encoder is not None:
        return list(encoder.columns)
    return list(getattr(harmonizer, "condition_on", ()) or ())


def plan(source: Source, out, *, method: str | None = None, model=None, space: str = "ico") -> str:
    """The files a run would read (with MISSING marks) and the outputs it would write, as text."""
    reads = planned_reads(source)
    missing = [p for _, p in reads if not p.exists()]
    lines = [f"would read {len(reads)} file(s):"]
    lines += [f"  {what:16s} {path}{'   MISSING' if not path.exists() else ''}" for what, path in reads]
    if model is not None:
        lines.append(f"  {'model':16s} {model}{'   MISSING' if not Path(model).exists() else ''}")
    keys = (["roi"] if source.kind == "roi_table" else
            list(source.hemis) if source.kind == "subjects_dir" else
            [_mgh_key(p) for p in source.mgh])
    out = Path(out)
    lines.append(f"would write into {out}{' (exists)' if out.exists() else ''}:")
    for key in keys:
        lines.append(f"  {out / key}/  table.csv, maps/raw.npy, maps/<method>.npy, metrics.csv, config.json, "
                     f"run.json{', model file' if method else ''}{', report.html' if key != 'roi' else ''}")
        if source.kind == "subjects_dir":
            for s in _spaces(source, space):
                tree = "native" if s == "native" else ("fsaverage" if source.level == 7 else f"fsaverage{source.level}")
                lines.append(f"  {out / key / tree}/<scan>/surf/{key}.{source.measure}.harmonized"
                             f"{'' if s == 'native' else '.' + tree + '.mgz'}  (one per scan) + cohort.tsv")
        elif source.kind == "stacked_mgh":
            lines.append(f"  {out / key}/{key}.{source.measure}.harmonized.mgh + harmonized.fsgd")
        else:
            lines.append(f"  {out / key}/<table>.harmonized.csv")
    if method:
        lines.append(f"method: {method}")
    if missing:
        lines.append(f"{len(missing)} input file(s) are MISSING: the run would stop at the first one")
    return "\n".join(lines)


def _mgh_key(path) -> str:
    from surfharm.io import hemi_of

    return hemi_of(path) or "maps"
