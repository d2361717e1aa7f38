"""The input classes (one per input kind) and the NIfTI path of ``surfharm harmonize`` / ``surfharm apply``."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from surfharm import cli
from surfharm.harmonize.volumetric import Nyul, VoxelComBat
from surfharm.pipeline.inputs import (INPUTS, NiftiInput, RoiTableInput, Source, SourceError, StackedMghInput,
                                      SubjectsDirInput)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture()
def scans(tmp_path):
    """Six registered scans from two scanners, their masks and a table (image, site, age)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    mask = np.zeros((10, 11, 9), bool)
    mask[2:-2, 2:-2, 2:-2] = True
    anatomy = rng.uniform(0.3, 0.9, mask.shape)
    rows = []
    for i in range(6):
        site = "s1" if i < 3 else "s2"
        gain = 1000.0 if site == "s1" else 300.0
        data = np.where(mask, gain * anatomy + rng.normal(0, 5, mask.shape), 0)
        name = f"sub-{i}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), tmp_path / "img" / name)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask" / name)
        rows.append({"image": name, "site": site, "age": 20.0 + 10 * i})
    pd.DataFrame(rows).to_csv(tmp_path / "scans.csv", index=False)
    return tmp_path


def test_every_kind_is_one_class_with_its_config_name():
    assert {name: cls.__name__ for name, cls in INPUTS.items()} == {
        "subjects_dir": "SubjectsDirInput", "stacked_mgh": "StackedMghInput", "roi_table": "RoiTableInput",
        "nifti": "NiftiInput"}
    assert isinstance(Source("roi_table", roi_table="t.csv", mgh=()), RoiTableInput)
    with pytest.raises(SourceError, match="takes no mgh"):
        Source("roi_table", roi_table="t.csv", mgh=("lh.mgh",))


@pytest.mark.parametrize("cls, options, message", [
    (SubjectsDirInput, {"subjects_dir": "s"}, "needs both the folder"),
    (SubjectsDirInput, {"subjects_dir": "s", "participants": "p.tsv", "hemis": ("xh",)}, "'lh' or 'rh'"),
    (StackedMghInput, {"mgh": "lh.thickness.mgh"}, "--fsgd"),
    (RoiTableInput, {}, "--roi-table"),
    (NiftiInput, {}, "--images"),
    (NiftiInput, {"images": "a.nii", "sites": ("A",), "participants": "t.csv"}, "not both"),
])
def test_missing_arguments_are_named(cls, options, message):
    with pytest.raises(SourceError, match=message):
        cls(**options)


def test_stacked_mgh_files_and_keys(tmp_path):
    source = StackedMghInput(mgh=("lh.thickness.mgh", "rh.thickness.mgh"), fsgd="study.fsgd", cortex="lh.cortex.label")
    assert source.keys() == ["lh", "rh"] and source.name == "stacked_mgh"
    assert [what for what, _ in source.files()] == ["FSGD", "stacked maps", "stacked maps", "cortex"]
    with pytest.raises(SourceError, match="--space native needs native inputs"):
        source.spaces("native")
    with pytest.raises(SourceError, match="same hemisphere"):
        StackedMghInput(mgh=("lh.a.mgh", "lh.b.mgh"), fsgd="s.fsgd").keys()


def test_harmonize_and_apply_nifti_scans_through_the_front_door(scans, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize", "apply"))
    inputs = ["--images", str(scans / "img"), "--masks", str(scans / "mask"),
              "--participants", str(scans / "scans.csv")]
    assert cli.main(["harmonize", *inputs, "--method", "nyul", "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "<scan name>_<method>.nii.gz" in capsys.readouterr().out and not (tmp_path / "dry").exists()
    assert cli.main(["harmonize", *inputs, "--method", "combat", "--out", str(tmp_path / "wrong")]) == 2
    assert "NIfTI scans take a volumetric method" in capsys.readouterr().err
    out = tmp_path / "run"
    assert cli.main(["harmonize", *inputs, "--method", "nyul", "--out", str(out), "--quiet"]) == 0
    folder = out / "volumes"
    config = json.loads((folder / "config.json").read_text())
    assert config["input"] == "nifti" and config["method"] == "nyul"
    assert json.loads((folder / "run.json").read_text())["complete"] is True
    files = sorted(str(p) for p in (scans / "img").iterdir())
    masks = sorted(str(p) for p in (scans / "mask").iterdir())
    expected = Nyul().fit(files, masks=masks).transform(files, masks=masks)
    for f, e in zip(sorted((scans / "img").iterdir()), expected):
        written = nib.load(folder / f.name.replace(".nii.gz", "_nyul.nii.gz"))
        np.testing.assert_allclose(written.get_fdata(), e, rtol=1e-6)
    again = tmp_path / "applied"
    assert cli.main(["apply", "--model", str(out), *inputs, "--out", str(again), "--quiet"]) == 0
    for f in (scans / "img").iterdir():
        name = f.name.replace(".nii.gz", "_nyul.nii.gz")
        np.testing.assert_allclose(nib.load(again / "volumes" / name).get_fdata(),
                                   nib.load(folder / name).get_fdata(), rtol=1e-6)
    # an input inside --out is refused before anything is written
    assert cli.main(["harmonize", *inputs, "--method", "nyul", "--out", str(scans), "--overwrite", "--quiet"]) == 2
    assert "lies inside the output folder" in capsys.readouterr().err


def test_voxel_combat_keeps_covariates_from_the_table(scans, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize",))
    mask = str(scans / "mask" / "sub-0_T1w.nii.gz")
    out = tmp_path / "vc"
    assert cli.main(["harmonize", "--images", str(scans / "img"), "--masks", mask, "--participants",
                     str(scans / "scans.csv"), "--keep", "age", "--method", "voxel-combat:normalize=zscore",
                     "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(scans / "scans.csv")
    files = [str(scans / "img" / n) for n in table["image"]]
    est = VoxelComBat(normalize="zscore").fit(files, sites=table["site"], covariates=table[["age"]], masks=mask)
    expected = est.transform(files, sites=table["site"], covariates=table[["age"]], masks=mask)
    for name, e in zip(table["image"], expected):
        written = nib.load(out / "volumes" / name.replace(".nii.gz", "_voxel-combat.nii.gz")).get_fdata()
        np.testing.assert_allclose(written, e, rtol=1e-5, atol=1e-5)


def test_the_aliases_say_what_they_delegate_to(scans, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("volumetric",))
    assert cli.main(["volumetric", "nyul", "fit", "--images", str(scans / "img"), "--model",
                     str(scans / "n.npz")]) == 0
    assert "surfharm harmonize --images ... --method nyul" in capsys.readouterr().out
