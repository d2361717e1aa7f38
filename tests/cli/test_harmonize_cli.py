"""``surfharm harmonize`` / ``surfharm apply`` end to end through the CLI, on a fake SUBJECTS_DIR.

The SUBJECTS_DIR is built from the real fs-subject1 thickness map (tests/data/fs_subject1) copied
into several subject folders with a known per-site shift, and simulated ``lh.sphere.reg`` files
(quasi-uniform spheres with the subject's vertex count, rotated per subject). The test checks what a
user checks: files in the documented places, site differences gone, the model reusable by ``apply``,
inputs untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm import cli
from surfharm import io as sio

DATA = Path(__file__).parents[1] / "data" / "fs_subject1"
SITE_SHIFT_MM = {"siteA": 0.0, "siteB": 0.4}


@pytest.fixture(scope="module")
def subjects_dir(tmp_path_factory, sphere_reg):
    """8 scans (4 per site) of the real thickness map with noise, a site shift and an age effect."""
    root = tmp_path_factory.mktemp("subjects")
    thickness = sio.read_map(DATA / "lh.thickness").astype(np.float32)
    sphere = sphere_reg(thickness.shape[0], seed=0)  # one sphere shared: the hull is the slow part
    rng = np.random.default_rng(0)
    rows = []
    for k in range(8):
        site = "siteA" if k % 2 == 0 else "siteB"
        age = 20.0 + 5 * k
        surf = root / f"sub-{k:02d}" / "surf"
        surf.mkdir(parents=True)
        sio.write_surface(surf / "lh.sphere.reg", sphere)
        values = thickness + SITE_SHIFT_MM[site] - 0.005 * (age - 40) + rng.normal(0, 0.05, thickness.shape)
        sio.write_map(surf / "lh.thickness", np.clip(values, 0, None).astype(np.float32))  # thickness is >= 0
        rows.append({"subject": f"sub-{k:02d}", "site": site, "age": age, "sex": "F" if k % 4 < 2 else "M"})
    participants = root / "participants.tsv"
    pd.DataFrame(rows).to_csv(participants, sep="\t", index=False)
    return root, participants


def test_harmonize_subjects_dir_end_to_end_then_apply(subjects_dir, tmp_path, capsys, digests):
    root, participants = subjects_dir
    before = digests(root)
    out = tmp_path / "run"
    code = cli.main(["harmonize", "--subjects-dir", str(root), "--participants", str(participants),
                     "--method", "combat", "--hemi", "lh", "--level", "4", "--space", "both",
                     "--out", str(out), "--quiet", "--no-report"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"everything is in {out}" in printed

    run = out / "lh"
    for name in ("table.csv", "maps/raw.npy", "maps/combat.npy", "metrics.csv", "model.npz", "config.json", "run.json"):
        assert (run / name).is_file(), name
    ico = run / "fsaverage4" / "sub-03" / "surf" / "lh.thickness.harmonized.fsaverage4.mgz"
    native = run / "native" / "sub-03" / "surf" / "lh.thickness.harmonized"
    assert sio.read_map(ico).shape == (2562,)
    assert sio.read_map(native).shape == (149244,)
    assert digests(root) == before  # inputs untouched

    raw, harmonized = np.load(run / "maps" / "raw.npy"), np.load(run / "maps" / "combat.npy")
    table = pd.read_csv(run / "table.csv")
    site_b = (table["site"] == "siteB").to_numpy()
    gap_raw = np.nanmean(raw[site_b]) - np.nanmean(raw[~site_b])
    gap_after = np.nanmean(harmonized[site_b]) - np.nanmean(harmonized[~site_b])
    assert gap_raw == pytest.approx(0.4, abs=0.05)   # the shift the fixture put in survives resampling
    assert abs(gap_after) < 0.05                      # and ComBat removes it
    metrics = pd.read_csv(run / "metrics.csv").set_index("method")
    assert metrics.loc["combat", "frac_sig_anova"] < metrics.loc["raw", "frac_sig_anova"]
    assert json.loads((run / "config.json").read_text())["keep"] == ["age", "sex"]

    # apply the saved model to two of the scans, as new subjects of known sites
    new = tmp_path / "new.tsv"
    pd.read_csv(participants, sep="\t").iloc[[2, 3]].to_csv(new, sep="\t", index=False)
    code = cli.main(["apply", "--model", str(out), "--subjects-dir", str(root), "--participants", str(new),
                     "--out", str(tmp_path / "applied"), "--quiet", "--no-report"])
    assert code == 0
    applied = np.load(tmp_path / "applied" / "lh" / "maps" / "combat.npy")
    np.testing.assert_allclose(applied, harmonized[[2, 3]], atol=1e-4)


def test_dry_run_lists_files_and_writes_nothing(subjects_dir, tmp_path, capsys):
    root, participants = subjects_dir
    out = tmp_path / "never"
    code = cli.main(["harmonize", "--subjects-dir", str(root), "--participants", str(participants),
                     "--hemi", "lh", "rh", "--out", str(out), "--dry-run"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(root / "sub-05" / "surf" / "lh.sphere.reg") in printed
    assert f"{root / 'sub-05' / 'surf' / 'rh.thickness'}   MISSING" in printed
    assert not out.exists()


def test_missing_subject_folder_is_named(subjects_dir, tmp_path, capsys):
    root, participants = subjects_dir
    table = pd.read_csv(participants, sep="\t")
    table.loc[len(table)] = {"subject": "sub-99", "site": "siteA", "age": 30.0, "sex": "F"}
    bad = tmp_path / "participants.tsv"
    table.to_csv(bad, sep="\t", index=False)
    code = cli.main(["harmonize", "--subjects-dir", str(root), "--participants", str(bad), "--out",
                     str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "sub-99" in capsys.readouterr().err


def test_non_empty_output_folder_is_refused(subjects_dir, tmp_path, capsys):
    root, participants = subjects_dir
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = cli.main(["harmonize", "--subjects-dir", str(root), "--participants", str(participants),
                     "--out", str(out), "--quiet"])
    assert code == 2
    assert "not empty" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_stacked_mgh_and_fsgd(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n, v = 10, 642
    sites = np.array(["A", "B"] * (n // 2))
    maps = 2.5 + 0.3 * (sites == "B")[:, None] + rng.normal(0, 0.1, (n, v))
    mgh = sio.write_map(tmp_path / "lh.thickness.fsaverage3.mgh", maps.astype(np.float32))
    fsgd = tmp_path / "study.fsgd"
    lines = ["GroupDescriptorFile 1", "Class A", "Class B", "Variables age"]
    lines += [f"Input s{i:02d} {s} {30 + i}" for i, s in enumerate(sites)]
    fsgd.write_text("\n".join(lines) + "\n")
    out = tmp_path / "stack"
    code = cli.main(["harmonize", "--mgh", str(mgh), "--fsgd", str(fsgd), "--keep", "age", "--out", str(out),
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    stacked = sio.read_maps(out / "lh" / "lh.thickness.harmonized.mgh")
    assert stacked.shape == (n, v)
    gap = stacked[sites == "B"].mean() - stacked[sites == "A"].mean()
    assert abs(gap) < 0.05 and (out / "lh" / "harmonized.fsgd").is_file()
    report = (out / "lh" / "report.html").read_text()
    assert "<img" in report and "combat" in report


def test_roi_table(tmp_path, capsys):
    table = pd.read_csv(Path(__file__).parents[1] / "data" / "openneuro_dk" / "dk_thickness_4sites.csv")
    table["subject"] = table["dataset"] + "_" + table["subject"]  # ids repeat across datasets
    path = tmp_path / "rois.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "roi"
    code = cli.main(["harmonize", "--roi-table", str(path), "--site-column", "dataset", "--out", str(out),
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    written = sorted((out / "roi").glob("*.harmonized.csv"))
    assert len(written) == 1
    harmonized = pd.read_csv(written[0])
    assert len(harmonized) == len(table)
    assert (harmonized["age"] == table["age"]).all()  # a covariate, never harmonized as an ROI
    assert np.load(out / "roi" / "maps" / "raw.npy").shape == (len(table), 68)
    metrics = pd.read_csv(out / "roi" / "metrics.csv").set_index("method")
    assert metrics.loc["combat", "site_eta2_median"] < metrics.loc["raw", "site_eta2_median"]


def test_help_has_examples(capsys):
    for command in ("harmonize", "apply"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "examples:" in capsys.readouterr().out


@pytest.mark.slow
def test_s2sgan_model_is_saved_and_applied(tmp_path, capsys):
    """A learned model goes through the same path: safetensors + JSON written, found and loaded by apply."""
    rng = np.random.default_rng(2)
    n, v = 8, 642
    sites = np.array(["A", "B"] * (n // 2))
    maps = 2.5 + 0.3 * (sites == "B")[:, None] + rng.normal(0, 0.1, (n, v))
    mgh = sio.write_map(tmp_path / "lh.thickness.fsaverage3.mgh", maps.astype(np.float32))
    fsgd = tmp_path / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass A\nClass B\n"
                    + "".join(f"Input s{i:02d} {s}\n" for i, s in enumerate(sites)))
    out = tmp_path / "gan"
    method = "s2sgan:max_steps=1,depth=2,base_channels=4,disc_channels=4,disc_down=2"
    code = cli.main(["harmonize", "--mgh", str(mgh), "--fsgd", str(fsgd), "--method", method,
                     "--reference-site", "A", "--out", str(out), "--quiet", "--no-report"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "lh" / "model.json").read_text())
    assert meta["sites"] == ["B", "A"] and (out / "lh" / "model.safetensors").is_file()
    fitted = np.load(out / "lh" / "maps" / "s2sgan.npy")
    np.testing.assert_array_equal(fitted[sites == "A"], maps[sites == "A"].astype(np.float32))  # target unchanged

    code = cli.main(["apply", "--model", str(out), "--mgh", str(mgh), "--fsgd", str(fsgd),
                     "--out", str(tmp_path / "applied"), "--quiet", "--no-report"])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(tmp_path / "applied" / "lh" / "maps" / "s2sgan.npy"), fitted, atol=1e-5)
