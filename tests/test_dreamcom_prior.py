"""DreamCom prior preservation (`config.train.prior`): the split, weighted loss against numpy; class images made
by the base model through the generation engine (resumed without redoing, same pixels); the released class
folder layout (bbox.txt) read, and its errors named; the class stream inside the checkpointed iterator; a tiny
training run of two objects with LoRA and prior preservation."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from fake_gcs import fake_gcs  # noqa: F401 (fixture)
from toy_method import ToyMethod, light_prefetch, toy_config

from configs.common import ConfigError, load, validate
from input_pipeline.dreamcom_prior import PairedSource, paired_transform
from input_pipeline.pipeline import make_iterator
from input_pipeline.records import RecordError
from input_pipeline.sources.class_images import ClassImageSource
from jcompose import cli, methods, train, train_state
from jcompose.methods import dreamcom_prior

SIZE = 64  # the tiny config's image size
GENERATION = dict(num_class_images=3, steps=2, batch_size=1, seed=5)


def _config(tiny_bases, **prior):
    config = load("configs/dreamcom.py:tiny")
    config.model.base = str(tiny_bases["sd15-inpaint"])
    config.train.prior.update(enabled=True, **{**GENERATION, **prior})
    return config


@pytest.fixture(scope="module")
def setup(tiny_bases, tmp_path_factory):
    """A tiny DreamCom method with prior preservation, and a fresh run's class folder (3 images)."""
    workdir = tmp_path_factory.mktemp("prior")
    method = methods.build(_config(tiny_bases, class_dir=str(workdir / "fresh")))
    params, frozen = method.init(str(workdir))
    fresh = dreamcom_prior.ensure_class_images(method, method.prior, "toy", progress=False)
    return method, params, frozen, fresh


def _write_jpeg(path, image):
    path.write_bytes(dreamcom_prior.encode_jpeg(image))


# ------------------------------------------------------------------------------------------ the loss


def test_prior_loss_is_the_weighted_sum_of_the_split_prediction(setup):
    """loss = masked MSE of the instance rows + weight * masked MSE of the class rows of one prediction on
    [instances; class examples]; weight 0 gives the plain loss of the instance half. The UNet call
    (`method.prediction`, checked against numpy in test_dreamcom.py and run by the training test below) is
    replaced by a cheap per-row function of its batch: what is checked is the batch it gets and the loss
    made of its output."""
    method = setup[0]
    rng = np.random.default_rng(0)
    prompts = {"": method.tokenize(["a photo of sks toy"] * 2), "class_": method.tokenize(["a photo of toy"] * 2)}
    batch = {}
    for prefix, boxes in (("", ((8, 40, 16, 56), (0, 24, 30, 64))), ("class_", ((0, 64, 0, 64), (4, 60, 8, 48)))):
        image = rng.uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
        mask = np.zeros((2, SIZE, SIZE, 1), np.float32)
        for b, (y0, y1, x0, x1) in enumerate(boxes):
            mask[b, y0:y1, x0:x1] = 1
        loss_mask = np.ones_like(mask)
        loss_mask[1, :, :20] = 0  # zoom padding in one example of each half
        batch.update({prefix + "image": image, prefix + "mask": mask, prefix + "masked_image": image * (1 - mask),
                      prefix + "loss_mask": loss_mask, prefix + "input_ids": prompts[prefix]})
    spec, seen = method.prior, {}

    def stand_in(params, frozen, joined, key):  # (2B, 4, 8, 8) prediction and target, (2B, 8, 8) loss mask
        seen["joined"] = joined
        pred = jnp.concatenate([joined["image"], joined["mask"]], axis=-1)[:, ::8, ::8].transpose(0, 3, 1, 2)
        seen["out"] = pred, jax.random.normal(key, pred.shape), joined["loss_mask"][:, ::8, ::8, 0]
        return seen["out"]

    method.prior, method.prediction = dataclasses.replace(spec, weight=np.array([0.5, 0.0])), stand_in
    try:  # both weights in one call (the loss broadcasts over them)
        loss, metrics = method.loss(None, None, batch, jax.random.PRNGKey(7))
    finally:
        method.prior = spec
        del method.prediction
    joined, (pred, target, lmask) = seen["joined"], seen["out"]
    for k in ("image", "mask", "masked_image", "loss_mask", "input_ids"):  # one call on [instances; class examples]
        np.testing.assert_array_equal(joined[k], np.concatenate([batch[k], batch["class_" + k]]))
    pred, target, lmask = (np.asarray(x, np.float64) for x in (pred, target, lmask))
    per_sample = ((pred - target) ** 2 * lmask[:, None]).sum(axis=(1, 2, 3)) / lmask.sum(axis=(1, 2))
    instance, prior = per_sample[:2].mean(), per_sample[2:].mean()
    print(f"per sample {per_sample}; instance {instance:.6f}, prior {prior:.6f}")
    assert abs(instance - prior) > 1e-3 * instance  # the halves differ: a swap would show
    np.testing.assert_allclose(float(metrics["instance_loss"]), instance, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["prior_loss"]), prior, rtol=1e-5)
    loss = np.broadcast_to(loss, (2,))  # a loss that ignores the weight would be a scalar
    np.testing.assert_allclose(float(loss[0]), instance + 0.5 * prior, rtol=1e-5)
    np.testing.assert_allclose(float(loss[1]), instance, rtol=1e-5)  # weight 0: the no-prior loss of the instances


