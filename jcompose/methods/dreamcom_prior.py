"""DreamCom prior preservation (`config.train.prior`): the class images and the batches that carry them.

The released `train.py --with_prior_preservation` (off in the released recipe; reference/dreamcom.md A.3,
C.1) follows diffusers' inpainting DreamBooth:

* class images: the *base* inpainting model samples `num_class_images` images of the class prompt ("a
  photo of <class>") with a full-image mask (the masked image all grey), saved as `<i>.jpg` with
  `bbox.txt` ("x1,y1,x2,y2" per line: the whole image) in `class_dir`. Training makes the missing ones
  when the folder holds fewer (as diffusers does), through jcompose's own sampler (`method.sample` with
  the base UNet, no attention masking: the plain inpainting pipeline) and the benchmark-generation engine
  (`jcompose.generation`): sharded over every device and host, resumable (valid images already written
  are kept), image i from key fold_in(seed, i) whatever the device count. A folder made for the released
  code is used as it is. `python -m jcompose.train ... --prepare_only` makes them without training.
* batches: each instance example comes with a class example (`input_pipeline.dreamcom_prior`), which goes
  through the same augmentation with its bbox.txt box as the mask and the class prompt;
* loss: one UNet call on [instances; class examples], the prediction split in two,
  loss = instance loss + weight * prior loss (`dreamcom.prior_preservation_loss`), both logged.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import ConfigError
from input_pipeline.dreamcom_prior import CLASS_PREFIX
from input_pipeline.sources import class_images
from jcompose import storage

JPEG_QUALITY = 95
NOUN = "{noun}"


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """`config.train.prior` when enabled (fields as there; checked by `configs.common.validate`)."""

    class_dir: str
    num_class_images: int
    class_prompt: str
    weight: float
    steps: int
    guidance_scale: float
    seed: int
    batch_size: int


def spec_from_config(config) -> PriorSpec | None:
    """The run's prior-preservation settings, or None when off (or the config has no `train.prior`)."""
    prior = config.train.get("prior")
    if prior is None or not prior.enabled:
        return None
    return PriorSpec(**{f.name: prior[f.name] for f in dataclasses.fields(PriorSpec)})


def class_folder(spec: PriorSpec, noun: str, workdir) -> Path:
    """The class folder of an object of class `noun`: `class_dir` with {noun} filled in ("" = the run's
    `class_images/{noun}`; spaces in the noun become '_')."""
    template = spec.class_dir or f"{workdir}/class_images/{NOUN}"
    return storage.as_path(template.replace(NOUN, noun.replace(" ", "_")))  # a bucket's (gs://) too


def check_shared_folders(spec: PriorSpec, nouns: list[str], workdir) -> None:
    """ConfigError when objects of different classes would share one class folder (a class_dir without {noun})."""
    folders: dict[Path, str] = {}
    for noun in nouns:
        other = folders.setdefault(class_folder(spec, noun, workdir), noun)
        if other != noun:
            raise ConfigError(f"config.train.prior.class_dir = {spec.class_dir!r}: objects of classes {other!r} and "
                              f"{noun!r} would share one class folder; put {NOUN} in it (e.g. '/data/class/{NOUN}')")


def has_weights(method) -> bool:
    """Whether `method` holds its loaded base UNet (not the shapes `jcompose.plan` traces with)."""
    leaf = jax.tree_util.tree_leaves(method.pipe.unet.params)[0]
    return not isinstance(leaf, (jax.core.Tracer, jax.ShapeDtypeStruct))


def class_prompt(spec: PriorSpec, noun: str, token: str) -> str:
    """The class prompt of an object of class `noun` ("a photo of dog")."""
    return spec.class_prompt.format(noun=noun, token=token)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) -> JPEG bytes (quality 95): the released layout's `<i>.jpg`."""
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as JPEG")
    return data.tobytes()


