"""Planted bugs, one at a time, against the tests meant to catch them: the suite's kill rate.

    python tools/mutations.py --list                       # the mutations, their files and tests
    python tools/mutations.py                              # run all (long: a pytest run per mutation)
    python tools/mutations.py --only stacked_state_reversed,grad_accum_one_key
    python tools/mutations.py --area train_state --baseline --json /tmp/mutations.json

Each mutation is a text patch on one file: an exact snippet `old` (it must occur exactly once, else the
mutation is reported `stale` and its patch needs updating) replaced by `new`. The working tree is never
written: the tool copies the checkout's files (tracked and untracked, not ignored) into a temporary folder
once, patches the file there, runs `python -m pytest -q -n 0 -x <tests>` in the copy, and restores the file
before the next mutation; the copy is removed at exit, also on Ctrl-C or an error. Inside the copy `cwd` and
PYTHONPATH point at the copy, so its modules are imported, not the editable install's checkout (checked once
before the first mutation). Compiled XLA programs are shared through JAX_COMPILATION_CACHE_DIR (default
/tmp/jcompose-mutations-xla), so mutations that leave a program unchanged do not recompile it.

Outcomes: `killed` (pytest exit 1: a test failed; 2 or 3: the tests could not run, e.g. an import broke),
`survived` (exit 0: every test passed with the bug in place), `timeout`, `stale` (the patch no longer
applies), `error` (exit 4/5: a named test does not exist). `--baseline` first runs each mutation's tests on
the unpatched copy: a kill counts only where they pass there. The kill rate is killed / (killed + survived).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = "/tmp/jcompose-mutations-xla"


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One planted bug: `old` -> `new` in `path`, meant to be caught by `tests` (pytest arguments)."""

    name: str
    area: str  # the module (or method) it breaks
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str  # the bug in words


def _m(name, area, path, old, new, tests, why) -> Mutation:
    return Mutation(name, area, path, old, new, tuple(shlex.split(tests)), why)


