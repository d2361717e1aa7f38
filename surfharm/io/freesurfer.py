"""FreeSurfer formats: morphometry (curv), surfaces, MGH/MGZ maps, annotations and labels.

Readers are built on ``nibabel.freesurfer`` and check what nibabel does not: magic numbers, sizes
against the header (a truncated ``lh.thickness`` is refused instead of read short), finite
coordinates. Gzipped inputs (``lh.white.gz``, ``lh.aparc.annot.gz``) are read transparently.
Writers go through :func:`surfharm._atomic.atomic_path`: atomic, never over an input.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.freesurfer import io as fsio

from surfharm._atomic import atomic_path
from surfharm.io._files import existing_file, head_bytes, is_gzip, plain_copy, read_all_bytes
from surfharm.io.errors import InputFileError
from surfharm.io.surface import Annotation, Surface, validate_surface

CURV_MAGIC = b"\xff\xff\xff"          # "new" curv format (FreeSurfer >= 4)
TRIANGLE_MAGIC = b"\xff\xff\xfe"      # triangle surface
QUAD_MAGIC = b"\xff\xff\xfd"          # quad surface written by old tools (nibabel reads it)
MGH_HEADER_BYTES = 284
_MGH_DTYPES = {0: np.dtype(">u1"), 1: np.dtype(">i4"), 3: np.dtype(">f4"), 4: np.dtype(">i2")}

#: Annotation regions that are not cortex (FreeSurfer aparc / a2009s conventions).
NON_CORTEX_REGIONS = ("unknown", "medialwall", "medial_wall", "corpuscallosum", "???")


# -- morphometry (curv) ----------------------------------------------------------------------------

def read_curv(path: str | os.PathLike) -> np.ndarray:
    """Read a FreeSurfer morphometry file (``lh.thickness``, ``lh.curv``, ``lh.area``, ``.gz`` too).

    Returns
    -------
    ndarray
        (V,) float32, one value per vertex of the subject's surface.
    """
    path = existing_file(path)
    head = head_bytes(path, 15)
    if head[:3] != CURV_MAGIC:
        raise InputFileError(
            f"{path}: not a FreeSurfer morphometry (curv) file: magic number {head[:3].hex()} "
            f"(expected ffffff; old-format curv files are not supported)")
    if len(head) < 15:
        raise InputFileError(f"{path}: truncated morphometry file ({len(head)} header bytes, expected 15)")
    n_vertices, _, per_vertex = (int(x) for x in np.frombuffer(head[3:15], ">i4"))
    with plain_copy(path) as plain:
        expected = 15 + 4 * n_vertices
        size = plain.stat().st_size
        if n_vertices <= 0 or per_vertex != 1 or size < expected:
            raise InputFileError(
                f"{path}: truncated or corrupt morphometry file: header says {n_vertices} vertices "
                f"x {per_vertex} value(s) ({expected} bytes), file has {size} bytes")
        values = fsio.read_morph_data(str(plain))
    return np.asarray(values, dtype=np.float32)


def write_curv(path: str | os.PathLike, values, *, inputs=(), overwrite: bool = True) -> Path:
    """Write (V,) values as a FreeSurfer morphometry file; gzipped when ``path`` ends in ``.gz``."""
    values = _as_vector(values, path)
    buf = io.BytesIO()
    fsio.write_morph_data(buf, values.astype(np.float32))
    data = buf.getvalue()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# -- surfaces ----------------------------------------------------------------------------------------

def read_fs_surface(path: str | os.PathLike) -> Surface:
    """Read a FreeSurfer surface (``lh.white``, ``lh.pial``, ``lh.sphere``, ``lh.sphere.reg``; ``.gz`` too).

    Returns
    -------
    Surface
        :class:`Surface` with vertices (V, 3) float64 (mm; radius 100 for spheres) and faces (F, 3) int64.
    """
    path = existing_file(path)
    magic = head_bytes(path, 3)
    if magic not in (TRIANGLE_MAGIC, QUAD_MAGIC, CURV_MAGIC):
        raise InputFileError(f"{path}: not a FreeSurfer surface: magic number {magic.hex()} (expected fffffe)")
    if magic == CURV_MAGIC and _looks_like_curv(path):
        raise InputFileError(f"{path}: is a morphometry (curv) file, not a surface; read it with read_map")
    with plain_copy(path) as plain:
        try:
            vertices, faces = fsio.read_geometry(str(plain))
        except Exception as exc:  # nibabel raises ValueError/IndexError on short reads
            raise InputFileError(f"{path}: truncated or corrupt FreeSurfer surface "
                                 f"({type(exc).__name__}: {exc})") from None
    return validate_surface(vertices, faces, str(path))


def write_fs_surface(path: str | os.PathLike, surface: Surface, *, inputs=(), overwrite: bool = True) -> Path:
    """Write a :class:`Surface` as a FreeSurfer triangle surface."""
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        fsio.write_geometry(str(tmp), np.asarray(surface.vertices, np.float32), np.asarray(surface.faces, np.int32))
    return Path(path)


def _looks_like_curv(path: Path) -> bool:
    head = head_bytes(path, 15)
    return len(head) == 15 and int(np.frombuffer(head[11:15], ">i4")[0]) == 1


# -- MGH / MGZ ---------------------------------------------------------------------------------------

def read_mgh(path: str | os.PathLike) -> np.ndarray:
    """Read a surface MGH/MGZ file (one frame per map; ``mris_preproc`` stacks one frame per subject).

    Returns
    -------
    ndarray
        (n_frames, V) array, float32 for float data (integer data keeps an integer type): frame ``i``
        is row ``i``. The file is read once, front to back, into one array.
    """
    n_frames, n_vert = mgh_shape(path)
    out = None
    for start, block in iter_mgh_frames(path):
        if out is None:
            out = np.empty((n_frames, n_vert), dtype=block.dtype)
        out[start:start + block.shape[0]] = block
    return out


def mgh_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(n_frames, n_vertices)`` of a surface MGH/MGZ file, read from its header only."""
    path = existing_file(path)
    (w, h, d, frames), _ = _mgh_header(path)
    return frames, w * h * d


