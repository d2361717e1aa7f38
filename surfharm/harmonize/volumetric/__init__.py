"""Volumetric harmonization of T1-weighted NIfTI scans, on the same harmonizer protocol.

Methods (registry names in brackets; all are :class:`surfharm.harmonize.Harmonizer` subclasses):

- per-scan intensity maps, which stream one volume at a time:
  :class:`ZScore` ("zscore"), :class:`GlobalScaling` ("global-scaling-vol"),
  :class:`WhiteStripe` ("white-stripe"), :class:`Nyul` ("nyul"), :class:`MICA` ("mica");
- voxel-wise methods, on scans registered to one grid:
  :class:`RAVEL` ("ravel"), :class:`VoxelComBat` ("voxel-combat").

``fit``/``transform`` take a list of volumes (paths, nibabel images or 3-D arrays) with
``masks=``, or a 2-D array (n_scans, n_voxels); see :mod:`surfharm.volumetric.base`.

Deep volumetric methods (DeepHarmony, CALAMITI, ImUnity, MISPEL, MURD, DeepComBat) are not
implemented yet. Each will be a module of this package holding a :class:`VolumeHarmonizer`
subclass registered under its name, with its torch modules under ``surfharm/models/``; the
fixture (:mod:`.simulate`), the metrics (:mod:`.metrics`) and the benchmark scenario
(:mod:`.scenario`) already take any registered volumetric method.
"""
from surfharm.volumetric.base import IntensityMapHarmonizer, VolumeHarmonizer
from surfharm.volumetric.io import VolumeInputError, load_mask, load_volume, save_volume
from surfharm.volumetric.mica import MICA
from surfharm.volumetric.nyul import Nyul
from surfharm.volumetric.ravel import RAVEL
from surfharm.volumetric.voxel_combat import VoxelComBat
from surfharm.volumetric.white_stripe import WhiteStripe
from surfharm.volumetric.zscore import GlobalScaling, ZScore

#: Registry names of the volumetric methods, in the order reports list them.
VOLUMETRIC_METHODS = ("zscore", "global-scaling-vol", "white-stripe", "nyul", "mica", "ravel", "voxel-combat")

__all__ = ["GlobalScaling", "IntensityMapHarmonizer", "MICA", "Nyul", "RAVEL", "VOLUMETRIC_METHODS",
           "VolumeHarmonizer", "VolumeInputError", "VoxelComBat", "WhiteStripe", "ZScore", "load_mask",
           "load_volume", "save_volume"]