MUTATIONS: tuple[Mutation, ...] = (
    # ---------------------------------------------------------------- issue 24's review (named there)
    _m("ldm_heads_width_swap", "models/ldm_configs", "jcompose/models/ldm_configs.py",
       "return [c // head_channels for c in channels]", "return [head_channels for c in channels]",
       "tests/test_anydoor_release.py", "UNet attention: head count and head width swapped in the LDM conversion"),
    _m("dinov2_eps_1e-5", "models/ldm_configs", "jcompose/models/ldm_configs.py",
       '"layer_norm_eps": 1e-6,', '"layer_norm_eps": 1e-5,',
       "tests/test_anydoor_release.py tests/test_models_encoders.py", "DINOv2 layer-norm epsilon 1e-5 instead of 1e-6"),
    _m("dreamcom_sample_unmasked", "methods/dreamcom", "jcompose/methods/dreamcom.py",
       "controls = self.controls(mask, sampling=True,", "controls = () and self.controls(mask, sampling=True,",
       "tests/test_dreamcom.py", "DreamComMethod.sample without masked cross/self-attention"),
    _m("anydoor_uncond_grey", "methods/anydoor", "jcompose/methods/anydoor.py",
       "black = -jnp.ones((1, size, size, 3), jnp.float32)", "black = jnp.zeros((1, size, size, 3), jnp.float32)",
       "tests/test_anydoor.py tests/test_anydoor_inference.py", "unconditional ID tokens from a grey, not black, image"),
    _m("run_record_seed_free", "run_record", "jcompose/run_record.py",
       'PROTECTED = ("method", "seed", "compute_dtype",', 'PROTECTED = ("method", "compute_dtype",',
       "tests/test_run_record.py", "a resume may change the seed"),
    _m("run_record_dtype_free", "run_record", "jcompose/run_record.py",
       'PROTECTED = ("method", "seed", "compute_dtype",', 'PROTECTED = ("method", "seed",',
       "tests/test_run_record.py", "a resume may change compute_dtype"),
    _m("run_record_batch_free", "run_record", "jcompose/run_record.py",
       '"data", "train.batch_size")', '"data")',
       "tests/test_run_record.py", "a resume may change train.batch_size"),
    _m("anydoor_uniform_probability", "diffusion", "jcompose/diffusion.py",
       "uniform = jax.random.uniform(k_choice, dynamic.shape) < uniform_probability",
       "uniform = jax.random.uniform(k_choice, dynamic.shape) < 0.8 * uniform_probability",
       "tests/test_diffusion.py", "AnyDoor's adaptive timesteps draw uniformly with 0.24 instead of 0.3"),
    # ----------------------------------------------------------------------------------- train_state
    _m("grad_accum_one_key", "train_state", "jcompose/train_state.py",
       "(micro, jax.random.split(step_rng, accum))", "(micro, jnp.stack([step_rng] * accum))",
       "tests/test_train.py -k grad_accum", "every micro-batch reuses the step's key"),
    _m("grad_accum_no_mean", "train_state", "jcompose/train_state.py",
       "loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / accum, total)",
       "loss, metrics, grads = total[0] / accum, jax.tree_util.tree_map(lambda x: x / accum, total[1]), total[2]",
       "tests/test_train.py -k grad_accum", "accumulated gradients summed, not averaged"),
    _m("step_rng_not_advanced", "train_state", "jcompose/train_state.py",
       "new.update(step=state[\"step\"] + 1, rng=rng,", "new.update(step=state[\"step\"] + 1, rng=state[\"rng\"],",
       "tests/test_train.py -k grad_accum", "every step draws with the same key"),
    _m("nonfinite_step_applied", "train_state", "jcompose/train_state.py",
       "jnp.where(finite, n, o), new, state)", "jnp.where(True, n, o), new, state)",
       "tests/test_train.py -k non_finite", "a NaN step is applied"),
    _m("ema_weights_swapped", "train_state", "jcompose/train_state.py",
       "ema_decay * e + (1 - ema_decay) * p", "ema_decay * p + (1 - ema_decay) * e",
       "tests/test_train.py -k ema", "EMA keeps (1 - decay) of itself instead of decay"),
    _m("train_global_batch_per_process", "train", "jcompose/train.py",
       "data = iterator(config.train.batch_size // jax.process_count(), ", "data = iterator(config.train.batch_size, ",
       "tests/test_multihost.py -k killed", "each process of a multi-host run reads the whole global batch"),
    # ----------------------------------------------------------------------------- checkpoint, resume
    _m("restore_skips_data", "checkpoint", "jcompose/checkpoint.py",
       "                        data=grain.checkpoint.CheckpointRestore(data_iterator)))",
       "                        ))",
       "tests/test_multimodel.py -k several", "a resume restores the state but restarts the data stream"),
    _m("restore_oldest_first", "checkpoint", "jcompose/checkpoint.py",
       "for step in reversed(steps):\n            try:\n                saved = self.manager.item_metadata(step)",
       "for step in steps:\n            try:\n                saved = self.manager.item_metadata(step)",
       "tests/test_checkpoint.py", "resume from the oldest kept checkpoint, not the newest"),
    _m("keep_one_more", "checkpoint", "jcompose/checkpoint.py",
       "policies = [preservation.LatestN(keep)]", "policies = [preservation.LatestN(keep + 1)]",
       "tests/test_train.py -k keeps_newest", "one checkpoint more than `keep` kept"),
    # ------------------------------------------------------------------------------- stacked iterator
    _m("stacked_state_reversed", "input_pipeline/stacked", "input_pipeline/stacked.py",
       "for it, s in zip(self.iterators, states):", "for it, s in zip(self.iterators, reversed(states)):",
       "tests/test_multimodel.py -k stacked", "a resumed K-model run gives model k the stream position of model K-1-k"),
    _m("stacked_state_first_only", "input_pipeline/stacked", "input_pipeline/stacked.py",
       "return json.dumps([it.get_state() for it in self.iterators]).encode()",
       "return json.dumps([self.iterators[0].get_state()] * len(self.iterators)).encode()",
       "tests/test_multimodel.py -k stacked", "every stream saved at model 0's position"),
    # ------------------------------------------------------------------------------ input pipeline
    _m("shard_overlap", "input_pipeline/pipeline", "input_pipeline/pipeline.py",
       "base.seed(seed).shuffle().repeat())[process_index::process_count]",
       "base.seed(seed).shuffle().repeat())[process_index::1]",
       "tests/test_pipeline.py", "processes read overlapping shards"),
    _m("skips_uncounted", "input_pipeline/pipeline", "input_pipeline/pipeline.py",
       "self.count += int(np.sum(batch.pop(SKIPPED_KEY)))", "self.count += int(np.max(batch.pop(SKIPPED_KEY)))",
       "tests/test_pipeline.py tests/test_multimodel.py -k 'skip or stacked'", "skipped records counted once per batch"),
    # ------------------------------------------------------------------------------------ parallel
    _m("fsdp_smallest_dim", "parallel", "jcompose/parallel.py",
       "for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):",
       "for axis in sorted(range(len(shape)), key=lambda i: shape[i]):",
       "tests/test_train.py -k data_parallel", "FSDP splits the smallest dimension, not the largest"),
    _m("global_batch_replicated", "parallel", "jcompose/parallel.py",
       "return NamedSharding(mesh, P(BATCH_AXES))\n", "return NamedSharding(mesh, P())\n",
       "tests/test_multihost.py -k global_step", "every device computes the whole batch (no data parallelism)"),
    # ------------------------------------------------------------------------------------ attention
    _m("masked_cross_open_outside", "attention", "jcompose/attention.py",
       "            self.background_tokens, num_keys\n", "            range(num_keys), num_keys\n",
       "tests/test_attention.py tests/test_dreamcom.py", "masked cross-attention leaves pixels outside the box unmasked"),
    _m("masked_self_cross_weight", "attention", "jcompose/attention.py",
       "keep = same + self.cross_weight * (1 - same)", "keep = same + self.cross_weight * same",
       "tests/test_attention.py", "soft masked self-attention weights the same side, not the other"),
    _m("layout_cond_half_inverted", "attention", "jcompose/attention.py",
       "(jnp.arange(batch) >= batch // 2)[:, None, None, None]", "(jnp.arange(batch) < batch // 2)[:, None, None, None]",
       "tests/test_attention.py", "layout control on the unconditional half instead of the conditional one"),
    _m("query_mask_reduce_swapped", "attention", "jcompose/attention.py",
       'small = max_pool_mask(mask, call.factor) if reduce == "max" else downsample_mask(mask, call.factor)',
       'small = downsample_mask(mask, call.factor) if reduce == "max" else max_pool_mask(mask, call.factor)',
       "tests/test_attention.py tests/test_anyscene_inputs.py -k layout", "max pooling and slicing swapped"),
    _m("decoder_layers_first", "attention", "jcompose/attention.py",
       "return frozenset(decoder[len(decoder) - last:])", "return frozenset(decoder[:last])",
       "tests/test_attention.py tests/test_dreamcom.py", "the first, not the last, decoder self-attention layers"),
    # ------------------------------------------------------------------------------------ diffusion
    _m("scaled_linear_as_linear", "diffusion", "jcompose/diffusion.py",
       "betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, t, dtype=np.float64) ** 2",
       "betas = np.linspace(config.beta_start, config.beta_end, t, dtype=np.float64)",
       "tests/test_diffusion.py", "SD's scaled_linear schedule computed as linear"),
    _m("v_target_sign", "diffusion", "jcompose/diffusion.py",
       "return jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0", "return jnp.sqrt(ab) * noise + jnp.sqrt(1 - ab) * x0",
       "tests/test_diffusion.py", "v-prediction target with the wrong sign"),
    _m("ddim_prev_off_by_one", "diffusion", "jcompose/diffusion.py",
       "prev = steps - config.num_train_timesteps // num_steps",
       "prev = steps - config.num_train_timesteps // num_steps - 1",
       "tests/test_diffusion.py tests/test_parity_sampling.py", "DDIM steps to the wrong previous timestep"),
    _m("cfg_from_cond", "diffusion", "jcompose/diffusion.py",
       "return uncond + guidance_scale * (cond - uncond)", "return cond + guidance_scale * (cond - uncond)",
       "tests/test_diffusion.py tests/test_parity_sampling.py", "guidance extrapolates from the conditional output"),
    _m("dpm_first_order_only", "diffusion", "jcompose/diffusion.py",
       'd = x0 + 0.5 * row["inv_r"] * (x0 - previous_x0)', "d = x0",
       "tests/test_diffusion.py tests/test_parity_sampling.py", "DPM-Solver++ 2M without its second-order term"),
    # --------------------------------------------------------------------------------------- losses
    _m("content_mean_without_channels", "losses", "jcompose/losses.py",
       "count = jnp.sum(weight, axis=(1, 2, 3)) * channels", "count = jnp.sum(weight, axis=(1, 2, 3))",
       "tests/test_losses.py", "masked mean divides by pixels, not pixels x channels"),
    _m("edge_band_outer_only", "losses", "jcompose/losses.py",
       "return morphology.dilate(m, dilate_k) - morphology.erode(m, erode_k)", "return morphology.dilate(m, dilate_k) - m",
       "tests/test_losses.py", "edge band misses its inner half"),
    _m("edge_gate_inverted", "losses", "jcompose/losses.py",
       "(jnp.asarray(t).astype(jnp.float32) < alpha * num_train_timesteps)",
       "(jnp.asarray(t).astype(jnp.float32) >= alpha * num_train_timesteps)",
       "tests/test_losses.py", "edge loss on the noisy timesteps instead of the clean ones"),
    # ------------------------------------------------------------------------------------- blending
    _m("poisson_no_erode", "blending", "jcompose/blending.py",
       "return morphology.erode(binary, erode_kernel) * _interior(mask.shape[1], mask.shape[2])",
       "return binary * _interior(mask.shape[1], mask.shape[2])",
       "tests/test_blending.py", "Poisson blending over the whole mask, not the eroded one"),
    # ------------------------------------------------------------------------------------- AnyScene
    _m("anyscene_inpaint_range", "methods/anyscene", "jcompose/methods/anyscene.py",
       "cond = jnp.where(mask > 0.5, (foreground + 1.0) / 2.0, -1.0)", "cond = jnp.where(mask > 0.5, foreground, -1.0)",
       "tests/test_anyscene.py tests/test_anyscene_inputs.py -k 'loss_terms or conditioning'", "inpaint conditioning in [-1, 1] instead of [0, 1]"),
    _m("anyscene_cond_unmasked", "methods/anyscene", "jcompose/methods/anyscene.py",
       "cond = jnp.where(mask > 0.5, (foreground + 1.0) / 2.0, -1.0)", "cond = (foreground + 1.0) / 2.0",
       "tests/test_anyscene.py tests/test_anyscene_inputs.py -k 'loss_terms or conditioning'", "the area to generate not set to -1"),
    _m("anyscene_uncond_half_blank", "methods/anyscene", "jcompose/methods/anyscene.py",
       "cond2 = jnp.concatenate([cond, cond])", "cond2 = jnp.concatenate([jnp.full_like(cond, -1.0), cond])",
       "tests/test_anyscene_inputs.py -k conditioning", "the unconditional CFG half sees no foreground"),
    _m("compose_default_no_blend", "methods/anyscene", "jcompose/methods/anyscene_inference.py",
       'p.add_argument("--blend", default="poisson"', 'p.add_argument("--blend", default="none"',
       "tests/test_anyscene.py -k end_to_end", "compose anyscene does not blend by default"),
    _m("compose_blend_unclipped_erode", "methods/anyscene", "jcompose/methods/anyscene_inference.py",
       "blending.poisson_blend(s, t, m, erode_kernel=erode, clip=(-1.0, 1.0))",
       "blending.poisson_blend(s, t, m, erode_kernel=1, clip=(-1.0, 1.0))",
       "tests/test_anyscene.py -k end_to_end", "compose blends over the whole mask, ignoring sample.blend_erode"),
    # ---------------------------------------------------------------------- DreamCom prior preservation
    _m("prior_halves_swapped", "methods/dreamcom", "jcompose/methods/dreamcom.py",
       'return instance + weight * prior, {"instance_loss": instance, "prior_loss": prior}',
       'return prior + weight * instance, {"instance_loss": prior, "prior_loss": instance}',
       "tests/test_dreamcom_prior.py -k weighted_sum", "the class half taken as the instance half"),
    _m("prior_weight_dropped", "methods/dreamcom", "jcompose/methods/dreamcom.py",
       "return instance + weight * prior, {", "return instance + prior, {",
       "tests/test_dreamcom_prior.py -k weighted_sum", "train.prior.weight ignored"),
    _m("prior_class_rows_first", "methods/dreamcom", "jcompose/methods/dreamcom_prior.py",
       "jnp.concatenate([batch[k], batch[CLASS_PREFIX + k]], axis=0)",
       "jnp.concatenate([batch[CLASS_PREFIX + k], batch[k]], axis=0)",
       "tests/test_dreamcom_prior.py -k weighted_sum", "class examples before the instances in the UNet call"),
    _m("prior_keys_depend_on_count", "methods/dreamcom", "jcompose/methods/dreamcom_prior.py",
       "key=lambda i: jax.random.fold_in(jax.random.PRNGKey(spec.seed), i)",
       "key=lambda i: jax.random.fold_in(jax.random.PRNGKey(spec.seed + spec.num_class_images), i)",
       "tests/test_dreamcom_prior.py -k 'resume_without or two_objects'", "class image i not a function of (seed, i)"),
    _m("class_bbox_exclusive", "input_pipeline", "input_pipeline/sources/class_images.py",
       "mask = imaging.box_mask((h, w), (y1, y2 + 1, x1, x2 + 1))", "mask = imaging.box_mask((h, w), (y1, y2, x1, x2))",
       "tests/test_dreamcom_prior.py -k released", "bbox.txt's inclusive bounds read as exclusive"),
    _m("class_bbox_line_from_zero", "input_pipeline", "input_pipeline/sources/class_images.py",
       "for number, line in enumerate(lines, start=1):", "for number, line in enumerate(lines):",
       "tests/test_dreamcom_prior.py -k bad_bbox", "bbox.txt errors name the wrong line"),
    _m("prior_not_generated_by_training", "methods/dreamcom", "jcompose/methods/dreamcom.py",
       "folder = prior_preservation.ensure_class_images(self, self.prior, ref.class_noun)",
       "folder = prior_preservation.class_folder(self.prior, ref.class_noun, self.workdir)",
       "tests/test_dreamcom_prior.py -k two_objects", "training does not make the missing class images"),
    _m("prior_grey_photo_overwritten", "methods/dreamcom", "jcompose/methods/dreamcom_prior.py",
       'encode=encode_jpeg, done_modes=("RGB", "L"))', "encode=encode_jpeg)",
       "tests/test_dreamcom_prior.py -k greyscale", "a user's greyscale class photo regenerated over"),
    _m("sources_after_state", "train", "jcompose/train.py",
       "init_state(config, method, mesh, str(workdir), before_placement=make_sources)",
       "init_state(config, method, mesh, str(workdir)); make_sources()",
       "tests/test_dreamcom_prior.py -k before_the_train_state", "class images made with the train state on the devices"),
    # ---------------------------------------------------------------- 2026-12-07: what fits v5e-8
    _m("anyscene_remat_skips_unet", "anyscene", "jcompose/methods/anyscene.py",
       "self.unet = self.pipe.unet.module.clone(remat=remat)", "self.unet = self.pipe.unet.module",
       "tests/test_anyscene_memory.py", "model.remat recomputes F_c's blocks but keeps the UNet's activations"),
    _m("plan_remat_whole_loss", "plan/planner", "jcompose/plan/planner.py",
       'remat = {"model.remat": True} if "remat" in config.model else {"train.remat": True}',
       'remat = {"train.remat": True}',
       "tests/test_plan.py -k block_remat", "the search's remat variant is the whole-loss checkpoint on AnyScene"),
    _m("plan_keeping_batch_too_big", "plan/planner", "jcompose/plan/planner.py",
       "global_batch // (accum * chips) <= micro_per_chip:", "global_batch // (accum * chips) <= 2 * micro_per_chip:",
       "tests/test_plan.py -k block_remat", "the configured batch kept with micro-batches larger than fit"),
    _m("prior_bucket_folder_local", "dreamcom", "jcompose/methods/dreamcom_prior.py",
       'return storage.as_path(template.replace(NOUN, noun.replace(" ", "_")))',
       'return Path(template.replace(NOUN, noun.replace(" ", "_")))',
       "tests/test_dreamcom_prior.py -k bucket", "a gs:// workdir's class images written to a local 'gs:/' folder"),
    _m("read_image_local_only", "input_pipeline", "input_pipeline/records.py",
       'if "://" in str(path):  # an object store', 'if False:  # an object store',
       "tests/test_dreamcom_prior.py -k bucket", "class images in a bucket not readable (image file not found)"),
    _m("anydoor_lora_ignored", "methods/anydoor", "jcompose/methods/anydoor.py",
       'return lora.merge(frozen["unet_decoder"], params["unet_decoder_lora"], self.lora.scale)',
       'return frozen["unet_decoder"]',
       "tests/test_anydoor_run.py -k lora", "a LoRA run composed with the base decoder, its adapters dropped"),
    _m("export_unasked_skip", "methods", "jcompose/methods/__init__.py",
       "    _check_export(config, method)\n", "",
       "tests/test_anydoor_config.py -k export", "train.export on a method without export skipped silently"),
    _m("grad_accum_contiguous_micro", "train_state", "jcompose/train_state.py",
       "x.reshape((-1, accum) + x.shape[1:]).swapaxes(0, 1)", "x.reshape((accum, -1) + x.shape[1:])",
       "tests/test_train.py -k data_parallel_and_fsdp", "micro-batches that lie on half the devices: the batch gathered"),
    # ---------------------------------------------------------------- 2026-12-07: found by planning for H100
    _m("cudnn_odd_lengths", "attention_kernels", "jcompose/attention_kernels.py",
       "if q_len % 2 or kv_len % 2:", "if False:",
       "tests/test_attention_kernels.py", "77-token cross-attention sent to cuDNN, whose gradient refuses odd lengths"),
    _m("cublas_uncounted", "plan/hlo", "jcompose/plan/hlo.py",
       'if target.startswith("__cublas$"):', 'if target.startswith("__cublas_never$"):',
       "tests/test_plan_counting.py", "cuBLAS GEMM custom calls left out of the compiled program's FLOPs"),
)


