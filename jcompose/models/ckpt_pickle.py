"""What a checkpoint's pickle may build, for `lightning_ckpt`: storage references and lazy tensors (no
bytes read), plain containers, inert `Placeholder`s for unknown classes; globals that can only serve code
execution raise `UnsafePickleError` naming the file (see `lightning_ckpt`'s module doc)."""

from __future__ import annotations

import collections
import dataclasses
import pickle

import numpy as np

from jcompose.metrics.torch_files import STORAGE_DTYPES, TorchFileError, UnsafePickleError

# Top-level packages whose globals exist to run code, open files or import modules.
_FORBIDDEN_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "shutil", "socket", "pickle", "_pickle",
    "marshal", "ctypes", "pty", "code", "codeop", "pdb", "webbrowser", "multiprocessing", "asyncio", "signal",
    "tempfile", "pathlib", "io", "_io", "types", "inspect", "threading", "_thread", "gc", "resource", "platform",
})
_FORBIDDEN_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open", "globals", "locals",
    "vars", "input", "breakpoint", "exit", "quit", "help", "print", "memoryview", "type", "object", "super",
    "classmethod", "staticmethod", "property", "__build_class__",
})
# Harmless builtins that plain data pickles use.
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "range": range,
                  "bytearray": bytearray, "tuple": tuple, "list": list, "dict": dict, "bool": bool, "int": int,
                  "float": float, "str": str, "bytes": bytes}

class Placeholder:
    """An object of a pickled class the reader does not know: its name, arguments and state, nothing else.

    Subclasses are made per global (`module`, `name` set); constructing, calling, BUILD, SETITEMS and
    APPENDS only record what the pickle passes.
    """

    module = ""
    name = ""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.mapping = args, kwargs, None, [], {}
        return obj

    def __init__(self, *args, **kwargs):  # the arguments are recorded by __new__; nothing runs
        pass

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.mapping[key] = value

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self.module}.{self.name}>"


@dataclasses.dataclass
class StorageRef:
    """One storage of the file: where its bytes are, not the bytes."""

    key: str
    dtype: np.dtype
    numel: int
    base: StorageRef | None = None  # legacy views share the storage of `base` from `offset`
    offset: int = 0


@dataclasses.dataclass
class LazyTensor:
    """A tensor of the checkpoint that has not been read: dtype, shape and where its elements are."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _storage_type(name: str):
    return ("storage-type", STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    if not isinstance(storage, StorageRef):
        raise UnsafePickleError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise TorchFileError(f"tensor with size {size} but stride {stride}")
    return LazyTensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data, *_unused):
    return data


def _rebuild_from_type(func, _new_type, args, _state=None):
    # func came from find_class: one of this module's rebuild functions or a Placeholder class
    return func(*args)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): lambda *_args: {},  # the factory is never called
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): tuple,
}


class LazyUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's index: storages through `storage(dtype, *torch args)`, tensors as
    `LazyTensor`s, unknown classes as `Placeholder`s (recorded in `placeholders`), code-running globals
    refused."""

    def __init__(self, file, source: str, storage):
        super().__init__(file)
        self.source, self.storage, self.placeholders = source, storage, set()

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _storage_type(name)
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module.split(".")[0] in _FORBIDDEN_MODULES or (module == "builtins" and (
                name in _FORBIDDEN_BUILTINS or name not in _SAFE_BUILTINS)):
            raise UnsafePickleError(f"{self.source}: the pickle calls {module}.{name}, which can run code; a "
                                    "checkpoint holds only data, so this file is refused (it may be tampered with)")
        self.placeholders.add(f"{module}.{name}")
        return type(name, (Placeholder,), {"module": module, "name": name})

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise TorchFileError(f"{self.source}: not a torch file or damaged (persistent id {pid!r:.40}, "
                                 "expected a storage)")
        kind = pid[1]
        if not (isinstance(kind, tuple) and kind[:1] == ("storage-type",)):
            raise UnsafePickleError(f"{self.source}: storage of type {kind!r:.60}, expected a torch.<X>Storage")
        return self.storage(kind[1], *pid[2:])
