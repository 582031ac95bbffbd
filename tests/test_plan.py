"""`jcompose.plan` on the tiny config: compiled for a TPU v5p slice and for 8 H100s on this CPU machine (libtpu
and the CUDA plugin as optional test packages), its figures against the same program built and traced on
the CPU, the largest-batch search, and the command line."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from configs.common import load
from jcompose import cli, methods, parallel, train
from jcompose.plan import __main__ as plan_cli
from jcompose.plan import build, flops, planner, targets

CONFIG = "configs/denoise.py"
GiB = 2**30


def _require(target_name: str) -> targets.Target:
    target = targets.parse(target_name)
    missing = targets.missing_plugin(target)
    if missing:
        pytest.skip(f"optional test dependency {missing} is not installed (the plan's compiler for {target_name})")
    return target


def _config(compute_dtype="float32", **train_fields):
    config = load(f"{CONFIG}:tiny")
    config.compute_dtype = compute_dtype
    config.train.update({"batch_size": 8, **train_fields})
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("plan")


@pytest.fixture(scope="module")
def plan_cache(workdir):
    """One plan cache for the module: a program compiled once (same text, devices, compiler) is not compiled
    again by a later test (the largest-batch search reuses the v5p plan's program)."""
    return str(workdir / "plan-cache")


@pytest.fixture(scope="module")
def v5p(workdir, plan_cache):
    """The tiny denoise run (global batch 8: 2 per chip) planned for v5p-8 (4 chips), train step only."""
    target = _require("v5p-8")
    run = planner.prepare(_config(), CONFIG, target, workdir)
    return run, planner.plan(run, CONFIG, target, names=("train",), log=lambda *_: None, cache_dir=plan_cache)


@pytest.fixture(scope="module")
def cpu_state(workdir):
    """The same run built for real on the CPU (tiny random weights): state, frozen and a batch."""
    config = _config()
    method = methods.build(config)
    mesh = parallel.make_mesh()
    state, frozen, tx, _ = train.init_state(config, method, mesh, str(workdir))
    return config, method, mesh, tx, state, frozen


def _bytes(tree) -> float:
    return float(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow
def test_tiny_config_planned_for_a_tpu_slice(v5p, cpu_state):
    run, result = v5p
    config, method, mesh, tx, state, frozen = cpu_state
    step = result["programs"][0]
    memory = step["memory_bytes"]
    assert result["chips"] == 4 and result["chip"] == "TPU v5" and step["hbm_bytes"] == 95 * GiB
    assert step["fits"] and 0 < memory["total"] < GiB and memory["temp"] > 0
    # Parameters are replicated (no FSDP): each chip holds what the CPU run holds.
    assert memory["params"] == _bytes(state["params"])
    assert memory["optimizer"] == _bytes(state["opt_state"])
    assert memory["frozen"] == _bytes(frozen)
    assert memory["batch"] == sum(np.prod(s.shape) * s.dtype.itemsize for s in run.batch.values()) / 4
    assert memory["arguments"] >= memory["params"] + memory["optimizer"] + memory["frozen"] + memory["batch"]
    # Model FLOPs per chip: those of the same step traced on the CPU at the per-chip batch (XLA attention there).
    cpu_run = build.with_train(run, batch_size=2)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in cpu_run.batch.items()}
    traced = jax.jit(train.make_step(method, tx, config, mesh)).trace(state, frozen, batch)
    assert step["flops_per_chip"] == pytest.approx(flops.count(traced.jaxpr).flops, rel=1e-3)
    # What the compiled program executes: more (the TPU pads the tiny model's 16-32 wide dims to its 128 lanes).
    assert step["flops_per_chip"] <= step["compiled_flops_per_chip"] < 3 * step["flops_per_chip"]
    # Every attention layer runs the Pallas flash kernel, and the compiled program holds it.
    layers = step["attention"]
    assert len(layers) == 14 and {a["implementation"] for a in layers.values()} == {"pallas"}
    assert step["kernels"]["flash_attention"] == 14 and step["kernels"]["flash_mha_bwd_dq"] == 14
    assert len(step["attention_kernel_layers_in_program"]) == 14
    # The gradient all-reduce carries about the parameters' bytes (less the few that get no gradient).
    assert 0.95 * memory["params"] <= step["collectives"]["all-reduce"]["bytes"] <= 2 * memory["params"]
    assert step["roofline"]["compute_s"] == pytest.approx(step["flops_per_chip"] / 459e12)


@pytest.mark.slow
def test_tiny_config_planned_for_h100s(v5p, workdir):
    target = _require("h100x8")
    run = planner.prepare(_config("bfloat16"), CONFIG, target, workdir)  # cuDNN attention: half precision only
    result = planner.plan(run, CONFIG, target, names=("train",), log=lambda *_: None)
    step = result["programs"][0]
    assert result["chips"] == 8 and result["chip"] == "NVIDIA H100 80GB HBM3" and step["fits"]
    assert step["xla_cost_analysis_flops"] is None  # deviceless GPU programs: the compiler counts nothing
    assert {a["implementation"] for a in step["attention"].values()} == {"cudnn"}
    assert step["kernels"]["__cudnn$fmhaSoftmax"] == 14 and step["kernels"]["__cudnn$fmhaSoftmaxBackward"] > 0
    assert any(k.startswith("__cudnn$conv") for k in step["kernels"])
    tpu_step = v5p[1]["programs"][0]
    assert step["flops_per_image"] == pytest.approx(tpu_step["flops_per_image"], rel=1e-3)  # same model, per image
    assert step["memory_bytes"]["params"] == tpu_step["memory_bytes"]["params"]


@pytest.mark.slow
def test_largest_batch_boundary_on_a_tpu_slice(v5p, plan_cache):
    """Budget just under the memory of per-chip batch 2 (the v5p plan's): the search stops at per-chip batch 1,
    and the compile one step above (batch 2, the plan's program, from the plan cache) exceeds the budget."""
    run, result = v5p
    target = _require("v5p-8")
    two = result["programs"][0]
    assert not two["from_plan_cache"]  # compiled by the plan, kept for the search
    budget = two["memory_bytes"]["total"] - 1
    found = planner.max_batch(run, CONFIG, target, variants=("as configured",), margin=0.0, hbm_bytes=budget,
                              log=lambda *_: None, cache_dir=plan_cache)
    assert len(found) == 1
    best = found[0]
    assert best["per_chip_batch"] == 1 and best["memory_bytes"] <= budget
    assert best["next_per_chip_batch"] == 2 and best["next_memory_bytes"] == two["memory_bytes"]["total"] > budget
    assert best["compiles"] == 2 and best["overrides"] == "--config.train.batch_size=4"


@pytest.mark.slow
def test_evaluation_networks_planned_for_a_tpu_slice(v5p, tiny_eval_models, tmp_path):
    """The evaluation's extractors (CLIP image and text towers, DINO, LPIPS) for v5p-8 at the eval batch (16
    items over 4 chips): each chip holds the whole network (the bytes of the real files loaded) and its 4 images
    or prompts (77 token ids and mask), and the model FLOPs are those of the same functions traced on the CPU
    on 16 items."""
    from configs.eval.base import base_config
    from jcompose.metrics import clip_score, dino, lpips
    from jcompose.plan import evaluation

    run, _ = v5p
    config = base_config()
    config.metrics = ("clip_score", "dino", "lpips")
    config.update(pair_size=64, batch_size=16)
    config.clip.model, config.dino.model = str(tiny_eval_models / "clip"), str(tiny_eval_models / "dino")
    assert evaluation.resolve(config, tmp_path) == []  # folders on this machine are read, not stood in for
    result = planner.plan(dataclasses.replace(run, eval_config=config), CONFIG, _require("v5p-8"),
                          names=("evaluate",), log=lambda *_: None)
    programs = {p["program"]: p for p in result["programs"]}
    assert list(programs) == ["evaluate:clip", "evaluate:clip_text", "evaluate:dino", "evaluate:lpips"]
    clip, vit = clip_score.load_clip(config.clip.model), dino.load_dino(config.dino.model)
    _, lpips_params = lpips.load_lpips("alex")
    image = {size: jax.ShapeDtypeStruct((16, size, size, 3), np.float32) for size in (32, 64)}
    tokens = jax.ShapeDtypeStruct((16, 77), np.int32)  # the tiny CLIP's max_position_embeddings
    inputs = {"clip": [image[32]], "clip_text": [tokens, tokens], "dino": [image[32]], "lpips": [image[64], image[64]]}
    functions = {"clip": lambda p, x: clip_score.image_embeddings(clip.module, p, x),
                 "clip_text": lambda p, ids, mask: clip_score.text_embeddings(clip.module, p, ids, mask),
                 "dino": lambda p, x: dino.dino_embeddings(vit.module, p, x),
                 "lpips": lambda p, x, y: lpips.LPIPS("alex").apply({"params": p}, x, y)}
    for name, params in (("clip", clip.params), ("clip_text", clip.params), ("dino", vit.params),
                         ("lpips", lpips_params)):
        step = programs[f"evaluate:{name}"]
        assert step["fits"] and step["images"] == 16
        assert step["memory_bytes"]["params"] == _bytes(params), name  # replicated: the whole network per chip
        assert step["memory_bytes"]["batch"] == sum(np.prod(x.shape) * x.dtype.itemsize for x in inputs[name]) / 4
        traced = jax.jit(functions[name]).trace(params, *inputs[name])
        assert step["flops_global"] == pytest.approx(flops.count(traced.jaxpr).flops, rel=1e-3), name
    # Folders not on this machine: the published CLIP ViT-L/14 (428M parameters) and DINO ViT-S/16 (21.7M).
    config.clip.model, config.dino.model = "/models/clip-vit-large-patch14", ""
    assert len(evaluation.resolve(config, tmp_path)) == 2
    sizes = {n.name: sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(n.params))
             for n in evaluation.networks(config)}
    assert 427e6 < sizes["clip"] < 429e6 and 21.5e6 < sizes["dino"] < 22e6


