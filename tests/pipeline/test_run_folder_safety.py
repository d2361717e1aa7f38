"""What a run folder guarantees: inputs are never replaced, it holds exactly one complete run, readers
refuse anything incomplete, partial files of stopped writes are ignored and cleaned up, failed writes
end in a one-line error, and a model is applied only to the kind of data it was fitted on.

Inputs are tiny: a stacked fsaverage3 MGH (10 scans) with its FSGD, and an ROI table cut from
tests/data/openneuro_dk (left hemisphere, 4 sites x 6 subjects).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from surfharm import cli
from surfharm import io as sio
from surfharm._atomic import INCOMPLETE, atomic_path, remove_stale_parts
from surfharm.pipeline import outputs
from surfharm.viz.run_folder import IncompleteRunError, read_run

DK_CSV = Path(__file__).parents[1] / "data" / "openneuro_dk" / "dk_thickness_4sites.csv"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def only_the_commands_used(monkeypatch):
    # Building the parser imports only these subcommands (fast, and independent of the others).
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize", "apply", "report", "combat"))


@pytest.fixture
def roi_table(tmp_path):
    data = pd.read_csv(DK_CSV)
    data = data.groupby("dataset").head(6).reset_index(drop=True)
    data["subject"] = data["dataset"] + "_" + data["subject"]
    columns = ["dataset", "subject", "age", "sex"] + [c for c in data.columns if c.startswith("lh_")]
    path = tmp_path / "inputs" / "lh.aparc.thickness.csv"
    path.parent.mkdir(exist_ok=True)
    data[columns].rename(columns={"dataset": "site"}).to_csv(path, index=False)
    return path


def _stack(folder: Path, hemi: str, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    sites = np.array(["A", "B"] * 5)
    maps = 2.5 + 0.3 * (sites == "B")[:, None] + rng.normal(0, 0.1, (10, 642))
    return sio.write_map(folder / f"{hemi}.thickness.fsaverage3.mgh", maps.astype(np.float32))


@pytest.fixture
def stack(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    fsgd = folder / "study.fsgd"
    fsgd.write_text("GroupDescriptorFile 1\nClass A\nClass B\nVariables age\n"
                    + "".join(f"Input s{i:02d} {'AB'[i % 2]} {30 + i}\n" for i in range(10)))
    return _stack(folder, "lh"), _stack(folder, "rh", seed=2), fsgd


def _siblings(out: Path) -> list[str]:
    """Hidden staging, moved-aside and lock entries of runs into ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _harmonize_roi(table, out, *extra):
    return cli.main(["harmonize", "--roi-table", str(table), "--out", str(out), "--quiet", *extra])


def _harmonize_stack(mgh, fsgd, out, *extra):
    return cli.main(["harmonize", "--mgh", str(mgh), "--fsgd", str(fsgd), "--keep", "age", "--out", str(out),
                     "--quiet", "--no-report", *extra])


# -- inputs inside the output folder ---------------------------------------------------------------------

def test_overwrite_refuses_an_roi_table_inside_the_output_folder_before_writing(roi_table, tmp_path, capsys, digests):
    run1 = tmp_path / "run1"
    assert _harmonize_roi(roi_table, run1) == 0, capsys.readouterr().err
    harmonized = run1 / "roi" / "lh.harmonized.csv"
    assert harmonized.is_file()
    before = digests(run1)
    assert _harmonize_roi(harmonized, run1, "--overwrite") == 2
    err = capsys.readouterr().err
    assert str(harmonized) in err and "copy it elsewhere or choose another --out" in err
    assert digests(run1) == before and _siblings(run1) == []


def test_overwrite_refuses_stacked_maps_and_fsgd_inside_the_output_folder(stack, tmp_path, capsys, digests):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0, capsys.readouterr().err
    before = digests(run1)
    code = _harmonize_stack(run1 / "lh" / "lh.thickness.harmonized.mgh", run1 / "lh" / "harmonized.fsgd", run1,
                            "--overwrite")
    assert code == 2 and "lies inside the output folder" in capsys.readouterr().err
    assert digests(run1) == before  # nothing rewritten: model, table and maps as they were
    code = _harmonize_stack(lh, run1 / "lh" / "harmonized.fsgd", run1, "--overwrite")  # one input inside is enough
    assert code == 2 and "FSGD" in capsys.readouterr().err and digests(run1) == before