# ----------------------------------------------------------------------------------- class images


def test_class_images_resume_without_redoing_and_match_a_fresh_run(setup, tmp_path):
    method, _, _, fresh = setup
    assert sorted(os.listdir(fresh)) == ["0.jpg", "1.jpg", "2.jpg", "bbox.txt", "manifest.json"]  # released layout
    assert (fresh / "bbox.txt").read_text() == "0,0,63,63\n" * 3  # full-image boxes, inclusive
    first = [(fresh / f"{i}.jpg").read_bytes() for i in range(3)]
    assert len({hash(b) for b in first}) == 3  # each image its own key

    # A folder whose run was killed after writing image 0 (no bbox.txt yet), completed.
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(fresh / "0.jpg", partial / "0.jpg")
    before = os.stat(partial / "0.jpg")
    spec = dataclasses.replace(method.prior, class_dir=str(partial))
    dreamcom_prior.ensure_class_images(method, spec, "toy", progress=False)
    after = os.stat(partial / "0.jpg")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not written again
    assert [(partial / f"{i}.jpg").read_bytes() for i in range(3)] == first  # the fresh run's pixels
    assert (partial / "bbox.txt").read_text() == "0,0,63,63\n" * 3
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["resumed"] == 1

    (partial / "2.jpg").unlink()  # completed again only with the settings it was made with
    with pytest.raises(cli.InputError, match=r"config.train.prior.class_dir .*partial: its images were generated "
                                             r"with other settings \(steps 2 \(this run: 3\)\)"):
        dreamcom_prior.ensure_class_images(method, dataclasses.replace(spec, steps=3), "toy", progress=False)


def test_a_users_greyscale_photo_is_kept_when_the_folder_is_completed(setup, tmp_path):
    """A user's class folder with one greyscale photo (another size, its own box) and too few images: the two
    missing images are generated, the photo and its box line are kept as they are."""
    import cv2

    method, _, _, fresh = setup
    folder = tmp_path / "mine"
    folder.mkdir()
    grey = np.random.default_rng(3).integers(0, 255, (50, 70), np.uint8)
    ok, data = cv2.imencode(".jpg", grey)
    (folder / "0.jpg").write_bytes(data.tobytes())
    (folder / "bbox.txt").write_text("3,4,20,30\n")
    before = (folder / "0.jpg").read_bytes()
    dreamcom_prior.ensure_class_images(method, dataclasses.replace(method.prior, class_dir=str(folder)), "toy",
                                       progress=False)
    assert (folder / "0.jpg").read_bytes() == before  # not overwritten by a generated image
    assert (folder / "bbox.txt").read_text() == "3,4,20,30\n0,0,63,63\n0,0,63,63\n"
    assert [(folder / f"{i}.jpg").read_bytes() for i in (1, 2)] == [(fresh / f"{i}.jpg").read_bytes() for i in (1, 2)]
    image = ClassImageSource(folder, 3)[0]["image"]  # read as RGB, three equal channels
    assert image.shape == (50, 70, 3) and (image[..., 0] == image[..., 2]).all()


