"""Every script of examples/ runs in --quick mode and writes what it says (run in-process: no new interpreter)."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow  # every test runs an example script


def run_example(name: str, out: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, "--quick", "--out", str(out)])
    monkeypatch.syspath_prepend(str(EXAMPLES))
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_combat_roi_table(tmp_path, monkeypatch, capsys):
    run_example("combat_roi_table.py", tmp_path, monkeypatch)
    printed = capsys.readouterr().out
    harmonized = pd.read_csv(tmp_path / "new_subjects.harmonized.csv")
    assert (tmp_path / "combat_dk.npz").is_file() and "lh_bankssts_thickness" in harmonized.columns
    raw_eta, combat_eta = [float(line.split("eta^2 ")[1].split(",")[0]) for line in printed.splitlines()
                           if "held-out scans" in line]
    assert combat_eta < raw_eta


def test_s2sgan_demo_cohort(tmp_path, monkeypatch, capsys):
    run_example("s2sgan_demo_cohort.py", tmp_path, monkeypatch)
    assert (tmp_path / "s2sgan_A2_to_A.safetensors").is_file() and (tmp_path / "s2sgan_A2_to_A.json").is_file()
    assert "s2sgan  traveling infants" in capsys.readouterr().out


def test_render_maps(tmp_path, monkeypatch):
    pytest.importorskip("pyvista")
    run_example("render_maps.py", tmp_path, monkeypatch)
    for name in ("one_scan.png", "site_effects.png", "before_after.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name


def test_infant_longitudinal(tmp_path, monkeypatch, capsys):
    run_example("infant_longitudinal.py", tmp_path, monkeypatch)
    text = (tmp_path / "infant_benchmark.md").read_text()
    assert "longitudinal combat" in text and "combat (smooth log-age)" in text
    assert np.isfinite([float(x) for x in capsys.readouterr().out.split("raw", 1)[1].split()[:2]]).all()


def test_sklearn_pipeline(tmp_path, monkeypatch, capsys):
    import sklearn

    with sklearn.config_context():                  # the example turns metadata routing on for itself
        run_example("sklearn_pipeline.py", tmp_path, monkeypatch)
    result = pd.read_csv(tmp_path / "cross_validation.csv").set_index(["question", "pipeline"])["mean"]
    site = result.loc["site AUROC (one-vs-rest)"]
    assert site["raw"] > 0.9 and site["ComBat in each fold"] < site["raw"] - 0.2
