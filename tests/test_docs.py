"""The documentation site builds with warnings as errors (broken cross-references included), gallery and all."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # runs every example in quick mode for the gallery


def test_docs_build_without_warnings(tmp_path):
    missing = [m for m in ("sphinx", "myst_parser", "sphinx_gallery", "pydata_sphinx_theme")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"documentation tools not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    if importlib.util.find_spec("pyvista") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("the gallery runs every example: needs the deep and viz extras (pip install -e '.[all]')")
    # Built from docs/ (the pages it generates there are ignored by git) into a temporary folder.
    out = tmp_path / "html"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             str(REPO / "docs"), str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-10000:]
    assert (out / "index.html").is_file() and (out / "api.html").is_file()
    gallery = (out / "auto_examples" / "render_maps.html").read_text()
    assert "sphx_glr_render_maps_001.png" in gallery          # the example's renderings are shown
    assert "held-out scans" in (out / "auto_examples" / "combat_roi_table.html").read_text()  # and its output
