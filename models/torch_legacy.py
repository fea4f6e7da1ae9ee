"""Safe reader for legacy (pre-zip, torch < 1.6) ``torch.save`` checkpoints.

The legacy format is a plain sequence of objects in one file:

1. pickle: the magic number 0x1950a86a20f9469cfc6c
2. pickle: the protocol version (1001)
3. pickle: system info ({'protocol_version', 'little_endian', 'type_sizes'})
4. pickle: the saved object (here a state dict).  Tensors appear as
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
   requires_grad, backward_hooks)`` where ``storage`` is a persistent id
   ``('storage', storage_type, key, location, numel[, view_metadata])``.
5. pickle: the list of storage keys, in the order their data follows
6. for each key: an int64 element count, then the raw element bytes.

Only numpy is needed.  Unpickling goes through a restricted
:class:`pickle.Unpickler` whose ``find_class`` resolves a short allow-list of
names to local stand-ins, so a hostile file cannot make the reader import or
call anything else (``os.system``, ``builtins.eval``, ...).  Every size,
offset and stride is checked against the storage it points into.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from typing import BinaryIO, Dict, Union

import numpy as np

__all__ = ["load_state_dict", "UnsafeCheckpointError", "CheckpointFormatError"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch legacy storage class name -> numpy element type (byte order applied later)
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointFormatError(ValueError):
    """The file is not a well-formed legacy torch checkpoint."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle refers to a global that is not on the allow-list."""


class _NoState:
    """Refuses pickle BUILD on the reader's own helper objects."""

    __slots__ = ()

    def __setstate__(self, state):  # pragma: no cover - only reached by hostile input
        raise UnsafeCheckpointError("BUILD on an internal checkpoint object is not allowed")


class _StorageType(_NoState):
    __slots__ = ("name", "code")

    def __init__(self, name: str, code: str):
        self.name = name
        self.code = code

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"calling torch.{self.name} is not allowed")


class _StorageRef(_NoState):
    __slots__ = ("key", "code", "numel", "view")

    def __init__(self, key: str, code: str, numel: int, view):
        self.key = key
        self.code = code
        self.numel = numel
        self.view = view  # None or (view_key, offset, size)


