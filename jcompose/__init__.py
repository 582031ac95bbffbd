"""jcompose: JAX/Flax diffusion models that put given objects into images.

Three published methods (AnyScene, DreamCom, AnyDoor) on one engine with its own networks
(`jcompose.models`); see README.md and the design notes.
"""

__version__ = "0.1.0"
