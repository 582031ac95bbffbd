"""The method transforms together: batched through the grain pipeline (str fields included, filtered
records skipped), inference inputs and paste-back, the released PIL resizes on a photo, and the
transforms on the synthetic dataset's files.

Facts are measured from the outputs (box sizes, colours, mask values) and compared with what the
released preprocessing or the paper prescribes, not with the transforms' own helpers.
"""

import numpy as np
import pytest
from scipy import ndimage
from transform_records import background, instances, pil_resize, rect_pair, reference

from input_pipeline import anydoor
from input_pipeline.records import RecordError


def test_transforms_batch_through_grain_pipeline():
    from input_pipeline import anyscene, dreamcom, pipeline

    rng = np.random.default_rng(0)
    scenes = [instances(rng, 64, 80) for _ in range(4)]
    scenes[1]["masks"][:] = 0  # no eligible instance: skipped and counted
    it = pipeline.make_iterator(scenes, anyscene.make_transform(size=64), per_process_batch=2, seed=0)
    batch = next(it)
    assert batch["image"].shape == (2, 64, 64, 3) and batch["mask"].shape == (2, 64, 64, 1)
    assert len(batch["caption"]) == 2 and all(str(c) in scenes[0]["captions"] for c in batch["caption"])
    next(it)
    assert it.skipped.count >= 1

    refs = [reference(rng, 90, 70, (20, 60, 15, 55)) for _ in range(3)]
    it = pipeline.make_iterator(refs, dreamcom.make_transform(class_noun="dog", size=64), per_process_batch=3, seed=1)
    batch = next(it)
    assert batch["masked_image"].shape == (3, 64, 64, 3) and batch["loss_mask"].shape == (3, 64, 64, 1)
    assert [str(p) for p in batch["prompt"]] == ["a photo of sks dog"] * 3

    pairs = [rect_pair(rng, flat=False, dynamic=bool(i % 2)) for i in range(2)]
    it = pipeline.make_iterator(pairs, anydoor.make_transform(size=128, ref_size=56), per_process_batch=2, seed=2)
    batch = next(it)
    assert batch["collage"].shape == (2, 128, 128, 4) and batch["reference"].shape == (2, 56, 56, 3)
    assert sorted(batch["dynamic"].tolist()) == [0, 1]


