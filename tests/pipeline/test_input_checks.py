"""Inputs are checked before they can spoil a run: implausible values, empty scans, bad tables, clear errors.

Inputs are tiny: fsaverage3-sized maps (642 vertices) cut from the real fs-subject1 thickness map
(tests/data/fs_subject1), written as qcache files of a SUBJECTS_DIR, as a stacked MGH with its FSGD, or
per-scan files; ROI tables come from tests/data/openneuro_dk.
"""
from __future__ import annotations

import json
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm import Cohort, cli
from surfharm import io as sio
from surfharm.io import plausibility

DATA = Path(__file__).parents[1] / "data"
V3 = 642  # vertices of fsaverage3 (icosahedral level 3)


def _thickness(n_scans: int, seed: int = 0, shift_b: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """Scans of real thickness values (the first 642 of fs-subject1's map) with noise and a site shift."""
    base = sio.read_map(DATA / "fs_subject1" / "lh.thickness")[:V3].astype(np.float32)
    rng = np.random.default_rng(seed)
    sites = ["A", "B"] * (n_scans // 2) + ["A"] * (n_scans % 2)
    maps = np.stack([np.clip(base + shift_b * (s == "B") + rng.normal(0, 0.05, V3), 0, 5) for s in sites])
    return maps.astype(np.float32), sites


def _subjects_dir(root: Path, maps: np.ndarray, sites, **columns) -> Path:
    """A SUBJECTS_DIR holding one qcache map per scan (surf/lh.thickness.fwhm10.fsaverage.mgh) and a table."""
    rows = []
    for i, (values, site) in enumerate(zip(maps, sites)):
        surf = root / f"sub-{i:02d}" / "surf"
        surf.mkdir(parents=True)
        sio.write_map(surf / "lh.thickness.fwhm10.fsaverage.mgh", values)
        rows.append({"subject": f"sub-{i:02d}", "site": site, "age": 20.0 + 3 * i})
    table = pd.DataFrame(rows).assign(**columns)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    return root / "participants.tsv"


def _stack(folder: Path, maps: np.ndarray, sites, name: str = "lh.thickness.fsaverage3.mgh") -> tuple[Path, Path]:
    mgh = sio.write_map(folder / name, maps)
    fsgd = folder / "study.fsgd"
    lines = ["GroupDescriptorFile 1", *(f"Class {s}" for s in sorted(set(sites))), "Variables age"]
    lines += [f"Input s{i:02d} {s} {30 + i}" for i, s in enumerate(sites)]
    fsgd.write_text("\n".join(lines) + "\n")
    return mgh, fsgd


def _harmonize(args, capsys) -> tuple[int, str, str]:
    code = cli.main(["harmonize", *map(str, args), "--quiet", "--no-report"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- implausible values at input -----------------------------------------------------------------------------

def test_a_negated_thickness_scan_is_refused_naming_subject_file_and_count(tmp_path, capsys):
    maps, sites = _thickness(6)
    maps[3] = -maps[3]
    participants = _subjects_dir(tmp_path / "subjects", maps, sites)
    code, _, err = _harmonize(["--subjects-dir", tmp_path / "subjects", "--participants", participants,
                               "--level", 3, "--out", tmp_path / "run"], capsys)
    assert code == 2
    n_bad = int((maps[3] < 0).sum())
    assert "sub-03" in err and "lh.thickness.fwhm10.fsaverage.mgh" in err
    assert f"{n_bad} value(s)" in err and "[0, 10] mm" in err
    assert "--value-range" in err and "--allow-implausible" in err
    assert not (tmp_path / "run").exists()


def test_range_options_let_a_measure_leave_the_default_range(tmp_path, capsys):
    maps, sites = _thickness(6)
    maps[3] -= 3.0  # some values below 0
    participants = _subjects_dir(tmp_path / "subjects", maps, sites)
    common = ["--subjects-dir", tmp_path / "subjects", "--participants", participants, "--level", 3]
    code, _, err = _harmonize([*common, "--value-range", -5, 10, "--out", tmp_path / "wide"], capsys)
    assert code == 0, err
    code, _, err = _harmonize([*common, "--allow-implausible", "--out", tmp_path / "allowed"], capsys)
    assert code == 0, err
    code, _, err = _harmonize([*common, "--value-range", 0, 3, "--out", tmp_path / "narrow"], capsys)
    assert code == 2 and "[0, 3] mm" in err


def test_a_sign_flipped_frame_of_a_stacked_mgh_is_named_by_frame_subject_and_file(tmp_path, capsys):
    maps, sites = _thickness(6)
    maps[4] = -maps[4]
    mgh, fsgd = _stack(tmp_path, maps, sites)
    code, _, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert f"s04 (frame 4 of {mgh})" in err


def test_a_negative_roi_value_is_refused_naming_the_subject(tmp_path, capsys):
    table = pd.read_csv(DATA / "openneuro_dk" / "dk_thickness_4sites.csv")
    table["subject"] = table["dataset"] + "_" + table["subject"]
    table.loc[5, "lh_cuneus_thickness"] = -1.9
    path = tmp_path / "rois.csv"
    table.to_csv(path, index=False)
    code, _, err = _harmonize(["--roi-table", path, "--site-column", "dataset", "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert table.loc[5, "subject"] in err and "1 value(s)" in err


def test_per_scan_files_are_checked_with_the_file_named(tmp_path):
    maps, sites = _thickness(4)
    maps[1, :5] = 42.0  # thicker than any cortex
    paths = [sio.write_map(tmp_path / f"s{i}.lh.thickness.fsaverage3.mgz", m) for i, m in enumerate(maps)]
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(4)], "site": sites})
    cohort = Cohort.from_files(paths, table, measure="thickness")
    with pytest.raises(sio.InputValueError, match=r"s1 \(.*s1\.lh\.thickness\.fsaverage3\.mgz\): 5 value\(s\)"):
        cohort.check_values()
    assert cohort.check_values(allow_implausible=True) is None
    assert str(cohort.check_values((0, 50))) == "[0, 50] mm"


def test_measures_that_may_be_negative_are_not_checked():
    assert plausibility.measure_range("sulc") is None and plausibility.measure_range("curv") is None
    assert str(plausibility.measure_range("thickness")) == "[0, 10] mm"
    assert str(plausibility.measure_range("area.pial")) == "[0, inf) mm^2"
    maps = np.array([[-2.0, 1.0, np.nan]], np.float32)
    cohort = Cohort(maps, pd.DataFrame({"subject": ["a"], "site": ["A"]}), measure="sulc")
    assert cohort.check_values() is None


# -- implausible values at output ----------------------------------------------------------------------------

def _thin_two_sites(n_per_site: int = 10) -> tuple[np.ndarray, list[str]]:
    """Site A: thin (0.3 mm) and almost constant; site B: same mean, widely spread. ComBat widens A's
    spread to the pooled one, which pushes some of A's values below 0 mm."""
    rng = np.random.default_rng(3)
    a = 0.3 + rng.normal(0, 0.02, (n_per_site, V3))
    b = np.clip(0.3 + rng.normal(0, 0.25, (n_per_site, V3)), 0.01, None)
    return np.vstack([a, b]).astype(np.float32), ["A"] * n_per_site + ["B"] * n_per_site


def test_harmonized_values_outside_the_range_are_counted_reported_and_clipped_on_request(tmp_path, capsys):
    maps, sites = _thin_two_sites()
    mgh, fsgd = _stack(tmp_path, maps, sites)
    code, out, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--keep", "--out", tmp_path / "kept"], capsys)
    assert code == 0, err
    harmonized = np.load(tmp_path / "kept" / "lh" / "maps" / "combat.npy")
    n_negative = int((harmonized < 0).sum())
    assert n_negative > 0
    assert f"{n_negative} harmonized thickness(s)" in out and "--clip-output" in out
    metrics = pd.read_csv(tmp_path / "kept" / "lh" / "metrics.csv").set_index("method")
    assert metrics.loc["raw", "implausible_values"] == 0
    assert metrics.loc["combat", "implausible_values"] == n_negative

    code, out, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--keep", "--clip-output", "--out",
                                 tmp_path / "clipped"], capsys)
    assert code == 0, err
    assert "clipped into the range" in out
    clipped = sio.read_maps(tmp_path / "clipped" / "lh" / "lh.thickness.harmonized.mgh")
    assert np.nanmin(clipped) == 0.0
    np.testing.assert_allclose(clipped, np.clip(harmonized, 0, 10), atol=1e-6)


def test_combat_cli_reports_and_clips_harmonized_values_outside_the_range(tmp_path, capsys):
    maps, sites = _thin_two_sites()
    mgh, fsgd = _stack(tmp_path, maps, sites)
    code = cli.main(["combat", "fit", "--mgh", str(mgh), "--fsgd", str(fsgd), "--model", str(tmp_path / "m.npz"),
                     "--output", str(tmp_path / "lh.thickness.harmonized.mgz")])
    out = capsys.readouterr().out
    assert code == 0 and "lie outside [0, 10] mm" in out
    assert np.nanmin(sio.read_maps(tmp_path / "lh.thickness.harmonized.mgz")) < 0
    code = cli.main(["combat", "fit", "--mgh", str(mgh), "--fsgd", str(fsgd), "--model", str(tmp_path / "m2.npz"),
                     "--output", str(tmp_path / "lh.thickness.clipped.mgh"), "--clip-output"])
    assert code == 0 and "clipped into the range" in capsys.readouterr().out
    assert np.nanmin(sio.read_maps(tmp_path / "lh.thickness.clipped.mgh")) == 0.0


# -- empty scans ---------------------------------------------------------------------------------------------

def test_an_all_nan_frame_is_refused_by_name(tmp_path, capsys):
    maps, sites = _thickness(6)
    maps[2] = np.nan
    mgh, fsgd = _stack(tmp_path, maps, sites)
    code, _, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "1 scan(s) hold no value at all" in err and f"s02 (frame 2 of {mgh})" in err


def test_an_empty_qcache_map_is_refused_naming_subject_and_file(tmp_path, capsys):
    maps, sites = _thickness(6)
    maps[5] = np.nan
    participants = _subjects_dir(tmp_path / "subjects", maps, sites)
    code, _, err = _harmonize(["--subjects-dir", tmp_path / "subjects", "--participants", participants,
                               "--level", 3, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "hold no value at all" in err and "sub-05" in err and "lh.thickness.fwhm10.fsaverage.mgh" in err


# -- tables are checked before any map is read (runs and --dry-run) -----------------------------------------

def _unreadable_subjects(root: Path, table: pd.DataFrame) -> Path:
    """Subject folders whose maps are empty files: any attempt to read one fails."""
    for subject in table["subject"].unique():
        surf = root / subject / "surf"
        surf.mkdir(parents=True, exist_ok=True)
        (surf / "lh.thickness.fwhm10.fsaverage.mgh").write_bytes(b"")
    path = root / "participants.tsv"
    table.to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("change,extra,message", [
    ({"subject": ["s0", "s1", "s1", "s3"]}, [], r"duplicate scan id\(s\) \['s1'\]"),
    ({"site": ["A", None, "B", "B"]}, [], r"site is missing in row\(s\) \[1\]"),
    ({}, ["--keep", "iq"], r"covariate\(s\) \['iq'\] not found"),
    ({"age": ["30", "41", "old", "52"]}, [], r"covariate 'age' is numeric but row\(s\) \[2\] hold \['old'\]"),
    ({"group": ["x", "y", "x", "y"]}, ["--keep", "age", "--smooth", "group"], r"'group' must be numeric"),
    ({"sex": ["F", None, "M", "F"]}, [], r"covariate 'sex' is empty in row\(s\) \[1\]"),
])
def test_table_problems_stop_the_run_before_any_map_is_read(tmp_path, capsys, change, extra, message, dry_run):
    table = pd.DataFrame({"subject": ["s0", "s1", "s2", "s3"], "site": ["A", "A", "B", "B"],
                          "age": [30, 41, 45, 52], "sex": ["F", "M", "M", "F"]}).assign(**change)
    participants = _unreadable_subjects(tmp_path / "subjects", table)
    code, out, err = _harmonize(["--subjects-dir", tmp_path / "subjects", "--participants", participants,
                                 "--level", 3, "--out", tmp_path / "run", *extra,
                                 *(["--dry-run"] if dry_run else [])], capsys)
    assert code == 2
    assert re.search(message, err), err
    assert "empty file" not in err  # no map was read
    if dry_run:
        assert "would read" in out


def test_stacked_mgh_tables_are_checked_before_the_maps(tmp_path, capsys):
    maps, sites = _thickness(4)
    mgh, fsgd = _stack(tmp_path, maps, sites)
    covariates = tmp_path / "covariates.csv"
    pd.DataFrame({"subject": ["s00", "s01", "s02", "s03"], "site": ["A", "", "B", "B"]}).to_csv(covariates, index=False)
    code, out, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--participants", covariates, "--dry-run",
                                 "--out", tmp_path / "run"], capsys)
    assert code == 2 and "site is missing in row(s) [1]" in err and "would read" in out


def test_a_one_scan_site_is_refused_early_with_the_cli_spelling_of_mean_only(tmp_path, capsys):
    maps, _ = _thickness(5)
    sites = ["A", "A", "B", "B", "C"]
    mgh, fsgd = _stack(tmp_path, maps, sites)
    code, _, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--dry-run", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "['C'] have a single scan" in err
    assert "--method combat:mean_only=true" in err and "mean_only=True" not in err
    code, _, err = _harmonize(["--mgh", mgh, "--fsgd", fsgd, "--method", "combat:mean_only=true",
                               "--out", tmp_path / "run"], capsys)
    assert code == 0, err

    code = cli.main(["combat", "fit", "--mgh", str(mgh), "--fsgd", str(fsgd), "--model", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "--mean-only" in err and "mean_only=True" not in err
    assert not (tmp_path / "m.npz").exists()


# -- errors that name the file and say what was expected -----------------------------------------------------

def test_a_zero_byte_file_is_called_empty(tmp_path):
    empty = tmp_path / "lh.thickness"
    empty.write_bytes(b"")
    with pytest.raises(sio.InputFileError, match=r"lh\.thickness: empty file \(0 bytes\)"):
        sio.read_map(empty)
    table = tmp_path / "participants.tsv"
    table.write_bytes(b"")
    with pytest.raises(sio.InputFileError, match=r"participants\.tsv: empty file"):
        sio.read_table(table)


def test_inf_in_a_qcache_map_names_the_file(tmp_path, capsys):
    maps, sites = _thickness(4)
    maps[2, 17] = np.inf
    participants = _subjects_dir(tmp_path / "subjects", maps, sites)
    code, _, err = _harmonize(["--subjects-dir", tmp_path / "subjects", "--participants", participants,
                               "--level", 3, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert f"{tmp_path / 'subjects' / 'sub-02' / 'surf' / 'lh.thickness.fwhm10.fsaverage.mgh'}: 1 inf value(s), " \
           "first at vertex 17" in err


def test_an_fsaverage5_map_in_a_level7_run_suggests_the_level_option(tmp_path, capsys):
    maps, sites = _thickness(4)
    fsa5 = np.tile(maps, (1, 16))[:, :10242]
    participants = _subjects_dir(tmp_path / "subjects", fsa5, sites)
    code, _, err = _harmonize(["--subjects-dir", tmp_path / "subjects", "--participants", participants,
                               "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "is on level 5 (fsaverage5, 10242 vertices), below the requested level 7 (fsaverage" in err
    assert "--level 5" in err and "upsample_ico" not in err


def test_a_gifti_of_the_wrong_mesh_is_named_not_its_cortex_label(tmp_path):
    gii = sio.write_map(tmp_path / "sub-00.lh.thickness.shape.gii", np.full(600, 2.5, np.float32))
    label = tmp_path / "lh.cortex.label"
    label.write_text("#!ascii label\n2\n0 0 0 0 0\n641 0 0 0 0\n")
    table = pd.DataFrame({"subject": ["sub-00"], "site": ["A"]})
    with pytest.raises(sio.InputFileError, match=r"sub-00\.lh\.thickness\.shape\.gii has 600 vertices") as caught:
        Cohort.from_files([gii], table, level=3, cortex=label)
    assert "cortex.label" not in str(caught.value)


# -- the combat command streams a stacked MGH --------------------------------------------------------------

def test_combat_fit_on_a_stacked_mgh_streams_and_matches_the_in_memory_result(tmp_path, capsys):
    from surfharm.harmonize import ComBat

    n_scans, n_vert = 400, 10242  # 16 MB of float32
    rng = np.random.default_rng(5)
    sites = ["A", "B", "C", "D"] * (n_scans // 4)
    maps = (2.5 + 0.2 * (np.array(sites) == "B")[:, None] + rng.normal(0, 0.2, (n_scans, n_vert))).astype(np.float32)
    mgh, fsgd = _stack(tmp_path, maps, sites, name="lh.thickness.fsaverage5.mgh")
    expected_cohort = Cohort.from_stacked_mgh(mgh, fsgd)
    covariates = expected_cohort.covariates(["age"])
    model = ComBat().fit(expected_cohort.maps, sites=expected_cohort.sites, covariates=covariates)
    expected = model.transform(expected_cohort.maps, sites=expected_cohort.sites, covariates=covariates)
    del maps, expected_cohort

    output = tmp_path / "lh.thickness.harmonized.mgh"
    tracemalloc.start()
    try:
        code = cli.main(["combat", "fit", "--mgh", str(mgh), "--fsgd", str(fsgd), "--keep", "age",
                         "--model", str(tmp_path / "m.npz"), "--output", str(output)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(sio.read_maps(output), expected, atol=1e-6)
    assert peak < 0.5 * n_scans * n_vert * 4  # never a copy of the maps in memory
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch memory map is gone
    meta = json.loads(zipfile.ZipFile(tmp_path / "m.npz").read("metadata.json"))
    assert meta["n_features"] == n_vert
