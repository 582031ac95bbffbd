"""jcompose: JAX/Flax diffusion models that put given objects into images.

Three published methods (AnyScene, DreamCom, AnyDoor) on one engine; see README.md and the
design notes. Importing the package silences the Flax deprecation notices of the pinned
diffusers/transformers releases (`jcompose._quiet`) and makes diffusers' Flax spatial
transformer use PyTorch's GroupNorm epsilon (`jcompose._diffusers_fixes`).
"""

from jcompose import _diffusers_fixes
from jcompose._quiet import silence_flax_deprecations

__version__ = "0.1.0"

silence_flax_deprecations()
_diffusers_fixes.apply()