def test_anydoor_paste_back_round_trip():
    """Pasting the example's own target square back reproduces the target image (up to resampling)."""
    rng = np.random.default_rng(6)
    rec = rect_pair(rng, 200, 300, (60, 140, 20, 100), flat=False)  # near the border: the crop is clipped
    rec["target_image"] = np.full((200, 300, 3), 90, np.uint8)
    rec["target_image"][:, 150:] = 180  # piecewise-flat, so resampling is exact away from the step
    ex = anydoor.make_transform(augment=False)(rec, rng)
    h1, w1, h2, w2 = ex["sizes"]
    assert h1 != w1  # the crop hit the image border, so there is square padding to strip
    square = np.rint((ex["target"] + 1) * 127.5).astype(np.uint8)
    out = anydoor.paste_back(255 - square, rec["target_image"], ex["crop_box"], ex["sizes"], margin=0)
    y0, y1, x0, x1 = ex["crop_box"]
    inside = np.zeros((200, 300), bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(out[~inside], rec["target_image"][~inside])
    # Inverted colours inside the crop, away from the 90/180 step and from the crop border (where the
    # black square padding blends in); the 8-bit round trip may round one level off.
    cols = np.abs(np.arange(300) - 150) > 3
    sel = ndimage.binary_erosion(inside, np.ones((5, 5))) & cols[None, :]
    diff = np.abs(out[sel].astype(int) - (255 - rec["target_image"][sel].astype(int)))
    assert sel.sum() > 5000 and diff.max() <= 1
    with pytest.raises(ValueError, match="do not describe"):
        anydoor.paste_back(square, rec["target_image"], ex["crop_box"], [h1 + 1, w1, h2, w2])


def test_dreamcom_inference_inputs_crop_rule_and_paste():
    from input_pipeline import dreamcom

    rng = np.random.default_rng(0)
    bg = background(rng, 200, 300)
    small = {"image": bg, "box": (100, 80, 140, 120), "source": "mem://bg"}  # 40 x 40 of 200 x 300
    ex = dreamcom.inference_inputs(small, size=64)
    # Box grown by half its size on each side: rows 60..140, columns 80..160 (80 x 80).
    assert tuple(ex["region"]) == (60, 140, 80, 160)
    m = ex["mask"][..., 0]
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (16, 48, 16, 48)  # the middle half
    assert (ex["masked_image"][m > 0] == 0).all()
    np.testing.assert_array_equal(ex["masked_image"][m == 0], ex["image"][m == 0])
    # Big box or do_crop=False: the whole image, squashed to S x S.
    big = {"image": bg, "box": (0, 0, 200, 150), "source": "mem://bg"}
    assert tuple(dreamcom.inference_inputs(big, size=64)["region"]) == (0, 200, 0, 300)
    assert tuple(dreamcom.inference_inputs(small, size=64, do_crop=False)["region"]) == (0, 200, 0, 300)
    gen = np.full((64, 64, 3), 7, np.uint8)
    out = dreamcom.paste_region(gen, bg, ex["region"])
    assert (out[60:140, 80:160] == 7).all()
    keep = np.ones((200, 300), bool)
    keep[60:140, 80:160] = False
    np.testing.assert_array_equal(out[keep], bg[keep])
    with pytest.raises(RecordError, match="mem://bg: field 'box'"):
        dreamcom.inference_inputs(dict(small, box=(10, 10, 400, 20)))


def test_dreamcom_resizes_are_the_released_pil_ones_on_a_photo():
    """The released test.py resizes with PIL (Lanczos; the mask nearest), whose filters widen when they
    shrink: on a photo-sized image (872 x 1000) to 512 x 512 the inputs are PIL's exactly; OpenCV's
    Lanczos-4 (no antialiasing) would be grey levels away (printed)."""
    import cv2
    import skimage.data
    from PIL import Image

    from input_pipeline import dreamcom

    photo = skimage.data.hubble_deep_field()
    ex = dreamcom.inference_inputs({"image": photo, "box": (100, 80, 900, 800), "source": "hubble"}, size=512)
    assert tuple(ex["region"]) == (0, 872, 0, 1000)  # a box over a quarter of the image: the whole photo
    want = pil_resize(photo, (512, 512), Image.LANCZOS)
    np.testing.assert_array_equal(ex["image"], want.astype(np.float32) / 127.5 - 1)
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[80:800, 100:900] = 255
    np.testing.assert_array_equal(ex["mask"][..., 0], pil_resize(mask, (512, 512), Image.NEAREST) > 0)
    opencv = cv2.resize(photo, (512, 512), interpolation=cv2.INTER_LANCZOS4).astype(int)
    diff = np.abs(opencv - want.astype(int))
    print(f"OpenCV Lanczos-4 vs PIL Lanczos on 872x1000 -> 512: mean {diff.mean():.2f}, max {diff.max()} grey levels")
    assert diff.mean() > 1.0  # a difference worth matching
    back = dreamcom.paste_region(want, np.zeros_like(photo), ex["region"])
    np.testing.assert_array_equal(back, pil_resize(want, photo.shape[:2], Image.LANCZOS))


def test_transforms_on_synthetic_dataset_files(tmp_path):
    """Readers -> record builders -> transforms on the project's synthetic COCO / YouTube-VOS files."""
    from input_pipeline import anyscene
    from input_pipeline.sources import coco, synthetic, video

    syn = synthetic.write_synthetic(tmp_path, num_images=3, num_videos=2, num_frames=6, image_size=(96, 128), seed=1)
    images = coco.CocoSource(
        syn.coco_dir / "images",
        syn.coco_dir / "annotations" / "instances.json",
        syn.coco_dir / "annotations" / "captions.json",
    )
    clips = video.VideoSource(syn.youtube_vos_dir)
    scene = anyscene.make_transform(size=64)
    door = anydoor.make_transform(size=64, ref_size=56)
    made = {"anyscene": 0, "image pair": 0, "video pair": 0}
    for i in range(len(images)):
        rng = np.random.default_rng(i)
        record = images[i]
        ex = scene(record, rng)
        assert ex["image"].shape == (64, 64, 3) and ex["caption"] in record["captions"]
        made["anyscene"] += 1
        try:
            ex = door(coco.image_pair(record, rng), rng)
        except RecordError:
            continue
        assert ex["collage"].shape == (64, 64, 4) and int(ex["dynamic"]) == 0
        made["image pair"] += 1
    for i in range(len(clips)):
        rng = np.random.default_rng(i)
        try:
            ex = door(video.sample_pair(clips[i], rng), rng)
        except RecordError:
            continue
        assert ex["target"].shape == (64, 64, 3) and int(ex["dynamic"]) == 1
        made["video pair"] += 1
    assert made["anyscene"] == 3 and made["image pair"] >= 1 and made["video pair"] >= 1, made