class _TensorRef(_NoState):
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x, what: str) -> tuple:
    if not isinstance(x, (tuple, list)) or not all(_is_int(v) and v >= 0 for v in x):
        raise CheckpointFormatError(f"bad tensor {what}: {x!r}")
    return tuple(x)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise CheckpointFormatError("_rebuild_tensor_v2 called without a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise CheckpointFormatError(f"bad storage offset {storage_offset!r}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointFormatError(f"size {size} and stride {stride} differ in rank")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointFormatError("_rebuild_parameter called without a tensor")
    return data


def _allowed_globals() -> dict:
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    for name, code in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, code)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals, and persistent ids only
    when given a storage table."""

    def __init__(self, f: BinaryIO, storages: Union[dict, None] = None):
        super().__init__(f, encoding="utf-8")
        self._storages = storages

    def find_class(self, module: str, name: str):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafeCheckpointError(
                f"refusing to load global {module}.{name}: not on the allow-list of the "
                f"legacy checkpoint reader (the file may be malicious or not a plain state dict)"
            )
        return obj

    def persistent_load(self, pid):
        if self._storages is None:
            raise UnsafeCheckpointError("persistent id outside the state-dict pickle")
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise CheckpointFormatError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"unsupported storage type {storage_type!r}")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointFormatError(f"bad storage reference {pid!r}")
        known = self._storages.get(key)
        if known is None:
            self._storages[key] = (storage_type.code, numel)
        elif known != (storage_type.code, numel):
            raise CheckpointFormatError(f"storage {key} declared twice with different types/sizes")
        if view is not None:
            if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str)
                    or not _is_int(view[1]) or not _is_int(view[2])
                    or view[1] < 0 or view[2] < 0 or view[1] + view[2] > numel):
                raise CheckpointFormatError(f"bad storage view {view!r}")
        return _StorageRef(key, storage_type.code, numel, view)


def _load_pickle(f: BinaryIO, storages=None):
    try:
        return _RestrictedUnpickler(f, storages).load()
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as e:
        raise CheckpointFormatError(f"malformed checkpoint pickle: {e}") from e


def _materialize(ref: _TensorRef, data: Dict[str, np.ndarray]) -> np.ndarray:
    st = ref.storage
    buf = data[st.key]
    offset = ref.offset
    limit = st.numel
    if st.view is not None:
        _, v_off, v_size = st.view
        offset += v_off
        limit = v_off + v_size
    numel = 1
    for s in ref.size:
        numel *= s
    if numel == 0:
        return np.zeros(ref.size, dtype=buf.dtype.newbyteorder("="))
    if numel > limit:
        # also keeps a hostile size/stride-0 combination from allocating without bound
        raise CheckpointFormatError(
            f"tensor of size {ref.size} has more elements than its storage ({limit})")
    last = offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if offset >= limit or last >= limit:
        raise CheckpointFormatError(
            f"tensor (offset {ref.offset}, size {ref.size}, stride {ref.stride}) "
            f"runs past its storage of {limit} elements")
    item = buf.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        buf[offset:], shape=ref.size, strides=tuple(s * item for s in ref.stride), writeable=False)
    # np.array (not ascontiguousarray, which turns 0-d into 1-d) keeps the tensor's rank
    return np.array(view, dtype=buf.dtype.newbyteorder("="), order="C", copy=True)


def _convert(obj, data):
    if isinstance(obj, _TensorRef):
        return _materialize(obj, data)
    if isinstance(obj, dict):
        return {k: _convert(v, data) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert(v, data) for v in obj)
    return obj


def load_state_dict(source: Union[str, os.PathLike, bytes, BinaryIO]) -> Dict[str, np.ndarray]:
    """Read a legacy ``torch.save`` state dict; return ``{name: numpy array}``.

    Arrays are C-contiguous, native byte order, with the storage's dtype
    (float32 for ``FloatStorage``, int64 for ``LongStorage``, ...).
    """
    if isinstance(source, (bytes, bytearray)):
        return _load(io.BytesIO(bytes(source)))
    if hasattr(source, "read"):
        return _load(source)
    with open(source, "rb") as f:
        return _load(f)


def _load(f: BinaryIO) -> Dict[str, np.ndarray]:
    head = f.read(4)
    if head[:2] == b"PK":
        raise CheckpointFormatError(
            "this is a zip-format torch checkpoint (torch >= 1.6); only the legacy format is supported")
    f.seek(-len(head), io.SEEK_CUR)

    magic = _load_pickle(f)
    if magic != MAGIC_NUMBER:
        raise CheckpointFormatError("not a legacy torch checkpoint (bad magic number)")
    version = _load_pickle(f)
    if version != PROTOCOL_VERSION:
        raise CheckpointFormatError(f"unsupported legacy protocol version {version!r}")
    sys_info = _load_pickle(f)
    if not isinstance(sys_info, dict):
        raise CheckpointFormatError("bad system info record")
    order = "<" if sys_info.get("little_endian", True) else ">"

    storages: Dict[str, tuple] = {}
    result = _load_pickle(f, storages)
    keys = _load_pickle(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointFormatError("bad storage key list")
    if set(keys) != set(storages) or len(keys) != len(set(keys)):
        raise CheckpointFormatError("storage key list does not match the storages referenced")

    data: Dict[str, np.ndarray] = {}
    for key in keys:
        code, numel = storages[key]
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointFormatError(f"truncated file at storage {key}")
        (count,) = struct.unpack(order + "q", raw)
        if count != numel:
            raise CheckpointFormatError(f"storage {key}: {count} elements stored, {numel} declared")
        dtype = np.dtype(order + code if code not in ("?", "i1", "u1") else code)
        nbytes = count * dtype.itemsize
        payload = f.read(nbytes)
        if len(payload) != nbytes:
            raise CheckpointFormatError(f"truncated file in storage {key}")
        data[key] = np.frombuffer(payload, dtype=dtype)

    out = _convert(result, data)
    if not isinstance(out, dict):
        raise CheckpointFormatError(f"checkpoint holds a {type(out).__name__}, not a state dict")
    return dict(out)