# ------------------------------------------------------------------------------------------ runner


def _copy_tree(destination: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, as they are now, under `destination`."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")])))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE)
    env.pop("JCOMPOSE_REQUIRE_OPTIONAL", None)  # a missing oracle package skips here; it is not the bug's kill
    return env


def _run_pytest(copy: Path, tests: tuple[str, ...], timeout: float, extra: list[str]) -> tuple[str, int, float, str]:
    """(outcome, exit code, seconds, output tail) of pytest on `tests` inside the copy."""
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-x", "-p", "no:cacheprovider", *extra, *tests]
    start = time.time()
    proc = subprocess.Popen(command, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", -1, time.time() - start, out[-1500:]
    except BaseException:  # Ctrl-C: stop the test process group too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    code = proc.returncode
    outcome = {0: "survived", 1: "killed", 2: "killed", 3: "killed"}.get(code, "error")
    return outcome, code, time.time() - start, out[-1500:]


def _check_imports_from(copy: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import jcompose, input_pipeline; print(jcompose.__file__); "
                            "print(input_pipeline.__file__)"], cwd=copy, env=_env(copy), capture_output=True,
                           text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in probe):
        raise SystemExit(f"the copy's modules are not the ones imported ({probe}); check PYTHONPATH")


def run(mutations, *, timeout: float, baseline: bool, extra: list[str]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="jcompose-mutations-") as folder:
        copy = Path(folder) / "repo"
        _copy_tree(copy)
        _check_imports_from(copy)
        baselines: dict[tuple[str, ...], str] = {}
        for mutation in mutations:
            path = copy / mutation.path
            original = path.read_text()
            row = {"name": mutation.name, "area": mutation.area, "tests": " ".join(mutation.tests),
                   "why": mutation.why}
            if original.count(mutation.old) != 1:
                row.update(outcome="stale", code=None, seconds=0.0,
                           tail=f"`old` occurs {original.count(mutation.old)} times in {mutation.path}")
            else:
                if baseline and mutation.tests not in baselines:
                    outcome, code, _, tail = _run_pytest(copy, mutation.tests, timeout, extra)
                    baselines[mutation.tests] = "pass" if outcome == "survived" else f"FAIL ({code}): {tail[-300:]}"
                try:
                    path.write_text(original.replace(mutation.old, mutation.new))
                    outcome, code, seconds, tail = _run_pytest(copy, mutation.tests, timeout, extra)
                finally:
                    path.write_text(original)
                row.update(outcome=outcome, code=code, seconds=round(seconds, 1), tail=tail)
                if baseline:
                    row["baseline"] = baselines[mutation.tests]
            results.append(row)
            print(f"{row['outcome']:>8}  {mutation.name}  ({row['seconds']:.0f} s)"
                  + (f"  baseline {row['baseline'][:60]}" if baseline else ""), flush=True)
    return results


