"""Smoothing and smooth random fields on a spherical mesh.

Distances are geodesic on a sphere of radius :data:`SPHERE_RADIUS_MM` (100 mm, FreeSurfer's
``?h.sphere``), so a full width at half maximum (FWHM) in mm means the same on every icosahedral
level. The kernel is a Gaussian of the geodesic distance cut at 3 sigma, i.e. the small-bandwidth
limit of the heat kernel on the sphere; rows are normalised so that a constant map stays constant.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

#: Radius of FreeSurfer's spheres, the length unit of every FWHM in surfharm.simulate.
SPHERE_RADIUS_MM = 100.0

_FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))


def gaussian_smoother(vertices: np.ndarray, fwhm_mm: float, mask: np.ndarray | None = None) -> sp.csr_matrix:
    """Row-normalised Gaussian smoothing operator on the sphere.

    Parameters
    ----------
    vertices : ndarray
        (V, 3) points on a sphere of any radius (they are projected onto the unit sphere).
    fwhm_mm : float
        full width at half maximum in mm on a 100 mm sphere; 0 gives the identity.
    mask : ndarray or None
        optional (V,) bool; when given only masked vertices contribute (values outside the
        mask never leak in) and rows are renormalised over them.

    Returns
    -------
    csr_matrix
        (V, V) CSR matrix ``W``; ``W @ x`` smooths a map ``x`` (V,) or maps (V, n).
    """
    n = vertices.shape[0]
    if fwhm_mm <= 0:
        return sp.identity(n, format="csr")
    unit = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    sigma = fwhm_mm * _FWHM_TO_SIGMA / SPHERE_RADIUS_MM  # radians
    cutoff_chord = 2.0 * np.sin(min(3.0 * sigma, np.pi) / 2.0)
    tree = cKDTree(unit)
    dist = tree.sparse_distance_matrix(tree, cutoff_chord, output_type="coo_matrix")
    angle = 2.0 * np.arcsin(np.clip(dist.data / 2.0, 0.0, 1.0))
    weights = sp.coo_matrix((np.exp(-0.5 * (angle / sigma) ** 2), (dist.row, dist.col)), shape=(n, n)).tocsr()
    weights = weights + sp.identity(n, format="csr")  # the zero self-distance is not stored by the tree
    if mask is not None:
        weights = weights @ sp.diags(np.asarray(mask, dtype=np.float64))
    row_sum = np.asarray(weights.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.where(row_sum > 0, row_sum, 1.0)) @ weights).tocsr()


def smooth_random_fields(smoother: sp.spmatrix, n_fields: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random fields with zero mean and unit standard deviation at every vertex.

    White noise smoothed by ``smoother`` (:func:`gaussian_smoother`), then divided by the standard
    deviation the smoothing leaves at each vertex (``sqrt(sum_j W_ij^2)``) so that the amplitude is
    exactly 1 everywhere, whatever the FWHM and mesh density.

    Returns
    -------
    ndarray
        (n_fields, V) float64.
    """
    n = smoother.shape[0]
    noise = rng.standard_normal((n, n_fields))
    fields = smoother @ noise
    sd = np.sqrt(np.asarray(smoother.multiply(smoother).sum(axis=1))).ravel()
    return (fields / sd[:, None]).T
