"""Harmonization metrics and the benchmark runner.

* :mod:`surfharm.evaluate.metrics`: site effect left, biology kept, traveling-subject agreement
  (MAE, PSNR, Pearson r, SSIM on the sphere, ICC);
* :mod:`surfharm.evaluate.crossval`: leakage-safe cross-validation (harmonizer refit in each fold);
* :mod:`surfharm.evaluate.rois`: Desikan-Killiany ROI summaries of icosahedral maps;
* :mod:`surfharm.evaluate.image_metrics` and :mod:`surfharm.evaluate.volumetric_scenario`: the
  metrics of 3-D images and the ``volumetric`` scenario;
* :mod:`surfharm.evaluate.scenarios`: where benchmark data comes from (registry);
* :mod:`surfharm.evaluate.benchmark`: the runner behind ``surfharm benchmark``.

>>> from surfharm.evaluate import run_scenario
>>> result = run_scenario("quick")                     # doctest: +SKIP
>>> result.table[["method", "site_auroc", "age_r2_ratio"]]  # doctest: +SKIP
"""
import importlib

# Names re-exported lazily (PEP 562), so that importing a submodule such as
# ``surfharm.evaluate.rois`` does not import the whole runner.
_EXPORTS = {
    "BenchmarkResult": "benchmark", "run_benchmark": "benchmark", "run_scenario": "benchmark",
    "to_markdown": "benchmark", "write_results": "benchmark",
    "MethodSpec": "methods", "default_methods": "methods",
    "BenchmarkData": "scenarios", "available_scenarios": "scenarios", "register_scenario": "scenarios",
    "cohort_data": "scenarios", "roi_table_data": "scenarios",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"surfharm.evaluate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'surfharm.evaluate' has no attribute {name!r}")
