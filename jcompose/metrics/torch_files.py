"""Reads published PyTorch weight files into numpy without importing torch.

Supported containers:

* zip-format `torch.save` files (torch >= 1.6): ``<root>/data.pkl`` + raw storages
  ``<root>/data/<key>`` (+ ``<root>/byteorder``);
* legacy (pre-zip) `torch.save` files: a stream of pickles (magic, protocol, sys info, the object,
  the storage keys) followed by each storage as ``int64 numel`` + raw bytes;
* TorchScript archives (`torch.jit.save`): a zip whose ``data.pkl`` pickles the module tree; each
  scripted module comes back as a `ScriptModule` holding its attributes (tensors, ints, lists);
* ``.safetensors`` and Flax ``.msgpack`` are passed through to jcompose's existing readers.

Tensors are rebuilt as strided views of their storage (offset, size, stride as recorded), then
copied contiguous: published files such as pytorch-fid's Inception store permuted views, which a
plain reshape would silently scramble.

Unpickling is restricted to an allow-list (tensor-rebuild functions, storage types,
`collections.OrderedDict`, TorchScript's list builders and `__torch__.*` module classes, which
become inert attribute holders). Anything else raises `UnsafePickleError` naming the file and the
refused global: no code in a weight file is ever executed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file's pickle references something other than plain tensors and containers."""


class TorchFileError(ValueError):
    """A file is not a readable torch / safetensors / msgpack weight file."""


class ScriptModule(dict):
    """A TorchScript module's attributes (sub-modules, tensors, ints, ...) by name.

    `type_name` is the scripted class, e.g. ``__torch__.inceptionv3.Conv2dLayer``; the root
    module of an archive also has `constants`, the archive's tensor constants in order (frozen
    modules keep their weights there).
    """

    type_name = ""
    constants: tuple = ()

    def __setstate__(self, state):
        # TorchScript pickles a module as NEWOBJ + BUILD(dict of attributes).
        if not isinstance(state, Mapping):
            raise UnsafePickleError(f"TorchScript module {self.type_name} has non-dict state {type(state).__name__}")
        self.update(state)


