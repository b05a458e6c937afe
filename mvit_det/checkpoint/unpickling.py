"""Unpickling plain data without running code from the file.

:class:`PlainDataUnpickler` rebuilds dicts (and ``OrderedDict``), lists, tuples, sets, strings,
bytes, numbers, numpy arrays and scalars of numeric and string dtypes, and, in torch files,
tensors. Every other object the file names is replaced by an inert :class:`RefusedObject`
placeholder, never created; the caller refuses the file, or, when it only wants the weights and
they hold no placeholder, leaves out the entries that do.

Nothing the file names is called as it is: numpy arrays, dtypes and scalars are rebuilt from
checked arguments (the array's bytes must be in the file, in exactly the amount its shape and
dtype need; dtypes are rebuilt from their type code and byte order only), and no length written
in the file makes the reader allocate more than the file holds, so a file cannot ask for more
memory than its own size, nor for arrays of Python objects.
"""

from __future__ import annotations

import _compat_pickle
import collections
import importlib.util
import math
import pickle
import struct
import sys
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "MalformedData",
    "NotPlainData",
    "PlainDataUnpickler",
    "RefusedObject",
    "StorageLoader",
    "TorchStorage",
    "element_size",
    "finish",
    "names_of",
    "refused_names",
    "storage_id",
]

# numpy dtype kinds a checkpoint may hold: bool, (unsigned) integers, floats, complex, strings.
_PLAIN_DTYPE_KINDS = "biufcSU"
# The names Python pickles use for latin-1, the only text encoding of bytes in a pickle.
_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


class MalformedData(ValueError):
    """The file's data is not what a plain-data pickle can hold (damaged or crafted)."""


class NotPlainData(ValueError):
    """The file holds numpy arrays of a kind weights never have (Python objects, records,
    dates), which are not rebuilt without trusting the file."""


def _size_text(nbytes: int) -> str:
    if nbytes >= 1 << 30:
        return f"{nbytes / (1 << 30):.1f} GiB"
    if nbytes >= 1 << 20:
        return f"{nbytes / (1 << 20):.1f} MiB"
    return f"{nbytes} bytes"


# ---------------------------------------------------------------------------------------------
# Placeholders for refused objects.


class RefusedObject:
    """
    Stands for an object of a non-allowed class (or the class itself) that the file pickles and
    that was not rebuilt. It accepts any arguments and state, and does nothing.
    """

    refused_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "RefusedObject":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.refused_name}, not loaded>"


def _refused_name_of(value: Any) -> Optional[str]:
    if isinstance(value, RefusedObject):
        return value.refused_name
    if isinstance(value, type) and issubclass(value, RefusedObject):
        return value.refused_name
    return None


def refused_names(obj: Any) -> List[str]:
    """
    The names of the refused objects (placeholders) inside ``obj``.

    Args:
        obj: nested dicts, lists, tuples and sets, as unpickled.

    Returns:
        the names, each once, in the order found.
    """
    found: Dict[str, None] = {}
    seen = set()
    pending = [obj]
    while pending:
        value = pending.pop()
        name = _refused_name_of(value)
        if name is not None:
            found[name] = None
        elif isinstance(value, (dict, list, tuple, set, frozenset)) and id(value) not in seen:
            seen.add(id(value))
            if isinstance(value, dict):
                pending.extend(value.keys())
                pending.extend(value.values())
            else:
                pending.extend(value)
    return list(found)


# ---------------------------------------------------------------------------------------------
# numpy, rebuilt from checked arguments.


def _shape(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(n) is int and n >= 0 for n in value):
        raise MalformedData(f"{what}: the shape {value!r} is not a tuple of sizes")
    return tuple(value)


def _plain_kind(dtype: np.dtype) -> np.dtype:
    if dtype.kind not in _PLAIN_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
        raise NotPlainData(
            f"it holds numpy arrays of dtype {dtype.str!r} (Python objects, records or dates), "
            "not numbers"
        )
    if dtype.itemsize == 0 or dtype.metadata is not None:
        raise MalformedData(f"numpy.dtype {dtype.str!r} of no size or with metadata")
    return dtype


