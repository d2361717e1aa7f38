"""``surfharm doctor``: one line per component, OK or missing with its fix; fast (no rendering here)."""
import subprocess

import pytest

from surfharm.cli import build_parser, main
from surfharm.cli import doctor


def test_doctor_reports_every_component(capsys):
    assert main(["doctor", "--no-render"]) == 0
    out = capsys.readouterr().out
    import surfharm

    assert f"OK      surfharm               {surfharm.__version__}" in out
    for name in ("python", "numpy", "scipy", "scikit-learn", "nibabel", "nilearn", "torch [deep]",
                 "safetensors [deep]", "pyvista [viz]", "off-screen rendering", "chromium"):
        assert f" {name} " in out, f"no line for {name}"
    assert "not tested (--no-render)" in out


def test_missing_parts_come_with_their_fix(monkeypatch, capsys):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist in ("torch", "pyvista") else real(dist))
    monkeypatch.setattr(doctor, "find_chromium", lambda: None)
    assert main(["doctor", "--no-render"]) == 0  # extras are optional
    out = capsys.readouterr().out
    assert "missing torch [deep]" in out
    assert 'fix: pip install torch==2.13.0 then pip install -e ".[deep]"' in out
    assert 'missing pyvista [viz]' in out and 'fix: pip install -e ".[viz]"' in out
    assert "missing chromium" in out and "apt-get install chromium" in out
    assert "optional parts missing: torch [deep], pyvista [viz], chromium" in out


def test_missing_core_package_fails(monkeypatch, capsys):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist == "nibabel" else real(dist))
    assert main(["doctor", "--no-render"]) == 1
    out = capsys.readouterr().out
    assert "MISSING nibabel" in out and "surfharm is NOT usable" in out


def test_render_check_times_out_and_fails_cleanly(monkeypatch):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(doctor.subprocess, "run", hang)
    check = doctor.check_render(timeout=1)
    assert not check.ok and "no picture within 1 s" in check.detail and "xvfb-run" in check.fix

    monkeypatch.setattr(doctor.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, "vtkEGLRenderWindow 41.5\n", ""))
    assert doctor.check_render().detail == "works (vtkEGLRenderWindow)"
    monkeypatch.setattr(doctor.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "Traceback...\nRuntimeError: no OpenGL\n"))
    assert doctor.check_render().detail == "failed: RuntimeError: no OpenGL"


def test_version_and_selfcheck_stay():
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0
    assert parser.parse_args(["selfcheck"]).func.__module__ == "surfharm.cli.selfcheck"
    assert parser.parse_args(["doctor", "--selfcheck"]).selfcheck
