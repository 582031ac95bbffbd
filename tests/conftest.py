"""Shared fixtures: tiny model folders written once per test session."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from jcompose.models import tiny


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """base name -> folder of a tiny base model, with both weight formats and a controlnet/."""
    root = tmp_path_factory.mktemp("tiny")
    return {base: tiny.write_tiny_base(root / base, base, controlnet=True, seed=i) for i, base in enumerate(tiny.BASES)}


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    return tiny.write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA compilation cache for one test module: repeated programs compile once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", None)


@pytest.fixture(autouse=True)
def _debug_off(monkeypatch):
    """Every test starts with tracebacks off: an in-process `--debug` sets JCOMPOSE_DEBUG for child
    processes (cli.pop_debug), and without this it would leak into later tests and their subprocesses."""
    monkeypatch.setenv("JCOMPOSE_DEBUG", "0")  # restored (removed) at teardown, whatever the test set


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def require_package(module: str, pip_name: str, purpose: str) -> None:
    """Skips the calling test when the optional package `module` is not installed; fails instead when
    JCOMPOSE_REQUIRE_OPTIONAL is set (CI installs every optional test package, so none may skip there).

    For packages used only as data (published weight files), whose import would pull in torch/torchvision.
    """
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return
    message = (f"optional test dependency {pip_name} ({purpose}) is not installed: "
               f"pip install --no-deps {pip_name}")
    if os.environ.get("JCOMPOSE_REQUIRE_OPTIONAL"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_eval_models(tmp_path_factory):
    """Tiny random CLIP (32 px, patch 8) and DINO ViT folders and a linear aesthetic head, for evaluation tests."""
    from jcompose.models import clip as clip_models
    from jcompose.models import encoders, vit

    root = tmp_path_factory.mktemp("eval_models")
    vocab = tiny.write_tokenizer(root / "clip")
    clip_config = clip_models.CLIPConfig(
        text_config=clip_models.CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37,
                                               num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                               eos_token_id=vocab - 1, bos_token_id=vocab - 2),
        vision_config=clip_models.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                   num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=16)
    clip = clip_models.CLIPModel(clip_config)
    encoders.export_encoder(clip, tiny.random_params(encoders.abstract_params(clip), 0), root / "clip", ("msgpack",))
    dino = vit.ViTModel(vit.ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                      image_size=32, patch_size=8), add_pooling_layer=False)
    encoders.export_encoder(dino, tiny.random_params(encoders.abstract_params(dino), 1), root / "dino")
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    save_file({"weight": rng.normal(size=(1, 16)).astype(np.float32), "bias": np.array([5.0], np.float32)},
              str(root / "aesthetic.safetensors"))
    return root
