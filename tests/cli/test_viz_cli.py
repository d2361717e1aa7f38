"""``surfharm render`` and ``surfharm report`` through the real dispatcher (only these subcommands loaded)."""
import json

import numpy as np
import pandas as pd
import pytest

import surfharm.cli as cli


@pytest.fixture(autouse=True)
def only_viz_commands(monkeypatch):
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("render", "report"))


@pytest.fixture(scope="module")
def thickness_files(tmp_path_factory):
    """fsaverage5 thickness of both hemispheres as MGH files (FreeSurfer's 0 kept in the medial wall)."""
    import nibabel as nib
    from nilearn import datasets

    from surfharm.io import write_map

    folder = tmp_path_factory.mktemp("maps")
    files = datasets.fetch_surf_fsaverage("fsaverage5")
    paths = {}
    for hemi, short in (("left", "lh"), ("right", "rh")):
        values = nib.load(files[f"thick_{hemi}"]).agg_data().astype(np.float32)
        paths[short] = write_map(folder / f"{short}.thickness.fsaverage5.mgh", values)
        paths[f"{short}-after"] = write_map(folder / f"{short}.thickness.harmonized.fsaverage5.mgh",
                                            0.9 * values + 0.2)
    paths["bad"] = write_map(folder / "lh.bad.mgh", np.ones(1000, dtype=np.float32))
    return paths


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(float)


def test_render_one_map(tmp_path, thickness_files, capsys):
    out = tmp_path / "map.png"
    assert cli.main(["render", str(thickness_files["lh"]), "--mask-zeros", "--clim", "1", "4", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = read_png(out)
    assert image.shape == (230, round((0.001 + 2 + 0.6) * 300), 3)
    assert image.std() > 10


def test_render_both_hemispheres_before_after(tmp_path, thickness_files):
    out = tmp_path / "before_after.png"
    argv = ["render", str(thickness_files["rh"]), str(thickness_files["lh"]), "--after",
            str(thickness_files["rh-after"]), str(thickness_files["lh-after"]), "--surface", "pial",
            "--views", "lateral", "-o", str(out)]
    assert cli.main(argv) == 0
    image = read_png(out)
    # 3 rows (raw, harmonized, difference) x 2 columns (left lateral, right lateral) + labels + colour bars
    assert image.shape[:2] == (3 * 230, round((0.42 + 2 + 0.6) * 300))
    assert image.std() > 10


@pytest.mark.parametrize("extra, message", [
    ([], "give -o OUT.png"),
    (["--after", "a.mgh", "b.mgh", "-o", "x.png"], "got 2 --after maps for 1 maps"),
])
def test_render_argument_errors(extra, message, thickness_files, capsys):
    assert cli.main(["render", str(thickness_files["lh"]), *extra]) == 2
    assert message in capsys.readouterr().err


def test_render_wrong_vertex_count_names_the_count(tmp_path, thickness_files, capsys):
    assert cli.main(["render", str(thickness_files["bad"]), "-o", str(tmp_path / "x.png")]) == 2
    assert "1000 values: not an icosahedral" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_help_has_examples(capsys):
    for command in ("render", "report"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_report_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    (run / "maps").mkdir(parents=True)
    sites = np.repeat(["A", "B"], 6)
    maps = (2.5 + rng.normal(0, 0.1, (12, 162)) + np.where(sites == "B", 0.2, 0)[:, None]).astype(np.float32)
    pd.DataFrame({"subject": [f"s{i}" for i in range(12)], "site": sites}).to_csv(run / "table.csv", index=False)
    np.save(run / "maps" / "raw.npy", maps)
    np.save(run / "maps" / "mean-shift.npy", maps - np.where(sites == "B", 0.2, 0)[:, None].astype(np.float32))
    (run / "run.json").write_text(json.dumps({"command": "surfharm harmonize x", "hemi": "rh"}))
    out = tmp_path / "r.html"
    assert cli.main(["report", str(run), "-o", str(out), "--no-render", "--title", "My run"]) == 0
    text = out.read_text()
    assert "<title>My run</title>" in text and "surfharm harmonize x" in text and "hemisphere: rh" in text
    assert cli.main(["report", str(run), "--methods", "combat"]) == 2
    assert "no maps for method(s) ['combat']; found: mean-shift" in capsys.readouterr().err


@pytest.mark.skipif(__import__("platform").system() != "Linux", reason="only Linux decides from DISPLAY")
def test_interactive_without_display_is_refused(monkeypatch, thickness_files, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.main(["render", str(thickness_files["lh"]), "--interactive"]) == 2
    assert "--interactive needs a display" in capsys.readouterr().err


def test_render_picks_a_frame_of_a_stacked_file(tmp_path, capsys):
    from surfharm.io import write_mgh

    stacked = write_mgh(tmp_path / "lh.stack.mgh", np.random.default_rng(0).uniform(1, 4, (3, 642)).astype(np.float32))
    assert cli.main(["render", str(stacked), "-o", str(tmp_path / "x.png")]) == 2
    assert "holds 3 maps (frames); choose one with frame=0..2" in capsys.readouterr().err
    assert cli.main(["render", str(stacked), "--frame", "2", "-o", str(tmp_path / "x.png")]) == 0
    assert read_png(tmp_path / "x.png").std() > 10