@pytest.mark.parametrize("budget", [130, 160, 161, 400, 1000])
def test_largest_batch_search_with_few_compiles(monkeypatch, budget):
    """The search on a memory model (100 + 30 n bytes + a kink): exact boundary, a handful of compiles."""
    probes = []

    def fake_reports(run, target, names, margin, hbm_bytes, log, cache_dir=None):
        n = run.config.train.batch_size // 4
        probes.append(n)
        total = 100 + 30 * n + (5 if n > 8 else 0)
        return [{"fits": total <= hbm_bytes, "memory_bytes": {"total": total}}]

    monkeypatch.setattr(planner, "compile_reports", fake_reports)
    monkeypatch.setattr(build, "with_train", lambda run, **train: type("R", (), {"config": _config(**train)})())
    target = targets.Target("fake", "tpu", targets.TPU_CHIPS["v5e"], 4, "v5e:2x2")
    run = type("Run", (), {"config": _config()})()
    (best,) = planner.max_batch(run, CONFIG, target, variants=("as configured",), margin=0.0, hbm_bytes=budget,
                                log=lambda *_: None)
    want = max([n for n in range(0, 64) if 100 + 30 * n + (5 if n > 8 else 0) <= budget], default=0)
    assert best["per_chip_batch"] == want
    assert len(set(probes)) <= 5


