"""Surface data in and out: FreeSurfer (curv, surfaces, MGH/MGZ, annot, label, FSGD), GIfTI, ROI tables.

The format-agnostic entry points :func:`read_map`, :func:`read_maps`, :func:`read_surface` and
:func:`write_map` pick the format from the file name, else from the content. Every reader names the
file and what was expected when it refuses an input; every writer is atomic and never overwrites an
input.
"""
from surfharm.io.dispatch import (
    check_same_hemi,
    detect_format,
    hemi_of,
    read_map,
    read_maps,
    read_surface,
    write_map,
    write_surface,
)
from surfharm.io.errors import InputFileError, InputTableError, InputValueError
from surfharm.io.freesurfer import (
    iter_mgh_frames,
    mgh_shape,
    open_mgh_output,
    read_annot,
    read_cortex_mask,
    read_curv,
    read_fs_surface,
    read_label,
    read_mgh,
    write_annot,
    write_curv,
    write_fs_surface,
    write_mgh,
)
from surfharm.io.fsgd import read_fsgd, write_fsgd
from surfharm.io.gifti import read_gifti_maps, read_gifti_surface, write_gifti_map, write_gifti_surface
from surfharm.io.surface import Annotation, Surface
from surfharm.io.tables import join_covariates, read_roi_table, read_table

__all__ = [
    "Annotation", "InputFileError", "InputTableError", "InputValueError", "Surface",
    "check_same_hemi", "detect_format", "hemi_of", "iter_mgh_frames", "join_covariates",
    "mgh_shape", "open_mgh_output", "read_annot", "read_cortex_mask", "read_curv", "read_fs_surface", "read_fsgd",
    "read_gifti_maps",
    "read_gifti_surface", "read_label", "read_map", "read_maps", "read_mgh", "read_roi_table",
    "read_surface", "read_table", "write_annot", "write_curv", "write_fs_surface", "write_fsgd",
    "write_gifti_map", "write_gifti_surface", "write_map", "write_mgh", "write_surface",
]
