"""Shared config defaults and validation (big_vision style: configs are code)."""

from __future__ import annotations

import difflib

import ml_collections


class ConfigError(ValueError):
    """A config file, variant, override or field value that cannot be used; the message names it."""


def base_config() -> ml_collections.ConfigDict:
    """Fields every method's config has; methods override and add."""
    c = ml_collections.ConfigDict()
    c.method = ""
    c.seed = 0
    c.compute_dtype = "float32"  # or "bfloat16" (the papers trained SD in fp16)
    # attention: "auto" (a fused kernel where the platform has one: cuDNN on NVIDIA, Pallas flash on TPU;
    # layers with attention controls always exact), "xla" (never fused), "fused" (always; on CPU the TPU
    # kernel interpreted, to check its numerics)
    c.model = ml_collections.ConfigDict(dict(base="", attention="auto"))
    c.data = ml_collections.ConfigDict(dict(
        num_records=1000, image_size=512, seed=0, worker_count=0,
        strict=False,                 # raise on the first bad record (naming its file) instead of skipping it
        max_consecutive_skips=1000,   # stop with an error when this many records in a row are unusable
    ))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=8,          # global batch per optimizer step
        grad_accum=1,          # micro-batches per step (batch_size must divide)
        steps=1000,
        remat=False,           # jax.checkpoint the loss (trade compute for memory)
        ema_decay=0.0,         # 0 disables the EMA copy of the params
        log_every=10,
        ckpt_every=100,
        keep=3,                # newest checkpoints kept
        keep_best=0,           # plus the best by best_metric (logged mean over log_every steps)
        best_metric="loss",
        best_mode="min",
        sample_every=0,        # 0: a sample grid only at the end; -1: no sample grids (sweeps, tests)
        sample_count=4,        # sample-grid images (per model when a run trains several)
        export=False,          # at the end, each trained model exported by its method (<workdir>/export/<name>)
        # XLA options for compiling the train step alone, written as in XLA_FLAGS ("--xla_name=value ..."),
        # e.g. "--xla_backend_optimization_level=1"; "" = the process's XLA_FLAGS and XLA's defaults.
        xla_options="",
    ))
    # LoRA (jcompose/lora.py): rank 0 = off (the method's modules train whole); else only rank-r adapters of
    # the target layers train (PEFT's rule on diffusers module names), the base stays frozen and shared;
    # alpha 0 = the rank (scale alpha / rank = 1, as diffusers' DreamBooth-LoRA script).
    c.train.lora = ml_collections.ConfigDict(dict(rank=0, alpha=0.0, targets=("to_q", "to_k", "to_v", "to_out.0")))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-5, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, clip_norm=1.0,
    ))
    # Devices = data x fsdp; fsdp > 1 splits params/optimizer state of >= fsdp_min_size elements.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**18))
    c.sample = ml_collections.ConfigDict(dict(steps=25, guidance_scale=7.5))
    return c


