"""The torch-free Lightning .ckpt reader (jcompose/models/lightning_ckpt.py) on files torch writes: a
pickle that would run code is refused and a class it names is never imported (control: torch's own full
unpickler runs both), and the optimizer state of a large checkpoint is skipped, not read.
"""

import json
import os
import subprocess
import sys
import tracemalloc
import types

import ldm_fixtures as fx
import numpy as np
import pytest

from jcompose import convert
from jcompose.metrics.torch_files import UnsafePickleError
from jcompose.models import ldm_names
from jcompose.models.lightning_ckpt import open_checkpoint

TINY = ["--sample-size", "8", "--head-channels", "16"]


def test_reader_refuses_code_and_never_imports_unknown_classes(tmp_path):
    """A pickle that would run `touch MARKER` is refused; a class whose module would write a marker when
    imported becomes an inert placeholder (conversion still succeeds). Control: torch.load(weights_only=False)
    in a child process does write both markers, so the fixtures are live."""
    torch = fx.torch_or_skip()
    run_marker, import_marker = tmp_path / "ran", tmp_path / "imported"
    (tmp_path / "evil_callbacks.py").write_text(
        f"open({str(import_marker)!r}, 'w').write('imported')\nclass State:\n    pass\n")
    fake = types.ModuleType("evil_callbacks")  # the class as pickled, without running the module
    fake.State = type("State", (), {"__module__": "evil_callbacks"})
    sys.modules["evil_callbacks"] = fake
    try:
        state = fx.anydoor_state_dict(1)
        unknown = fx.save_ckpt(tmp_path / "unknown.ckpt", state, {"callbacks": {"cb": fake.State()}})
    finally:
        del sys.modules["evil_callbacks"]

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {run_marker}",)

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "callbacks": Evil()}, evil)

    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        open_checkpoint(evil)
    with pytest.raises(SystemExit) as exit_info:  # the CLI: one error line, exit 2
        convert.main(["anydoor-ckpt", str(evil), str(tmp_path / "x")])
    assert exit_info.value.code == 2
    with open_checkpoint(unknown) as ckpt:
        assert ckpt.placeholders == ["evil_callbacks.State"]
    assert convert.main(["anydoor-ckpt", str(unknown), str(tmp_path / "out"), *TINY,
                         "--dinov2-head-channels", "8"]) == 0
    assert not run_marker.exists() and not import_marker.exists()
    info = json.loads((tmp_path / "out" / "config.json").read_text())
    assert info["placeholders"] == ["evil_callbacks.State"]

    for path in (evil, unknown):  # the same files under torch's full unpickler do run code
        subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True)
    assert run_marker.exists() and import_marker.exists()


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_reader_skips_the_optimizer_state(tmp_path, zipped):
    """A checkpoint ~300x larger than its weights (Adam moments): reading every weight allocates about the
    weights' size (tracemalloc peak), and exactly the weights come back."""
    torch = fx.torch_or_skip()
    state = fx.random_tensors(fx.hub_dinov2_shapes(), 2, ldm_names.DINOV2_PREFIX)
    weights = sum(v.nbytes for v in state.values())
    moments = {i: {"exp_avg": torch.randn(3_000_000), "exp_avg_sq": torch.rand(3_000_000)} for i in range(4)}
    path = fx.save_ckpt(tmp_path / "big.ckpt", state, {"optimizer_states": [{"state": moments}]}, zipped=zipped)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open_checkpoint(path) as ckpt:
            arrays = ckpt.read(ckpt.tensors)
            unread = ckpt.unread_bytes
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{'zip' if zipped else 'legacy'}: file {size / 2**20:.1f} MiB, weights {weights / 2**20:.2f} MiB, "
          f"peak while reading {peak / 2**20:.2f} MiB, unread {unread / 2**20:.1f} MiB")
    assert size > 200 * weights
    assert peak < 1.5 * weights + 2**20 and peak < size / 50
    assert unread == 4 * 2 * 3_000_000 * 4
    assert arrays.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