class _DTypeSpec:
    """A ``numpy.dtype`` as pickled: its type code, then (BUILD) its byte order. Only these two
    are kept, so the rebuilt dtype is a plain one whatever the state says."""

    __slots__ = ("base", "byteorder")

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or len(code) > 16:
            raise MalformedData(f"numpy.dtype({code!r}) is not a type code")
        try:
            base = np.dtype(code)
        except (TypeError, ValueError) as e:
            raise MalformedData(f"numpy.dtype({code!r}): {e}") from None
        self.base = _plain_kind(base)
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (8, 9):
            raise MalformedData(f"numpy.dtype state {state!r:.80} is not a dtype's")
        endian, subarray, names, fields, elsize = state[1:6]
        if endian not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None):
            raise MalformedData(f"numpy.dtype state {state!r:.80} for {self.base.str}")
        if len(state) == 9 and state[8] is not None:
            raise MalformedData("numpy.dtype with metadata")
        if type(elsize) is not int or elsize not in (-1, self.base.itemsize):
            raise MalformedData(f"numpy.dtype of item size {elsize!r} for {self.base.str}")
        self.byteorder = endian

    def __repr__(self) -> str:
        return f"numpy.dtype({self.resolve().str!r})"

    def resolve(self) -> np.dtype:
        if self.byteorder in ("<", ">") and self.base.itemsize > 1:
            return self.base.newbyteorder(self.byteorder)
        return self.base


def _dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, _DTypeSpec):
        return value.resolve()
    raise MalformedData(f"{what}: {value!r:.80} is not a numpy dtype")


def _data_bytes(value: Any, what: str) -> Any:
    if isinstance(value, str):  # Python 2 pickles: str, read as latin-1
        return value.encode("latin1")
    if isinstance(value, (bytes, bytearray)):
        return value
    raise MalformedData(f"{what}: its data is a {type(value).__name__}, not bytes")


def _array_from(data: Any, dtype: np.dtype, shape: Tuple[int, ...], order: str) -> np.ndarray:
    """A writable array of ``shape`` from exactly the bytes it needs."""
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise MalformedData(
            f"an array of shape {list(shape)} and dtype {dtype.str} needs {_size_text(needed)}, "
            f"but the file holds {_size_text(len(data))} for it"
        )
    flat = np.frombuffer(data, dtype=dtype) if needed else np.empty(0, dtype=dtype)
    array = flat.reshape(shape, order=order)
    return array if array.flags.writeable else array.copy(order="K")


class _ArraySpec:
    """An array as pickled by protocols 0-4: ``_reconstruct(ndarray, (0,), ...)``, then BUILD
    with its shape, dtype, order and bytes."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]  # arrays cannot be dict keys either

    def __init__(self) -> None:
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise MalformedData(f"numpy array state {state!r:.80} is not an array's")
        shape, dtype, fortran, data = state[-4:]
        shape = _shape(shape, "numpy array")
        dtype = _dtype(dtype, "numpy array")
        if fortran not in (True, False, 0, 1):
            raise MalformedData(f"numpy array order flag {fortran!r}")
        data = _data_bytes(data, "numpy array")
        self.array = _array_from(data, dtype, shape, "F" if fortran else "C")


class _NdarrayClass:
    """``numpy.ndarray`` as a pickle names it: only an argument of ``_reconstruct``."""

    __slots__ = ()

    def __call__(self, *args: Any) -> None:
        raise MalformedData("numpy.ndarray(...) called directly: numpy never writes that")

    def __setstate__(self, state: Any) -> None:
        raise MalformedData("numpy.ndarray given a state")


_NDARRAY = _NdarrayClass()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArraySpec:
    if subtype is not _NDARRAY:
        raise MalformedData(f"a numpy array of type {subtype!r:.80}")
    shape = _shape(shape, "numpy array")
    if math.prod(shape):
        raise MalformedData(
            f"it asks for a numpy array of shape {list(shape)} without giving its data: numpy "
            "never writes that"
        )
    return _ArraySpec()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """``numpy.core.numeric._frombuffer``, as protocol 5 pickles arrays."""
    if order not in ("C", "F"):
        raise MalformedData(f"numpy array order {order!r:.20}")
    if not isinstance(buffer, (bytes, bytearray)):
        raise MalformedData(f"numpy array data is a {type(buffer).__name__}, not bytes")
    return _array_from(buffer, _dtype(dtype, "numpy array"), _shape(shape, "numpy array"), order)


def _scalar(dtype: Any, data: Any) -> Any:
    dtype = _dtype(dtype, "numpy scalar")
    data = _data_bytes(data, "numpy scalar")
    if len(data) != dtype.itemsize:
        raise MalformedData(f"a numpy {dtype.str} scalar of {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


# ---------------------------------------------------------------------------------------------
# Python builtins, restricted to the forms Python itself pickles.


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, as protocols 0-2 pickle bytes."""
    if not isinstance(text, str) or encoding not in _LATIN1_NAMES:
        raise MalformedData(f"_codecs.encode of a {type(text).__name__} with {encoding!r:.20}")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    """``bytes()``, as protocols 0-2 pickle the empty bytes object."""
    if args:
        raise MalformedData("bytes(...) with arguments")
    return b""


