"""The networks a method's benchmark evaluation runs, abstract: the plan's "evaluate" programs.

`networks(eval_config)` gives, for the metrics of an evaluation config (`configs/eval/<method>.py`), each
feature extractor `jcompose.evaluate` (and its AnyDoor / DreamCom protocols) runs over the images: the FID
Inception for FID / KID, CLIP's image tower for CLIP score, CLIP-I and the aesthetic head, CLIP's text
tower for CLIP score's prompts, DINO ViT for DINO, LPIPS for LPIPS; each with its parameters as shapes
(loaders under `files.abstract_weights`) and the inputs one item becomes (an image at the host
preprocessing's output size; a prompt as its padded token ids and mask). SSIM runs no network.

`resolve(eval_config, workdir)` points the config's CLIP and DINO folders that are not on this machine at
config-only folders of the published models their names suggest (`CLIP`, `DINO`), restated from their
published configs; unnamed, CLIP ViT-L/14 (the largest the eval configs' docs name: AnyScene's; AnyDoor's
and DreamCom's name B/32, so their plans over-count CLIP) and DINO ViT-S/16.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jcompose.models import clip as clip_models
from jcompose.models import files, vit

# openai/clip-vit-*: (vision width, MLP, layers, heads, patch), (text width, MLP, layers, heads), projection
CLIP = {"large-patch14": ((1024, 4096, 24, 16, 14), (768, 3072, 12, 12), 768),
        "base-patch32": ((768, 3072, 12, 12, 32), (512, 2048, 12, 8), 512),
        "base-patch16": ((768, 3072, 12, 12, 16), (512, 2048, 12, 8), 512)}
# facebook/dino-*: width, MLP, layers, heads, patch
DINO = {"vits16": (384, 1536, 12, 6, 16), "vits8": (384, 1536, 12, 6, 8), "vitb16": (768, 3072, 12, 12, 16),
        "vitb8": (768, 3072, 12, 12, 8)}


@dataclasses.dataclass
class Network:
    """One extractor: `apply(params, *inputs)` on a batch, its abstract params, one item's inputs (shape and
    dtype of each, without the batch axis)."""

    name: str
    apply: Callable
    params: Any
    inputs: tuple[jax.ShapeDtypeStruct, ...]


def _image(size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((size, size, 3), jnp.float32)


def _write(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def write_clip(folder: Path, name: str) -> Path:
    """A config-only folder of openai/clip-vit-<name> (`CLIP`)."""
    (width, mlp, layers, heads, patch), (t_width, t_mlp, t_layers, t_heads), projection = CLIP[name]
    config = clip_models.CLIPConfig(
        text_config=clip_models.CLIPTextConfig(vocab_size=49408, hidden_size=t_width, intermediate_size=t_mlp,
                                               num_hidden_layers=t_layers, num_attention_heads=t_heads,
                                               max_position_embeddings=77),
        vision_config=clip_models.CLIPVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                                                   num_attention_heads=heads, image_size=224, patch_size=patch),
        projection_dim=projection)
    return _write(Path(folder), config.to_dict())


def write_dino(folder: Path, name: str) -> Path:
    """A config-only folder of facebook/dino-<name> (`DINO`)."""
    width, mlp, layers, heads, patch = DINO[name]
    config = vit.ViTConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                           num_attention_heads=heads, patch_size=patch, image_size=224, layer_norm_eps=1e-6)
    return _write(Path(folder), {**dataclasses.asdict(config), "model_type": "vit"})


def resolve(config, workdir: Path) -> list[str]:
    """Stands in config-only folders for the eval config's missing CLIP / DINO folders (module doc); a note each."""
    notes = []
    stand_ins = (("clip", CLIP, write_clip, "large-patch14"), ("dino", DINO, write_dino, "vits16"))
    for field, table, write, default in stand_ins:
        value = str(config[field].model)
        if value and Path(value).is_dir():
            continue
        name = next((n for n in table if n in value.lower().replace("/", "-")), default)
        config[field].model = str(write(Path(workdir) / "arch" / f"{field}-{name}", name))
        notes.append(f"eval {field}.model {value or '(unset)'}: not on this machine; {field} {name} (configs only)")
    return notes


def _abstract(load: Callable) -> tuple[Any, Any]:
    """(module, params as shapes) of a loader run on a config-only reading: nothing read or allocated."""
    found = {}

    def params():
        loaded = load()
        found["module"] = loaded.module
        return loaded.params

    with files.abstract_weights():
        shapes = jax.eval_shape(params)
    return found["module"], shapes


def networks(config) -> list[Network]:
    """The extractors the eval config's metrics need (module doc)."""
    from jcompose.metrics import clip_score, dino, fid, inception, lpips

    wanted, out = set(config.metrics), []
    if wanted & {"fid", "kid"}:
        module = inception.InceptionV3FID()
        size = inception.IMAGE_SIZE
        params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
        out.append(Network("inception", fid.feature_fn(module, config.fid.mode), params, (_image(size),)))
    if wanted & {"clip_score", "clip_i", "aesthetic"}:
        module, params = _abstract(lambda: clip_score.load_clip(config.clip.model))
        size = module.config.vision_config.image_size
        out.append(Network("clip", lambda p, x, m=module: clip_score.image_embeddings(m, p, x), params,
                           (_image(size),)))
        if "clip_score" in wanted:  # the prompts, once per benchmark, padded to the text tower's length as evaluate
            tokens = jax.ShapeDtypeStruct((module.config.text_config.max_position_embeddings,), jnp.int32)
            out.append(Network("clip_text", lambda p, ids, mask, m=module: clip_score.text_embeddings(m, p, ids, mask),
                               params, (tokens, tokens)))
    if "dino" in wanted:
        module, params = _abstract(lambda: dino.load_dino(config.dino.model))
        size = module.config.image_size
        out.append(Network("dino", lambda p, x, m=module: dino.dino_embeddings(m, p, x), params, (_image(size),)))
    if "lpips" in wanted:
        module = lpips.LPIPS(config.lpips.net)
        size = config.pair_size or 512
        zeros = jnp.zeros((1, size, size, 3))
        params = jax.eval_shape(module.init, jax.random.PRNGKey(0), zeros, zeros)["params"]
        out.append(Network("lpips", lambda p, x, y: module.apply({"params": p}, x, y), params,
                           (_image(size), _image(size))))
    return out