def test_largest_batch_remat_is_the_methods_block_remat_and_keeps_the_configured_batch(monkeypatch):
    """AnyScene has per-block remat (`model.remat`): the search's remat variant turns that on (the whole-loss
    checkpoint of `train.remat` would keep the peak) on a run built anew; every result also gives the
    accumulation that keeps the configured global batch (16 on 8 chips) in micro-batches that fit."""
    built = []

    def fake_prepare(config, config_path, target, workdir):
        built.append(config)
        return type("Run", (), {"config": config})()

    def fake_with_train(run, **train):
        config = run.config.copy_and_resolve_references()
        config.train.update(train)
        return type("Run", (), {"config": config})()

    def fake_reports(run, target, names, margin, hbm_bytes, log, cache_dir=None):
        n = run.config.train.batch_size // 8
        total = 100 + (10 if run.config.model.remat else 30) * n  # bytes per micro-batch per chip: 30, 10 remat
        return [{"fits": total <= hbm_bytes, "memory_bytes": {"total": total}}]

    monkeypatch.setattr(planner, "prepare", fake_prepare)
    monkeypatch.setattr(build, "with_train", fake_with_train)
    monkeypatch.setattr(planner, "compile_reports", fake_reports)
    config = load("configs/anyscene.py:tiny")
    config.train.batch_size = 16
    run = type("Run", (), {"config": config})()
    target = targets.Target("fake", "tpu", targets.TPU_CHIPS["v5e"], 8, "v5e:2x4")
    plain, remat = planner.max_batch(run, "configs/anyscene.py", target, variants=("as configured", "remat"),
                                     margin=0.0, hbm_bytes=135, log=lambda *_: None)
    assert [c.model.remat for c in built] == [True] and not built[0].train.remat
    assert plain["per_chip_batch"] == 1 and plain["overrides"] == "--config.train.batch_size=8"
    assert plain["keeping_batch_overrides"] == "--config.train.grad_accum=2"  # 2 micro-batches of 1 per chip
    assert remat["per_chip_batch"] == 3 and remat["overrides"] == "--config.train.batch_size=24 --config.model.remat=True"
    assert remat["keeping_batch_overrides"] == "--config.train.grad_accum=1 --config.model.remat=True"  # 2 fit
    assert planner.keeping_batch(12, 8, 4) is None  # no whole split of 12 over 8 chips


