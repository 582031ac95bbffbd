"""A fake `gs://` for tests: fsspec's in-memory filesystem registered as the `gs`/`gcs` protocol, which
etils.epath (without TensorFlow) reaches through its fsspec backend, as it would reach gcsfs.

Like GCS it has objects, not files: a write replaces an object whole, there is no hard link and no
create-if-absent; `writes` counts object writes per path so tests can see what a run wrote.
"""

import collections
import sys

import fsspec  # noqa: F401 (loads fsspec.registry)
import pytest
from etils.epath import backend
from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]
    writes: collections.Counter = collections.Counter()

    def __init__(self, *args, **kwargs):  # gcsfs options (finalize_on_close=...) mean nothing here
        super().__init__()

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode:
            type(self).writes[self._strip_protocol(path)] += 1
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch):
    """A fresh, empty fake gs:// for one test; returns the filesystem class (its `store` and `writes`)."""
    monkeypatch.setattr(FakeGCS, "store", {})
    monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
    monkeypatch.setattr(FakeGCS, "writes", collections.Counter())
    for name in FakeGCS.protocol:  # undone at teardown: the real protocols come back
        monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, name, FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield FakeGCS
    backend.fsspec_backend._get_filesystem.cache_clear()

