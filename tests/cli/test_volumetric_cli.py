"""``surfharm volumetric <method> fit|apply`` on NIfTI files."""
import argparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from surfharm.cli import CLIError
from surfharm.cli import volumetric as cli_volumetric
from surfharm.harmonize.volumetric import Nyul, VoxelComBat

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _run(*argv):
    parser = argparse.ArgumentParser(prog="surfharm")
    cli_volumetric.register(parser.add_subparsers())
    args = parser.parse_args(["volumetric", *argv])
    return args.func(args)


@pytest.fixture()
def scans(tmp_path):
    """Six registered scans from two 'scanners' (folders img/ and mask/ with matching names) and a table."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    mask = np.zeros((10, 11, 9), bool)
    mask[2:-2, 2:-2, 2:-2] = True
    anatomy = rng.uniform(0.3, 0.9, mask.shape)
    names, sites = [], []
    for i in range(6):
        site = "s1" if i < 3 else "s2"
        gain = 1000.0 if site == "s1" else 300.0
        data = np.where(mask, gain * anatomy ** (1.0 + 0.3 * (site == "s2")) + rng.normal(0, 5, mask.shape), 0)
        name = f"sub-{i}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), tmp_path / "img" / name)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), tmp_path / "mask" / name)
        names.append(name)
        sites.append(site)
    pd.DataFrame({"image": names, "site": sites, "age": rng.uniform(20, 80, 6)}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "out").mkdir()
    return tmp_path


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        _run("--help")
    text = capsys.readouterr().out
    assert "surfharm volumetric nyul fit --images" in text and "voxel-combat" in text


def test_nyul_fit_then_apply_matches_the_python_api(scans):
    img, mask, out = scans / "img", scans / "mask", scans / "out"
    assert _run("nyul", "fit", "--images", str(img), "--masks", str(mask), "--model", str(scans / "n.npz")) == 0
    assert _run("nyul", "apply", "--images", str(img), "--masks", str(mask), "--model", str(scans / "n.npz"),
                "--out-dir", str(out)) == 0
    files = sorted(img.iterdir())
    masks = sorted(mask.iterdir())
    expected = Nyul().fit([str(f) for f in files], masks=[str(m) for m in masks]).transform(
        [str(f) for f in files], masks=[str(m) for m in masks])
    for f, e in zip(files, expected):
        written = nib.load(out / f.name.replace(".nii.gz", "_nyul.nii.gz"))
        np.testing.assert_allclose(written.get_fdata(), e, rtol=1e-6)
        np.testing.assert_allclose(written.affine, AFFINE)


def test_voxel_combat_with_table_and_covariates(scans):
    img, mask, out = scans / "img", scans / "mask", scans / "out"
    common = ["--images", str(img), "--masks", str(mask / "sub-0_T1w.nii.gz"), "--table", str(scans / "t.csv"),
              "--covariates", "age"]
    _run("voxel-combat", "fit", *common, "--param", "normalize=zscore", "--param", 'combat={"eb": false}',
         "--model", str(scans / "vc.npz"))
    _run("voxel-combat", "apply", *common, "--model", str(scans / "vc.npz"), "--out-dir", str(out))
    table = pd.read_csv(scans / "t.csv")
    files = [str(img / n) for n in table["image"]]
    est = VoxelComBat(normalize="zscore", combat={"eb": False}).fit(
        files, sites=table["site"], covariates=table[["age"]], masks=str(mask / "sub-0_T1w.nii.gz"))
    expected = est.transform(files, sites=table["site"], covariates=table[["age"]],
                             masks=str(mask / "sub-0_T1w.nii.gz"))
    for name, e in zip(table["image"], expected):
        written = nib.load(out / name.replace(".nii.gz", "_voxel-combat.nii.gz")).get_fdata()
        np.testing.assert_allclose(written, e, rtol=1e-5, atol=1e-5)


def test_stateless_methods_apply_without_a_model_and_never_touch_inputs(scans):
    img = scans / "img"
    before = {p.name: p.read_bytes() for p in img.iterdir()}
    _run("white-stripe", "apply", "--images", str(img / "sub-0_T1w.nii.gz"), "--out-dir", str(img))
    assert (img / "sub-0_T1w_white-stripe.nii.gz").is_file()
    assert all((img / name).read_bytes() == data for name, data in before.items())


@pytest.mark.parametrize("argv, message", [
    (["mica", "apply", "--images", "{img}", "--out-dir", "{out}"], "mica must be fitted first"),
    (["nyul", "fit", "--images", "{img}"], "fit needs --model"),
    (["ravel", "fit", "--images", "{img}", "--param", "k=2", "--model", "{out}/r.npz"],
     r"ravel has no parameter \['k'\]; its parameters: \['n_factors'"),
    (["nyul", "fit", "--images", "{img}", "--masks", "{img}/sub-0_T1w.nii.gz", "{img}/sub-1_T1w.nii.gz",
      "--model", "{out}/n.npz"], "got 2 masks for 6 scans"),
    (["zscore", "apply", "--images", "{img}", "--sites", "a", "b", "--out-dir", "{out}"], "got 2 --sites labels for 6 scans"),  # noqa: E501
    (["nyul", "fit", "--images", "{img}", "--table", "{root}/t.csv", "--covariates", "weight", "--model", "{out}/n.npz"],  # noqa: E501
     "has no column 'weight'"),
    (["zscore", "apply", "--images", "{img}", "--out-dir", "{root}/missing"], "is not an existing folder"),
    (["nyul", "fit", "--images", "{root}/t.csv", "--model", "{out}/n.npz"], r"expected a \.nii or \.nii\.gz file"),
])
def test_bad_arguments_give_clear_errors(scans, argv, message):
    argv = [a.format(img=scans / "img", out=scans / "out", root=scans) for a in argv]
    with pytest.raises(CLIError, match=message):
        _run(*argv)


def test_model_of_another_method_is_refused(scans):
    img, out = scans / "img", scans / "out"
    _run("nyul", "fit", "--images", str(img), "--model", str(out / "n.npz"))
    with pytest.raises(CLIError, match="holds a 'nyul' model, not 'mica'"):
        _run("mica", "apply", "--images", str(img), "--model", str(out / "n.npz"), "--out-dir", str(out))