def test_a_bucket_workdir_keeps_its_class_images_in_the_bucket(setup, tiny_bases, fake_gcs):  # noqa: F811
    """A pod run's workdir is a bucket (`--workdir gs://...`): the default class folder is
    gs://.../class_images/<noun> (not a local 'gs:' folder on each host), generated there by the engine and
    read back from there, the same pixels and boxes as a local folder made with the same settings."""
    _, _, _, fresh = setup
    method = methods.build(_config(tiny_bases))  # class_dir "": under the workdir
    method.init("gs://bucket/run")
    folder = dreamcom_prior.ensure_class_images(method, method.prior, "toy", progress=False)
    assert str(folder) == "gs://bucket/run/class_images/toy" and not os.path.exists("gs:")
    stored = {k.removeprefix("gs://") for k in fake_gcs.store}
    assert {f"bucket/run/class_images/toy/{name}" for name in ("0.jpg", "1.jpg", "2.jpg", "bbox.txt")} <= stored
    assert epath.Path("gs://bucket/run/class_images/toy/bbox.txt").read_text() == "0,0,63,63\n" * 3
    remote, local = ClassImageSource(folder, 3), ClassImageSource(fresh, 3)
    for i in range(3):
        np.testing.assert_array_equal(remote[i]["image"], local[i]["image"])
        np.testing.assert_array_equal(remote[i]["mask"], local[i]["mask"])
    assert dreamcom_prior.ensure_class_images(method, method.prior, "toy", progress=False) == folder  # complete now


def test_a_released_class_folder_is_used_as_it_is(tmp_path, tiny_bases, capsys):
    """An existing folder (images of another size, user boxes) is read as is: nothing generated or written;
    the boxes are inclusive pixel bounds, an exclusive right/bottom edge read as the image edge. A damaged
    bbox.txt stops `train --prepare_only` with one line naming the file and the line (exit 2)."""
    folder = tmp_path / "released"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        _write_jpeg(folder / f"{i}.jpg", rng.integers(0, 255, (60, 80, 3), np.uint8))
    (folder / "bbox.txt").write_text("10,5,29,14\n0,0,80,60\n")
    argv = ["--config=configs/dreamcom.py:tiny", f"--workdir={tmp_path / 'run'}", "--prepare_only",
            f"--config.model.base={tiny_bases['sd15-inpaint']}", "--config.train.prior.enabled=True",
            f"--config.train.prior.class_dir={folder}", "--config.train.prior.num_class_images=2"]
    assert cli.run(train.main, argv) == 0
    assert sorted(os.listdir(folder)) == ["0.jpg", "1.jpg", "bbox.txt"]  # nothing added
    source = ClassImageSource(folder, 2)
    mask = source[0]["mask"]
    assert mask.shape == (60, 80) and mask.sum() == 20 * 10 and mask[5, 10] == 1 and mask[14, 29] == 1
    assert mask[15, 29] == 0 and mask[14, 30] == 0
    assert source[1]["mask"].all()

    (folder / "bbox.txt").write_text("10,5,29,14\n0;0;80;60\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.run(train.main, argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"{folder}/bbox.txt: line 2: expected 'x1,y1,x2,y2'" in err[0]


@pytest.mark.parametrize("text, line, expected", [
    ("0,0,63,63\n0,0,63\n", 2, "expected 'x1,y1,x2,y2'"),
    ("0,0,63,63\n5 5 10 10\n", 2, "expected 'x1,y1,x2,y2'"),
    ("9,0,3,63\n0,0,63,63\n", 1, "0 <= x1 <= x2"),
])
def test_a_bad_bbox_file_is_named_with_its_line(tmp_path, text, line, expected):
    folder = tmp_path / "class"
    folder.mkdir()
    for i in range(2):
        _write_jpeg(folder / f"{i}.jpg", np.zeros((64, 64, 3), np.uint8))
    (folder / "bbox.txt").write_text(text)
    with pytest.raises(RecordError, match=rf"bbox.txt: line {line}: .*{expected}"):
        ClassImageSource(folder, 2)


def test_missing_lines_images_and_boxes_outside_are_named(tmp_path):
    folder = tmp_path / "class"
    folder.mkdir()
    _write_jpeg(folder / "0.jpg", np.zeros((32, 48, 3), np.uint8))
    (folder / "bbox.txt").write_text("0,0,47,31\n")
    with pytest.raises(RecordError, match=r"bbox.txt: has 1 lines, 2 class images are needed"):
        ClassImageSource(folder, 2)
    (folder / "bbox.txt").write_text("0,0,47,31\n0,0,47,31\n")
    with pytest.raises(RecordError, match=r"1.jpg: class image not found"):
        ClassImageSource(folder, 2)
    (folder / "bbox.txt").write_text("0,0,47,40\n")
    with pytest.raises(RecordError, match=r"0.jpg: its box 0,0,47,40 \(line 1 of bbox.txt\) is outside the 48x32"):
        ClassImageSource(folder, 1)[0]


def test_config_errors_name_the_field(tiny_bases, tmp_path):
    for field, value, expected in (("num_class_images", 0, "a positive integer"),
                                   ("class_prompt", "a photo of {class}", "whose only fields are \\{noun\\}"),
                                   ("weight", -1.0, "a number >= 0"), ("steps", 0, "a positive number"),
                                   ("batch_size", 0, "a positive integer")):
        config = _config(tiny_bases, **{field: value})
        with pytest.raises(ConfigError, match=rf"config.train.prior.{field} = .*: expected .*{expected}"):
            validate(config)
    spec = dreamcom_prior.spec_from_config(_config(tiny_bases, class_dir="/data/class"))
    with pytest.raises(ConfigError, match=r"class_dir = '/data/class': objects of classes 'dog' and 'cat'.*\{noun\}"):
        dreamcom_prior.check_shared_folders(spec, ["dog", "cat"], tmp_path)
    assert dreamcom_prior.class_folder(dataclasses.replace(spec, class_dir=""), "coffee cup", tmp_path) == (
        tmp_path / "class_images" / "coffee_cup")


# -------------------------------------------------------------------------------------- the stream


def test_the_class_stream_position_is_in_the_iterator_state():
    """Element i pairs instance i % 3 with class image i % 5; a restored iterator continues both exactly."""
    instances = [{"id": np.int64(i)} for i in range(3)]
    classes = [{"id": np.int64(100 + i)} for i in range(5)]
    mark = lambda record, rng: {"id": record["id"], "draw": rng.random()}
    transform = paired_transform(mark, mark, ("id", "draw"))
    source = PairedSource(instances, classes)
    assert len(source) == 5 and source[4] == {"instance": instances[1], "class": classes[4]}
    it = make_iterator(source, transform, per_process_batch=2, seed=3)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    resumed = make_iterator(source, transform, per_process_batch=2, seed=3)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(4)]
    for w, g in zip(want, got):
        assert set(w) == {"id", "draw", "class_id", "class_draw"}
        for k in w:
            np.testing.assert_array_equal(w[k], g[k])
    seen = np.concatenate([b["class_id"] for b in want])
    assert set(seen) <= set(range(100, 105)) and np.all(want[0]["draw"] != want[0]["class_draw"])


