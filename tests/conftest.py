"""Fixtures shared by the test folders: the shipped data, subject-like spheres, file digests.

Tests are grouped in folders that mirror the package (``tests/harmonize`` for
``surfharm/harmonize``...); data files shared by all of them live in ``tests/data``.
Tests marked ``slow`` train networks, run the demo, the examples or the documentation build, or
open a browser: ``pytest -m "not slow"`` is the fast inner loop.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

#: Data shipped for the tests (see each folder's README for its origin and licence).
DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: the real FreeSurfer subject, the OpenNeuro ROI table, model files of earlier releases."""
    return DATA_DIR


def subject_sphere(n: int, seed: int):
    """A subject-like ``sphere.reg``: ``n`` quasi-uniform points (radius 100), randomly rotated,
    not icosahedral, triangulated by their convex hull."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.transform import Rotation

    from surfharm import io as sio

    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    v = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], axis=1)
    v = v @ Rotation.random(random_state=seed).as_matrix().T
    return sio.Surface(100 * v, ConvexHull(v).simplices.astype(np.int64))


@pytest.fixture(scope="session")
def sphere_reg():
    """``sphere_reg(n, seed)`` -> a subject-like sphere (:func:`subject_sphere`)."""
    return subject_sphere


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path (to show that nothing was changed)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def digests():
    """``digests(folder)`` -> {relative path: SHA-256} of every file below ``folder``."""
    return file_digests
