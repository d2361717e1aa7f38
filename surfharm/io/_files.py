"""Opening input files: existence checks, transparent gzip, magic numbers."""
from __future__ import annotations

import contextlib
import gzip
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from surfharm.io.errors import InputFileError

GZIP_MAGIC = b"\x1f\x8b"


def existing_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path; raise InputFileError (FileNotFoundError-like message) if it is not a file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: file does not exist")
    if not p.is_file():
        raise InputFileError(f"{p}: is not a regular file (a folder?)")
    if p.stat().st_size == 0:
        raise InputFileError(f"{p}: empty file (0 bytes); expected its data (was it written completely?)")
    return p


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def head_bytes(path: Path, n: int = 16) -> bytes:
    """The first ``n`` bytes of the (decompressed, if gzipped) file content."""
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        with open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError) as exc:
        raise InputFileError(f"{path}: cannot read the file header ({exc})") from None


def read_all_bytes(path: Path) -> bytes:
    """The whole content, decompressed when gzipped; a corrupt gzip stream names the file."""
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputFileError(f"{path}: corrupt or truncated gzip data ({exc})") from None


@contextlib.contextmanager
def plain_copy(path: Path) -> Iterator[Path]:
    """Yield a path to uncompressed content: ``path`` itself, or a temporary decompressed copy.

    nibabel's FreeSurfer readers open a path (not a stream), so a gzipped ``lh.white.gz`` is
    decompressed into a private temporary folder that is removed afterwards.
    """
    if not is_gzip(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="surfharm-") as tmpdir:
        plain = Path(tmpdir) / path.name.removesuffix(".gz")
        try:
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputFileError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        yield plain


def release_pages(array) -> None:
    """Let the kernel take back the resident pages of a shared memory map (``np.memmap`` in mode
    'r', 'r+' or 'w+'): its data stay in the file and are read again when next touched. A no-op for
    anything else. Keeps the resident memory of a pass over a large memory-mapped cohort small."""
    handle = getattr(array, "_mmap", None)
    if handle is None or getattr(array, "mode", None) not in ("r", "r+", "w+") or not hasattr(handle, "madvise"):
        return
    if array.mode != "r":
        handle.flush()
    handle.madvise(mmap.MADV_DONTNEED)
