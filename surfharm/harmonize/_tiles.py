"""Reading a (scans x features) matrix in tiles: the passes of the ComBat family over the data.

A ``np.memmap`` of thousands of scans never has to be in memory: every pass reads one block of
features at a time, in tiles of about :data:`CHUNK_BYTES` of float64.
"""
from __future__ import annotations

import numpy as np

from surfharm.harmonize.base import HarmonizerInputError, check_matrix_shape, check_not_empty

#: Bytes of float64 working memory per tile of scans x features (each pass holds a few such tiles).
CHUNK_BYTES = 2**20
#: Features per block: every per-feature statistic is computed one block at a time.
FEATURE_BLOCK = 16384


def _feature_blocks(n_features: int):
    """Consecutive slices of at most FEATURE_BLOCK features covering ``range(n_features)``."""
    for start in range(0, n_features, FEATURE_BLOCK):
        yield slice(start, min(start + FEATURE_BLOCK, n_features))


def _row_blocks(X, block: slice):
    """Yield ``(row slice, float64 copy of X[rows, block])`` over all scans, about CHUNK_BYTES per tile.

    The copy is the caller's to modify; a memory map is read one tile at a time.
    """
    n_scans = X.shape[0]
    step = max(1, CHUNK_BYTES // (8 * max(block.stop - block.start, 1)))
    for start in range(0, n_scans, step):
        rows = slice(start, min(start + step, n_scans))
        yield rows, np.array(X[rows, block], dtype=np.float64, copy=True)


def _refuse_inf(tile: np.ndarray, rows: slice, block: slice) -> None:
    """Refuse inf in a tile of X (NaN marks missing values; a finite sum means neither is there)."""
    if not np.isfinite(tile.sum()) and np.isinf(tile).any():
        r, c = np.nonzero(np.isinf(tile))
        raise HarmonizerInputError(
            f"X holds inf at scan {rows.start + r[0]}, feature {block.start + c[0]}; use NaN for missing values")


def _chunks(X, scans=None, columns=None, copy=True):
    """Yield ``(scan indices, float64 block of those rows)``, about CHUNK_BYTES per block.

    ``scans``: the scans to visit (default all, in order); ``columns``: only these features.
    With ``copy`` (default) each block is a fresh array the caller may modify in place; without,
    it may be a read-only view of X.
    """
    n_scans, n_features = X.shape
    width = n_features if columns is None else len(columns)
    step = max(1, CHUNK_BYTES // (8 * max(width, 1)))
    order = np.arange(n_scans) if scans is None else np.asarray(scans)
    for start in range(0, order.size, step):
        rows = order[start:start + step]
        contiguous = rows[-1] - rows[0] == rows.size - 1
        block = X[rows[0]:rows[-1] + 1] if contiguous else X[rows]
        if columns is not None:
            block = block[:, columns]
        yield rows, (np.array(block, dtype=np.float64, copy=True) if copy
                     else np.asarray(block, dtype=np.float64))


def _check_matrix(X):
    """A 2-D numeric array (a np.memmap stays a memmap: nothing is loaded here)."""
    return check_not_empty(check_matrix_shape(X, allow_bool=False))
