"""Methods: one small module each, built from a config, called only through `base.Method`."""

import importlib

from jcompose import attention_kernels
from jcompose.methods.base import Method

# config.method -> (module, class); imported on demand so one method's dependencies never load another's.
METHODS = {
    "denoise": ("jcompose.methods.denoise", "DenoiseMethod"),
    "anyscene": ("jcompose.methods.anyscene", "AnySceneMethod"),
    "dreamcom": ("jcompose.methods.dreamcom", "DreamComMethod"),
    "anydoor": ("jcompose.methods.anydoor", "AnyDoorMethod"),
}
# config.method -> the module of its benchmark-generation job (`compose <method> --benchmark`), whose
# `plan_sampler(method)` gives (the job's `sample` at compose's defaults, the names of an item's inputs: fields
# of the training example, of the same shapes). Kept apart from METHODS: training never imports them.
GENERATION = {
    "anyscene": "jcompose.methods.anyscene_generation",
    "dreamcom": "jcompose.methods.dreamcom_generation",
    "anydoor": "jcompose.methods.anydoor_generation",
}


def build(config) -> Method:
    """The method named by `config.method`."""
    if config.method not in METHODS:
        raise ValueError(f"config.method = {config.method!r}: unknown; available: {', '.join(map(repr, METHODS))}")
    module, cls = METHODS[config.method]
    # The attention implementation is chosen when programs are traced, from this process-wide setting.
    attention_kernels.set_implementation(config.model.get("attention", "auto"))
    method = getattr(importlib.import_module(module), cls)(config)
    _check_lora(config, method)
    _check_export(config, method)
    return method


def benchmark_sampler(config, method):
    """(sample, input names) of the method's benchmark-generation job (GENERATION), or None: it has none."""
    if config.method not in GENERATION:
        return None
    return importlib.import_module(GENERATION[config.method]).plan_sampler(method)


def _check_export(config, method) -> None:
    """`train.export` needs a method that exports (`export`), else ConfigError: a run must not end without
    the export it was asked for and without a word."""
    from configs.common import ConfigError

    if config.train.get("export", False) and not hasattr(method, "export"):
        raise ConfigError(f"config.train.export = True: {config.method} has no export (its checkpoint is the "
                          "trained model: compose and evaluate read the run folder); set config.train.export = False")


def _check_lora(config, method) -> None:
    """A config asking for LoRA (`train.lora.rank` > 0) needs a method that trains adapters (`trains_lora`);
    otherwise ConfigError with the method's reason (`lora_refusal`), so nothing trains whole unasked."""
    from configs.common import ConfigError

    lora = config.train.get("lora")
    if lora is not None and lora.rank and not getattr(method, "trains_lora", False):
        reason = getattr(method, "lora_refusal", "it has no LoRA support")
        raise ConfigError(f"config.train.lora.rank = {lora.rank}: {config.method} cannot train LoRA adapters "
                          f"({reason}); set config.train.lora.rank = 0")
