"""The benchmark runner and ``surfharm benchmark``: quality bars on the default scenario, outputs, CLI."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest

from surfharm import harmonize
from surfharm.cli import benchmark as cli_benchmark
from surfharm.evaluate.benchmark import (TARGET_TRUTH_LABEL, TRUTH_LABEL, read_config, run_benchmark, run_config,
                                        write_results)
from surfharm.evaluate.methods import MethodSpec
from surfharm.evaluate.scenarios import available_scenarios, get_scenario, roi_table_data, simulated_data
from surfharm.simulate import preset

needs_combat = pytest.mark.skipif("combat" not in harmonize.available(), reason="ComBat is not registered")


@pytest.fixture(scope="module")
def default_result():
    """The default scenario ("adult": additive + multiplicative effects), made small and fast."""
    data = simulated_data(preset("adult", level=4, n_per_site=30, n_traveling=4), name="adult")
    methods = [MethodSpec("raw"), MethodSpec("mean-shift")]
    if "combat" in harmonize.available():
        methods.append(MethodSpec("combat"))
    return run_benchmark(data, methods, n_splits=3, seed=0)


def row(result, method):
    return result.table.set_index("method").loc[method]


def test_raw_data_shows_a_clear_site_effect(default_result):
    assert row(default_result, "raw")["site_auroc"] >= 0.9
    assert row(default_result, "raw")["frac_sig_anova"] > 0.5


@needs_combat
def test_combat_removes_site_and_keeps_age(default_result):
    combat, truth = row(default_result, "combat"), row(default_result, TRUTH_LABEL)
    assert combat["site_auroc"] <= 0.6
    assert abs(combat["age_r2"] / truth["age_r2"] - 1.0) <= 0.10
    assert combat["frac_sig_anova"] < 0.05


def test_truth_row_has_no_site_effect(default_result):
    truth = row(default_result, TRUTH_LABEL)
    assert truth["site_auroc"] < 0.7 and truth["frac_sig_anova"] < 0.05
    assert truth["age_r2_ratio"] == pytest.approx(1.0)


def test_truth_at_the_target_site_is_scored_and_used_as_a_second_yardstick(default_result):
    at_target = row(default_result, TARGET_TRUTH_LABEL)
    assert at_target["site_auroc"] < 0.7 and at_target["frac_sig_anova"] < 0.05
    assert at_target["age_r2_ratio_target"] == pytest.approx(1.0)
    raw = row(default_result, "raw")
    assert raw["age_r2_ratio_target"] == pytest.approx(raw["age_r2"] / at_target["age_r2"])


def test_harmonization_brings_traveling_subjects_together(default_result):
    raw, shifted = row(default_result, "raw"), row(default_result, "mean-shift")
    assert shifted["tr_mae_target"] < raw["tr_mae_target"]
    assert shifted["tr_psnr_target"] > raw["tr_psnr_target"]
    assert 0 < raw["tr_ssim_target"] <= 1
    assert shifted["tr_icc"] > raw["tr_icc"]


def test_write_results(default_result, tmp_path):
    paths = write_results(default_result, tmp_path / "out")
    table = pd.read_csv(paths["csv"])
    assert list(table["method"])[:3] == [TRUTH_LABEL, TARGET_TRUTH_LABEL, "raw"]
    text = paths["markdown"].read_text()
    assert "| raw |" in text and "site_auroc" in text
    assert json.loads(paths["config"].read_text())["n_splits"] == 3
    for name in ("metrics", "site_distributions"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Broken(harmonize.Harmonizer):
    def fit(self, X, sites, covariates=None, **kwargs):
        raise ValueError("cannot fit this")

    def transform(self, X, sites, covariates=None, **kwargs):
        return X


def test_failing_method_is_reported_and_others_run(monkeypatch):
    monkeypatch.setitem(harmonize.base._REGISTRY, "broken", _Broken)
    data = simulated_data(preset("quick", level=3, n_per_site=10, n_traveling=0))
    result = run_benchmark(data, [MethodSpec("broken"), MethodSpec("raw")], n_splits=2)
    table = result.table.set_index("method")
    assert "cannot fit this" in table.loc["broken", "error"]
    assert np.isfinite(table.loc["raw", "site_auroc"])


def test_repeated_cross_validation_averages_the_splits():
    data = simulated_data(preset("quick", level=3, n_per_site=10, n_traveling=0), name="quick")
    methods = [MethodSpec("raw"), MethodSpec("mean-shift")]
    one = [run_benchmark(data, methods, n_splits=2, seed=s).table.set_index("method") for s in (4, 5)]
    both = run_benchmark(data, methods, n_splits=2, seed=4, cv_repeats=2).table.set_index("method")
    for method in ("mean-shift", TRUTH_LABEL):
        mean = (one[0].loc[method, "site_auroc"] + one[1].loc[method, "site_auroc"]) / 2
        assert both.loc[method, "site_auroc"] == pytest.approx(mean)
        spread = abs(one[0].loc[method, "site_auroc"] - one[1].loc[method, "site_auroc"]) / np.sqrt(2)
        assert both.loc[method, "site_auroc_sd"] == pytest.approx(spread)
    with pytest.raises(ValueError, match="cv_repeats must be >= 1"):
        run_benchmark(data, methods, n_splits=2, cv_repeats=0)


def test_duplicate_labels_refused():
    data = simulated_data(preset("quick", level=3, n_per_site=10, n_traveling=0))
    with pytest.raises(ValueError, match="unique"):
        run_benchmark(data, [MethodSpec("raw"), MethodSpec("raw")], n_splits=2)


def test_scenario_registry():
    names = available_scenarios()
    assert {"adult", "quick", "infant", "roi-table", "volumetric"} <= set(names)
    with pytest.raises(KeyError, match="available"):
        get_scenario("nope")


def _roi_csv(path, n_sites=3, n=24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sites):
        for i in range(n):
            age = rng.uniform(20, 70)
            values = 2.5 - 0.005 * age + 0.1 * s + 0.05 * rng.standard_normal(6)
            rows.append({"dataset": f"ds{s}", "subject": f"sub-{i}", "age": age, "sex": "F" if i % 2 else "M",
                         **{f"lh_r{k}_thickness": v for k, v in enumerate(values)}, "lh_r0_area": 1000.0})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_roi_table_benchmark(tmp_path):
    data = roi_table_data(_roi_csv(tmp_path / "rois.csv"), site_column="dataset")
    assert data.X.shape == (72, 6) and data.truth is None
    assert data.table["subject"].is_unique  # ids repeat across datasets: made unique
    result = run_benchmark(data, [MethodSpec("raw"), MethodSpec("mean-shift")], n_splits=3)
    table = result.table.set_index("method")
    assert table.loc["raw", "site_auroc"] > 0.9 and table.loc["mean-shift", "site_auroc"] < 0.8
    assert "tr_mae_target" not in table.columns


def test_roi_table_errors_name_the_column(tmp_path):
    path = _roi_csv(tmp_path / "rois.csv")
    with pytest.raises(ValueError, match="no column 'site'"):
        roi_table_data(path)
    with pytest.raises(ValueError, match="_volume"):
        roi_table_data(path, site_column="dataset", feature_suffix="_volume")


def test_config_file(tmp_path):
    config = {"simulation": preset("quick", level=3, n_per_site=8, n_traveling=2).to_dict(),
              "methods": ["raw", "ms=mean-shift"], "n_splits": 2}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config))
    result = run_config(read_config(path))
    assert list(result.table["method"]) == [TRUTH_LABEL, TARGET_TRUTH_LABEL, "raw", "ms"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenario": "quick", "folds": 3}))
    with pytest.raises(ValueError, match="unknown key"):
        read_config(bad)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="surfharm")
    cli_benchmark.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_runs_a_preset_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    code = _cli(["benchmark", "--preset", "quick", "--level", "3", "--n-per-site", "8", "--folds", "2",
                 "--methods", "raw", "mean-std", "--out", str(out), "--quiet", "--no-plots"])
    assert code == 0
    assert (out / "results.csv").exists() and (out / "results.md").exists()
    assert "| mean-std |" in capsys.readouterr().out


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        _cli(["benchmark", "--help"])
    assert "surfharm benchmark --preset quick" in capsys.readouterr().out


def test_runner_scenario_plugs_in(tmp_path, monkeypatch):
    from surfharm.evaluate import scenarios
    from surfharm.evaluate.benchmark import run_scenario

    calls = {}

    def run(methods, seed=0, **params):
        calls.update(methods=[m.name for m in methods], seed=seed, **params)
        return pd.DataFrame({"method": ["none", "zscore"], "ssim": [0.4, 0.9]})

    monkeypatch.setitem(scenarios._SCENARIOS, "toy-volumes", scenarios.Scenario("toy-volumes", "toy", run=run))
    result = run_scenario("toy-volumes", [MethodSpec("zscore")], seed=3, n_sites=2)
    assert calls == {"methods": ["zscore"], "seed": 3, "n_sites": 2}
    paths = write_results(result, tmp_path)
    assert "| zscore | 0.900 |" in paths["markdown"].read_text()


def test_a_users_cohort_is_benchmarked():
    from surfharm.evaluate.scenarios import cohort_data
    from surfharm.simulate import simulate_cohort

    sim = simulate_cohort(preset("quick", level=3, n_per_site=10, n_traveling=0))
    cohort = sim.to_cohort()
    cohort.table = cohort.table.drop(columns="female")  # derived again from "sex"
    data = cohort_data(cohort)
    assert data.table["female"].isin([0, 1]).all() and data.faces is not None
    result = run_benchmark(data, [MethodSpec("raw"), MethodSpec("mean-shift")], n_splits=2)
    assert list(result.table["method"]) == ["raw", "mean-shift"]
    assert result.table.set_index("method").loc["raw", "site_auroc"] > 0.9
