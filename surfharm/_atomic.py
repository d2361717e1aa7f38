"""Atomic file writes: a reader never sees a half-written output, and an input is never overwritten.

Every writer in surfharm goes through :func:`atomic_path`: it yields a temporary path in the
destination folder, and only when the block finishes without error is the file renamed into place
(``os.replace`` is atomic on POSIX and Windows within one file system).

Temporary files are hidden siblings named ``.NAME.<pid>-<random>.part<suffixes>``. A process that
is killed leaves its temporary file behind; the next write of the same name removes the ones whose
process is gone (:func:`remove_stale_parts`), and readers skip hidden ``.part`` files.

A folder written in place (not moved into place when complete) holds the file :data:`INCOMPLETE`
from its first write to its last (:func:`folder_being_written`); readers refuse a folder holding it.

Failed writes (full disk, file-size limit, read-only folder) raise :class:`OutputWriteError`, an
``OSError`` whose message names the file and the cause.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from surfharm.errors import SurfharmError

#: Marker file present in a folder while it is being written (removed by the last write).
INCOMPLETE = "INCOMPLETE"

_PROCESS_STARTED = time.time()


class OutputError(SurfharmError, ValueError):
    """An output path that must not be written (it is an input, or its folder is missing)."""


class OutputWriteError(SurfharmError, OSError):
    """Writing an output failed (no space left, file-size limit, read-only folder, ...).

    ``str()`` is ``cannot write PATH: CAUSE``; ``errno``/``strerror``/``filename`` are set when known.
    """

    def __init__(self, path, cause: str, code: int | None = None):
        super().__init__(code, cause, str(path))
        self.message = f"cannot write {path}: {cause}"

    def __str__(self) -> str:
        return self.message


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


def is_part_file(name: str) -> bool:
    """True for the name of a temporary file of :func:`atomic_path` (``.NAME.<...>.part<suffixes>``)."""
    return name.startswith(".") and ".part" in name


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` runs on this machine (or cannot be checked)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def stale(path: Path, pid_text: str | None) -> bool:
    """True when the temporary ``path`` belongs to no running process: the process id ``pid_text``
    is gone, or (names without a process id) it is older than this process."""
    if pid_text is not None and pid_text.isdigit():
        return not pid_alive(int(pid_text))
    try:
        return path.lstat().st_mtime < _PROCESS_STARTED
    except OSError:
        return False


def remove_stale_parts(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of earlier, interrupted writes of ``path``; returns those removed."""
    out = Path(path)
    prefix = f".{out.name}."
    removed = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or ".part" not in name[len(prefix):]:
            continue
        if entry.is_dir(follow_symlinks=False):
            continue
        tag = name[len(prefix):].split(".part", 1)[0]
        pid_text = tag.split("-", 1)[0] if "-" in tag else None
        candidate = Path(entry.path)
        if stale(candidate, pid_text):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


#: Error numbers of failed writes (other OS errors, e.g. a missing input read inside a block, pass as they are).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                 getattr(errno, "EDQUOT", errno.ENOSPC)}


def _write_failure(exc: BaseException) -> OSError | None:
    """The OS error behind a failed write: ``exc`` itself, or one in its context chain (libraries
    sometimes hide it behind a later error such as ``ValueError: seek of closed file``)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, OutputWriteError) and (
                current.errno is None or current.errno in _WRITE_ERRNOS):
            return current
        current = current.__cause__ or current.__context__
    return None


def _diagnose(folder: Path, exc: OSError) -> tuple[str, int | None]:
    """A readable cause of ``exc``; numpy's writers raise OSErrors without an error number."""
    if exc.errno is not None:
        return os.strerror(exc.errno), exc.errno
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return (f"{exc} (the file-size limit of this process is {soft} bytes: "
                    f"{os.strerror(errno.EFBIG)})", errno.EFBIG)
    except (ImportError, OSError, ValueError):
        pass
    try:
        import shutil

        if shutil.disk_usage(folder).free < 1 << 20:
            return f"{exc} ({os.strerror(errno.ENOSPC)})", errno.ENOSPC
    except OSError:
        pass
    return str(exc), None


def as_write_error(path: str | os.PathLike, exc: BaseException) -> OutputWriteError | None:
    """``exc`` as an :class:`OutputWriteError` naming ``path`` when an OS error caused it, else None."""
    if isinstance(exc, OutputWriteError):
        return exc
    cause = _write_failure(exc)
    if cause is None:
        return None
    text, code = _diagnose(Path(path).parent, cause)
    return OutputWriteError(path, text, code)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary file keeps the final suffixes (``.mgz``, ``.gii``, ``.npz``...) so that libraries
    which pick a format from the file name behave as for the final name. On error the temporary
    file is removed and ``path`` is untouched; an error of the operating system (no space left,
    file-size limit, permission) is raised as :class:`OutputWriteError` naming ``path``.
    """
    out = check_output_path(path, inputs=inputs, overwrite=overwrite)
    suffix = "".join(out.suffixes) or ".tmp"
    remove_stale_parts(out)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}-", suffix=f".part{suffix}",
                                        dir=out.parent)
        os.close(fd)
    except OSError as exc:
        raise (as_write_error(out, exc) or exc) from exc
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            # mkstemp creates files readable by the owner only; give the output the permissions a plain
            # open() would (0666 minus the umask), or those of the file it replaces.
            os.chmod(tmp, out.stat().st_mode & 0o7777 if out.exists() else 0o666 & ~_current_umask())
            os.replace(tmp, out)
        except Exception as exc:
            error = as_write_error(out, exc)
            if error is None:
                raise
            raise error from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def mark_incomplete(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (if missing) holding the :data:`INCOMPLETE` marker; returns the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (as_write_error(folder, exc) or exc) from exc
    write_text_atomic(folder / INCOMPLETE,
                      f"surfharm (process {os.getpid()}) is writing this folder. A folder holding this file is "
                      "incomplete: its writer was stopped or failed. Re-run the command that writes it.\n")
    return folder


def mark_complete(folder: str | os.PathLike) -> None:
    """Remove the :data:`INCOMPLETE` marker of ``folder`` (its last write)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / INCOMPLETE).unlink()


@contextlib.contextmanager
def folder_being_written(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` (if missing) holding the :data:`INCOMPLETE` marker for the duration of the
    block; the marker is removed only when the block succeeds, so a folder whose writer was
    stopped keeps it and readers refuse the folder."""
    yield mark_incomplete(folder)
    mark_complete(folder)


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
