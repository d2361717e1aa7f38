"""The main job: read -> resample -> Cohort -> fit (or apply) -> write maps, model, metrics, report.

:func:`harmonize` fits a harmonizer on a study and writes everything; :func:`apply` harmonizes new
scans of known sites with a saved model; :func:`plan` lists what either would read and write
(``--dry-run``). What is read, and how harmonized data are written back, is the input's business
(:mod:`surfharm.pipeline.inputs`: one class per input kind); the run folders are described in
:mod:`surfharm.pipeline.outputs`. Surface maps and ROI tables run through one loop (a Cohort per
hemisphere or table); NIfTI scans (the volumetric methods) are fitted and written one volume at a
time, into run folders with the same guarantees.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surfharm.pipeline import models, outputs
from surfharm.pipeline.inputs import InputSource, SourceError, review_output


@dataclass
class RunResult:
    """What a run wrote, per cohort key (``lh``, ``rh``, ``roi``, ``volumes``)."""

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


def _write_harmonized(cohort, harmonized, folder: Path, spaces, source: InputSource, key: str,
                      method: str | None = None) -> list[Path]:
    """The user's files, in the input's format: per-scan maps (SUBJECTS_DIR), a stacked MGH + FSGD, an
    ROI table, or NIfTI volumes."""
    return source.write(cohort, harmonized, folder, spaces=spaces, method=method)


def _final_result(result: RunResult, target: outputs.RunTarget) -> RunResult:
    """The paths of ``result`` where they lie once the run is moved into place."""
    result.folders = {k: target.final(v) for k, v in result.folders.items()}
    result.models = {k: target.final(v) for k, v in result.models.items()}
    result.reports = {k: target.final(v) for k, v in result.reports.items()}
    result.maps = {k: [target.final(p) for p in v] for k, v in result.maps.items()}
    return result


def harmonize(source: InputSource, method: str, out, *, keep=None, smooth=(), reference_site: str | None = None,
              space: str = "ico", report: bool = True, overwrite: bool = False, progress: bool = True,
              command=None, clip_output: bool = False) -> RunResult:
    """Fit ``method`` on the scans of ``source`` and write harmonized maps, model, metrics and report.

    The run is written beside ``out`` and moved into place when complete (:class:`outputs.RunTarget`):
    ``out`` holds exactly this run, or, when the run fails or is stopped, what it held before.

    Parameters
    ----------
    source : InputSource
        what to read (an :class:`surfharm.pipeline.inputs.InputSource`).
    method : str
        ``NAME[:KEY=VALUE,...]`` (:func:`surfharm.pipeline.models.parse_method`).
    out
        output folder (created; refused when not empty unless ``overwrite``, which replaces the
        previous run as a whole; refused when an input lies inside it).
    keep
        covariate columns whose effects are preserved (default: age and sex when present; none
        for NIfTI scans).
    smooth
        covariates modelled by a spline (ComBat-GAM), e.g. ``["age"]`` for infants.
    reference_site : str or None
        harmonize to this site (ComBat's reference, S2SGAN's target).
    space : str
        per-scan maps in ``ico`` (fsaverageN) order, ``native`` order or ``both`` (SUBJECTS_DIR).
    report : bool
        write the HTML report of each run folder.
    clip_output : bool
        clip harmonized values outside the measure's plausible range into it (they are
        counted either way: metrics.csv column ``implausible_values``).
    """
    spaces = source.spaces(space)
    spec = models.parse_method(method, smooth=smooth, reference_site=reference_site, progress=progress)
    source.check_tables(keep=keep, smooth=smooth, method=method)  # before any map is read
    with outputs.RunTarget(out, overwrite=overwrite, inputs=source.guarded()) as target:
        cohorts = source.read(progress=progress)
        result = RunResult(out=target.out)
        for key, cohort in cohorts.items():
            if source.holds_volumes:
                _fit_volumes(spec, key, cohort, source, keep, target, result, progress=progress, command=command)
                continue
            kept = default_keep(cohort.table.columns, keep)
            _say(progress, f"{key}: {cohort!r}; fitting {spec.display} (keeping {', '.join(kept) or 'no covariates'})")
            harmonizer, harmonized = models.fit_and_transform(spec, cohort, kept)
            implausible = review_output(cohort, harmonized, source, clip=clip_output)
            folder = target.folder(key)
            maps = {"raw": np.asarray(cohort.maps), spec.name: harmonized}
            table = outputs.summary_metrics(cohort, maps, kept)
            _record_implausible(table, implausible, key, progress)
            options = {k: v for k, v in spec.options.items() if k != "progress"}
            fitted_on = outputs.describe_data(cohort, measure=source.measure)
            config = {"method": spec.name, "options": options, "keep": kept, "level": cohort.level,
                      "measure": source.measure, "hemi": cohort.hemi, "n_features": fitted_on["n_features"],
                      "input": source.name}
            outputs.write_run_folder(folder, cohort, maps, metrics_table=table, config=config,
                                     title=f"surfharm harmonize: {spec.name}, {key}", command=command)
            harmonizer.fitted_on_ = fitted_on
            result.models[key] = models.save_model(harmonizer, folder)
            result.maps[key] = _write_harmonized(cohort, harmonized, folder, spaces, source, key)
            outputs.finish_run_folder(folder)
            result.folders[key], result.metrics[key] = folder, table
            if report and cohort.feature_names is None:
                _say(progress, f"{key}: writing the report")
                result.reports[key] = outputs.write_report(folder)
        target.commit()
    return _final_result(result, target)


def apply(source: InputSource, model, out, *, space: str = "ico", report: bool = True, overwrite: bool = False,
          progress: bool = True, command=None, allow_mismatch: bool = False, clip_output: bool = False,
          adapt_new_sites: bool = False) -> RunResult:
    """Harmonize the scans of ``source`` (sites known to the model) with a saved model.

    Scans of sites the model has not seen are refused by name, unless ``adapt_new_sites``: the
    model (of a method that ``supports_adapt``) is then adapted to them from their own scans, held
    fixed otherwise, and the adapted model is written into the output run folder (never over
    ``model``).

    ``model``: a model file, or the output folder of :func:`harmonize` (its ``<key>/model.*`` is used
    for each hemisphere). The covariates kept at fit time are read from the ``config.json`` beside
    the model and must be columns of the new table. A model fitted on another hemisphere, measure or
    level is refused unless ``allow_mismatch``; a model in an incomplete run folder is refused.
    Outputs are written as by :func:`harmonize` (aside, then moved into place).
    """
    from surfharm.viz.run_folder import check_complete

    spaces = source.spaces(space)
    if not Path(model).exists():  # before reading any scan
        raise FileNotFoundError(f"model {model} does not exist; expected a model file (model.npz, "
                                "model.safetensors) or the output folder of 'surfharm harmonize'")
    source = with_model_contrasts(source, model, progress=progress)
    source.check_tables()  # before any map is read
    keys = source.keys()
    found = {key: models.find_model(model, key) for key in keys}
    inputs = source.guarded() + [("model", Path(model))]
    for path in found.values():
        check_complete(path.parent, what="the run folder of the model")
        inputs += [("model", path), ("model configuration", path.parent / "config.json")]
    with outputs.RunTarget(out, overwrite=overwrite, inputs=inputs) as target:
        cohorts = source.read(progress=progress)
        result = RunResult(out=target.out)
        for key, cohort in cohorts.items():
            path = found.get(key) or models.find_model(model, key)
            config_path = path.parent / "config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            if source.holds_volumes:
                _apply_volumes(path, config, key, cohort, source, target, result, progress=progress, command=command)
                continue
            fitted = {**outputs.read_fitted_on(path), **{k: config[k] for k in outputs.FITTED_ON_KEYS if k in config}}
            data = outputs.describe_data(cohort, measure=source.measure)
            differences = outputs.check_fitted_on(path, fitted, data, what=f"the {key} scans",
                                                  allow_mismatch=allow_mismatch)
            for difference in differences:
                _say(progress, f"{key}: warning: applying a model fitted on other data ({difference})")
            harmonizer = models.load_model(path)
            source.check_method(getattr(harmonizer, "registry_name", None))
            kept = config.get("keep") or _model_covariates(harmonizer)
            name = getattr(harmonizer, "registry_name", "model")
            _say(progress, f"{key}: {cohort!r}; applying {name} from {path}")
            adapted = _adapt_new_sites(harmonizer, cohort, kept, adapt_new_sites, key, progress)
            harmonized = models.transform(harmonizer, cohort, kept)
            implausible = review_output(cohort, harmonized, source, clip=clip_output)
            folder = target.folder(key)
            maps = {"raw": np.asarray(cohort.maps), name: harmonized}
            table = outputs.summary_metrics(cohort, maps, kept)
            _record_implausible(table, implausible, key, progress)
            outputs.write_run_folder(folder, cohort, maps, metrics_table=table,
                                     config={**config, "applied_model": str(Path(path).resolve()),
                                             "applied_to": data, "mismatch_allowed": differences,
                                             **({"adapted_sites": adapted} if adapted else {})},
                                     title=f"surfharm apply: {name}, {key}", command=command)
            if adapted:  # the adapted model goes with this run, beside its outputs
                path = models.save_model(harmonizer, folder)
            result.maps[key] = _write_harmonized(cohort, harmonized, folder, spaces, source, key)
            outputs.finish_run_folder(folder)
            result.folders[key], result.models[key], result.metrics[key] = folder, path, table
            if report and cohort.feature_names is None:
                result.reports[key] = outputs.write_report(folder)
        target.commit()
    return _final_result(result, target)


# -- NIfTI scans: fitted on the image list, written one volume at a time ----------------------------------------

def volume_side_data(harmonizer, volumes, keep) -> dict:
    """The side data a volumetric ``harmonizer`` takes: its masks, the subjects (paired methods) and the kept
    covariates; refuses covariates for a method that learns no covariate effect."""
    from surfharm import harmonize

    if keep and "covariates" not in harmonizer.side_data:
        raise SourceError(f"{harmonizer.registry_name} takes no covariates (it learns no covariate effect); "
                          f"keep none (covariates asked for: {list(keep)})")
    subjects = volumes.table["subject"].tolist() if "subject" in volumes.table.columns else None
    return harmonize.side_data_for(harmonizer, covariates=volumes.covariates(keep), masks=volumes.masks,
                                   subjects=subjects)


def fit_volumes(harmonizer, volumes, keep, *, control_mask=None) -> dict:
    """Fit a volumetric ``harmonizer`` on the scans of ``volumes`` (a :class:`~surfharm.pipeline.inputs.VolumeSet`);
    returns the side data to transform them with."""
    side = volume_side_data(harmonizer, volumes, keep)
    extra = {}
    if control_mask is not None:
        if "control_mask" not in harmonizer.fit_options:
            raise SourceError(f"--control-mask is a RAVEL option; {harmonizer.registry_name} takes none")
        extra["control_mask"] = str(control_mask)
    harmonizer.fit(volumes.images, sites=volumes.sites, **side, **extra)
    return side


def volume_spec(spec, source):
    """``spec`` with ``contrasts=`` the input's contrasts (sessions of several contrasts, ``--contrasts``);
    refuses a method option ``contrasts`` that names others."""
    from surfharm.evaluate.methods import MethodSpec

    contrasts = tuple(getattr(source, "contrasts", ()) or ())
    if not contrasts:
        return spec
    given = spec.options.get("contrasts")
    if given is not None and tuple([given] if isinstance(given, str) else given) != contrasts:
        raise SourceError(f"--method {spec.name}: option contrasts={given!r} differs from --contrasts "
                          f"{','.join(contrasts)}; give the contrasts once, with --contrasts")
    return MethodSpec(spec.name, spec.label, {**spec.options, "contrasts": contrasts}, dict(spec.column_kwargs))


def model_contrasts(model) -> tuple[str, ...]:
    """The contrasts of the sessions a volumetric model was fitted on: ``contrasts`` of the config.json beside
    it (a run of ``--contrasts``), else of the model file when it holds several; ``()`` for a model of
    one volume per scan (or no volumetric model)."""
    from surfharm.io.model_files import read_metadata

    try:
        path = models.find_model(model, "volumes")
    except FileNotFoundError:
        return ()
    config = path.parent / "config.json"
    if config.is_file():
        try:
            return tuple(json.loads(config.read_text()).get("contrasts") or ())
        except (OSError, ValueError):
            return ()
    try:
        contrasts = read_metadata(path).get("contrasts") or ()
    except (OSError, ValueError):
        return ()
    return tuple(contrasts) if len(contrasts) > 1 else ()


def with_model_contrasts(source: InputSource, model, *, progress: bool = False) -> InputSource:
    """A NIfTI input without contrasts, given the model's (:func:`model_contrasts`) when it was fitted on
    sessions of several contrasts; any other input as it is."""
    import dataclasses

    if not source.holds_volumes or getattr(source, "contrasts", ()):
        return source
    contrasts = model_contrasts(model)
    if not contrasts:
        return source
    _say(progress, f"contrasts of the model: {', '.join(contrasts)} (files <session>_<contrast>.nii[.gz])")
    return dataclasses.replace(source, contrasts=contrasts)


def _fit_volumes(spec, key, volumes, source, keep, target, result, *, progress, command) -> None:
    kept = list(keep or ())
    spec = volume_spec(spec, source)
    harmonizer = spec.build()
    _say(progress, f"{key}: {volumes!r}; fitting {spec.display} (keeping {', '.join(kept) or 'no covariates'})")
    side = fit_volumes(harmonizer, volumes, kept, control_mask=source.control_mask)
    folder = target.folder(key)
    options = {k: v for k, v in spec.options.items() if k != "progress"}
    config = {"method": spec.name, "options": options, "keep": kept, "n_scans": volumes.n_scans,
              "input": source.name, **({"contrasts": list(volumes.contrasts)} if volumes.contrasts else {})}
    outputs.write_volume_run_folder(folder, volumes.table, config=config,
                                    title=f"surfharm harmonize: {spec.name}, NIfTI scans", command=command)
    result.models[key] = models.save_model(harmonizer, folder)
    stream = harmonizer.transform_iter(volumes.images, sites=volumes.sites, **side)
    result.maps[key] = _write_harmonized(volumes, stream, folder, ("ico",), source, key, method=spec.name)
    outputs.finish_run_folder(folder)
    result.folders[key] = folder


def _apply_volumes(path, config, key, volumes, source, target, result, *, progress, command) -> None:
    harmonizer = models.load_model(path)
    source.check_method(getattr(harmonizer, "registry_name", None))
    name = getattr(harmonizer, "registry_name", "model")
    kept = list(config.get("keep") or ())
    _check_model_contrasts(harmonizer, volumes, path)
    _say(progress, f"{key}: {volumes!r}; applying {name} from {path}")
    side = volume_side_data(harmonizer, volumes, kept)
    folder = target.folder(key)
    contrasts = {"contrasts": list(volumes.contrasts)} if volumes.contrasts else {}
    outputs.write_volume_run_folder(folder, volumes.table,
                                    config={**config, "applied_model": str(Path(path).resolve()),
                                            "n_scans": volumes.n_scans, **contrasts},
                                    title=f"surfharm apply: {name}, NIfTI scans", command=command)
    stream = harmonizer.transform_iter(volumes.images, sites=volumes.sites, **side)
    result.maps[key] = _write_harmonized(volumes, stream, folder, ("ico",), source, key, method=name)
    outputs.finish_run_folder(folder)
    result.folders[key], result.models[key] = folder, path


def _check_model_contrasts(harmonizer, volumes, path) -> None:
    """Refuse sessions whose contrasts are not those the model was fitted on (either way, by name)."""
    fitted = tuple(getattr(harmonizer, "contrasts_", ()) or ())
    if volumes.contrasts and set(volumes.contrasts) != set(fitted):
        raise SourceError(f"--contrasts {','.join(volumes.contrasts)}: model {path} was fitted on contrasts "
                          f"{','.join(fitted)}; give its contrasts (or leave --contrasts out to use them)")
    if not volumes.contrasts and len(fitted) > 1:
        raise SourceError(f"model {path} takes sessions of contrasts {','.join(fitted)}: give --contrasts "
                          f"{','.join(fitted)} and files named <session>_<contrast>.nii[.gz]")


def _adapt_new_sites(harmonizer, cohort, kept, allowed: bool, key: str, progress: bool) -> list[str]:
    """Sites of the scans that the model has not seen: refused by name or, when ``allowed``, added to
    the model from their own scans (:meth:`~surfharm.harmonize.Harmonizer.adapt`). Returns them."""
    known = getattr(harmonizer, "sites_", None)
    if known is None:
        return []
    unknown = sorted({str(s) for s in cohort.sites} - {str(s) for s in known})
    if not unknown:
        return []
    name = getattr(harmonizer, "registry_name", "model")
    if not allowed:
        raise ValueError(f"{key}: site(s) {unknown} are not in the model (it was fitted on sites "
                         f"{[str(s) for s in known]}); pass --adapt-new-sites to estimate them from their own scans "
                         "with the model otherwise held fixed (the adapted model is written into the output folder), "
                         "or fit the model again including them")
    if not harmonizer.supports_adapt:
        raise ValueError(f"{key}: site(s) {unknown} are not in the model, and method {name!r} cannot adapt to a "
                         "new site; fit the model again including them")
    rows = np.flatnonzero(np.isin(np.asarray(cohort.sites).astype(str), unknown))
    side = {k: (v.iloc[rows].reset_index(drop=True) if hasattr(v, "iloc") else np.asarray(v)[rows])
            for k, v in models.side_data(harmonizer, cohort, kept).items()}
    harmonizer.adapt(np.asarray(cohort.maps[rows]), sites=np.asarray(cohort.sites)[rows], **side)
    _say(progress, f"{key}: adapted {name} to new site(s) {', '.join(unknown)} from their own {rows.size} scan(s)")
    return unknown


def _record_implausible(table, implausible: dict | None, key: str, progress: bool) -> None:
    """Values outside the measure's plausible range, per map set, as metrics.csv column ``implausible_values``;
    said on the terminal whenever the harmonized maps hold any."""
    if implausible is None:
        return
    table["implausible_values"] = [implausible["raw_values"]] + [implausible["values"]] * (len(table) - 1)
    if implausible["values"] or progress:
        print(f"{key}: {implausible['message']}", flush=True)


def _model_covariates(harmonizer) -> list[str]:
    """Covariate columns a fitted model needs when no config.json says (ComBat's encoder, S2SGAN's conditions)."""
    encoder = getattr(harmonizer, "encoder_", None)
    if encoder is not None:
        return list(encoder.columns)
    return list(getattr(harmonizer, "condition_on", ()) or ())


def plan(source: InputSource, out, *, method: str | None = None, model=None, space: str = "ico") -> str:
    """The files a run would read (with MISSING marks) and the outputs it would write, as text."""
    reads = source.files()
    missing = [p for _, p in reads if not p.exists()]
    lines = [f"would read {len(reads)} file(s):"]
    lines += [f"  {what:16s} {path}{'   MISSING' if not path.exists() else ''}" for what, path in reads]
    if model is not None:
        lines.append(f"  {'model':16s} {model}{'   MISSING' if not Path(model).exists() else ''}")
    spaces = source.spaces(space)
    out = Path(out)
    lines.append(f"would write into {out}{' (exists)' if out.exists() else ''}:")
    for key in source.keys():
        if source.holds_volumes:
            lines.append(f"  {out / key}/  table.csv, config.json, run.json{', model file' if method else ''}")
        else:
            lines.append(f"  {out / key}/  table.csv, maps/raw.npy, maps/<method>.npy, metrics.csv, config.json, "
                         f"run.json{', model file' if method else ''}{', report.html' if key != 'roi' else ''}")
        lines += source.output_lines(out, key, spaces)
    if method:
        lines.append(f"method: {method}")
    if missing:
        lines.append(f"{len(missing)} input file(s) are MISSING: the run would stop at the first one")
    return "\n".join(lines)
