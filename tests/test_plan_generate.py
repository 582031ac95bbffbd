"""`jcompose.plan`'s "generate" program: the benchmark-generation step of `compose <method> --benchmark`
compiled for a TPU slice, checked against the job that `compose` builds for a real (tiny) benchmark."""

import generation_setup
import jax
import numpy as np
import pytest

from jcompose import generation
from jcompose.plan import flops, planner, targets

GiB = 2**30


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory, tiny_bases, tiny_dinov2):
    """The tiny benchmark folders of the three methods (tests/generation_setup.py)."""
    root = tmp_path_factory.mktemp("bench")
    generation_setup.write_inputs(root, tiny_bases, tiny_dinov2)
    return root


def _bytes(tree) -> float:
    return float(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow
def test_anydoor_benchmark_step_planned_for_a_tpu_slice(tmp_path, bench_root):
    """AnyDoor's generation step for v5p-8 (4 chips): 4 items per chip of the inputs the job reads from the
    benchmark's files, the whole trained and frozen trees on every chip (the job replicates them), and the
    model FLOPs of the job's own step traced on the CPU for each chip's items; the Pallas kernel runs."""
    target = targets.parse("v5p-8")
    missing = targets.missing_plugin(target)
    if missing:
        pytest.skip(f"optional test dependency {missing} is not installed (the plan's compiler for v5p-8)")
    root = bench_root
    job = generation_setup.jobs(root, only="anydoor")["anydoor"]
    config = generation_setup.method_configs(root)["anydoor"]
    config.sample.update(steps=generation_setup.STEPS, guidance_scale=5.0)  # the job's settings
    run = planner.prepare(config, "configs/anydoor.py", target, tmp_path / "plan")
    result = planner.plan(run, "configs/anydoor.py", target, names=("generate",), log=lambda *_: None)
    (step,) = result["programs"]
    assert step["program"] == "generate" and step["fits"] and step["images"] == generation.PER_DEVICE_BATCH * 4

    inputs, _ = job.read(0)
    params, frozen = job.params(None)
    memory = step["memory_bytes"]
    assert memory["batch"] == generation.PER_DEVICE_BATCH * _bytes(inputs)  # each chip's 4 items
    assert memory["params"] == _bytes(params) and memory["frozen"] == _bytes(frozen)  # replicated
    assert 0 < memory["temp"] < GiB

    # Each chip runs the job's step on its 4 items (what does not depend on an item, e.g. the unconditional ID
    # tokens, is computed once per chip): 4 x the FLOPs of that step traced on the CPU for 4 items.
    per_chip = generation.PER_DEVICE_BATCH
    items = jax.tree_util.tree_map(lambda x: np.repeat(np.asarray(x)[None], per_chip, 0), inputs)
    traced = jax.jit(generation.step_function(job.sample, job.key)).trace((params, frozen), items,
                                                                          np.arange(per_chip, dtype=np.int32))
    assert step["flops_global"] == pytest.approx(4 * flops.count(traced.jaxpr).flops, rel=1e-3)
    # Every attention layer of the sampler runs the Pallas kernel on the TPU (before each chip sampled its own
    # items, an item's CFG batch of 2 did not divide over the 4 chips and every layer fell back to XLA).
    assert {a["implementation"] for a in step["attention"].values()} == {"pallas"}
    assert step["kernels"]["flash_attention"] == sum(a["calls"] for a in step["attention"].values())


def test_dreamcom_benchmark_step_records_its_own_attention_calls(bench_root):
    """The attention table of DreamCom's generation step (traced for a TPU) lists the sampler's calls: each layer
    once per denoiser call on the CFG batch, the masked layers (every cross-attention, the released rule's last
    5 decoder self-attentions) on the exact XLA path. (The probe trace that lists the UNet's layer names for
    the self-attention rule was recorded too, with its dummy 1-token context and batch 1, so the plan showed
    every layer as a Pallas call.)"""
    from jcompose import attention_kernels

    job = generation_setup.jobs(bench_root, only="dreamcom")["dreamcom"]
    inputs, _ = job.read(0)
    items = jax.tree_util.tree_map(lambda x: np.repeat(np.asarray(x)[None], 2, 0), inputs)
    with attention_kernels.compiling_for("tpu"), attention_kernels.recording() as calls:
        jax.jit(generation.step_function(job.sample, job.key)).trace(job.params(job.groups[0]), items,
                                                                     np.arange(2, dtype=np.int32))
    tokens = inputs["input_ids"].shape[0]
    assert len(calls) == 14 and {c.batch for c in calls} == {2}  # 7 self + 7 cross layers, cond + uncond rows
    assert all(c.kv_len == tokens for c in calls if c.is_cross)
    masked = {c.layer for c in calls if c.implementation == "xla"}
    decoder = [c.layer for c in calls if not c.is_cross and c.layer.startswith("up_blocks")]
    assert masked == {c.layer for c in calls if c.is_cross} | set(decoder[-5:])
    assert all(c.implementation == "pallas" for c in calls if c.layer not in masked)