def iter_mgh_frames(path: str | os.PathLike, chunk_frames: int = 64):
    """Yield ``(start, block)``, block (n, V) frames ``start..start+n-1``, reading the file once, in order.

    Streams a stacked MGH/MGZ of thousands of subjects without holding it all in memory. Blocks are
    float32 for float data, native-endian integers otherwise. A file that ends early raises
    InputFileError naming the frame where the data stops.
    """
    path = existing_file(path)
    (w, h, d, n_frames), dtype = _mgh_header(path)
    n_vert = w * h * d  # FreeSurfer's (V, 1, 1, frames) layout: each frame is V contiguous values
    out_dtype = np.float32 if dtype.kind == "f" else dtype.newbyteorder("=")
    frame_bytes = n_vert * dtype.itemsize
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            fh.read(MGH_HEADER_BYTES)
            for start in range(0, n_frames, chunk_frames):
                n = min(chunk_frames, n_frames - start)
                raw = fh.read(n * frame_bytes)
                if len(raw) != n * frame_bytes:
                    raise InputFileError(
                        f"{path}: truncated MGH data: header says {n_frames} frames x {n_vert} vertices, "
                        f"data ends inside frame {start + len(raw) // frame_bytes}")
                yield start, np.frombuffer(raw, dtype).reshape(n, n_vert).astype(out_dtype)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise InputFileError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def _mgh_header(path: Path) -> tuple[tuple[int, int, int, int], np.dtype]:
    head = head_bytes(path, 28)
    if len(head) < 28:
        raise InputFileError(f"{path}: truncated MGH file ({len(head)} header bytes, expected {MGH_HEADER_BYTES})")
    version, w, h, d, frames, dtype_code = (int(x) for x in np.frombuffer(head[:24], ">i4"))
    if version != 1:
        raise InputFileError(f"{path}: not an MGH/MGZ file: version field {version} (expected 1)")
    if dtype_code not in _MGH_DTYPES or min(w, h, d, frames) < 1:
        raise InputFileError(f"{path}: corrupt MGH header: dims {(w, h, d, frames)}, data type code {dtype_code}")
    return (w, h, d, frames), _MGH_DTYPES[dtype_code]