class _StorageType:
    """Stand-in for `torch.<X>Storage` classes: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage key resolved lazily to a flat numpy array (zip: one member; legacy: a file offset)."""

    def __init__(self, dtype: np.dtype, data: np.ndarray | None = None):
        self.dtype = dtype
        self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    """`torch._utils._rebuild_tensor_v2` in numpy: a contiguous copy of the strided view."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise TorchFileError(f"tensor with size {size} but stride {stride}")
    flat = storage.data
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=flat.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= flat.size or min(stride, default=0) < 0:
        raise TorchFileError(f"tensor view (offset {storage_offset}, size {size}, stride {stride}) "
                             f"outside its storage of {flat.size} elements")
    if not size:  # as_strided treats an empty shape as "keep the input's"
        return np.array(flat[storage_offset])  # 0-d copy
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.array(view, order="C")  # a writable copy: the storage buffer is read-only


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_unused):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _build_list(items):
    return list(items)


# (module, name) -> object the unpickler may return. Nothing here executes code from the file.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch.jit._pickle", "build_intlist"): _build_list,
    ("torch.jit._pickle", "build_doublelist"): _build_list,
    ("torch.jit._pickle", "build_boollist"): _build_list,
    ("torch.jit._pickle", "build_tensorlist"): _build_list,
    ("torch.jit._pickle", "build_genericlist"): _build_list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _type: value,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage):
        super().__init__(file)
        self.source = source
        self.load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("__torch__"):
            # A TorchScript class: an inert dict subclass that only records its attributes.
            return type(name, (ScriptModule,), {"type_name": f"{module}.{name}"})
        raise UnsafePickleError(
            f"{self.source}: refuses to unpickle global {module}.{name}; only tensors, storages, "
            "OrderedDict and TorchScript modules are allowed (is this a plain weight file?)"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise TorchFileError(f"{self.source}: not a torch file or damaged (persistent id {pid!r:.40}, "
                                 "expected a storage)")
        return self.load_storage(pid[1:])


def _storage_dtype(storage_type) -> np.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    raise UnsafePickleError(f"storage of type {storage_type!r:.60}, expected a torch.<X>Storage")


# --------------------------------------------------------------------------------------- zip


def _zip_root(names: list[str], source: str) -> tuple[str, str]:
    """The archive prefix and the pickle to load ('data.pkl')."""
    for name in names:
        if name.endswith("data.pkl") and name.count("/") == 1:
            return name.rsplit("/", 1)[0], name
    raise TorchFileError(f"{source}: zip archive without <root>/data.pkl (not a torch.save or jit.save file)")


def _load_zip(path: Path) -> Any:
    source = str(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root, pkl = _zip_root(names, source)
        order = "little"
        if f"{root}/byteorder" in names:
            order = archive.read(f"{root}/byteorder").decode().strip()
        cache: dict[tuple[str, str], _Storage] = {}

        def unpickle(pkl_name: str, data_dir: str):
            def load_storage(args):
                storage_type, key, _location, numel = args[:4]
                dtype = _storage_dtype(storage_type)
                if (data_dir, key) not in cache:
                    member = f"{root}/{data_dir}/{key}"
                    if member not in names:
                        raise TorchFileError(f"{source}: storage {member} missing from the archive")
                    raw = np.frombuffer(archive.read(member),
                                        dtype=dtype.newbyteorder("<" if order == "little" else ">"))
                    cache[(data_dir, key)] = _Storage(dtype, raw.astype(dtype, copy=False))
                storage = cache[(data_dir, key)]
                if storage.data.size < int(numel):
                    raise TorchFileError(f"{source}: storage {key} has {storage.data.size} elements, header says {numel}")
                return storage

            with archive.open(pkl_name) as handle:
                return _Unpickler(io.BytesIO(handle.read()), f"{source} ({pkl_name})", load_storage).load()

        obj = unpickle(pkl, "data")
        if isinstance(obj, ScriptModule) and f"{root}/constants.pkl" in names:
            # TorchScript constants (e.g. the weights of a frozen module), stored under constants/.
            obj.constants = tuple(unpickle(f"{root}/constants.pkl", "constants"))
        return obj


# ------------------------------------------------------------------------------------ legacy


def _load_legacy(path: Path) -> Any:
    source = str(path)
    with open(path, "rb") as f:
        def refuse(_args):
            raise TorchFileError(f"{source}: storage reference in a legacy header pickle")

        try:
            magic = _Unpickler(f, source, refuse).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            if isinstance(err, UnsafePickleError):
                raise
            raise TorchFileError(f"{source}: neither a zip archive nor a legacy torch pickle ({err})") from None
        if magic != LEGACY_MAGIC:
            raise TorchFileError(f"{source}: not a torch file (first pickle is {magic!r:.40}, expected the torch magic)")
        protocol = _Unpickler(f, source, refuse).load()
        if protocol != LEGACY_PROTOCOL:
            raise TorchFileError(f"{source}: legacy torch protocol {protocol}, expected {LEGACY_PROTOCOL}")
        sys_info = _Unpickler(f, source, refuse).load()
        if not sys_info.get("little_endian", True):
            raise TorchFileError(f"{source}: big-endian legacy torch files are not supported")

        storages: dict[str, _Storage] = {}
        views = []

        def load_storage(args):
            storage_type, key, _location, _numel, view = args
            dtype = _storage_dtype(storage_type)
            storages.setdefault(key, _Storage(dtype))
            if view is None:
                return storages[key]
            # Old files share one storage between views: (view_key, offset, size).
            _view_key, offset, size = view
            sub = _Storage(dtype)
            views.append((sub, storages[key], int(offset), int(size)))
            return sub

        # Tensors need their storage data while being rebuilt, but the data only follows the
        # pickle: first unpickle with placeholder storages recorded, then read data, then rebuild.
        obj_start = f.tell()
        tensors_args: list = []

        def deferred(storage, offset, size, stride, *rest):
            tensors_args.append((storage, offset, size, stride))
            return _Deferred(len(tensors_args) - 1)

        unpickler = _Unpickler(f, source, load_storage)
        unpickler.find_class = _deferring_find_class(unpickler.find_class, deferred)
        obj = unpickler.load()
        del obj_start
        keys = _Unpickler(f, source, refuse).load()
        for key in keys:
            header = f.read(8)
            if len(header) != 8:
                raise TorchFileError(f"{source}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            storage = storages.get(key)
            if storage is None:
                raise TorchFileError(f"{source}: data for storage {key}, which no tensor references")
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise TorchFileError(f"{source}: storage {key} truncated ({len(raw)} of "
                                     f"{numel * storage.dtype.itemsize} bytes)")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
        for sub, base, offset, size in views:
            sub.data = base.data[offset:offset + size]
        missing = [k for k, s in storages.items() if s.data is None]
        if missing:
            raise TorchFileError(f"{source}: no data for storages {missing[:5]}")
        built = [_rebuild_tensor(*args) for args in tensors_args]
        return _resolve(obj, built)


class _Deferred:
    def __init__(self, index: int):
        self.index = index


def _deferring_find_class(find_class, deferred):
    def find(module, name):
        target = find_class(module, name)
        return deferred if target is _rebuild_tensor else target
    return find


def _resolve(obj: Any, built: list) -> Any:
    if isinstance(obj, _Deferred):
        return built[obj.index]
    if isinstance(obj, ScriptModule):
        out = type(obj)()
        out.update({k: _resolve(v, built) for k, v in obj.items()})
        return out
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, built)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, built) for v in obj)
    return obj


# ------------------------------------------------------------------------------------ public


def load(path: str | Path) -> Any:
    """Reads a weight file without torch.

    Args:
      path: a ``.pth/.pt/.bin/.ckpt`` torch file (zip, legacy or TorchScript), ``.safetensors``
        or Flax ``.msgpack``.

    Returns:
      What the file holds with every tensor as a contiguous numpy array (bfloat16 as
      `ml_dtypes.bfloat16`): usually a dict / OrderedDict of name -> array; TorchScript archives
      give nested `ScriptModule` dicts (use `flatten` for dotted names).

    Raises:
      FileNotFoundError, TorchFileError (unreadable / not a weight file), UnsafePickleError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from jcompose.models.loading import read_safetensors

        return read_safetensors([path])
    if path.suffix == ".msgpack":
        from jcompose.models.loading import _read_msgpack

        return _read_msgpack(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts / ScriptModules / lists -> {'a.b.0.weight': array}, arrays only (flags dropped)."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, np.ndarray):
        out[prefix] = tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}.{i}" if prefix else str(i)))
    return out


def state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`load` flattened to dotted names -> arrays; refuses files that hold no tensors."""
    tree = load(path)
    if isinstance(tree, Mapping) and "state_dict" in tree and isinstance(tree["state_dict"], Mapping):
        tree = tree["state_dict"]  # Lightning-style checkpoints
    flat = flatten(tree)
    if not flat:
        raise TorchFileError(f"{path}: holds no tensors (got {type(tree).__name__})")
    return flat
