"""``surfharm demo`` in a configuration smaller than --quick (level 3, a few infants, 1 S2SGAN step)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm import cli
from surfharm.pipeline import demo
from surfharm.viz import read_run

TINY = ["--quick", "--level", "3", "--n-subjects", "12", "--n-traveling", "2", "--s2sgan-steps", "1"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "surfharm-demo"
    code = cli.main(["demo", *TINY, "--out", str(out), "--quiet"])
    return code, out


@pytest.mark.slow
def test_demo_writes_the_documented_folder(demo_run):
    code, out = demo_run
    assert code == 0
    for name in ("report.html", "benchmark.md", "metrics.csv", "table.csv", "maps/raw.npy", "maps/combat.npy",
                 "maps/s2sgan.npy", "models/combat.npz", "models/s2sgan.safetensors",
                 "renderings/before_after_combat.png", "renderings/before_after_s2sgan.png"):
        assert (out / name).is_file(), name
    run = read_run(out)  # what 'surfharm report' reads
    assert set(run.after) == {"combat", "s2sgan"} and run.before.shape == (len(run.table), 642)
    assert set(run.table["site"]) == {"A", "A2"}
    # the medial wall is NaN again in the written maps
    assert np.isnan(run.before).any(axis=0).sum() == np.isnan(run.after["combat"]).any(axis=0).sum() > 0


@pytest.mark.slow
def test_demo_table_shows_the_site_effect_removed_by_combat(demo_run):
    _, out = demo_run
    table = pd.read_csv(out / "metrics.csv").set_index("method")
    assert {"raw", "combat", "s2sgan"} <= set(table.index)
    assert table.loc["combat", "site_auroc"] < table.loc["raw", "site_auroc"]
    assert table.loc["combat", "tr_mae_target_cortex"] < table.loc["raw", "tr_mae_target_cortex"]
    # cortex-only MAE is the all-vertex MAE scaled by V / V_cortex (medial wall error 0 in both maps)
    assert (table["tr_mae_target_cortex"] > table["tr_mae_target"]).loc[["raw", "combat"]].all()


def test_demo_refuses_a_non_empty_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own file")
    code = cli.main(["demo", *TINY, "--out", str(out), "--quiet", "--no-s2sgan"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_demo_run_again_replaces_its_own_previous_output(demo_run, capsys):
    _, out = demo_run
    before = (out / "metrics.csv").stat().st_mtime_ns
    code = cli.main(["demo", *TINY, "--out", str(out), "--quiet", "--no-s2sgan", "--no-render"])
    assert code == 0
    assert "replacing the previous demo run" in capsys.readouterr().out
    assert (out / "metrics.csv").stat().st_mtime_ns > before


@pytest.mark.slow
def test_demo_goes_on_when_s2sgan_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "s2sgan_unavailable", lambda: "ImportError: no torch here")
    settings = demo.DemoSettings(level=3, n_subjects=12, n_traveling=2, n_splits=2, s2sgan_steps=1, render=False)
    result = demo.run_demo(tmp_path / "out", settings, progress=False)
    assert result["skipped"] == {"s2sgan": "ImportError: no torch here"}
    assert list(result["table"]["method"])[-1] == "combat"
    assert not (Path(result["out"]) / "maps" / "s2sgan.npy").exists()


def test_demo_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "surfharm demo --quick" in text and "--n-subjects" not in text
