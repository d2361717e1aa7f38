"""NIfTI sessions of several contrasts through ``surfharm harmonize`` / ``surfharm apply`` (``--contrasts``)."""
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from surfharm import cli, harmonize  # noqa: E402
from surfharm.pipeline.inputs import NiftiInput, SourceError, group_sessions  # noqa: E402
from surfharm.simulate.volumes import simulate_multicontrast_cohort  # noqa: E402

# The simulator's contrast names and the BIDS suffixes the files carry.
SUFFIX = {"t1": "T1w", "flair": "FLAIR"}
METHOD = "deepharmony:steps=5,depth=2,base_channels=4,batch_size=4"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two scanners, two traveling subjects: four sessions of T1w + FLAIR, one mask per session, a table."""
    torch.set_num_threads(1)
    cohort = simulate_multicontrast_cohort(n_scanners=2, n_traveling=2, n_per_scanner=0, contrasts=tuple(SUFFIX),
                                           held_out=None, step=2, seed=0)
    root = tmp_path_factory.mktemp("study")
    (root / "anat").mkdir()
    (root / "masks").mkdir()
    rows = []
    for i, row in cohort.table.iterrows():
        session = f"{row['subject']}_ses-{row['site']}"
        for contrast, suffix in SUFFIX.items():
            nib.save(nib.Nifti1Image(cohort.images[contrast][i], cohort.affine),
                     root / "anat" / f"{session}_{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(cohort.masks[i].astype(np.uint8), cohort.affine),
                 root / "masks" / f"{session}_mask.nii.gz")
        rows.append({"image": session, "subject": row["subject"], "site": row["site"], "age": row["age"]})
    pd.DataFrame(rows).to_csv(root / "sessions.tsv", sep="\t", index=False)
    return root, cohort, [r["image"] for r in rows]


def _inputs(root, images=None):
    return ["--images", str(images or root / "anat"), "--masks", str(root / "masks"),
            "--participants", str(root / "sessions.tsv")]


@pytest.fixture(autouse=True)
def _commands(monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize", "apply"))


def test_harmonize_and_apply_sessions_of_two_contrasts(study, tmp_path, capsys):
    root, cohort, sessions = study
    out = tmp_path / "run"
    assert cli.main(["harmonize", *_inputs(root), "--contrasts", "T1w,FLAIR", "--method", METHOD,
                     "--out", str(out), "--quiet"]) == 0
    folder = out / "volumes"
    expected = sorted(f"{s}_{c}.nii.gz" for s in sessions for c in ("T1w", "FLAIR"))
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == expected
    for name in expected:
        written, source = nib.load(folder / name), nib.load(root / "anat" / name)
        assert written.shape == source.shape == cohort.masks[0].shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.get_data_dtype() == np.float32
    # the sessions of scanner2 were mapped (changed), those of the target scanner1 are returned as read
    mapped = nib.load(folder / f"{sessions[1]}_FLAIR.nii.gz").get_fdata()
    assert not np.allclose(mapped, nib.load(root / "anat" / f"{sessions[1]}_FLAIR.nii.gz").get_fdata())
    np.testing.assert_allclose(nib.load(folder / f"{sessions[0]}_T1w.nii.gz").get_fdata(),
                               nib.load(root / "anat" / f"{sessions[0]}_T1w.nii.gz").get_fdata(), rtol=1e-6)
    config = json.loads((folder / "config.json").read_text())
    assert config["contrasts"] == ["T1w", "FLAIR"] and config["options"]["contrasts"] == ["T1w", "FLAIR"]
    run = json.loads((folder / "run.json").read_text())
    assert run["complete"] is True and set(expected) <= set(run["files"])
    table = pd.read_csv(folder / "table.csv")
    assert table["image"].tolist() == sessions and table["subject"].tolist() == cohort.table["subject"].tolist()
    model = harmonize.load(folder / "model.safetensors")
    assert model.contrasts_ == ("T1w", "FLAIR") and model.n_pairs_ > 0

    # apply: the contrasts come from the model when --contrasts is left out; same volumes as the fit run
    again = tmp_path / "applied"
    assert cli.main(["apply", "--model", str(out), *_inputs(root), "--out", str(again), "--quiet"]) == 0
    for name in expected:
        np.testing.assert_allclose(nib.load(again / "volumes" / name).get_fdata(),
                                   nib.load(folder / name).get_fdata(), rtol=1e-5, atol=1e-5)
    assert json.loads((again / "volumes" / "run.json").read_text())["complete"] is True
    # ... and other contrasts than the model's are refused by name
    assert cli.main(["apply", "--model", str(out), *_inputs(root), "--contrasts", "T1w", "--out",
                     str(tmp_path / "wrong"), "--quiet"]) == 2
    assert "fitted on contrasts T1w,FLAIR" in capsys.readouterr().err


def test_an_incomplete_session_is_refused_by_name(study, tmp_path, capsys):
    root, _, sessions = study
    partial = tmp_path / "anat"
    partial.mkdir()
    for p in (root / "anat").iterdir():
        if p.name != f"{sessions[2]}_FLAIR.nii.gz":
            (partial / p.name).symlink_to(p)
    (partial / "README.nii.gz").symlink_to(root / "anat" / f"{sessions[0]}_T1w.nii.gz")
    assert cli.main(["harmonize", *_inputs(root, partial), "--contrasts", "T1w,FLAIR", "--method", METHOD,
                     "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"session '{sessions[2]}' lacks FLAIR (has T1w)" in err
    assert not (tmp_path / "out").exists()


def test_contrasts_with_a_method_of_one_volume_per_scan_is_refused(study, tmp_path, capsys):
    root, _, _ = study
    for method in ("combat", "nyul"):
        assert cli.main(["harmonize", *_inputs(root), "--contrasts", "T1w,FLAIR", "--method", method,
                         "--out", str(tmp_path / method), "--quiet"]) == 2
        assert f"--contrasts: method {method!r} takes one volume per scan" in capsys.readouterr().err
    assert cli.main(["harmonize", "--roi-table", str(root / "sessions.tsv"), "--contrasts", "T1w",
                     "--out", str(tmp_path / "roi"), "--quiet"]) == 2
    assert "--contrasts goes with --images" in capsys.readouterr().err


def test_dry_run_lists_the_session_outputs_and_the_files_left_out(study, tmp_path, capsys):
    root, _, sessions = study
    extra = tmp_path / "anat"
    extra.mkdir()
    for p in (root / "anat").iterdir():
        (extra / p.name).symlink_to(p)
    (extra / "sub-001_ses-scanner1_T2w.nii.gz").symlink_to(root / "anat" / f"{sessions[0]}_T1w.nii.gz")
    assert cli.main(["harmonize", *_inputs(root, extra), "--contrasts", "T1w,FLAIR", "--method", METHOD,
                     "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "<session>_<contrast>.nii.gz  (one per session and contrast: T1w, FLAIR)" in out
    assert "left out: sub-001_ses-scanner1_T2w.nii.gz" in out
    scans = [line.split()[-1] for line in out.splitlines() if line.startswith("  scan ")]
    assert len(scans) == 2 * len(sessions) and not any(s.endswith("_T2w.nii.gz") for s in scans)


def test_grouping_and_mask_rules(study, tmp_path):
    root, _, sessions = study
    found, unmatched = group_sessions(["b_ses-1_ce-T1w.nii", "b_ses-1_T1w.nii.gz", "a_T1w.nii", "a_ce-T1w.nii",
                                       "mask.nii.gz"], ("T1w", "ce-T1w"), sort=True)
    assert found == {"a": {"T1w": "a_T1w.nii", "ce-T1w": "a_ce-T1w.nii"},
                     "b_ses-1": {"T1w": "b_ses-1_T1w.nii.gz", "ce-T1w": "b_ses-1_ce-T1w.nii"}}
    assert unmatched == ["mask.nii.gz"]
    with pytest.raises(SourceError, match="session 'a' has two T1w files"):
        group_sessions(["a_T1w.nii", "a_T1w.nii.gz"], ("T1w",), sort=True)
    with pytest.raises(SourceError, match="'T1_w' is not a contrast name"):
        NiftiInput(images=root / "anat", contrasts="T1_w")
    # listed one by one, a file of no contrast is refused (in a folder it would be left out)
    listed = [root / "anat" / f"{sessions[0]}_T1w.nii.gz", root / "masks" / f"{sessions[0]}_mask.nii.gz"]
    with pytest.raises(SourceError, match="ends in none of --contrasts T1w"):
        NiftiInput(images=listed, contrasts=("T1w",)).scans()
    # without a table, the subject is the session's sub-<label> entity; masks found as <session>_mask.nii.gz
    scans = NiftiInput(images=root / "anat", masks=root / "masks", contrasts="T1w, FLAIR",
                       sites=["x"] * len(sessions)).scans()
    assert scans.sessions == sorted(sessions) and scans.contrasts == ("T1w", "FLAIR")
    assert scans.table["subject"].tolist() == [s.split("_")[0] for s in sorted(sessions)]
    assert scans.masks == [str(root / "masks" / f"{s}_mask.nii.gz") for s in sorted(sessions)]
    assert scans.images[0] == {c: str(root / "anat" / f"{sorted(sessions)[0]}_{c}.nii.gz") for c in ("T1w", "FLAIR")}
    empty = tmp_path / "masks"
    empty.mkdir()
    with pytest.raises(SourceError, match=f"no mask for session.*{sorted(sessions)[0]}_mask.nii.gz"):
        NiftiInput(images=root / "anat", masks=empty, contrasts="T1w,FLAIR", sites=["x"] * len(sessions)).scans()
