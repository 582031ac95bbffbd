"""Lazy, torch-free reading of PyTorch (Lightning) checkpoints: only the tensors asked for are read.

A Lightning `.ckpt` is a `torch.save` of a dict: `state_dict` (the weights) next to `optimizer_states`
(Adam's two moments per trained weight, often larger than the weights), `callbacks`, `epoch`,
`global_step`, ... Reading it here unpickles the small index (`data.pkl`) with every storage as a
reference (file offset, dtype, element count) and every tensor as a `LazyTensor` (storage, offset,
shape, stride): nothing is read from disk until `Checkpoint.read(names)` asks for named tensors, and then
only the storages they use. The optimizer state is never read into memory.

Containers: zip-format `torch.save` (torch >= 1.6; storages read straight from the file at their
offset when stored uncompressed, as torch writes them), legacy (pre-zip) `torch.save` streams, and
`.safetensors` (header only until read).

Pickled objects are data, never code. The unpickler resolves only tensor/storage rebuilding and plain
containers itself; any other class becomes an inert `Placeholder` (records its name and arguments; it is
never imported, called or given the real class's behaviour), so a checkpoint whose callbacks pickle
Lightning or omegaconf objects still opens without those packages. Globals that can only serve code
execution (os/posix/subprocess/sys/builtins' eval, exec, getattr, ... see `ckpt_pickle`) raise
`UnsafePickleError` naming the file: they never occur in a weight file, so the file was tampered with
(the placeholder rule alone would already keep them from running).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jcompose.metrics.torch_files import LEGACY_MAGIC, LEGACY_PROTOCOL, TorchFileError, UnsafePickleError
from jcompose.models.ckpt_pickle import LazyTensor, LazyUnpickler, Placeholder, StorageRef

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _local_data_offset(handle, info: zipfile.ZipInfo) -> int:
    """Byte offset of a zip member's data: after its local header (30 bytes + name + extra field)."""
    handle.seek(info.header_offset)
    header = handle.read(30)
    if header[:4] != b"PK\x03\x04":
        raise TorchFileError(f"zip member {info.filename}: bad local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


class Checkpoint:
    """An opened checkpoint (see module doc). Use as a context manager, or call `close()`.

    Attributes:
      path: the file.
      tensors: name -> LazyTensor of the weights (`state_dict` of a Lightning checkpoint, else the top level).
      meta: the other top-level entries that are plain values (epoch, global_step, versions, ...).
      placeholders: sorted "module.name" of the pickled classes that became `Placeholder`s.
      unread_bytes: bytes of tensors outside the weights (optimizer state, ...), never read.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: checkpoint not found")
        self._file = open(self.path, "rb")
        self._zip: zipfile.ZipFile | None = None
        self._offsets: dict[str, int] = {}
        self._safetensors = None
        self.placeholders: list[str] = []
        try:
            if self.path.suffix == ".safetensors":
                tree = self._open_safetensors()
            elif zipfile.is_zipfile(self._file):
                tree = self._open_zip()
            else:
                self._file.seek(0)  # is_zipfile read the end of the file
                tree = self._open_legacy()
        except BaseException:
            self.close()
            raise
        self.tensors, self.meta, self.unread_bytes = self._split(tree)

    # ------------------------------------------------------------------------------ containers
    def _open_safetensors(self) -> dict:
        from safetensors import SafetensorError, safe_open

        try:
            self._safetensors = safe_open(str(self.path), framework="numpy")
            tensors = {}
            for key in self._safetensors.keys():
                view = self._safetensors.get_slice(key)
                if view.get_dtype() not in SAFETENSORS_DTYPES:
                    raise TorchFileError(f"{self.path}: tensor {key} has dtype {view.get_dtype()}, not one of "
                                         f"{sorted(SAFETENSORS_DTYPES)}")
                dtype = np.dtype(SAFETENSORS_DTYPES[view.get_dtype()])
                shape = tuple(view.get_shape())
                ref = StorageRef(key, dtype, int(np.prod(shape, dtype=np.int64)))
                tensors[key] = LazyTensor(ref, 0, shape, tuple(int(s) for s in _contiguous_strides(shape)))
        except (SafetensorError, OSError) as err:
            raise TorchFileError(f"{self.path}: not a readable safetensors file ({err})") from None
        return tensors

    def _open_zip(self) -> Any:
        self._zip = zipfile.ZipFile(self._file)
        names = self._zip.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise TorchFileError(f"{self.path}: zip archive without <root>/data.pkl (not a torch.save file)")
        root = pkl.rsplit("/", 1)[0]
        if f"{root}/byteorder" in names and self._zip.read(f"{root}/byteorder").decode().strip() != "little":
            raise TorchFileError(f"{self.path}: big-endian torch files are not supported")
        self._root = root
        refs: dict[str, StorageRef] = {}

        def storage(dtype, key, _location, numel, *_rest):
            key = str(key)
            if f"{root}/data/{key}" not in names:
                raise TorchFileError(f"{self.path}: storage {root}/data/{key} missing from the archive")
            return refs.setdefault(key, StorageRef(key, dtype, int(numel)))

        unpickler = LazyUnpickler(io.BytesIO(self._zip.read(pkl)), f"{self.path} ({pkl})", storage)
        tree = unpickler.load()
        self.placeholders = sorted(unpickler.placeholders)
        return tree

    def _open_legacy(self) -> Any:
        f, source = self._file, str(self.path)

        def refuse(*_args):
            raise TorchFileError(f"{source}: storage reference in a legacy header pickle")

        try:
            magic = LazyUnpickler(f, source, refuse).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise TorchFileError(f"{source}: neither a zip archive nor a legacy torch pickle ({err})") from None
        if magic != LEGACY_MAGIC:
            raise TorchFileError(f"{source}: not a torch file (first pickle is {magic!r:.40}, expected the torch magic)")
        if LazyUnpickler(f, source, refuse).load() != LEGACY_PROTOCOL:
            raise TorchFileError(f"{source}: unknown legacy torch protocol")
        sys_info = LazyUnpickler(f, source, refuse).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise TorchFileError(f"{source}: big-endian legacy torch files are not supported")
        refs: dict[str, StorageRef] = {}

        def storage(dtype, key, _location, numel, view=None):
            base = refs.setdefault(str(key), StorageRef(str(key), dtype, int(numel)))
            if view is None:
                return base
            _view_key, offset, size = view  # old files: a view into a shared storage
            return StorageRef(f"{key}+{offset}", dtype, int(size), base=base, offset=int(offset))

        unpickler = LazyUnpickler(f, source, storage)
        tree = unpickler.load()
        self.placeholders = sorted(unpickler.placeholders)
        keys = LazyUnpickler(f, source, refuse).load()
        for key in keys:  # each storage: int64 element count, then the raw elements; skipped, not read
            header = f.read(8)
            if len(header) != 8:
                raise TorchFileError(f"{source}: truncated before storage {key}")
            (numel,) = struct.unpack("<q", header)
            ref = refs.get(str(key))
            if ref is None:
                raise TorchFileError(f"{source}: data for storage {key}, which no tensor references")
            self._offsets[str(key)] = f.tell()
            f.seek(numel * ref.dtype.itemsize, 1)
        return tree

    # --------------------------------------------------------------------------------- content
    def _split(self, tree: Any) -> tuple[dict[str, LazyTensor], dict[str, Any], int]:
        if not isinstance(tree, Mapping):
            raise TorchFileError(f"{self.path}: holds a {type(tree).__name__}, expected a dict (a state dict or a "
                                 "Lightning checkpoint)")
        weights = tree["state_dict"] if isinstance(tree.get("state_dict"), Mapping) else tree
        tensors = {str(k): v for k, v in weights.items() if isinstance(v, LazyTensor)}
        if not tensors:
            raise TorchFileError(f"{self.path}: holds no tensors (top-level keys {sorted(map(str, tree))[:8]})")
        meta = {str(k): v for k, v in tree.items() if isinstance(v, (int, float, str, bool)) and k != "state_dict"}
        seen = {id(t.storage.base or t.storage) for t in tensors.values()}
        unread = sum(s.numel * s.dtype.itemsize for s in _storages(tree) if id(s) not in seen)
        return tensors, meta, unread

    def read(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The named tensors as numpy arrays (C-contiguous, the file's dtype); only their storages are read.

        Raises KeyError naming the checkpoint for an unknown name, TorchFileError for a damaged file."""
        names = list(names)
        missing = [n for n in names if n not in self.tensors]
        if missing:
            raise KeyError(f"{self.path}: no tensors {missing[:5]}")
        if self._safetensors is not None:
            return {n: np.ascontiguousarray(self._safetensors.get_tensor(n)) for n in names}
        cache: dict[int, np.ndarray] = {}
        out = {}
        for name in names:
            tensor = self.tensors[name]
            base = tensor.storage.base or tensor.storage
            if id(base) not in cache:
                cache[id(base)] = self._read_storage(base)
            flat = cache[id(base)][tensor.storage.offset:tensor.storage.offset + tensor.storage.numel]
            out[name] = _view(flat, tensor, f"{self.path}: tensor {name}")
        return out

    def _read_storage(self, ref: StorageRef) -> np.ndarray:
        count = ref.numel
        if self._zip is not None:
            info = self._zip.getinfo(f"{self._root}/data/{ref.key}")
            if info.file_size < count * ref.dtype.itemsize:
                raise TorchFileError(f"{self.path}: storage {ref.key} has {info.file_size} bytes, its tensors "
                                     f"need {count * ref.dtype.itemsize}")
            if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; other writers might
                raw = self._zip.read(info)
                return np.frombuffer(raw, ref.dtype.newbyteorder("<"), count).astype(ref.dtype)
            offset = _local_data_offset(self._file, info)
        else:
            offset = self._offsets.get(ref.key)
            if offset is None:
                raise TorchFileError(f"{self.path}: no data for storage {ref.key}")
        out = np.empty(count, ref.dtype)
        self._file.seek(offset)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise TorchFileError(f"{self.path}: storage {ref.key} truncated")
        return out

    def close(self) -> None:
        """Closes the file (the lazy tensors cannot be read afterwards)."""
        if self._zip is not None:
            self._zip.close()
        self._safetensors = None
        self._file.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


def _view(flat: np.ndarray, tensor: LazyTensor, what: str) -> np.ndarray:
    """The strided view of a storage that a tensor is, as a C-contiguous array (no copy when it already is)."""
    size, stride, offset = tensor.shape, tensor.stride, tensor.offset
    if any(s == 0 for s in size):
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or last >= flat.size or min(stride, default=0) < 0:
        raise TorchFileError(f"{what}: view (offset {offset}, size {size}, stride {stride}) outside its storage "
                             f"of {flat.size} elements")
    count = int(np.prod(size, dtype=np.int64))
    if list(stride) == _contiguous_strides(size):
        return flat[offset:offset + count].reshape(size)
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * flat.dtype.itemsize for s in stride))
    return np.array(view, order="C")


def _storages(tree: Any, seen: set | None = None) -> Iterable[StorageRef]:
    """Every distinct storage referenced anywhere in a loaded tree (for the unread-bytes count)."""
    seen = set() if seen is None else seen
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, LazyTensor):
            base = node.storage.base or node.storage
            if id(base) not in seen:
                seen.add(id(base))
                yield base
        elif isinstance(node, Mapping):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
        elif isinstance(node, Placeholder):
            stack.extend([*node.args, node.state, *node.items, *node.mapping.values()])


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Opens a `.ckpt/.pt/.pth/.bin` (zip or legacy torch.save) or `.safetensors` file lazily (module doc).

    Raises FileNotFoundError, TorchFileError (not a checkpoint, damaged), UnsafePickleError (code in it)."""
    return Checkpoint(path)