def xla_options(text: str) -> dict:
    """'--xla_a=1 --xla_b=true' -> {'xla_a': 1, 'xla_b': True}: per-program XLA options (`jax.jit`'s
    compiler_options) from the XLA_FLAGS spelling. ValueError names the first malformed option."""
    options = {}
    for flag in text.split():
        name, equals, value = flag.removeprefix("--").partition("=")
        if not flag.startswith("--xla_") or not equals or not value:
            raise ValueError(f"{flag!r} is not --xla_<name>=<value>")
        if value.lower() in ("true", "false"):
            options[name] = value.lower() == "true"
        else:
            for kind in (int, float, str):
                try:
                    options[name] = kind(value)
                    break
                except ValueError:
                    continue
    return options


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the field and the expected form."""
    def need(ok: bool, field: str, expected: str):
        if not ok:
            raise ConfigError(f"config.{field} = {_get(config, field)!r}: expected {expected}")

    need(config.compute_dtype in ("float32", "bfloat16"), "compute_dtype", "'float32' or 'bfloat16'")
    need(bool(config.model.base), "model.base", "a base-model folder or 'tiny:<base>'")
    need(config.model.get("attention", "auto") in ("auto", "xla", "fused"), "model.attention",
         "'auto', 'xla' or 'fused'")
    t = config.train
    need(t.batch_size > 0, "train.batch_size", "a positive integer")
    need(t.grad_accum > 0 and t.batch_size % t.grad_accum == 0, "train.grad_accum",
         f"a positive divisor of train.batch_size ({t.batch_size})")
    need(t.steps > 0, "train.steps", "a positive integer")
    need(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "in [0, 1)")
    need(t.ckpt_every > 0 and t.log_every > 0, "train.ckpt_every", "positive (and train.log_every too)")
    need(t.keep > 0 and t.keep_best >= 0, "train.keep", "a positive count (and train.keep_best >= 0)")
    need(t.best_mode in ("min", "max"), "train.best_mode", "'min' or 'max'")
    try:
        xla_options(t.get("xla_options", ""))
    except ValueError as err:
        need(False, "train.xla_options", f"XLA options as in XLA_FLAGS, '--xla_<name>=<value> ...' ({err})")
    if "lora" in t:
        need(isinstance(t.lora.rank, int) and t.lora.rank >= 0, "train.lora.rank", "an integer >= 0 (0: LoRA off)")
        need(t.lora.alpha >= 0, "train.lora.alpha", "a number >= 0 (0: the rank)")
        need(bool(t.lora.targets) and all(isinstance(x, str) and x for x in t.lora.targets), "train.lora.targets",
             "a tuple of diffusers module names or their endings, e.g. ('to_q', 'to_k', 'to_v', 'to_out.0')")
    if "prior" in t and t.prior.enabled:  # prior preservation (DreamCom: jcompose/methods/dreamcom_prior.py)
        _validate_prior(t.prior, need)
    need(config.mesh.fsdp >= 1, "mesh.fsdp", "a positive integer")
    need(config.optim.lr > 0, "optim.lr", "a positive float")
    need(config.optim.schedule in ("constant", "cosine"), "optim.schedule", "'constant' or 'cosine'")
    need(config.optim.warmup_steps >= 0, "optim.warmup_steps", "a count >= 0")
    need(t.sample_count > 0, "train.sample_count", "a positive count")
    need(t.sample_every >= -1, "train.sample_every", "a step count, 0 (a grid at the end only) or -1 (no grids)")
    d = config.data
    need(d.image_size > 0 and d.image_size % 8 == 0, "data.image_size", "a positive multiple of 8 (the VAE factor)")
    need(d.worker_count >= 0, "data.worker_count", "a count >= 0 (0: read in the main process)")
    need(d.max_consecutive_skips > 0, "data.max_consecutive_skips", "a positive count")


def _validate_prior(p, need) -> None:
    """config.train.prior's fields (when enabled), each with its expected form."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    need(isinstance(p.class_dir, str), "train.prior.class_dir", "a folder path (str; '' = <workdir>/class_images/"
         "{noun}); '{noun}' stands for the object's class noun")
    need(count(p.num_class_images), "train.prior.num_class_images", "a positive integer (released recipe: 200)")
    try:
        ok = isinstance(p.class_prompt, str) and bool(p.class_prompt.format(noun="dog", token="sks").strip())
    except (KeyError, IndexError, ValueError):
        ok = False
    need(ok, "train.prior.class_prompt", "a non-empty str whose only fields are {noun} (and {token}), e.g. "
         "'a photo of {noun}'")
    need(isinstance(p.weight, (int, float)) and p.weight >= 0, "train.prior.weight", "a number >= 0 (released: 1.0)")
    need(count(p.steps), "train.prior.steps", "a positive number of sampling steps (released: 50)")
    need(isinstance(p.guidance_scale, (int, float)) and p.guidance_scale >= 0, "train.prior.guidance_scale",
         "a number >= 0 (released: 7.5)")
    need(isinstance(p.seed, int), "train.prior.seed", "an integer")
    need(count(p.batch_size), "train.prior.batch_size", "a positive integer (class images per device per call)")


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def load_module(path: str, kind: str):
    """Imports a Python file by path (configs and sweeps are code); `kind` names it in errors.

    Raises ConfigError naming the file for a missing file, a syntax error (with its line) or an
    error while importing it.
    """
    import importlib.util
    from pathlib import Path

    if not path or not Path(path).is_file():
        raise ConfigError(f"{kind} {path or '(empty path)'}: no such file")
    module_spec = importlib.util.spec_from_file_location(f"_{kind}_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"{kind} {path}, line {err.lineno}: syntax error: {err.msg}") from err
    except Exception as err:
        raise ConfigError(f"{kind} {path}: importing it raised {type(err).__name__}: {err}") from err
    return module


def load(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
    """`configs/<method>.py[:variant]` -> its get_config(variant), as `--config=` would load it.

    Raises ConfigError naming the file (and `flag`) when it cannot be loaded, defines no
    get_config, or get_config refuses the variant.
    """
    path, colon, arg = spec.partition(":")
    module = load_module(path, "config")
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{flag}={spec}: {path} defines no get_config(arg)")
    try:
        return module.get_config(*([arg] if colon else []))  # as ml_collections' config_flags calls it
    except Exception as err:
        text = str(err)
        raise ConfigError(text if path in text else f"{flag}={spec}: {type(err).__name__}: {text}") from err


def check_override(config: ml_collections.ConfigDict, dotted: str, flag: str = "--config") -> None:
    """Raises ConfigError when `dotted` (e.g. "train.steps") names no field of `config`, with the
    closest field names as a suggestion."""
    node, walked = config, []
    for part in dotted.split("."):
        where = ".".join(["config", *walked])
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            raise ConfigError(f"{flag}.{dotted}: {where} is a {type(node).__name__} ({node!r:.40}), not a group "
                              "of fields")
        if part not in node:
            keys = sorted(node.keys())
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
            hint = f"; did you mean {'.'.join([*walked, close[0]])!r}?" if close else f"; fields: {', '.join(keys)}"
            raise ConfigError(f"{flag}.{dotted}: {where} has no field {part!r}{hint}")
        node = node[part]
        walked.append(part)
