"""Model files: arrays plus JSON metadata, in one of two containers, never a pickle.

- ``.npz``: the arrays as a numpy archive with the metadata as a ``metadata.json`` member (the
  statistical methods);
- ``.safetensors``: the tensors with the metadata as JSON under the header key ``"surfharm"``, and a
  ``.json`` copy beside the file for reading (the networks).

Both are written atomically. :func:`read_model` reads either and returns numpy arrays, so finding
out which method a file holds needs neither torch nor the method's code.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from surfharm._atomic import atomic_path, write_text_atomic
from surfharm.errors import ModelFileError

#: Version of the ``.npz`` container (``metadata.json`` member).
NPZ_FORMAT_VERSION = 1
#: Header key of the metadata in ``.safetensors`` files.
SAFETENSORS_METADATA_KEY = "surfharm"
#: The suffixes a model file may have.
MODEL_SUFFIXES = (".npz", ".safetensors")


def json_default(obj):
    """``json.dumps(default=...)`` for model metadata: numpy scalars and arrays become Python values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in model metadata")


def metadata_text(metadata: dict[str, Any]) -> str:
    """The metadata as the JSON text stored in model files."""
    return json.dumps(metadata, indent=2, sort_keys=True, default=json_default)


def write_npz(path, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``metadata`` into one ``.npz`` file atomically.

    Object arrays are refused, so reading a model never needs pickle.
    """
    import surfharm

    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"model file {path} must end in .npz")
    meta = {"format_version": NPZ_FORMAT_VERSION, "surfharm_version": surfharm.__version__, **metadata}
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {key!r} has dtype object; store labels in the metadata instead")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr("metadata.json", metadata_text(meta))
    return path


def read_npz(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file of :func:`write_npz`: ``(arrays, metadata)``; never unpickles."""
    path = _existing(path)
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("metadata.json").decode("utf-8"))
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path} is not a surfharm model file: not an npz archive "
                             "(damaged or another kind of file)") from None
    except KeyError:
        raise ModelFileError(f"{path} is an npz archive but not a surfharm model: it has no metadata.json "
                             "member") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: its metadata.json is not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its metadata.json holds a {type(meta).__name__}; expected a JSON object")
    if meta.get("format_version") != NPZ_FORMAT_VERSION:
        raise ModelFileError(f"{path} has model format version {meta.get('format_version')!r}; "
                             f"this surfharm reads version {NPZ_FORMAT_VERSION}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "metadata.json"}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: an array of the model cannot be read ({exc}); the file is damaged") from None
    return arrays, meta


def write_safetensors(path, tensors: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write torch ``tensors`` to ``path`` (.safetensors) with ``metadata`` as JSON in the header,
    and the same JSON in ``path`` with suffix ``.json``; both atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model file {path} must end in .safetensors")
    text = metadata_text(metadata)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={SAFETENSORS_METADATA_KEY: text})
    write_text_atomic(path.with_suffix(".json"), text + "\n")
    return path


def read_safetensors_metadata(path) -> dict[str, Any]:
    """The JSON metadata in the header of a ``.safetensors`` model file (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from None
    if SAFETENSORS_METADATA_KEY not in header:
        raise ModelFileError(f"{path} is a safetensors file but not a surfharm model "
                             f"(no '{SAFETENSORS_METADATA_KEY}' metadata)")
    try:
        meta = json.loads(header[SAFETENSORS_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its metadata holds a {type(meta).__name__}; expected a JSON object")
    return meta


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file of :func:`write_safetensors` as numpy arrays: ``(arrays, metadata)``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_safetensors_metadata(path)
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from None
    return arrays, meta


def read_model(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read any surfharm model file (``.npz`` or ``.safetensors``): ``(arrays, metadata)``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix == ".npz":
        return read_npz(path)
    raise ModelFileError(f"model file {path} must end in {' or '.join(MODEL_SUFFIXES)}")


def read_metadata(path) -> dict[str, Any]:
    """Only the metadata of a model file (cheap: no large array is read)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_metadata(path)
    if path.suffix == ".npz":
        path = _existing(path)
        try:
            with zipfile.ZipFile(path) as zf:
                return json.loads(zf.read("metadata.json").decode("utf-8"))
        except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError):
            return read_npz(path)[1]    # raises the precise error
    raise ModelFileError(f"model file {path} must end in {' or '.join(MODEL_SUFFIXES)}")


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a folder; expected a .npz or .safetensors file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {path} is empty (0 bytes); it was not written completely")
    return path
