"""Makes diffusers' Flax attention blocks compute what their PyTorch twins compute.

Two numerical differences between `diffusers.models.attention_flax` and the PyTorch modules of
the same diffusers release (0.35-0.39), both in every cross-attention block of the UNet and
ControlNet:

* `FlaxTransformer2DModel` builds its input GroupNorm with ``epsilon=1e-5``; PyTorch's
  `Transformer2DModel` uses ``eps=1e-6``;
* `FlaxGEGLU` (the feed-forward gate) calls `flax.linen.gelu`, whose default is the tanh
  approximation; PyTorch's `GEGLU` uses the exact (erf) GELU.

Together they moved tiny-UNet outputs of magnitude ~2 by ~3e-4 from diffusers PyTorch (also in
float64), which breaks parity with diffusers and with the official PyTorch code of the three
methods. The fix leaves diffusers' code untouched: the `nn` name inside that module (whose only
GroupNorm and gelu are the two above) is replaced by a view of `flax.linen` with PyTorch's
choices. Parameters and their tree are unchanged. `tests/test_parity.py` fails if this stops
matching PyTorch.
"""

import functools
import types

from flax import linen

PYTORCH_TRANSFORMER2D_GROUPNORM_EPS = 1e-6


class _LinenWithPytorchGroupNormEpsilon(types.ModuleType):
    """`flax.linen`, except GroupNorm's epsilon and gelu's approximation, as in PyTorch."""

    gelu = staticmethod(functools.partial(linen.gelu, approximate=False))

    def __getattr__(self, name):
        return getattr(linen, name)

    @staticmethod
    def GroupNorm(*args, **kwargs):  # noqa: N802 (mirrors the linen name it replaces)
        kwargs["epsilon"] = PYTORCH_TRANSFORMER2D_GROUPNORM_EPS
        return linen.GroupNorm(*args, **kwargs)


def apply() -> None:
    """Installs the fix (idempotent)."""
    from diffusers.models import attention_flax

    if not isinstance(attention_flax.nn, _LinenWithPytorchGroupNormEpsilon):
        attention_flax.nn = _LinenWithPytorchGroupNormEpsilon("flax.linen (jcompose: PyTorch GroupNorm eps, exact gelu)")
