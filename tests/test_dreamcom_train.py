"""DreamCom trained end to end on the tiny base: a real learning signal, export, compose, the benchmark."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from forced_devices import LONG_RUN_XLA_OPTIONS

from configs.common import load
from input_pipeline.sources.synthetic_murecom import held_out_views, write_synthetic_murecom
from jcompose import attention, compose, diffusion, methods, train
from jcompose.inference import read_checkpoint

STEPS = 150


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny config (the README's command) trained for STEPS steps on Toy/fg1."""
    workdir = tmp_path_factory.mktemp("dreamcom_run")
    config = load("configs/dreamcom.py:tiny")
    config.train.update(steps=STEPS, log_every=50, ckpt_every=STEPS)
    config.train.xla_options = LONG_RUN_XLA_OPTIONS  # 150 steps: compiled at -O1 the run takes 25 s, not 34
    config.sample.steps = 2
    train.train(config, workdir)
    return workdir, config


def _held_out(method, obj, seed):
    """8 unseen photos of `obj` through the training transform (fixed rng): a batch."""
    transform = method.make_transform(0)
    rng = np.random.default_rng(1)
    examples = [transform({"image": image, "mask": mask, "source": "held-out"}, rng)
                for image, mask in held_out_views(obj, 8, (96, 128), seed)]
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def _box_error(method, frozen):
    """Mean denoising error inside the box over t in {100, 300, 500, 700}, fixed keys (one-step inpainting)."""
    @jax.jit
    def error(params, batch):
        total = 0.0
        for i, t in enumerate((100, 300, 500, 700)):
            k1, k2, k3 = jax.random.split(jax.random.PRNGKey(i), 3)
            latents = method._latents(frozen, batch["image"], k1)
            mask, extra = method.unet_input(frozen, batch, k2)
            noise = jax.random.normal(k3, latents.shape)
            tt = jnp.full((latents.shape[0],), t)
            noisy = diffusion.add_noise(method.schedule, latents, noise, tt)
            context = method.training_context(frozen["text_encoder"], batch["input_ids"])
            ctx = attention.AttentionContext(method.controls(mask, sampling=False), latent_hw=tuple(latents.shape[2:]))
            pred = method.pipe.unet.module.apply({"params": params["unet"]}, jnp.concatenate([noisy, extra], 1), tt,
                                                 context, attention=ctx).sample
            total = total + jnp.sum((pred - noise) ** 2 * mask[:, None]) / (4 * jnp.sum(mask))
        return total / 4

    return error


@pytest.mark.slow
def test_fine_tuning_learns_the_object(run, tmp_path):
    workdir, config = run
    objects = write_synthetic_murecom(tmp_path / "same", categories=("Toy",), objects=2, photos=5, backgrounds=4,
                                      size=(96, 128), seed=config.data.seed)  # the run's own objects
    method = methods.build(config)
    base, frozen = method.init(str(workdir))
    _, state = read_checkpoint(str(workdir))
    error = _box_error(method, frozen)
    figures = {}
    for name in ("Toy/fg1", "Toy/fg2"):
        batch = _held_out(method, objects[name], seed=5)
        figures[name] = (float(error(base, batch)), float(error(state["params"], batch)))
    print("held-out box error base -> fine-tuned: " + ", ".join(f"{k} {a:.4f} -> {b:.4f}" for k, (a, b) in
                                                                 figures.items()) + " (fg2 not trained on)")
    before, after = figures["Toy/fg1"]
    assert after < 0.7 * before