def _bytearray(*args: Any) -> bytearray:
    """``bytearray``, from bytes, or latin-1 text (protocols 0-2); never from a size."""
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in _LATIN1_NAMES:
        return bytearray(args[0].encode("latin1"))
    raise MalformedData("bytearray(...) with other arguments than its bytes")


class _Constructor:
    """An allowed callable, as the unpickler hands it out: it can be called, but its state can
    not be changed from the file."""

    __slots__ = ("_name", "_function")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self._name = name
        self._function = function

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: Any) -> None:
        raise MalformedData(f"{self._name} given a state")

    def __repr__(self) -> str:
        return self._name


def _globals(entries: Dict[str, Any]) -> Dict[str, Any]:
    """Wraps the functions (and classes with checks in their constructor) in _Constructor;
    builtin classes and tokens stay as they are."""
    return {
        name: (
            value
            if value in (set, frozenset, complex, collections.OrderedDict) or value is _NDARRAY
            else _Constructor(name, value)
        )
        for name, value in entries.items()
    }


# Every global a plain-data pickle may name (numpy 1 and 2 module names, Python 2 builtins).
_PLAIN_GLOBALS: Dict[str, Any] = _globals(
    {
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": _encode,
        "numpy.ndarray": _NDARRAY,
        "numpy.dtype": _DTypeSpec,
        **{
            f"{module}.{name}": value
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name, value in (("_reconstruct", _reconstruct), ("scalar", _scalar))
        },
        "numpy.core.numeric._frombuffer": _frombuffer,
        "numpy._core.numeric._frombuffer": _frombuffer,
        **{
            f"{module}.{name}": value
            for module in ("builtins", "__builtin__")
            for name, value in (
                ("set", set),
                ("frozenset", frozenset),
                ("complex", complex),
                ("bytearray", _bytearray),
                ("bytes", _bytes),
            )
        },
    }
)


# ---------------------------------------------------------------------------------------------
# torch tensors, from storages the container reader loads.


class TorchStorage:
    """A storage of a torch file: its bytes, as a uint8 tensor, and the dtype it was saved as."""

    __slots__ = ("data", "dtype")

    def __init__(self, data: torch.Tensor, dtype: torch.dtype) -> None:
        self.data = data  # (nbytes,) uint8
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise MalformedData("a storage given a state")


class _StorageKind:
    """``torch.FloatStorage`` and the like, as a pickle names them: only a dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        raise MalformedData(f"{self.name} given a state")


# torch dtypes a checkpoint tensor may have (no quantized types).
_TENSOR_DTYPES: Dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "bool uint8 int8 int16 int32 int64 uint16 uint32 uint64 float16 bfloat16 float32 "
        "float64 complex32 complex64 complex128 float8_e4m3fn float8_e5m2 float8_e4m3fnuz "
        "float8_e5m2fnuz"
    ).split()
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_STORAGE_DTYPES = {
    "Bool": torch.bool,
    "Byte": torch.uint8,
    "Char": torch.int8,
    "Short": torch.int16,
    "Int": torch.int32,
    "Long": torch.int64,
    "Half": torch.float16,
    "BFloat16": torch.bfloat16,
    "Float": torch.float32,
    "Double": torch.float64,
    "ComplexFloat": torch.complex64,
    "ComplexDouble": torch.complex128,
}


def element_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty(0, dtype=dtype).element_size()


def _ints(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(n) is int and n >= 0 for n in value):
        raise MalformedData(f"tensor {what} {value!r:.80} is not a tuple of sizes")
    return tuple(value)


def _no_hooks(hooks: Any) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise MalformedData("a tensor with backward hooks")


def _rebuild_tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    dtype: Optional[torch.dtype] = None,
    metadata: Any = None,
) -> torch.Tensor:
    """A tensor viewing ``storage``, with bounds checked against the storage's bytes."""
    if not isinstance(storage, TorchStorage):
        raise MalformedData(f"a tensor of a {type(storage).__name__}, not of a storage")
    if type(offset) is not int or offset < 0:
        raise MalformedData(f"tensor storage offset {offset!r:.40}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or requires_grad not in (True, False):
        raise MalformedData(f"tensor of size {size} and stride {stride}")
    _no_hooks(hooks)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, bool) for v in metadata.values())
    ):
        raise MalformedData("tensor metadata is not flags")
    dtype = storage.dtype if dtype is None else dtype
    if dtype not in _TENSOR_DTYPES.values():
        raise MalformedData(f"tensor dtype {dtype!r:.40}")
    itemsize = element_size(dtype)
    if math.prod(size):
        end = (offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1) * itemsize
        if end > storage.data.numel():
            raise MalformedData(
                f"a tensor of size {list(size)} reaches byte {end} of a storage of "
                f"{storage.data.numel()} bytes"
            )
    tensor = torch.empty(0, dtype=dtype).set_(storage.data.untyped_storage(), offset, size, stride)
    if metadata:
        torch._utils.set_tensor_metadata(tensor, metadata)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise MalformedData(f"tensor dtype {dtype!r:.40}")
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, dtype, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor) or requires_grad not in (True, False):
        raise MalformedData("a parameter of something else than a tensor")
    _no_hooks(hooks)
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _torch_size(*args: Any) -> torch.Size:
    if len(args) > 1 or (args and not isinstance(args[0], (tuple, list))):
        raise MalformedData("torch.Size of something else than sizes")
    return torch.Size(_ints(args[0] if args else (), "size"))


