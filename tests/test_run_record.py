"""A run remembers its config: resume checks, recorded changes, compose with the run's own settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_method import toy_config, use_toy_method

from configs.common import ConfigError
from jcompose import run_record, train


def test_resume_with_a_changed_model_field_is_refused_naming_it(tmp_path, monkeypatch):
    use_toy_method(monkeypatch)
    train.train(toy_config(steps=2), tmp_path)
    stored = json.loads((tmp_path / run_record.RECORD).read_text())
    assert stored["config"]["method"] == "toy" and stored["jcompose_version"] and stored["history"] == []
    assert run_record.read_config(tmp_path).train.steps == 2

    changed = toy_config(steps=4)
    changed.model.base = "toy-v2"
    changed.data.seed = 3
    with pytest.raises(ConfigError) as err:
        train.train(changed, tmp_path)
    text = str(err.value)
    assert "model.base: 'toy' -> 'toy-v2'" in text and "data.seed: 0 -> 3" in text and "train.steps" not in text
    assert json.loads((tmp_path / run_record.RECORD).read_text()) == stored  # nothing rewritten

    longer = toy_config(steps=4, log_every=2)  # steps and logging may change: recorded, and the run resumes
    result = train.train(longer, tmp_path)
    assert result["step"] == 4
    history = json.loads((tmp_path / run_record.RECORD).read_text())["history"]
    assert history[-1]["changed"] == {"train.log_every": [1, 2], "train.steps": [2, 4]}


def test_a_fresh_folder_is_not_checked(tmp_path, monkeypatch):
    """A first start that crashed before any checkpoint (e.g. a wrong base path) may be retried changed."""
    first = toy_config()
    run_record.record(first, tmp_path, resuming=False)
    second = toy_config()
    second.model.base = "other"
    assert run_record.record(second, tmp_path, resuming=False) == {}
    assert run_record.read_config(tmp_path).model.base == "other"
    with pytest.raises(ConfigError, match="model.base: 'other' -> 'third'"):
        third = toy_config()
        third.model.base = "third"
        run_record.record(third, tmp_path, resuming=True)


# Every field that defines the trained model or its data stream, each changed alone (a field dropped from
# run_record.PROTECTED fails here), and fields a resume may change.
_PROTECTED_CHANGES = {"method": "other", "seed": 7, "compute_dtype": "bfloat16", "model.base": "toy-v2",
                      "data.seed": 3, "data.image_size": 256, "train.batch_size": 8}
_FREE_CHANGES = {"train.steps": 9, "train.log_every": 3, "train.ckpt_every": 5, "optim.lr": 0.5,
                 "data.strict": True, "data.max_consecutive_skips": 5, "train.grad_accum": 2}


def _set(config, field, value):
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    return config


def test_each_protected_field_alone_blocks_a_resume(tmp_path):
    run_record.record(toy_config(), tmp_path, resuming=False)
    stored = (tmp_path / run_record.RECORD).read_text()
    flat = run_record._flatten(toy_config().to_dict())
    for field, value in _PROTECTED_CHANGES.items():
        with pytest.raises(ConfigError) as err:
            run_record.record(_set(toy_config(), field, value), tmp_path, resuming=True)
        assert f"{field}: {flat[field]!r} -> {value!r}" in str(err.value), (field, str(err.value))
        assert (tmp_path / run_record.RECORD).read_text() == stored, field  # nothing rewritten
    config = toy_config()
    for field, value in _FREE_CHANGES.items():  # each recorded in the history, none refused
        assert run_record.record(_set(config, field, value), tmp_path, resuming=True) == {field: (flat[field], value)}
    history = json.loads((tmp_path / run_record.RECORD).read_text())["history"]
    assert [list(h["changed"]) for h in history] == [[f] for f in _FREE_CHANGES]


def _write_base_with_a_strong_hint(folder, seed, gain=100.0):
    """The tiny base training would write, with its ControlNet's hint encoder output (conv_out) scaled by
    `gain`. With LeCun-random weights the 8-conv hint encoder shrinks its input so much that the latent
    path dominates the residuals: the two formats' images then differ by about 0.05/255 on average, hardly
    more than rounding. A trained ControlNet-Inpaint's hint is strong; x100 gives ~4/255 (max 38)."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    from jcompose.models import loading, tiny

    tiny.write_tiny_base(folder, "sd15", formats=("msgpack",), controlnet=True, seed=seed)
    net = loading.load_controlnet(folder / "controlnet")
    flat = flatten_dict(net.params)
    flat = {k: v * gain if k[:2] == ("controlnet_cond_embedding", "conv_out") else v for k, v in flat.items()}
    loading.export_diffusers(net.module, unflatten_dict(flat), folder / "controlnet", formats=("msgpack",))


@pytest.mark.slow
def test_compose_uses_the_run_conditioning_format(tmp_path):
    """A run trained with cond_format 'signed' composes exactly as that model built by hand with 'signed'
    (compose reads the run's config.json), and not as the default 'inpaint' format would."""
    from configs.anyscene import get_config
    from jcompose import compose, inference
    from jcompose.methods.anyscene import AnySceneMethod
    from jcompose.methods.anyscene_inference import read_foregrounds

    config = get_config("tiny")
    config.model.cond_format = "signed"
    config.model.controlnet = "base"  # the tiny base's random ControlNet
    config.train.update(steps=1, log_every=1, ckpt_every=1, sample_every=-1)
    _write_base_with_a_strong_hint(tmp_path / "base" / "sd15", config.seed)
    config.sample.steps = 2
    train.train(config, tmp_path)
    out = tmp_path / "composed.png"
    fg, mask = tmp_path / "example" / "fg.png", tmp_path / "example" / "mask.png"
    compose.main(["anyscene", "--checkpoint", str(tmp_path), "--foreground", str(fg), "--mask", str(mask),
                  "--prompt", "a red dog", "--blend", "none", "--steps", "2", "--out", str(out)])
    import cv2

    got = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB).astype(int)
    _, state = inference.read_checkpoint(str(tmp_path))
    foreground, union = read_foregrounds([str(fg)], [str(mask)])
    images = {}
    for cond_format in ("signed", "inpaint"):
        by_hand = get_config("tiny")
        by_hand.model.cond_format = cond_format
        method = AnySceneMethod(by_hand)
        method.load_models(tmp_path / "base" / "sd15", controlnet_params=state["params"]["controlnet"])
        frozen = {"unet": method.pipe.unet.params, "vae": method.pipe.vae.params,
                  "text_encoder": method.pipe.text_encoder.params}
        batch = {"foreground": jnp.asarray(foreground[None]), "mask": jnp.asarray(union[None]),
                 "input_ids": jnp.asarray(method.tokenize(["a red dog"]))}
        image = jax.jit(lambda p, f, b, k, m=method: m.sample(p, f, b, k, num_steps=2, guidance_scale=7.5))(
            {"controlnet": method.controlnet_params}, frozen, batch, jax.random.PRNGKey(0))
        images[cond_format] = inference.to_uint8(np.asarray(image[0])).astype(int)
    # Sampling is deterministic: compose equals the 'signed' model to the last bit, and the 'inpaint'
    # model differs by far more than rounding.
    assert np.abs(got - images["signed"]).max() == 0
    assert np.abs(got - images["inpaint"]).mean() > 1.0  # measured 4.3 (max 38)