def test_export_and_compose_with_and_without_crop(run, tmp_path, capsys):
    workdir, config = run
    unet = workdir / "export" / "Toy_fg1" / "unet"
    assert (unet / "diffusion_pytorch_model.safetensors").is_file()
    exported = json.loads((unet / "config.json").read_text())
    assert exported["in_channels"] == 9 and exported["_class_name"] == "UNet2DConditionModel"
    background = workdir / "data" / "murecom" / "Toy" / "bg" / "0.jpg"
    for crop in ("--do-crop", "--no-crop"):
        out = tmp_path / crop
        written = compose.main(["dreamcom", "--checkpoint", str(workdir), "--background", str(background),
                                "--box", "20,10,40,30", "--num", "2", "--steps", "2", crop, "--out", str(out)])
        import cv2

        images = [cv2.imread(str(out / f"{i}.png")) for i in range(2)]
        original = cv2.imread(str(background))
        assert written["count"] == 2 and all(im.shape == original.shape for im in images)
        assert np.abs(images[0].astype(int) - images[1].astype(int)).max() > 0  # two draws
        if crop == "--do-crop":  # the small box's crop region is pasted back; far pixels are the original
            np.testing.assert_array_equal(images[0][60:, 100:], original[60:, 100:])
    import cv2

    empty = tmp_path / "empty_mask.png"
    cv2.imwrite(str(empty), np.zeros((96, 128), np.uint8))
    for flags, message in ((["--box", "20,10,400,30"], "error: --box 20,10,400,30: outside the 128x96 background"),
                           (["--object", "Cat_fg1", "--box", "1,1,5,5"], "error: --object Cat_fg1: the run trained "
                                                                          "Toy_fg1"),
                           (["--mask", str(empty)], f"error: --mask {empty}: "),
                           (["--mask", str(tmp_path / "nope.png")], f"error: --mask {tmp_path / 'nope.png'}: ")):
        with pytest.raises(SystemExit) as exit_info:
            compose.main(["dreamcom", "--checkpoint", str(workdir), "--background", str(background), *flags,
                          "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a DreamCom run is not an AnyScene checkpoint
        compose.main(["anyscene", "--checkpoint", str(workdir), "--foreground", str(background), "--mask",
                      str(background), "--prompt", "x", "--out", str(tmp_path / "bad.png")])
    assert exit_info.value.code == 2 and "a 'dreamcom' run, not 'anyscene'" in capsys.readouterr().err


def test_benchmark_generation_writes_the_manifest(run, tmp_path):
    workdir, _ = run
    root = workdir / "data" / "murecom"
    written = compose.main(["dreamcom", "--checkpoint", str(workdir), "--benchmark", "murecom", str(root),
                            "--num", "2", "--steps", "1", "--out", str(tmp_path / "gen")])
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    backgrounds = len((root / "Toy" / "bg" / "bbox.txt").read_text().split("\n")) - 1
    assert written["count"] == len(manifest["images"]) == 2 * backgrounds
    entry = manifest["images"][0]
    assert entry["object"] == "Toy_fg1" and len(entry["references"]) == 5
    assert (tmp_path / "gen" / entry["image"]).is_file()
    assert manifest["run"] == str(workdir)  # evaluate finds the run (and its config) from here
    # which configs/dreamcom.py variant and self-attention rule made the images
    assert (manifest["variant"], manifest["self_attention"], manifest["crop_fallback"]) == ("tiny", "released",
                                                                                            "relax")


def test_evaluate_names_the_run_and_refuses_another_methods(run, tmp_path):
    """scores.json says which run made the images (from config.run or the compose manifest), and an
    evaluation config of another method refuses the run before any work."""
    from configs.eval.anyscene import get_config as anyscene_eval
    from configs.eval.dreamcom import get_config as dreamcom_eval
    from jcompose import evaluate
    from jcompose.cli import InputError
    from jcompose.eval_inputs import run_of, write_scores

    workdir, config = run
    wrong = anyscene_eval()
    wrong.update(run=str(workdir), out=str(tmp_path / "out"))
    with pytest.raises(InputError, match="a 'dreamcom' run, not 'anyscene'"):
        evaluate.evaluate(wrong, progress=False)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"run": str(workdir), "step": 7, "images": []}))
    right = dreamcom_eval()
    right.manifest = str(manifest)
    write_scores(tmp_path / "scores", {"DINO": 0.5}, right)
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert scores["DINO"] == 0.5 and scores["run"]["workdir"] == str(workdir) and scores["run"]["step"] == 7
    assert scores["run"]["method"] == "dreamcom"
    assert scores["run"]["config"]["data"]["objects"] == list(config.data.objects)
    right.update(manifest="", run=str(workdir / "checkpoints" / str(STEPS)))
    assert run_of(right)["step"] == STEPS
