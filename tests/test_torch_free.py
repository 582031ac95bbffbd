"""Loading and running real-format folders with torch made unimportable, as a user without it."""

import json
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np

from jcompose.models import loading

_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import json
    import numpy as np
    import jax.numpy as jnp
    from jcompose.models import loading

    folder, dinov2, out = sys.argv[1:4]
    pipe = loading.load_pipeline(folder, weights="safetensors",
                                 components=("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet"))
    dino = loading.load_dinov2(dinov2, weights="safetensors")
    inputs = np.load(out + ".in.npz")
    tokens = pipe.tokenizer(["a photo of sks dog"], padding="max_length", max_length=16, return_tensors="np").input_ids
    ctx = pipe.text_encoder.module(tokens, params=pipe.text_encoder.params).last_hidden_state
    x, t = inputs["x"], jnp.array([321])
    down, mid = pipe.controlnet.module.apply({"params": pipe.controlnet.params}, x, t, ctx, inputs["cond"], return_dict=False)
    eps = pipe.unet.module.apply({"params": pipe.unet.params}, x, t, ctx, down_block_additional_residuals=down,
                                 mid_block_additional_residual=mid).sample
    image = pipe.vae.module.apply({"params": pipe.vae.params}, x, method=pipe.vae.module.decode).sample
    feats = dino.module(inputs["pixels"], params=dino.params).last_hidden_state
    np.savez(out, tokens=tokens, ctx=ctx, eps=eps, image=image, feats=feats)
    print(json.dumps({"torch_imported": sys.modules.get("torch") is not None}))
    """
)


def test_pytorch_free_load_and_forward(tiny_bases, tiny_dinov2, tmp_path):
    rng = np.random.default_rng(0)
    inputs = dict(
        x=rng.normal(size=(1, 4, 8, 8)).astype(np.float32),
        cond=rng.uniform(size=(1, 3, 64, 64)).astype(np.float32),
        pixels=rng.normal(size=(1, 3, 224, 224)).astype(np.float32),
    )
    out = str(tmp_path / "out")
    np.savez(out + ".in.npz", **inputs)
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tiny_bases["sd15"]), str(tiny_dinov2), out],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"torch_imported": False}
    got = np.load(out + ".npz")

    # The same computation from the Flax msgpack files, in this process.
    pipe = loading.load_pipeline(tiny_bases["sd15"], weights="msgpack",
                                 components=("unet", "vae", "text_encoder", "controlnet"))
    dino = loading.load_dinov2(tiny_dinov2, weights="msgpack")
    ctx = pipe.text_encoder.module(got["tokens"], params=pipe.text_encoder.params).last_hidden_state
    t = jnp.array([321])
    down, mid = pipe.controlnet.module.apply({"params": pipe.controlnet.params}, inputs["x"], t, ctx, inputs["cond"],
                                             return_dict=False)
    eps = pipe.unet.module.apply({"params": pipe.unet.params}, inputs["x"], t, ctx,
                                 down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    image = pipe.vae.module.apply({"params": pipe.vae.params}, inputs["x"], method=pipe.vae.module.decode).sample
    feats = dino.module(inputs["pixels"], params=dino.params).last_hidden_state
    for name, want in (("ctx", ctx), ("eps", eps), ("image", image), ("feats", feats)):
        np.testing.assert_allclose(got[name], np.asarray(want), atol=1e-5, err_msg=name)
    assert float(jnp.abs(jnp.asarray(got["eps"])).mean()) > 0.01  # the ControlNet residuals are not silent