def class_image_job(method, spec: PriorSpec, prompt: str, folder: Path):
    """The generation job of class images 0..num_class_images-1 of `prompt` into `folder` (module doc).

    Item i is `<i>.jpg`, S x S (S = data.image_size); an existing `<i>.jpg` that decodes fully as RGB or greyscale
    counts as done at its own size (a user's photos of another resolution, or in grey, are not regenerated)."""
    from jcompose import generation, generation_files

    size = method.config.data.image_size
    inputs = {"image": np.zeros((size, size, 3), np.float32), "mask": np.ones((size, size, 1), np.float32),
              "masked_image": np.zeros((size, size, 3), np.float32), "input_ids": method.tokenize([prompt])[0]}
    base = {"unet": method.pipe.unet.params}  # the base model, whatever the run trains (LoRA, text encoder)
    trees = (base, method.frozen_of(base))

    def sample(trees, batch, keys):
        params, frozen = trees

        def one(example, key):
            single = jax.tree_util.tree_map(lambda x: x[None], example)
            return method.sample(params, frozen, single, key, num_steps=spec.steps, guidance_scale=spec.guidance_scale,
                                 self_attention="none", cross_attention=False)[0]

        return jax.vmap(one)(batch, keys)

    def image_size(i: int) -> tuple[int, int]:
        path = folder / f"{i}.jpg"
        if path.is_file():
            try:
                return generation_files.image_size(path)
            except ValueError:  # unreadable: regenerated at the run's size
                pass
        return size, size

    c = method.config
    return generation.Job(
        items=[f"{i}.jpg" for i in range(spec.num_class_images)], read=lambda i: (inputs, None), sample=sample,
        key=lambda i: jax.random.fold_in(jax.random.PRNGKey(spec.seed), i), write=lambda image, _: image,
        size=image_size, entry=lambda i: {"prompt": prompt},
        settings={"method": "dreamcom", "purpose": "prior-preservation class images", "base": str(c.model.base),
                  "prompt": prompt, "steps": spec.steps, "guidance": spec.guidance_scale, "seed": spec.seed,
                  "sampler": c.sample.sampler, "size": size, "mask": "full image"},
        params=lambda _: trees, encode=encode_jpeg, done_modes=("RGB", "L"))  # read_image converts grey


def ensure_class_images(method, spec: PriorSpec, noun: str, *, progress: bool = True) -> Path:
    """The class folder of `noun`, completed to `num_class_images` images and their bbox.txt lines.

    A folder that has them is used as it is (a released-layout folder included: nothing is loaded or
    written). Otherwise the missing images are generated (module doc) and bbox.txt is rewritten: the lines of
    images that were there are kept, each new image gets its full-image box."""
    from jcompose import generation
    from jcompose.generation_files import check_settings, image_size, write_file

    folder = class_folder(spec, noun, method.workdir)
    missing = class_images.missing_class_images(folder, spec.num_class_images)
    if not missing:
        return folder
    bbox = folder / class_images.BBOX_FILE
    lines = class_images.parse_class_bbox_file(bbox) if bbox.is_file() else []
    kept = {i for i in range(len(lines)) if (folder / f"{i}.jpg").is_file()}  # existing image, existing line
    prompt = class_prompt(spec, noun, method.config.model.token)
    if jax.process_index() == 0:
        print(f"prior preservation: {folder} lacks {len(missing)} of {spec.num_class_images} class images (or their "
              f"{class_images.BBOX_FILE} lines); generating the missing ones with the base model ({prompt!r}, "
              f"{spec.steps} steps, guidance {spec.guidance_scale})", flush=True)
    job = class_image_job(method, spec, prompt, folder)
    # the engine checks again; here the message names the config field that chose the folder
    check_settings(folder, job.settings, flag="config.train.prior.class_dir")
    generation.generate(job, folder, per_device_batch=spec.batch_size, progress=progress, desc=f"class images ({noun})")
    if jax.process_index() == 0:
        boxes = []
        for i in range(max(spec.num_class_images, len(lines))):
            if i in kept or i >= spec.num_class_images:  # a line past the images used is left as it is
                boxes.append(lines[i])
            else:
                h, w = image_size(folder / f"{i}.jpg")
                boxes.append((0, 0, w - 1, h - 1))
        write_file(bbox, class_images.format_class_bbox_file(boxes).encode())
    if jax.process_count() > 1:  # every process reads the finished bbox.txt
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jcompose.prior.bbox")
    return folder


def with_class_examples(batch: dict) -> dict:
    """A prior-preservation batch (B instance rows + `class_` keys, B class rows) -> the model's keys with
    2B rows, instances first (the order `prior_preservation_loss` splits by). Other keys are dropped."""
    keys = [k[len(CLASS_PREFIX):] for k in batch if k.startswith(CLASS_PREFIX)]
    return {k: jnp.concatenate([batch[k], batch[CLASS_PREFIX + k]], axis=0) for k in keys}
