"""A restricted unpickler for the official FLAME model file, which needs neither chumpy nor trust.

The FLAME model is distributed as a Python-2-era pickle: a dict whose arrays are partly ``chumpy``
objects (an autodiff library that no longer imports with current NumPy), with ``J_regressor`` a
``scipy.sparse`` matrix. A plain ``pickle.load`` would import chumpy and, worse, run whatever code
a tampered file names. This unpickler resolves only an explicit list of harmless globals:

- NumPy's array, dtype and scalar reconstruction functions;
- any ``chumpy`` class, mapped to :class:`ChumpyStandIn`, an inert object that only keeps the
  pickled state (a plain ``Ch`` keeps its value under ``'x'``); chumpy is never imported;
- ``scipy.sparse`` CSC/CSR matrices, mapped to :class:`SparseStandIn`, which keeps the pickled
  arrays; scipy is never imported, the dense matrix is rebuilt here;
- ``copyreg._reconstructor`` (protocol 0/1 objects) for those stand-ins only, ``_codecs.encode``
  for Latin-1 text (how Python 3 writes bytes at protocol 2), and a few plain containers.

Anything else (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError`.
"""
from __future__ import annotations

import codecs
import collections
import importlib
import pickle
import re
from typing import Any, BinaryIO, Callable, Dict, Tuple

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list (never loaded, never called)."""


class ChumpyStandIn:
    """Inert stand-in for any pickled chumpy object: records the class name and pickled state."""

    chumpy_class = "chumpy.ch.Ch"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ChumpyStandIn":
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged: Dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def value(self, where: str) -> np.ndarray:
        """The stored array (a plain ``Ch`` keeps it under ``'x'``); others fail clearly."""
        if "x" in self.state:
            return to_array(self.state["x"], where)
        raise ValueError(f"{where}: is a chumpy {self.chumpy_class} object without a stored "
                         f"value (pickled fields: {sorted(self.state)}); this layout is not "
                         "supported")


class SparseStandIn:
    """Inert stand-in for a pickled ``scipy.sparse`` CSC or CSR matrix."""

    sparse_format = "csc"

    def __new__(cls, *args: Any, **kwargs: Any) -> "SparseStandIn":
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}

    def dense(self, where: str) -> np.ndarray:
        """Rebuild the dense matrix from the compressed arrays (data, indices, indptr, shape)."""
        try:
            data = np.asarray(self.state["data"], dtype=np.float64).ravel()
            indices = np.asarray(self.state["indices"], dtype=np.int64).ravel()
            indptr = np.asarray(self.state["indptr"], dtype=np.int64).ravel()
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: sparse matrix without data/indices/indptr "
                             f"(pickled fields: {sorted(self.state)})") from None
        shape = self.state.get("_shape", self.state.get("shape"))
        major = len(indptr) - 1
        if shape is None:  # very old pickles: infer the minor dimension
            minor = int(indices.max()) + 1 if indices.size else 0
            shape = (minor, major) if self.sparse_format == "csc" else (major, minor)
        rows, cols = (int(shape[0]), int(shape[1]))
        n_major, n_minor = (cols, rows) if self.sparse_format == "csc" else (rows, cols)
        if (major != n_major or len(data) != len(indices) or indptr[0] != 0
                or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0)
                or (indices.size and (indices.min() < 0 or indices.max() >= n_minor))):
            raise ValueError(f"{where}: inconsistent sparse matrix arrays")
        out = np.zeros((n_major, n_minor), dtype=np.float64)
        owner = np.repeat(np.arange(n_major), np.diff(indptr))
        np.add.at(out, (owner, indices), data)
        return out.T.copy() if self.sparse_format == "csc" else out


def to_array(value: Any, where: str) -> np.ndarray:
    """Any allowed pickled value (ndarray, chumpy stand-in, sparse stand-in, list) as ndarray."""
    if isinstance(value, ChumpyStandIn):
        return value.value(where)
    if isinstance(value, SparseStandIn):
        return value.dense(where)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype == object:
        raise ValueError(f"{where}: is a {type(value).__name__}, not a numeric array")
    return arr


def _numpy_function(name: str) -> Callable:
    """NumPy's private reconstruction helpers, wherever this NumPy version keeps them."""
    for module in ("numpy._core.multiarray", "numpy._core.numeric",
                   "numpy.core.multiarray", "numpy.core.numeric"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise UnsafePickleError(f"this NumPy has no {name} to rebuild pickled arrays")


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it: text to bytes, nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("iso8859-1", "utf-8"):
        raise UnsafePickleError("_codecs.encode is only allowed for Latin-1/UTF-8 text")
    return text.encode(encoding)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), limited to the inert stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, (ChumpyStandIn, SparseStandIn))
            and base is object):
        raise UnsafePickleError(f"copyreg._reconstructor of {cls!r} is not allowed")
    return cls.__new__(cls)


_NUMPY_GLOBALS = {
    "_reconstruct": "_reconstruct", "scalar": "scalar", "_frombuffer": "_frombuffer",
}
_PLAIN_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "object"): object,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
}
_NUMPY_MODULE = re.compile(r"^numpy(\._core|\.core)\.(multiarray|numeric)$")
_SPARSE_MODULE = re.compile(r"^scipy\.sparse(\.[A-Za-z_]\w*)*$")
_SPARSE_CLASSES = {"csc_matrix": "csc", "csr_matrix": "csr"}
_stand_in_classes: Dict[Tuple[str, str], type] = {}


def _stand_in(base: type, module: str, name: str, **attrs: Any) -> type:
    key = (module, name)
    if key not in _stand_in_classes:
        attrs["__module__"] = __name__
        _stand_in_classes[key] = type(f"{base.__name__}_{name}", (base,), attrs)
    return _stand_in_classes[key]


# Python 2 module names (an overridden find_class sees them unmapped)
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[(module, name)]
        if _NUMPY_MODULE.match(module) and name in _NUMPY_GLOBALS:
            return _numpy_function(_NUMPY_GLOBALS[name])
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(ChumpyStandIn, module, name, chumpy_class=f"{module}.{name}")
        if _SPARSE_MODULE.match(module) and name in _SPARSE_CLASSES:
            return _stand_in(SparseStandIn, module, name, sparse_format=_SPARSE_CLASSES[name])
        raise UnsafePickleError(f"refusing to load the global {module}.{name}: a FLAME model "
                                "file never needs it (the file may be tampered with)")


def restricted_load(stream: BinaryIO) -> Any:
    """Unpickle ``stream`` with :class:`RestrictedUnpickler` (Latin-1 for Python 2 strings)."""
    return RestrictedUnpickler(stream, encoding="latin1").load()
