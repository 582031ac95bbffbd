"""jcompose runs without PyTorch and without diffusers' / transformers' Flax classes.

A subprocess hides `torch` and `diffusers` before anything is imported (every import finder
reports them absent, as on a machine without them) and records each lookup with the file that
made it. It imports every entry point, loads a tiny base from PyTorch-layout safetensors and runs
UNet, ControlNet, VAE, text encoder and DINOv2. The parent asserts that no lookup came from
jcompose's own code (transformers' availability probes are fine), that no transformers Flax module
was loaded, and that the outputs equal the same computation from the Flax msgpack files in this
process.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import module_calls
import numpy as np
from hide_torch import HIDE, OWN_CODE

from jcompose.models import loading

_SCRIPT = HIDE + textwrap.dedent(
    """
    import json
    import numpy as np
    import configs.common, input_pipeline.pipeline, input_pipeline.anyscene_benchmark  # noqa: F401
    import input_pipeline.anydoor_benchmark, input_pipeline.sources.synthetic  # noqa: F401
    import jcompose.train, jcompose.compose, jcompose.evaluate, jcompose.convert, jcompose.sweep  # noqa: F401
    import jcompose.bench.commands, jcompose.bench.sample, jcompose.bench.train, jcompose.bench.suite  # noqa: F401
    import jcompose.methods.anyscene_inference, jcompose.methods.dreamcom_inference  # noqa: F401
    import jcompose.methods.anydoor_cli, jcompose.methods.anydoor_inference  # noqa: F401
    from jcompose.models import loading

    folder, dinov2, out, tests = sys.argv[1:5]
    sys.path.insert(0, tests)
    import module_calls  # the forward both sides run (tests/module_calls.py)
    pipe = loading.load_pipeline(folder, weights="safetensors",
                                 components=("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet"))
    dino = loading.load_dinov2(dinov2, weights="safetensors")
    inputs = np.load(out + ".in.npz")
    tokens = pipe.tokenizer(["a photo of sks dog"], padding="max_length", max_length=16, return_tensors="np").input_ids
    forward = module_calls.text_controlnet_unet_vae_dino(pipe, dino)
    params = module_calls.pipeline_params(pipe, dino)
    np.savez(out, tokens=tokens, **forward(params, tokens, inputs["x"], inputs["cond"], inputs["pixels"]))
    flax_modules = sorted(m for m in sys.modules if m.startswith("transformers") and "flax" in m)
    print(json.dumps({"lookups": lookups, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in (
        "torch", "diffusers")), "transformers_flax": flax_modules}))
    """
)


def test_pytorch_free_load_and_forward(tiny_bases, tiny_dinov2, tmp_path):
    rng = np.random.default_rng(0)
    inputs = dict(
        x=rng.normal(size=(1, 4, 8, 8)).astype(np.float32),
        cond=rng.uniform(size=(1, 3, 64, 64)).astype(np.float32),
        pixels=rng.normal(size=(1, 224, 224, 3)).astype(np.float32),
    )
    out = str(tmp_path / "out")
    np.savez(out + ".in.npz", **inputs)
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tiny_bases["sd15"]), str(tiny_dinov2), out, str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    ours = [(name, where) for name, where in report["lookups"] if where.startswith(OWN_CODE)]
    assert ours == [], ours  # jcompose itself never even looks for torch or diffusers
    assert report["loaded"] == [] and report["transformers_flax"] == [], report
    got = np.load(out + ".npz")

    # The same computation from the Flax msgpack files, in this process.
    pipe = loading.load_pipeline(tiny_bases["sd15"], weights="msgpack",
                                 components=("unet", "vae", "text_encoder", "controlnet"))
    dino = loading.load_dinov2(tiny_dinov2, weights="msgpack")

    forward = module_calls.text_controlnet_unet_vae_dino(pipe, dino)
    ours = forward(module_calls.pipeline_params(pipe, dino), got["tokens"], inputs["x"], inputs["cond"],
                   inputs["pixels"])
    for name, want in ours.items():
        np.testing.assert_allclose(got[name], np.asarray(want), atol=1e-5, err_msg=name)
    assert float(jnp.abs(jnp.asarray(got["eps"])).mean()) > 0.01  # the ControlNet residuals are not silent


def test_the_hook_names_the_importing_file(tmp_path):
    """The hook above sees an import of torch from a module file and names that file (so an empty
    list of own-code lookups means something), and the import fails as without torch."""
    (tmp_path / "probe_module.py").write_text("try:\n    import torch\nexcept ImportError:\n    pass\n")
    probe = HIDE + textwrap.dedent(
        f"""
        sys.path.insert(0, {str(tmp_path)!r})
        import probe_module  # noqa: F401
        print(sorted(set(lookups)), "torch" in sys.modules)  # each wrapped finder sees the lookup
        """
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == f"[('torch', {str(tmp_path / 'probe_module.py')!r})] False", run.stdout + run.stderr