def test_apply_refuses_a_model_inside_the_output_folder(stack, tmp_path, capsys, digests):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0
    before = digests(run1)
    code = cli.main(["apply", "--model", str(run1), "--mgh", str(lh), "--fsgd", str(fsgd), "--out", str(run1),
                     "--overwrite", "--quiet", "--no-report"])
    assert code == 2 and "model" in capsys.readouterr().err
    assert digests(run1) == before and _siblings(run1) == []


# -- exactly one run per folder ----------------------------------------------------------------------------

def test_overwrite_replaces_the_whole_previous_run(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0
    (run1 / "lh" / "maps" / "old-method.npy").write_bytes((run1 / "lh" / "maps" / "raw.npy").read_bytes())
    assert _harmonize_stack(lh, fsgd, run1, "--overwrite", "--method", "mean-std") == 0, capsys.readouterr().err
    assert sorted(p.name for p in (run1 / "lh" / "maps").iterdir()) == ["mean-std.npy", "raw.npy"]
    assert json.loads((run1 / "lh" / "config.json").read_text())["method"] == "mean-std"
    assert _siblings(run1) == [] and not (run1 / "lh" / INCOMPLETE).exists()
    run = json.loads((run1 / "lh" / "run.json").read_text())
    assert run["complete"] is True and "maps/mean-std.npy" in run["files"]


def test_non_empty_folder_is_refused_without_overwrite_and_foreign_folders_even_with_it(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0
    assert _harmonize_stack(lh, fsgd, run1) == 2 and "not empty" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert _harmonize_stack(lh, fsgd, mine, "--overwrite") == 2
    assert "not a surfharm run" in capsys.readouterr().err and (mine / "thesis.tex").read_text() == "years of work"


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    out = tmp_path / "new"
    with outputs.RunTarget(out, overwrite=False) as first:
        assert _harmonize_stack(lh, fsgd, out) == 2
        assert "another surfharm run" in capsys.readouterr().err
        folder = first.folder("lh")
        (folder / "run.json").write_text("{}")
        outputs.finish_run_folder(folder)
        first.commit()
    assert _harmonize_stack(lh, fsgd, out) == 2 and "not empty" in capsys.readouterr().err  # no silent replacement
    assert _siblings(out) == []


STAGES = ["write_run_folder", "save_model", "write_subject_maps_or_table", "finish_run_folder", "commit"]


def _interrupt(monkeypatch, stage: str, exc=KeyboardInterrupt):
    from surfharm.pipeline import run as run_module

    def boom(*args, **kwargs):
        raise exc("stopped")

    if stage == "write_subject_maps_or_table":
        monkeypatch.setattr(run_module, "_write_harmonized", boom)
    elif stage == "save_model":
        monkeypatch.setattr(run_module.models, "save_model", boom)
    elif stage == "commit":
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(src).endswith(".staging"):
                raise exc("stopped")
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(outputs.os, "replace", replace)
    else:
        monkeypatch.setattr(outputs, stage, boom)


@pytest.mark.parametrize("stage", STAGES)
def test_a_run_stopped_at_any_stage_leaves_the_previous_run_or_nothing(stage, stack, tmp_path, monkeypatch, capsys,
                                                                        digests):
    lh, _, fsgd = stack
    fresh, previous = tmp_path / "fresh", tmp_path / "previous"
    assert _harmonize_stack(lh, fsgd, previous) == 0
    before = digests(previous)
    _interrupt(monkeypatch, stage)
    with pytest.raises(KeyboardInterrupt):
        _harmonize_stack(lh, fsgd, fresh)
    with pytest.raises(KeyboardInterrupt):
        _harmonize_stack(lh, fsgd, previous, "--overwrite", "--method", "mean-std")
    monkeypatch.undo()
    monkeypatch.setattr(cli, "_SUBCOMMAND_MODULES", ("harmonize",))
    assert not fresh.exists() and _siblings(fresh) == []
    assert digests(previous) == before and _siblings(previous) == []
    assert _harmonize_stack(lh, fsgd, fresh) == 0  # the lock was released


def test_a_killed_run_leaves_nothing_in_place_and_the_next_run_cleans_up(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, sys
        from surfharm import cli
        from surfharm.pipeline import outputs
        cli._SUBCOMMAND_MODULES = ("harmonize",)
        outputs.finish_run_folder = lambda folder: os._exit(9)   # killed after the maps, before the end
        cli.main(["harmonize", "--mgh", {str(lh)!r}, "--fsgd", {str(fsgd)!r}, "--out", {str(out)!r}, "--quiet"])
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    assert not out.exists()
    staging = [tmp_path / name for name in _siblings(out) if name.endswith(".staging")]
    assert len(staging) == 1 and (staging[0] / "lh" / "maps" / "combat.npy").is_file()
    assert cli.main(["report", str(staging[0] / "lh"), "--no-render"]) == 2  # the half run is refused
    err = capsys.readouterr().err
    assert "incomplete" in err and "re-run" in err
    assert _harmonize_stack(lh, fsgd, out) == 0
    assert _siblings(out) == []  # stale staging folder and lock file removed


# -- readers refuse incomplete folders ---------------------------------------------------------------------

def test_report_and_apply_refuse_an_incomplete_run_folder(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0
    read_run(run1 / "lh")  # complete
    (run1 / "lh" / INCOMPLETE).write_text("")
    assert cli.main(["report", str(run1 / "lh"), "--no-render"]) == 2
    assert f"{run1 / 'lh'} is incomplete" in capsys.readouterr().err
    code = cli.main(["apply", "--model", str(run1), "--mgh", str(lh), "--fsgd", str(fsgd),
                     "--out", str(tmp_path / "applied"), "--quiet", "--no-report"])
    assert code == 2 and "incomplete" in capsys.readouterr().err and not (tmp_path / "applied").exists()
    (run1 / "lh" / INCOMPLETE).unlink()
    (run1 / "lh" / "maps" / "combat.npy").unlink()  # listed in run.json
    with pytest.raises(IncompleteRunError, match="maps/combat.npy"):
        read_run(run1 / "lh")


def test_benchmark_folders_are_marked_while_written_and_read_when_complete(tmp_path, monkeypatch):
    from surfharm.evaluate import benchmark

    result = benchmark.BenchmarkResult(table=pd.DataFrame({"method": ["raw", "combat"], "site_auroc": [0.9, 0.5]}),
                                       data_name="tiny", config={"seed": 0})
    out = tmp_path / "bench"
    benchmark.write_results(result, out, plots=False)
    assert not (out / INCOMPLETE).exists()
    assert "combat" in read_run(out).metrics.to_string()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "to_markdown", stopped)
    with pytest.raises(KeyboardInterrupt):
        benchmark.write_results(result, tmp_path / "stopped", plots=False)
    with pytest.raises(IncompleteRunError, match="incomplete"):
        read_run(tmp_path / "stopped")


# -- partial files of stopped writes ------------------------------------------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_part_files_are_ignored_by_readers_and_removed_by_the_next_write(stack, tmp_path, capsys):
    lh, _, fsgd = stack
    run1 = tmp_path / "run1"
    assert cli.main(["harmonize", "--mgh", str(lh), "--fsgd", str(fsgd), "--out", str(run1), "--quiet"]) == 0
    maps = run1 / "lh" / "maps"
    legacy = maps / ".combat.npy.k2j3h4.part.npy"     # a name without a process id, from before this process
    legacy.write_bytes(b"\x93NUMPY half")
    os.utime(legacy, (1, 1))
    dead = maps / f".combat.npy.{_dead_pid()}-abc123.part.npy"
    dead.write_bytes(b"half")
    live = maps / f".combat.npy.{os.getpid()}-def456.part.npy"  # a write in progress
    live.write_bytes(b"writing")
    assert set(read_run(run1 / "lh").after) == {"combat"}
    assert cli.main(["report", str(run1 / "lh"), "--no-render", "-o", str(tmp_path / "r.html")]) == 0
    removed = remove_stale_parts(maps / "combat.npy")
    assert sorted(removed) == sorted([legacy, dead]) and live.exists()
    live.unlink()
    # a re-run with --overwrite is not disturbed by them, and the output of 'combat fit' is cleaned the same way
    dead.write_bytes(b"half")
    assert cli.main(["harmonize", "--mgh", str(lh), "--fsgd", str(fsgd), "--out", str(run1), "--quiet",
                     "--no-report", "--overwrite"]) == 0
    model = tmp_path / "m.npz"
    stale = tmp_path / f".m.npz.{_dead_pid()}-zzz.part.npz"
    stale.write_bytes(b"x" * 1000)
    assert cli.main(["combat", "fit", "--mgh", str(lh), "--fsgd", str(fsgd), "--model", str(model)]) == 0
    assert not stale.exists() and model.is_file()


def test_atomic_temporary_files_carry_the_process_id(tmp_path):
    with atomic_path(tmp_path / "x.npy") as tmp:
        assert tmp.name.startswith(f".x.npy.{os.getpid()}-") and ".part" in tmp.name
        tmp.write_bytes(b"1")
    assert (tmp_path / "x.npy").read_bytes() == b"1" and [p.name for p in tmp_path.iterdir()] == ["x.npy"]


# -- a model applied to the data it was fitted on ------------------------------------------------------------

def test_apply_refuses_a_model_of_another_hemisphere_unless_allowed(stack, tmp_path, capsys):
    lh, rh, fsgd = stack
    run1 = tmp_path / "run1"
    assert _harmonize_stack(lh, fsgd, run1) == 0
    config = json.loads((run1 / "lh" / "config.json").read_text())
    assert (config["hemi"], config["measure"], config["level"]) == ("lh", "thickness", 3)
    assert outputs.read_fitted_on(run1 / "lh" / "model.npz")["hemi"] == "lh"
    args = ["apply", "--model", str(run1 / "lh" / "model.npz"), "--mgh", str(rh), "--fsgd", str(fsgd),
            "--quiet", "--no-report"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "hemisphere 'lh' (model) vs 'rh'" in err and "--allow-mismatch" in err
    assert not (tmp_path / "a").exists()
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--allow-mismatch"]) == 0
    assert json.loads((tmp_path / "b" / "rh" / "config.json").read_text())["mismatch_allowed"]


def test_combat_fit_records_the_hemisphere_and_apply_refuses_another(stack, tmp_path, capsys):
    lh, rh, fsgd = stack
    model = tmp_path / "combat_lh.npz"
    assert cli.main(["combat", "fit", "--mgh", str(lh), "--fsgd", str(fsgd), "--model", str(model)]) == 0
    fitted = outputs.read_fitted_on(model)
    assert (fitted["hemi"], fitted["measure"], fitted["n_features"]) == ("lh", "thickness", 642)
    args = ["combat", "apply", "--model", str(model), "--mgh", str(rh), "--fsgd", str(fsgd)]
    assert cli.main([*args, "--output", str(tmp_path / "rh.out.mgh")]) == 2
    assert "hemisphere 'lh' (model) vs 'rh'" in capsys.readouterr().err
    assert not (tmp_path / "rh.out.mgh").exists()
    assert cli.main([*args, "--output", str(tmp_path / "rh.out.mgh"), "--allow-mismatch"]) == 0
    assert cli.main(["combat", "apply", "--model", str(model), "--mgh", str(lh), "--fsgd", str(fsgd),
                     "--output", str(tmp_path / "lh.out.mgh")]) == 0


def test_combat_fit_refuses_an_input_as_the_model_file(roi_table, tmp_path, capsys):
    participants = tmp_path / "participants.csv"
    pd.read_csv(roi_table)[["subject", "site", "age", "sex"]].to_csv(participants, index=False)
    before = participants.read_bytes()
    code = cli.main(["combat", "fit", "--roi-table", str(roi_table), "--participants", str(participants),
                     "--model", str(participants)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--participants" in err and "choose a new file name" in err
    assert participants.read_bytes() == before
    code = cli.main(["combat", "fit", "--roi-table", str(roi_table), "--model", str(tmp_path / "m.npz"),
                     "--output", str(tmp_path / "m.npz")])
    assert code == 2 and "the model file to write" in capsys.readouterr().err


# -- failed writes -----------------------------------------------------------------------------------------------

def _with_file_size_limit(limit: int, argv: list[str]) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes beyond the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from surfharm import cli
        cli._SUBCOMMAND_MODULES = ("harmonize", "combat")
        sys.exit(cli.main({argv!r}))
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("limit", [200, 3000, 20000])
def test_a_full_disk_ends_in_a_one_line_error_and_leaves_nothing(limit, stack, tmp_path):
    lh, _, fsgd = stack
    out = tmp_path / "full"
    done = _with_file_size_limit(limit, ["harmonize", "--mgh", str(lh), "--fsgd", str(fsgd), "--out", str(out),
                                         "--quiet"])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "surfharm harmonize: error: cannot write" in done.stderr
    assert "File too large" in done.stderr or "file-size limit" in done.stderr
    assert not out.exists() and _siblings(out) == []


def test_combat_fit_on_a_full_disk_writes_neither_model_nor_output(stack, tmp_path):
    lh, _, fsgd = stack
    done = _with_file_size_limit(20000, ["combat", "fit", "--mgh", str(lh), "--fsgd", str(fsgd),
                                         "--model", str(tmp_path / "m.npz"), "--output", str(tmp_path / "o.mgh")])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("surfharm combat: error:") and "File too large" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_a_read_only_folder_ends_in_a_one_line_error(stack, tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    lh, _, fsgd = stack

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "ro"
    assert _harmonize_stack(lh, fsgd, out) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: Read-only file system" in err
    assert not out.exists() and _siblings(out) == []