# The globals of torch files (with the plain ones): tensors, parameters, storages, dtypes.
_TORCH_GLOBALS: Dict[str, Any] = {
    **_globals(
        {
            "torch._utils._rebuild_tensor": _rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
            "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "torch.Size": _torch_size,
        }
    ),
    **{f"torch.{name}": dtype for name, dtype in _TENSOR_DTYPES.items()},
    **{
        f"{module}.{kind}Storage": _StorageKind(f"{module}.{kind}Storage", dtype)
        for module in ("torch", "torch.cuda")
        for kind, dtype in _STORAGE_DTYPES.items()
    },
    "torch.storage.UntypedStorage": _StorageKind("torch.storage.UntypedStorage", torch.uint8),
}

# Loads the storage a torch file's persistent id names: (unpickler, id) -> storage.
StorageLoader = Callable[["PlainDataUnpickler", Tuple[Any, ...]], Any]


def storage_id(pid: Any, length: int) -> Tuple[torch.dtype, Any, int, Tuple[Any, ...]]:
    """Checks a torch file's persistent id ``("storage", kind, key, location, numel, ...)``.

    Returns:
        the storage's dtype, key, number of elements and the remaining fields.
    """
    if not isinstance(pid, tuple) or len(pid) != length or pid[0] not in ("storage", b"storage"):
        raise MalformedData(f"persistent id {pid!r:.80} is not a storage's")
    kind, key, location, numel = pid[1:5]
    if not isinstance(kind, _StorageKind):
        raise MalformedData(f"storage of type {kind!r:.80}")
    if not isinstance(key, (str, int)) or not isinstance(location, (str, bytes)):
        raise MalformedData(f"storage key {key!r:.40} or location {location!r:.40}")
    if type(numel) is not int or numel < 0:
        raise MalformedData(f"storage of {numel!r:.40} elements")
    return kind.dtype, key, numel, pid[5:]


# ---------------------------------------------------------------------------------------------


def _existing_global(module: str, name: str) -> bool:
    """
    Whether ``module.name`` can be a real Python object, found without importing anything: the
    names are identifiers, the module is installed (as far as the modules already imported
    tell), and, if the module is imported, it has the name. Damaged bytes read as a global name
    fail this; a file that pickles real objects passes.
    """
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # Python 2 module names
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts + name.split(".")):
        return False
    try:
        if importlib.util.find_spec(parts[0]) is None:
            return False
        for i in range(2, len(parts) + 1):  # the first submodule not imported yet, if its
            prefix = ".".join(parts[:i])  # parent is: found without running code
            if prefix not in sys.modules:
                if ".".join(parts[: i - 1]) in sys.modules:
                    return importlib.util.find_spec(prefix) is not None
                return True
    except (ImportError, ValueError, AttributeError):
        return False
    return name.split(".")[0] in vars(sys.modules[module])


