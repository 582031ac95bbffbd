"""Tiny benchmark-generation jobs of the three methods, for tests/test_generation.py and its subprocesses
(tests/generation_worker.py). Not a test module.

`write_inputs(root, bases, dinov2)` writes, once, the three benchmark folders (an AnyScene folder from
synthetic COCO, DreamCom's synthetic MureCom, an AnyDoor benchmark.json) at 32 px; `jobs(root)` loads each
method from the tiny bases with non-zero random trained weights (no training run: the layout is what
these tests vary) and builds its `generation.Job` with 2 sampling steps. Every process that calls `jobs`
gets the same jobs, pixel for pixel.
"""

import json
from pathlib import Path

import cv2
import jax
import numpy as np

SIZE = 32
STEPS = 2
BATCH = 3  # per device: chunks of 3 items, the last of a group padded; on 4 devices some idle


def _perturbed(tree, seed: int, scale: float = 0.05):
    """Every leaf + scale * N(0, 1): zero-initialised convolutions would hide the conditioning."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: np.asarray(x) + scale * rng.normal(size=np.shape(x)).astype(np.float32),
                                  tree)


def models(root: Path) -> dict:
    """{base name or "dinov2": folder} of the tiny models `write_inputs` was given."""
    return json.loads((root / "models.json").read_text())


def method_configs(root: Path) -> dict:
    """{method: the tiny config its job is built with} (the model folders of `write_inputs`)."""
    from configs.anydoor import get_config as anydoor_config
    from configs.anyscene import get_config as anyscene_config
    from configs.dreamcom import get_config as dreamcom_config

    folders = models(root)
    anyscene = anyscene_config("tiny")
    anyscene.model.update(base=folders["sd15"], controlnet="")
    dreamcom = dreamcom_config("tiny")
    dreamcom.model.base = folders["sd15-inpaint"]
    dreamcom.data.update(objects=("murecom:Toy/fg1", "murecom:Toy/fg2"), image_size=SIZE)
    anydoor = anydoor_config("tiny")
    anydoor.model.update(base=folders["sd21-base"], dinov2=folders["dinov2"])
    anydoor.data.update(image_size=SIZE, reference_size=112)
    return {"anyscene": anyscene, "dreamcom": dreamcom, "anydoor": anydoor}


def write_inputs(root: Path, bases: dict, dinov2: Path) -> None:
    """The benchmark folders of the three methods under `root` (see the module doc)."""
    from input_pipeline import anyscene_benchmark, dreamcom_objects
    from input_pipeline.sources.synthetic import write_synthetic

    root.mkdir(parents=True, exist_ok=True)
    (root / "models.json").write_text(json.dumps({**{k: str(v) for k, v in bases.items()}, "dinov2": str(dinov2)}))
    coco = write_synthetic(root / "coco", num_images=6, num_videos=0, image_size=(48, 64), seed=3).coco_dir
    anyscene_benchmark.main(["--image_dir", str(coco / "images"), "--instances_json",
                             str(coco / "annotations/instances.json"), "--captions_json",
                             str(coco / "annotations/captions.json"), "--num", "5", "--size", str(SIZE),
                             "--out", str(root / "anyscene_bench")])
    dreamcom_objects.murecom_root(method_configs(root)["dreamcom"].data, root / "dreamcom")
    # AnyDoor: 2 RGBA objects x 3 backgrounds of two sizes, each with a target box.
    rng = np.random.default_rng(7)
    bench = root / "anydoor_bench"
    (bench / "objects").mkdir(parents=True)
    concepts, backgrounds = [], []
    for c in range(2):
        rgba = np.zeros((40, 36, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 255, (40, 36, 3))
        rgba[6:34, 5 + c:30, 3] = 255
        cv2.imwrite(str(bench / "objects" / f"c{c}.png"), rgba)
        concepts.append({"name": f"c{c}", "reference": f"objects/c{c}.png"})
    for b, (h, w) in enumerate([(48, 64), (64, 48), (48, 64)]):
        cv2.imwrite(str(bench / f"bg{b}_GT.png"), rng.integers(0, 255, (h, w, 3), np.uint8))
        mask = np.zeros((h, w), np.uint8)
        y0, x0 = 8 + 2 * b, 10 + b
        mask[y0:y0 + 20, x0:x0 + 16] = 255
        cv2.imwrite(str(bench / f"bg{b}_mask.png"), mask)
        backgrounds.append({"name": f"bg{b}", "image": f"bg{b}_GT.png", "mask": f"bg{b}_mask.png",
                            "box": [x0, y0, x0 + 16, y0 + 20]})
    (bench / "benchmark.json").write_text(json.dumps({"name": "tiny", "concepts": concepts,
                                                      "backgrounds": backgrounds}))


def toy_job(n: int = 11, hang_after: int | None = None):
    """A method-free job: item i's input is a pattern drawn from i at one of two sizes (two groups), its image
    a 3x3 convolution of it plus its key's noise; the writer flips it (host-side work). `hang_after`: the
    writer blocks forever once that many images were handed to it (so a test can kill a run at a known
    point: that many images written, the process alive)."""
    import threading

    import jax.numpy as jnp

    from jcompose import generation

    shapes = [(8, 8) if i % 3 else (8, 12) for i in range(n)]
    weights = np.random.default_rng(0).normal(size=(3, 3, 3, 3)).astype(np.float32) / 3

    def read(i):
        h, w = shapes[i]
        return {"x": np.random.default_rng(100 + i).uniform(-1, 1, (h, w, 3)).astype(np.float32)}, i

    def sample(params, batch, keys):
        y = jax.lax.conv_general_dilated(batch["x"], params, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y + 0.3 * jax.vmap(lambda k: jax.random.normal(k, y.shape[1:]))(keys))

    lock, writes = threading.Lock(), [0]

    def write(image, i):
        with lock:
            writes[0] += 1
            hang = hang_after is not None and writes[0] > hang_after
        if hang:
            threading.Event().wait()
        return image[:, ::-1]

    return generation.Job(items=[f"g{i % 2}/{i}.png" for i in range(n)], read=read, sample=sample,
                          key=lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i), write=write,
                          size=lambda i: shapes[i], entry=lambda i: {"i": i, "shape": list(shapes[i])},
                          settings={"method": "toy", "seed": 3}, params=lambda _: weights, groups=shapes)


def jobs(root: Path, only=None) -> dict:
    """{method: generation.Job} of the tiny benchmarks under `root` (`write_inputs` first)."""
    from input_pipeline import anydoor_benchmark
    from jcompose.methods import (
        anydoor_generation,
        anyscene_generation,
        dreamcom_generation,
    )
    from jcompose.methods.anydoor import AnyDoorMethod
    from jcompose.methods.anyscene import AnySceneMethod
    from jcompose.methods.dreamcom import DreamComMethod

    configs, out = method_configs(root), {}
    if only in (None, "anyscene"):
        method = AnySceneMethod(configs["anyscene"])
        method.load_models(configs["anyscene"].model.base)
        frozen = {"unet": method.pipe.unet.params, "vae": method.pipe.vae.params,
                  "text_encoder": method.pipe.text_encoder.params}
        out["anyscene"] = anyscene_generation.benchmark_job(
            method, {"controlnet": _perturbed(method.controlnet_params, 0)}, frozen,
            anyscene_generation.Benchmark.read(root / "anyscene_bench"), seed=0, steps=STEPS, guidance=7.5,
            blend="paste", settings={"run": "tiny"})
    if only in (None, "dreamcom"):
        method = DreamComMethod(configs["dreamcom"])
        method.workdir = root / "dreamcom"
        method.load_models(configs["dreamcom"].model.base)
        unets = [method.pipe.unet.params, _perturbed(method.pipe.unet.params, 1)]  # two objects, two UNets
        frozen = {"vae": method.pipe.vae.params, "text_encoder": method.pipe.text_encoder.params}
        pairs = dreamcom_generation.benchmark_pairs("murecom", str(root / "dreamcom" / "data" / "murecom"), method)
        names = method.model_names
        out["dreamcom"] = dreamcom_generation.benchmark_job(
            method, lambda name: {"unet": unets[names.index(name)]}, frozen, pairs, seed=666,
            steps=STEPS, guidance=7.5, num=2, do_crop=True, self_attention=None, cross_attention="masked",
            settings={"run": "tiny"})
    if only in (None, "anydoor"):
        method = AnyDoorMethod(configs["anydoor"])
        params, frozen = method.init(str(root / "anydoor"))
        _, pairs = anydoor_benchmark.read_benchmark(root / "anydoor_bench")
        out["anydoor"] = anydoor_generation.benchmark_job(
            method, _perturbed(params, 2), frozen, pairs, seed=10, steps=STEPS, guidance=5.0,
            shape_control=False, paste="crop", settings={"run": "tiny"})
    return out
