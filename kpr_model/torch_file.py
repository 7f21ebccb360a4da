"""Read a ``torch.save`` file without running code from it: tensors, plain data and an allowlist only.

torchreid checkpoints (``.pth.tar``) pickle more than tensors: the epoch, rank-1 and mAP (numpy
scalars), optimizer and scheduler state and the training config, a yacs ``CfgNode``.
``torch.load(weights_only=True)`` refuses the config, and ``weights_only=False`` would import yacs
and could run any code the file names. This reader unpickles the file's ``data.pkl`` with a
restricted unpickler instead:

- tensors are rebuilt from the storages in the zip archive (on the CPU, whatever device they were
  saved from); ``OrderedDict``, numbers, strings, bytes, lists, tuples, dicts and sets load as themselves;
- numpy scalars and arrays load as numpy values (their dtype and raw bytes only);
- a yacs ``CfgNode`` loads as ``PlainConfig``, a plain dict of its keys, without importing yacs;
- any other pickled global (a function, a class of some library) raises ``TorchFileError`` naming it.

Only the zip format that ``torch.save`` writes since torch 1.6 is read.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kpr_model.config import KPRModelError

try:  # numpy >= 2 pickles its scalars and arrays under numpy._core, older releases under numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


class TorchFileError(KPRModelError):
    """A torch file that is missing, incomplete, or holds pickled objects outside the allowlist."""


class PlainConfig(dict):
    """A yacs ``CfgNode`` read as plain data: its keys and values, none of its behaviour."""

    def __setstate__(self, state: Any) -> None:
        """Ignore the node's own attributes (yacs' immutability flags); the keys are the data."""


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """A tensor viewing ``storage`` (a flat typed tensor) as torch's ``_rebuild_tensor_v2`` does."""
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """Bytes as pickle protocol 2 writes them: ``_codecs.encode(text, "latin1")``."""
    return text.encode(encoding)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    """A saved ``nn.Parameter`` as its plain tensor."""
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("yacs.config", "CfgNode"): PlainConfig,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")},
}


class _StorageKind:
    """What the unpickler hands back for a ``torch.<X>Storage`` global: the dtype of that storage."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of a torch zip archive's ``data.pkl`` that builds only allowlisted globals."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        # torch.save writes pickle protocol 2, which names Python 2 modules (a yacs config's set is __builtin__.set)
        module, name = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:
            return _StorageKind(STORAGE_DTYPES[name])
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[module, name]
        raise TorchFileError(
            f"{self.path} holds a pickled {module}.{name}, which is not loaded (only tensors, plain data, numpy values "
            "and training configs are read, since unpickling anything else can run code)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageKind)):
            raise TorchFileError(f"{self.path} refers to an unknown kind of stored object: {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError as exc:
                raise TorchFileError(f"{self.path} is incomplete: tensor data {key} is missing") from exc
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if len(raw) != numel * itemsize:
                raise TorchFileError(f"{self.path} is incomplete: tensor data {key} has {len(raw)} bytes, expected "
                                     f"{numel * itemsize}")
            flat = torch.frombuffer(bytearray(raw), dtype=kind.dtype) if raw else torch.empty(0, dtype=kind.dtype)
            self.storages[key] = flat
        return self.storages[key]


def read_torch_file(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path``, read without running code from the file (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise TorchFileError(f"{path} is not a torch.save archive (it holds no single data.pkl)")
            prefix = pickles[0].split("/")[0]
            if f"{prefix}/byteorder" in archive.namelist() and archive.read(f"{prefix}/byteorder") != b"little":
                raise TorchFileError(f"{path} was saved on a big-endian machine, which is not supported")
            unpickler = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, path)
            return unpickler.load()
    except TorchFileError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            RuntimeError, OSError) as exc:
        raise TorchFileError(
            f"{path} is not a complete torch file (truncated, corrupt, or saved by torch older than 1.6): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