class _BoundedFile:
    """The read methods of a binary file that never ask for more bytes than the file has left,
    so that no length written in the pickle makes the reader allocate more than that."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        here = file.tell()
        self._end = file.seek(0, 2)
        file.seek(here)
        self.exhausted = False  # a read asked for more than was left

    def read(self, size: int = -1) -> bytes:
        left = max(self._end - self._file.tell(), 0)
        if size is None or size < 0:
            size = left
        elif size > left:
            self.exhausted = True
        return self._file.read(min(size, left))

    def readline(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\n"):
            self.exhausted = True
        return line


def _load_bytearray8(unpickler: "PlainDataUnpickler") -> None:
    """BYTEARRAY8, reading the bytes before making the bytearray (the standard reader makes a
    bytearray of the announced size first)."""
    (size,) = struct.unpack("<Q", unpickler.read(8))
    data = unpickler.read(size)
    if len(data) < size:
        raise EOFError(f"a bytearray of {size} bytes is cut off after {len(data)}")
    unpickler.append(bytearray(data))


class PlainDataUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """
    An unpickler that rebuilds plain data only.

    It is Python's own unpickler written in Python (``pickle._Unpickler``): unlike the C one,
    it keeps the memo in a dict, so a large memo index in the file costs no memory.

    A global outside the allowlist becomes a :class:`RefusedObject` placeholder and its name is
    added to ``refused``; the caller decides whether the file is refused (reading goes on, so
    that a file cut off inside a name is reported as cut off). A name that cannot be a Python
    object (see :func:`_existing_global`) means damaged data: :class:`MalformedData`.
    """

    def __init__(self, file: IO[bytes], *, storages: Optional[StorageLoader] = None) -> None:
        """
        Args:
            file: the pickle, open for binary reading.
            storages: loads torch storages from persistent ids; None for plain pickles (which
                have none) and to refuse tensors.
        """
        self._file = _BoundedFile(file)
        super().__init__(self._file, encoding="latin1")
        self.refused: List[str] = []
        self._placeholders: Dict[str, type] = {}
        self._storages = storages
        self._globals = {**_PLAIN_GLOBALS, **_TORCH_GLOBALS} if storages else _PLAIN_GLOBALS

    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: _load_bytearray8}

    def load(self) -> Any:
        """Reads one pickle; a failure after the file ran out is an EOFError (cut off)."""
        try:
            return super().load()
        except EOFError:
            raise
        except Exception as e:
            if self._file.exhausted:
                raise EOFError(f"the file ends inside its data ({type(e).__name__}: {e})") from e
            raise

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        value = self._globals.get(full)
        if value is not None:
            return value
        if not _existing_global(module, name):
            raise MalformedData(
                f"it names a Python object {full[:80]!r} that does not exist here (damaged data)"
            )
        if full not in self._placeholders:  # a class of its own, naming the object
            self.refused.append(full)
            self._placeholders[full] = type(
                "RefusedObject", (RefusedObject,), {"refused_name": full}
            )
        return self._placeholders[full]

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise MalformedData("a plain pickle refers to data outside itself (persistent id)")
        return self._storages(self, pid)


def _finish(value: Any, done: Dict[int, Any]) -> Any:
    key = id(value)
    if key in done:
        return done[key]
    if isinstance(value, _ArraySpec):
        if value.array is None:
            raise MalformedData("a numpy array without data")
        result: Any = value.array
    elif isinstance(value, _DTypeSpec):
        result = value.resolve()
    elif isinstance(value, dict):
        done[key] = value
        for k, v in value.items():
            value[k] = _finish(v, done)
        return value
    elif isinstance(value, list):
        done[key] = value
        value[:] = [_finish(v, done) for v in value]
        return value
    elif isinstance(value, tuple):
        done[key] = value
        items = [_finish(v, done) for v in value]
        result = tuple(items) if any(a is not b for a, b in zip(items, value)) else value
    elif isinstance(value, (set, frozenset)):
        if any(isinstance(v, _DTypeSpec) for v in value):
            raise MalformedData("a set of numpy dtypes")
        result = value
    else:
        result = value
    done[key] = result
    return result


def finish(obj: Any) -> Any:
    """
    Turns the array and dtype specs of an unpickled object into numpy arrays and dtypes
    (dicts and lists are changed in place).

    Args:
        obj: what :class:`PlainDataUnpickler` returned.

    Returns:
        the object with plain numpy values.

    Raises:
        MalformedData: an array without data, or containers nested too deeply.
    """
    try:
        return _finish(obj, {})
    except RecursionError:
        raise MalformedData("its containers are nested too deeply") from None


def names_of(items: Sequence[str], limit: int = 4) -> str:
    """``a, b, c`` (and how many more)."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