def _mgh_affine(path: Path) -> np.ndarray:
    """The vox2ras affine from an MGH/MGZ header (the data is not read)."""
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as fh:
        return nib.freesurfer.mghformat.MGHHeader.from_fileobj(fh).get_affine()


def write_mgh(path: str | os.PathLike, values, *, like: str | os.PathLike | None = None,
              inputs=(), overwrite: bool = True) -> Path:
    """Write (V,) or (n_frames, V) values as a surface MGH (``.mgh``) or compressed MGZ (``.mgz``).

    ``like``: an MGH/MGZ whose affine is copied (e.g. the input the values came from).
    """
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"values for {path} must be (V,) or (n_frames, V), got shape {arr.shape}")
    dtype = np.int32 if arr.dtype.kind in "iub" else np.float32
    data = np.ascontiguousarray(arr.T.astype(dtype))[:, None, None, :]  # (V, 1, 1, frames)
    affine = np.eye(4) if like is None else _mgh_affine(existing_file(like))
    if data.shape[-1] == 1:
        data = data[..., 0]
    image = nib.MGHImage(data, affine)
    with atomic_path(path, inputs=(*inputs, like), overwrite=overwrite) as tmp:
        nib.save(image, str(tmp))
    return Path(path)


@contextlib.contextmanager
def open_mgh_output(path: str | os.PathLike, n_frames: int, n_vertices: int, *,
                    like: str | os.PathLike | None = None, inputs=(), overwrite: bool = True,
                    workdir: str | os.PathLike | None = None):
    """Write a stacked float32 MGH/MGZ of (n_frames, n_vertices) without holding it in memory.

    Yields a writable (n_frames, n_vertices) array to fill (e.g. ``ComBat.transform(..., out=it)``):
    for ``.mgh`` a memory map of the data of the (temporary) output file itself, for ``.mgz`` a
    temporary ``.npy`` memory map in ``workdir`` (default: the output's folder) that is compressed
    into the file frame block by frame block on exit. The file appears atomically, only when the
    block ends without an error, and never over an input. ``like``: an MGH/MGZ whose affine is copied.
    """
    path = Path(path)
    if not path.name.lower().endswith((".mgh", ".mgz")):
        raise ValueError(f"{path}: a stacked map is written as .mgh or .mgz")
    header = _mgh_header_for(n_frames, n_vertices, like)
    with atomic_path(path, inputs=(*inputs, like), overwrite=overwrite) as tmp:
        if path.name.lower().endswith(".mgh"):
            with open(tmp, "wb") as fh:
                header.writehdr_to(fh)
                fh.truncate(MGH_HEADER_BYTES + 4 * n_frames * n_vertices)
            data = np.memmap(tmp, dtype=">f4", mode="r+", offset=MGH_HEADER_BYTES, shape=(n_frames, n_vertices))
            yield data
            data.flush()
            del data
            with open(tmp, "r+b") as fh:
                header.writeftr_to(fh)
            return
        with tempfile.TemporaryDirectory(prefix=".surfharm-", dir=workdir or path.parent) as scratch:
            data = np.lib.format.open_memmap(Path(scratch) / "frames.npy", mode="w+", dtype=np.float32,
                                             shape=(n_frames, n_vertices))
            yield data
            with gzip.open(tmp, "wb", compresslevel=6) as fh:
                header.writehdr_to(fh)
                fh.write(bytes(MGH_HEADER_BYTES - fh.tell()))  # the header block is zero-padded
                step = max(1, (16 << 20) // max(4 * n_vertices, 1))
                for start in range(0, n_frames, step):
                    fh.write(np.asarray(data[start:start + step], dtype=">f4").tobytes())
                header.writeftr_to(fh)
            del data


def _mgh_header_for(n_frames: int, n_vertices: int, like) -> "nib.freesurfer.mghformat.MGHHeader":
    """The header nibabel writes for a float32 (V, 1, 1, n_frames) surface MGH, built without data."""
    affine = np.eye(4) if like is None else _mgh_affine(existing_file(like))
    shape = (n_vertices, 1, 1, n_frames) if n_frames > 1 else (n_vertices, 1, 1)
    image = nib.MGHImage(np.broadcast_to(np.float32(0), shape), affine)
    image.update_header()
    return image.header


# -- annotations and labels ------------------------------------------------------------------------

def read_annot(path: str | os.PathLike) -> Annotation:
    """Read a FreeSurfer annotation (``lh.aparc.annot``, ``.gz`` too) into an :class:`Annotation`."""
    path = existing_file(path)
    with plain_copy(path) as plain:
        try:
            labels, ctab, names = fsio.read_annot(str(plain))
        except Exception as exc:
            raise InputFileError(f"{path}: truncated or corrupt FreeSurfer annotation "
                                 f"({type(exc).__name__}: {exc})") from None
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0 or labels.max() >= len(names):
        raise InputFileError(f"{path}: annotation labels reach {labels.max() if labels.size else 'nothing'} "
                             f"but the colour table has {len(names)} regions")
    return Annotation(labels=labels, names=names, ctab=np.asarray(ctab), source=str(path))


def write_annot(path: str | os.PathLike, annotation: Annotation, *, inputs=(), overwrite: bool = True) -> Path:
    """Write an :class:`Annotation` as a FreeSurfer ``.annot`` file."""
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        fsio.write_annot(str(tmp), annotation.labels, annotation.ctab, annotation.names, fill_ctab=False)
    return Path(path)


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a FreeSurfer ``.label`` file.

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(vertices, values)``: (n,) int64 vertex indices and (n,) float64 label values.
    """
    path = existing_file(path)
    text = read_all_bytes(path)
    if not text.startswith(b"#"):
        raise InputFileError(f"{path}: not a FreeSurfer label file "
                             "(expected a first line starting with '#!ascii label')")
    with plain_copy(path) as plain:
        try:
            vertices, values = fsio.read_label(str(plain), read_scalars=True)
        except Exception as exc:
            raise InputFileError(f"{path}: corrupt FreeSurfer label ({type(exc).__name__}: {exc})") from None
    return np.asarray(vertices, dtype=np.int64), np.asarray(values, dtype=np.float64)


def read_cortex_mask(source, n_vertices: int | None = None) -> np.ndarray:
    """Boolean (V,) mask, True on cortex, from an annotation or a label (e.g. ``lh.cortex.label``).

    ``source``: an :class:`Annotation`, or a path to ``.annot`` (regions named in
    :data:`NON_CORTEX_REGIONS` and unlabelled vertices are outside cortex) or ``.label`` (the listed
    vertices are cortex; ``n_vertices`` is then required).
    """
    if isinstance(source, Annotation):
        annot = source
    else:
        path = Path(source)
        if ".label" in path.name:
            if n_vertices is None:
                raise ValueError(f"read_cortex_mask({path}): a label lists vertices only; pass n_vertices")
            vertices, _ = read_label(path)
            if vertices.size and vertices.max() >= n_vertices:
                raise InputFileError(f"{path}: label lists vertex {vertices.max()} "
                                     f"but the surface has {n_vertices} vertices")
            mask = np.zeros(n_vertices, dtype=bool)
            mask[vertices] = True
            return mask
        annot = read_annot(path)
    if n_vertices is not None and annot.n_vertices != n_vertices:
        raise InputFileError(f"{annot.source}: annotation has {annot.n_vertices} vertices, expected {n_vertices}")
    outside = [i for i, name in enumerate(annot.names) if name.lower() in NON_CORTEX_REGIONS]
    return (annot.labels >= 0) & ~np.isin(annot.labels, outside)


def _as_vector(values, path) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"values for {path} must be one value per vertex, shape (V,), got {arr.shape}")
    return arr
