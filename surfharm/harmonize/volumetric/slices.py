"""Volumes to 2-D (or 2.5-D) slices and back, for the slice-based deep image methods.

Numpy only (no torch): the deep methods (:mod:`surfharm.harmonize.volumetric.deep`) turn each scan
into slices here, feed them to their networks, and put the predicted slices back on the scan's grid.

Layout
------
A scan is an array ``(C, X, Y, Z)``: ``C`` contrasts (e.g. T1, T2, FLAIR) on one voxel grid, with a
brain mask ``(X, Y, Z)``. Slicing along ``axis`` (0, 1 or 2; 2 = axial for RAS-oriented volumes) gives
one 2-D image per position ``p`` along that axis. With ``context = k`` each slice also carries its
``k`` neighbours on each side as extra channels (2.5-D); positions beyond the volume are 0, as are
voxels outside the mask. Channels are ordered contrast-major: ``channel = c * (2k + 1) + j`` holds contrast ``c`` at
position ``p - k + j``, so the slice itself (``j = k``) of contrast ``c`` is channel
``c * (2k + 1) + k`` (:func:`centre_channels`).

The two in-plane axes are zero-padded (evenly on both sides) to a multiple of ``2 ** depth`` so a
U-Net of that depth halves them ``depth`` times; :class:`SliceGeometry` records the padding so
:func:`slices_to_volume` can crop it off. Only slices holding at least one mask voxel are extracted
(the others are empty); their positions are returned, and reassembly writes 0 everywhere else.

Intensities
-----------
Every contrast of every scan is divided by its own in-mask ``percentile`` (99th by default:
robust to a few bright vessels, unlike the maximum) so that brain tissue lies in about [0, 1]
whatever the scanner's unit (:func:`intensity_factor`). Voxels outside the mask are 0 in the slices.
The factor is kept so a harmonized scan can be put back into an intensity unit (the deep base uses
the target site's median factor, see :mod:`surfharm.harmonize.volumetric.deep`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surfharm.io.nifti import VolumeInputError

#: Default in-mask percentile that defines a contrast's intensity unit.
DEFAULT_PERCENTILE = 99.0


@dataclass(frozen=True)
class SliceGeometry:
    """How one volume grid is cut into slices and padded.

    Attributes
    ----------
    shape : (X, Y, Z) of the volume.
    axis : the axis sliced along (0, 1 or 2).
    context : neighbours on each side stacked as channels (0: plain 2-D slices).
    pad : ((before, after), (before, after)) zero padding of the two in-plane axes, in their order.
    """

    shape: tuple[int, int, int]
    axis: int
    context: int
    pad: tuple[tuple[int, int], tuple[int, int]]

    @property
    def in_plane(self) -> tuple[int, int]:
        """The two in-plane sizes before padding."""
        return tuple(s for a, s in enumerate(self.shape) if a != self.axis)

    @property
    def padded(self) -> tuple[int, int]:
        """(H, W): the in-plane size of every slice after padding."""
        return tuple(s + b + a for s, (b, a) in zip(self.in_plane, self.pad))

    @property
    def n_positions(self) -> int:
        """Number of positions along the slicing axis."""
        return self.shape[self.axis]

    def channels(self, n_contrasts: int) -> int:
        """Channels of a slice of ``n_contrasts`` contrasts: ``n_contrasts * (2 context + 1)``."""
        return n_contrasts * (2 * self.context + 1)


def slice_geometry(shape, axis: int = 2, depth: int = 0, context: int = 0, size=None) -> SliceGeometry:
    """The :class:`SliceGeometry` of a volume of ``shape`` (X, Y, Z): in-plane zero-padded to at least
    ``size`` (H, W) when given (one slice size for scans of several grids), then to a multiple of
    ``2 ** depth``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise VolumeInputError(f"expected a 3-D volume shape, got {shape}")
    if axis not in (0, 1, 2):
        raise VolumeInputError(f"slice_axis must be 0, 1 or 2, got {axis!r}")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
        raise VolumeInputError(f"context must be an int >= 0 (neighbour slices on each side), got {context!r}")
    multiple = 2 ** int(depth)
    in_plane = [s for a, s in enumerate(shape) if a != axis]
    wanted = in_plane if size is None else [max(s, int(w)) for s, w in zip(in_plane, size)]
    pad = []
    for s, w in zip(in_plane, wanted):
        extra = (w + -w % multiple) - s
        pad.append((extra // 2, extra - extra // 2))
    return SliceGeometry(shape=shape, axis=int(axis), context=int(context), pad=(pad[0], pad[1]))


def intensity_factor(data: np.ndarray, mask: np.ndarray, percentile: float = DEFAULT_PERCENTILE,
                     name: str = "scan") -> float:
    """The in-mask ``percentile`` of ``data`` (> 0): the unit a contrast is divided by before slicing."""
    values = np.asarray(data)[mask]
    factor = float(np.percentile(values, percentile)) if values.size else float("nan")
    if not np.isfinite(factor) or factor <= 0:
        raise VolumeInputError(f"{name}: the in-mask {percentile:g}th percentile of intensity is {factor:g}; "
                               "expected a positive value (is the scan empty or negative inside its brain mask?)")
    return factor


def centre_channels(n_contrasts: int, context: int) -> np.ndarray:
    """Indices of each contrast's own slice (not its neighbours) among a slice's channels, ``(n_contrasts,)``."""
    return np.arange(n_contrasts) * (2 * context + 1) + context


def _to_slices_axis(volume: np.ndarray, axis: int) -> np.ndarray:
    """(..., X, Y, Z) -> (..., P, H0, W0): the slicing axis moved before the two in-plane axes."""
    return np.moveaxis(volume, volume.ndim - 3 + axis, volume.ndim - 3)


def volume_to_slices(volume: np.ndarray, mask: np.ndarray, geometry: SliceGeometry,
                     positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a (normalised) scan into padded slices.

    Parameters
    ----------
    volume : (C, X, Y, Z) or (X, Y, Z) float array (one contrast).
    mask : (X, Y, Z) bool brain mask; voxels outside it are 0 in the slices.
    geometry : from :func:`slice_geometry` for this volume's shape.
    positions : positions along the axis to extract; default: every one holding a mask voxel.

    Returns
    -------
    slices : (S, C * (2 context + 1), H, W) float32 (channel order: module docstring).
    masks : (S, H, W) bool, the mask of each slice (False in the padding).
    positions : (S,) int64, the position of each slice along the axis.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.shape[1:] != geometry.shape or mask.shape != geometry.shape:
        raise VolumeInputError(f"volume {volume.shape[1:]} and mask {mask.shape} do not match the slice geometry "
                               f"{geometry.shape}")
    vol = _to_slices_axis(np.where(mask, volume, 0.0).astype(np.float32), geometry.axis)   # (C, P, H0, W0)
    msk = _to_slices_axis(mask, geometry.axis)                                              # (P, H0, W0)
    if positions is None:
        positions = np.flatnonzero(msk.any(axis=(1, 2)))
    positions = np.asarray(positions, dtype=np.int64)
    k = geometry.context
    # Neighbour j of position p is p - k + j; k zero slices on each end stand for positions beyond the volume.
    padded_vol = np.pad(vol, ((0, 0), (k, k), (0, 0), (0, 0)))
    neighbours = positions[:, None] + np.arange(2 * k + 1)[None]                            # (S, 2k+1)
    stacked = padded_vol[:, neighbours]                                                     # (C, S, 2k+1, H0, W0)
    stacked = np.moveaxis(stacked, 0, 1).reshape(len(positions), -1, *vol.shape[2:])        # (S, C(2k+1), H0, W0)
    (a0, a1), (b0, b1) = geometry.pad
    slices = np.pad(stacked, ((0, 0), (0, 0), (a0, a1), (b0, b1)))
    masks = np.pad(msk[positions], ((0, 0), (a0, a1), (b0, b1)))
    return slices, masks, positions


def slices_to_volume(slices: np.ndarray, positions: np.ndarray, geometry: SliceGeometry,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """Put predicted slices back on the volume grid.

    Parameters
    ----------
    slices : (S, C, H, W): one image per contrast for each slice (no context channels).
    positions : (S,) their positions along the axis (as returned by :func:`volume_to_slices`).
    geometry : the volume's :class:`SliceGeometry`.
    mask : (X, Y, Z) bool or None; voxels outside it are set to 0.

    Returns
    -------
    (C, X, Y, Z) float32; positions not given are 0.
    """
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 4 or tuple(slices.shape[2:]) != tuple(geometry.padded):
        raise VolumeInputError(f"slices of shape {slices.shape}; expected (S, C, {geometry.padded[0]}, "
                               f"{geometry.padded[1]})")
    (a0, _), (b0, _) = geometry.pad
    h0, w0 = geometry.in_plane
    n_channels = slices.shape[1]
    out = np.zeros((n_channels, geometry.n_positions, h0, w0), dtype=np.float32)           # (C, P, H0, W0)
    out[:, np.asarray(positions, dtype=np.int64)] = np.moveaxis(slices[:, :, a0:a0 + h0, b0:b0 + w0], 0, 1)
    out = np.moveaxis(out, 1, 1 + geometry.axis)                                            # (C, X, Y, Z)
    if mask is not None:
        out = np.where(mask[None], out, 0.0).astype(np.float32)
    return np.ascontiguousarray(out)


__all__ = ["DEFAULT_PERCENTILE", "SliceGeometry", "centre_channels", "intensity_factor", "slice_geometry",
           "slices_to_volume", "volume_to_slices"]