@pytest.mark.slow
def test_command_line_writes_the_plan_and_refuses_bad_input(tmp_path, capsys):
    out, cache = tmp_path / "plan", f"--cache_dir={tmp_path / 'cache'}"
    args = [f"--config={CONFIG}:tiny", "--target=cpu", "--programs=train", f"--out={out}", "--config.train.batch_size=2",
            cache]
    assert plan_cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"plan.json", "plan.md", "hbm.png"}
    text = (out / "plan.md").read_text()
    assert "FITS: denoise on cpu" in text and "| params | optimizer | ema | frozen |" in text
    assert "FITS: denoise on cpu" in capsys.readouterr().out
    first = json.loads((out / "plan.json").read_text())["programs"][0]
    # Model FLOPs (dots and convolutions of the jaxpr) against XLA's own count of the CPU program (measured
    # 0.8 % apart: XLA adds element-wise work and counts convolutions its own way).
    assert first["xla_cost_analysis_flops"] == pytest.approx(first["flops_per_chip"], rel=0.05)
    # The same program again (against a smaller memory): not compiled again, the same facts.
    assert plan_cli.main([*args, "--hbm_gib=0.001"]) == plan_cli.NO_FIT
    assert "DOES NOT FIT" in capsys.readouterr().out
    again = json.loads((out / "plan.json").read_text())["programs"][0]
    assert again["from_plan_cache"] and not first["from_plan_cache"]
    assert again["memory_bytes"] == first["memory_bytes"] and again["kernels"] == first["kernels"]
    for bad, message in ((["--target=tpu9"], "--target tpu9: expected a TPU slice"),
                         (["--target=cpu", "--programs=eval"], "--programs: unknown"),
                         (["--target=cpu", "--margin=1.5"], "--margin 1.5")):
        with pytest.raises(cli.InputError, match=message):
            plan_cli.main([f"--config={CONFIG}:tiny", *bad])