# ------------------------------------------------------------------------------------- end to end


@pytest.mark.slow  # the tiny DreamCom train step's compile (as any tiny DreamCom training run's)
def test_training_two_objects_with_lora_and_prior_preservation(setup, tiny_bases, tmp_path):
    """Training makes the missing class images, then trains both objects' adapters on instance + class
    batches; both loss terms are logged and the loss is instance + weight * prior."""
    _, _, _, fresh = setup
    folder = tmp_path / "class_toy"
    folder.mkdir()
    shutil.copy(fresh / "0.jpg", folder / "0.jpg")  # an earlier run's first image: kept, one more made
    (folder / "bbox.txt").write_text("0,0,63,63\n")
    config = _config(tiny_bases, class_dir=str(tmp_path / "class_{noun}"), num_class_images=2, weight=0.7)
    config.data.objects = ("murecom:Toy/fg1", "murecom:Toy/fg2")
    config.train.update(steps=2, log_every=2, ckpt_every=2, sample_every=-1, export=False)
    config.train.lora.update(rank=2)
    result = train.train(config, tmp_path / "run")
    assert (folder / "1.jpg").read_bytes() == (fresh / "1.jpg").read_bytes()
    assert (folder / "bbox.txt").read_text() == "0,0,63,63\n" * 2
    assert {"instance_loss", "prior_loss", "loss/Toy_fg1", "loss/Toy_fg2"} <= set(result)
    np.testing.assert_allclose(result["loss"], result["instance_loss"] + 0.7 * result["prior_loss"], rtol=1e-5)
    assert result["step"] == 2 and np.isfinite(result["loss"])


def test_training_makes_its_data_before_the_train_state_exists(tmp_path, monkeypatch):
    """`train` builds the data sources (where DreamCom makes its class images with the base model) once the
    models are loaded and before the params' copy, the optimizer moments and EMA are made and placed: the
    generation has the devices' memory to itself (on a 16 GiB chip the state alone fills most of it)."""
    events = []

    class Recording(ToyMethod):
        def init(self, workdir):
            events.append("models loaded")
            return super().init(workdir)

        def make_source(self):
            events.append("sources")
            return super().make_source()

    fresh = train_state._fresh
    monkeypatch.setattr(train_state, "_fresh", lambda *a: events.append("state made") or fresh(*a))
    config = toy_config(steps=1, sample_every=-1)
    with light_prefetch():
        train.train(config, tmp_path / "run", method=Recording(config))
    assert events == ["models loaded", "sources", "state made"]
