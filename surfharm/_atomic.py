"""Atomic file writes: a reader never sees a half-written output, and an input is never overwritten.

Every writer in surfharm goes through :func:`atomic_path`: it yields a temporary path in the
destination folder, and only when the block finishes without error is the file renamed into place
(``os.replace`` is atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


class OutputError(ValueError):
    """An output path that must not be written (it is an input, or its folder is missing)."""


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                      overwrite: bool = True) -> Path:
    """Return ``path`` as a Path after checking that writing it cannot destroy an input.

    Raises :class:`OutputError` naming the path when it is one of ``inputs`` (same file on disk),
    when its folder does not exist, or when it exists and ``overwrite`` is False.
    """
    out = Path(path)
    if not out.parent.exists():
        raise OutputError(f"cannot write {out}: folder {out.parent} does not exist")
    resolved = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given)
        if src.exists() and (src.resolve() == resolved or (out.exists() and os.path.samefile(src, out))):
            raise OutputError(f"refusing to write {out}: it is an input file; choose a new file name")
    if out.exists() and not overwrite:
        raise OutputError(f"refusing to overwrite existing file {out} (pass overwrite=True to replace it)")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file keeps the final suffixes (``.mgz``, ``.gii``, ``.npz``...) so that libraries
    which pick a format from the file name behave as for the final name. On error the temporary
    file is removed and ``path`` is untouched.
    """
    out = check_output_path(path, inputs=inputs, overwrite=overwrite)
    suffix = "".join(out.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".part{suffix}", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; give the output the permissions a plain
        # open() would (0666 minus the umask), or those of the file it replaces.
        os.chmod(tmp, out.stat().st_mode & 0o7777 if out.exists() else 0o666 & ~_current_umask())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, **kwargs) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, **kwargs) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return write_bytes_atomic(path, text.encode("utf-8"), **kwargs)
