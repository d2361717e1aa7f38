"""Volumetric harmonization of T1-weighted NIfTI scans, on the same harmonizer protocol.

Methods (registry names in brackets; all are :class:`surfharm.harmonize.Harmonizer` subclasses):

- per-scan intensity maps, which stream one volume at a time:
  :class:`ZScore` ("zscore"), :class:`GlobalScaling` ("global-scaling-vol"),
  :class:`WhiteStripe` ("white-stripe"), :class:`Nyul` ("nyul"), :class:`MICA` ("mica");
- voxel-wise methods, on scans registered to one grid:
  :class:`RAVEL` ("ravel"), :class:`VoxelComBat` ("voxel-combat").

``fit``/``transform`` take a list of volumes (paths, nibabel images or 3-D arrays) with
``masks=``, or a 2-D array (n_scans, n_voxels), with every side datum by keyword
(``fit(X, sites=s, masks=m)``); see :mod:`surfharm.harmonize.volumetric.base`.

``import surfharm.harmonize`` does not import this package: it is imported, and its methods
registered, the first time :func:`surfharm.harmonize.get` / :func:`~surfharm.harmonize.available`
/ :func:`~surfharm.harmonize.load` ask for a name it holds.

Deep image methods learn 2-D networks on slices (torch): their base is
:class:`~surfharm.harmonize.volumetric.deep.DeepImageHarmonizer` (slicing in
:mod:`~surfharm.harmonize.volumetric.slices`, networks in :mod:`surfharm.models.image2d`), and each is a
module of this package registered lazily by name in :mod:`surfharm.harmonize.base` (this package does
not import them, so it stays torch-free): DeepHarmony ("deepharmony",
:mod:`~surfharm.harmonize.volumetric.deep_harmony`); they take whole volumes only (no matrix form),
so they are not in :data:`VOLUMETRIC_METHODS`. The fixture (:mod:`surfharm.simulate.volumes`) and the
image metrics (:mod:`surfharm.evaluate.image_metrics`) take any registered volumetric method; the
benchmark scenario (:mod:`surfharm.evaluate.volumetric_scenario`) those of the matrix form. NIfTI
reading and writing is :mod:`surfharm.io.nifti`.
"""
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, VolumeHarmonizer
from surfharm.harmonize.volumetric.mica import MICA
from surfharm.harmonize.volumetric.nyul import Nyul
from surfharm.harmonize.volumetric.ravel import RAVEL
from surfharm.harmonize.volumetric.voxel_combat import VoxelComBat
from surfharm.harmonize.volumetric.white_stripe import WhiteStripe
from surfharm.harmonize.volumetric.zscore import GlobalScaling, ZScore
from surfharm.io.nifti import VolumeInputError, load_mask, load_volume, save_volume

#: Registry names of the volumetric methods, in the order reports list them.
VOLUMETRIC_METHODS = ("zscore", "global-scaling-vol", "white-stripe", "nyul", "mica", "ravel", "voxel-combat")

__all__ = ["GlobalScaling", "IntensityMapHarmonizer", "MICA", "Nyul", "RAVEL", "VOLUMETRIC_METHODS",
           "VolumeHarmonizer", "VolumeInputError", "VoxelComBat", "WhiteStripe", "ZScore", "load_mask",
           "load_volume", "save_volume"]