def report(results: list[dict]) -> str:
    lines = ["| mutation | area | bug | tests | outcome | s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['area']} | {r['why']} | {r['tests']} | {r['outcome']} | {r['seconds']:.0f} |")
    counted = [r for r in results if r["outcome"] in ("killed", "survived")
               and r.get("baseline", "pass") == "pass"]
    killed = sum(r["outcome"] == "killed" for r in counted)
    rate = f"{killed}/{len(counted)} killed ({100 * killed / len(counted):.0f}%)" if counted else "nothing counted"
    other = [f"{r['name']}: {r['outcome']}" for r in results if r not in counted]
    return "\n".join(lines + ["", f"kill rate: {rate}" + (f"; not counted: {', '.join(other)}" if other else "")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--area", default="", help="only the mutations of this area (e.g. train_state, diffusion)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--baseline", action="store_true", help="first check each test set passes unpatched")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"--only: unknown mutations {sorted(unknown)}")
        chosen = [m for m in chosen if m.name in names]
    if args.area:
        chosen = [m for m in chosen if m.area == args.area]
    if args.list:  # with whether each patch still applies to the checkout
        for m in chosen:
            count = (REPO / m.path).read_text().count(m.old)
            state = "" if count == 1 else f"  STALE: `old` found {count} times"
            print(f"{m.name:32} {m.path:42} {' '.join(m.tests)}{state}\n{'':32} {m.why}")
        return 0
    results = run(chosen, timeout=args.timeout, baseline=args.baseline, extra=args.pytest_args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
