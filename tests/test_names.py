"""One name for one thing: the exception base class, the vertex-count table, hemisphere names, the mesh type."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import spherical_ops
import surfharm
from surfharm.errors import SurfharmError

PACKAGE = Path(surfharm.__file__).parent


def _surfharm_modules():
    for info in pkgutil.walk_packages(surfharm.__path__, "surfharm."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_exception_class_derives_from_surfharm_error():
    found, stray = [], []
    for module in _surfharm_modules():
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(f"{module.__name__}.{name}")
                if not issubclass(obj, SurfharmError):
                    stray.append(f"{module.__name__}.{name}")
    assert not stray, f"exception classes not deriving from SurfharmError: {stray}"
    assert len(found) > 10     # the walk did find the package's errors


def test_errors_keep_their_builtin_base():
    from surfharm.cohort import CohortError
    from surfharm.harmonize import HarmonizerInputError
    from surfharm.io import InputFileError
    from surfharm.training import TrainingDivergedError

    for cls in (CohortError, HarmonizerInputError, InputFileError):
        assert issubclass(cls, ValueError) and issubclass(cls, SurfharmError)
    assert issubclass(TrainingDivergedError, RuntimeError)
    assert surfharm.SurfharmError is SurfharmError


def test_level_of_is_the_only_vertex_count_table():
    # ``10 * 4 ** k + 2`` is written once, in spherical_ops.mesh.n_vertices; surfharm calls
    # spherical_ops.n_vertices / level_of / VERTEX_COUNTS.
    pattern = re.compile(r"4 \*\* ")
    copies = [f"{path.relative_to(PACKAGE.parent)}:{number}"
              for path in sorted(PACKAGE.rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not copies, f"vertex-count arithmetic outside spherical_ops.mesh: {copies}"


def test_s2sgan_level_errors_name_what_was_expected():
    from surfharm.harmonize import HarmonizerInputError
    from surfharm.harmonize.s2sgan import _level_of

    assert _level_of(10242) == 5
    with pytest.raises(HarmonizerInputError, match=r"got 10000 vertices, expected one of 12, 42, .*10242"):
        _level_of(10000)
    with pytest.raises(HarmonizerInputError, match="level >= 2"):
        _level_of(42)


@pytest.mark.parametrize("alias, name", [("lh", "lh"), ("left", "lh"), ("LH", "lh"), ("rh", "rh"), ("right", "rh")])
def test_hemisphere_aliases(alias, name):
    from surfharm.atlas import dk_labels, fsaverage_cortex_mask
    from surfharm.evaluate.rois import roi_means
    from surfharm.hemispheres import hemi_name
    from surfharm.viz.surfaces import normalize_hemi

    assert hemi_name(alias) == name
    assert normalize_hemi(alias) == name
    np.testing.assert_array_equal(dk_labels(alias, 3), dk_labels(name, 3))
    np.testing.assert_array_equal(fsaverage_cortex_mask(alias, 3), fsaverage_cortex_mask(name, 3))
    assert roi_means(np.ones((1, 642)), alias).columns[0] == f"{name}_bankssts"


def test_bad_hemisphere_names_the_accepted_ones():
    from surfharm.atlas import dk_labels
    from surfharm.hemispheres import hemi_name

    with pytest.raises(ValueError, match="'lh' or 'rh'"):
        hemi_name("middle")
    with pytest.raises(SurfharmError, match="'lh' or 'rh'"):
        dk_labels("middle", 3)
    assert hemi_name("both", allow_both=True) == "both"


def test_one_mesh_type():
    from surfharm.io import Surface
    from surfharm.viz.surfaces import load_surface

    ico = spherical_ops.icosphere(2)
    assert Surface is spherical_ops.Surface
    assert isinstance(ico, Surface) and ico.level == 2
    drawn = load_surface(ico)
    assert type(drawn) is Surface and drawn.n_vertices == ico.n_vertices
