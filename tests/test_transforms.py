"""Method input transforms (AnyDoor, AnyScene, DreamCom) on records drawn in memory.

Facts are measured from the outputs (box sizes, colours, mask values) and compared with what the
released preprocessing or the paper prescribes, not with the transforms' own helpers.
"""

import numpy as np
import pytest
from scipy import ndimage

from input_pipeline import anydoor
from input_pipeline.records import RecordError

# Object and background colours chosen so that each can be told apart after resizing.
OBJ = np.array([230, 30, 40], np.uint8)


def _background(rng, h, w):
    """Mid-range noise in [40, 200]: never white (255), never black (0), never the object colour."""
    return rng.integers(40, 201, (h, w, 3), dtype=np.uint8)


def _rect_pair(rng, h=300, w=400, box=(120, 180, 170, 230), flat=True, dynamic=False):
    """One image as reference and target (AnyDoor's image rule) with a rectangular object."""
    img = _background(rng, h, w)
    y0, y1, x0, x1 = box
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    img[y0:y1, x0:x1] = OBJ if flat else rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return {
        "reference_image": img,
        "reference_mask": mask,
        "target_image": img.copy(),
        "target_mask": mask.copy(),
        "dynamic": dynamic,
        "source": "mem://pair",
    }


def _extent(mask2d):
    rows, cols = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


# ------------------------------------------------------------------------------------------------
# AnyDoor


def test_anydoor_shapes_ranges_over_random_records():
    t = anydoor.make_transform()
    rng = np.random.default_rng(0)
    ok = 0
    for i in range(30):
        h, w = int(rng.integers(120, 320)), int(rng.integers(120, 320))
        bh, bw = int(rng.integers(h // 8, h // 2)), int(rng.integers(w // 8, w // 2))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        rec = _rect_pair(rng, h, w, (y0, y0 + bh, x0, x0 + bw), flat=bool(i % 2), dynamic=bool(i % 3 == 0))
        try:
            ex = t(rec, np.random.default_rng(i))
        except RecordError as e:
            assert e.path == "mem://pair"
            continue
        ok += 1
        assert set(ex) == {"reference", "target", "collage", "dynamic", "crop_box", "sizes"}
        assert ex["reference"].shape == (224, 224, 3) and ex["reference"].dtype == np.float32
        assert ex["target"].shape == (512, 512, 3) and ex["target"].dtype == np.float32
        assert ex["collage"].shape == (512, 512, 4) and ex["collage"].dtype == np.float32
        for k in ("reference", "target"):
            assert -1.0 <= ex[k].min() and ex[k].max() <= 1.0
        assert -1.0 <= ex["collage"][..., :3].min() and ex["collage"][..., :3].max() <= 1.0
        assert set(np.unique(ex["collage"][..., 3])) <= {-1.0, 0.0, 1.0}
        assert ex["dynamic"].dtype == np.int32 and int(ex["dynamic"]) == int(i % 3 == 0)
        # Padding (-1) covers what squaring a H1 x W1 crop adds: 1 - H1*W1 / H2^2 of the square.
        h1, w1, h2, w2 = ex["sizes"]
        assert h2 == w2 == max(h1, w1)
        assert (ex["collage"][..., 3] == -1).mean() == pytest.approx(1 - h1 * w1 / h2**2, abs=0.01)
    assert ok >= 15


def test_anydoor_box_and_crop_ratios():
    """Target box = 1.1x the object box; square crop = 1.3..2.9x that box; reference pad 1.1..1.4x."""
    t = anydoor.make_transform(augment=False)
    crop_ratios, ref_ratios = [], []
    for seed in range(40):
        rec = _rect_pair(np.random.default_rng(seed), 400, 400, (175, 225, 175, 225))  # 50 px square object
        ex = t(rec, np.random.default_rng(seed))
        box = ex["collage"][..., 3] == 1  # augment=False: the mask channel is the target box
        side_out = np.mean(_extent(box))
        h2 = ex["sizes"][2]
        box_side = side_out * h2 / 512  # back to target-image pixels
        assert box_side / 50 == pytest.approx(1.1, abs=0.03)
        crop_ratios.append(512 / side_out)
        # Reference: the non-white object inside the 224 square.
        obj = (ex["reference"] < 0.95).any(-1)
        ref_ratios.append(224 / np.mean(_extent(obj)))
        # Centred object in a big image: no clipping; only box2squre's odd-side pixel leaves padding.
        assert (ex["collage"][..., 3] == -1).mean() <= 2 / h2
    assert min(crop_ratios) >= 1.3 - 0.03 and max(crop_ratios) <= 2.9 + 0.03
    assert min(crop_ratios) < 1.5 and max(crop_ratios) > 2.6  # the whole range is used
    assert min(ref_ratios) >= 1.1 - 0.03 and max(ref_ratios) <= 1.4 + 0.03
    assert min(ref_ratios) < 1.15 and max(ref_ratios) > 1.35


def test_anydoor_reference_on_white_and_collage_layout():
    t = anydoor.make_transform(augment=False)
    ex = t(_rect_pair(np.random.default_rng(3)), np.random.default_rng(3))
    ref = ex["reference"]
    obj = np.all(np.abs(ref - (OBJ / 127.5 - 1)) < 0.02, -1)
    white = np.all(ref == 1.0, -1)
    assert obj.mean() > 0.3 and white.mean() > 0.2 and (obj | white).mean() > 0.97
    # A flat object has no high frequencies: the box interior of the collage is black, outside it the
    # collage is the target crop.
    box = ex["collage"][..., 3] == 1
    margin = 512 // int(ex["sizes"][2]) + 2  # bilinear upsampling spreads a pixel over ~512/H2 outputs
    square = np.ones((3, 3), bool)
    inner = ndimage.binary_erosion(box, square, iterations=margin)
    outer = ~ndimage.binary_dilation(box, square, iterations=margin)
    assert inner.sum() > 1000
    assert (ex["collage"][..., :3][inner] == -1.0).all()
    np.testing.assert_array_equal(ex["collage"][..., :3][outer], ex["target"][outer])
    # The target crop shows the object inside the box.
    tobj = np.all(np.abs(ex["target"] - (OBJ / 127.5 - 1)) < 0.02, -1)
    assert tobj.sum() > 0 and not (tobj & outer).any()


def test_anydoor_hf_map_carries_texture_into_box():
    t = anydoor.make_transform(augment=False)
    ex = t(_rect_pair(np.random.default_rng(4), flat=False), np.random.default_rng(4))
    inner = ndimage.binary_erosion(ex["collage"][..., 3] == 1, iterations=3)
    assert (ex["collage"][..., :3][inner] > -1.0).mean() > 0.2


def test_anydoor_shape_mask_is_perturbed_superset_of_object():
    t = anydoor.make_transform(box_mask_prob=0.0)
    ex_count = 0
    for seed in range(6):
        ex = t(_rect_pair(np.random.default_rng(seed)), np.random.default_rng(seed))
        m = ex["collage"][..., 3]
        tobj = np.all(np.abs(ex["target"] - (OBJ / 127.5 - 1)) < 0.02, -1)
        tobj = ndimage.binary_erosion(tobj, iterations=1)  # resize blends one pixel at the border
        assert (m[tobj] == 1).all()
        ex_count += 1
        assert (m == 1).sum() >= tobj.sum()
    assert ex_count == 6


def test_anydoor_box_probability():
    """The mask channel is exactly a rectangle with p=0.3 (the perturbed mask of a rectangle is blobby).

    1200 draws at a small output size (the rule does not depend on it): binomial sd 0.0132, so the
    band 0.3 +- 4 sd = [0.247, 0.353] (a p of 0.25 or 0.35 would fall outside about half the time).
    """
    t = anydoor.make_transform(size=64, ref_size=32)
    rects = 0
    n = 1200
    for seed in range(n):
        ex = t(_rect_pair(np.random.default_rng(seed), 120, 160, (48, 72, 68, 92)), np.random.default_rng(seed))
        m = ex["collage"][..., 3] == 1
        h, w = _extent(m)
        rects += int(m.sum() == h * w)
    sd = (0.3 * 0.7 / n) ** 0.5
    assert abs(rects / n - 0.3) <= 4 * sd, rects / n


def test_anydoor_filters_raise_record_error():
    t = anydoor.make_transform()
    rng = np.random.default_rng(0)
    tiny = _rect_pair(rng, box=(10, 14, 10, 14))
    with pytest.raises(RecordError, match="mask covers"):
        t(tiny, rng)
    two = _rect_pair(rng)
    two["reference_mask"][20:80, 20:80] = 1
    with pytest.raises(RecordError, match="one piece"):
        t(two, rng)
    big = _rect_pair(rng, 300, 400, (10, 290, 150, 250))  # 0.93 of the height after 1.1x
    with pytest.raises(RecordError, match="target box"):
        t(big, rng)
    thin = _rect_pair(rng, 300, 400, (100, 110, 50, 390))  # short side under 10% of the image
    with pytest.raises(RecordError, match="under 0.1"):
        t(thin, rng)
    assert anydoor.make_transform(region_rule="both")(thin, rng)["target"].shape == (512, 512, 3)
    bad = _rect_pair(rng)
    bad["target_mask"] = bad["target_mask"].astype(bool)
    with pytest.raises(RecordError, match="'target_mask' must be uint8"):
        t(bad, rng)
    bad = _rect_pair(rng)
    del bad["dynamic"]
    with pytest.raises(RecordError, match="missing field 'dynamic'"):
        t(bad, rng)
    bad = _rect_pair(rng)
    bad["dynamic"] = "video"
    with pytest.raises(RecordError, match="'dynamic'"):
        t(bad, rng)


def test_anydoor_dynamic_label_and_determinism():
    t = anydoor.make_transform()
    rec = _rect_pair(np.random.default_rng(1), flat=False)
    a, b = t(rec, np.random.default_rng(7)), t(rec, np.random.default_rng(7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = t(rec, np.random.default_rng(8))
    assert any(not np.array_equal(a[k], c[k]) for k in ("reference", "target", "collage"))
    for value, want in ((True, 1), (False, 0), (2, 2)):
        assert int(t(dict(rec, dynamic=value), np.random.default_rng(0))["dynamic"]) == want


# ------------------------------------------------------------------------------------------------
# AnyScene


def _instances(rng, h=96, w=128, n=4, captions=("a cat on a mat", "two objects")):
    """Disjoint rectangular instances on noise; instance i is filled with grey level 60 + 40 i."""
    img = _background(rng, h, w)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        y0, x0 = int(rng.integers(0, h - h // 3)), (w // n) * i
        masks[i, y0 : y0 + h // 3, x0 : x0 + w // n - 2] = 1
    return {
        "image": img,
        "masks": masks,
        "labels": [f"thing{i}" for i in range(n)],
        "captions": list(captions),
        "source": "mem://instances",
    }


def test_anyscene_shapes_union_and_jitter_only_on_foreground():
    from input_pipeline import anyscene

    t = anyscene.make_transform(size=96, jitter_prob=1.0, max_objects=3)
    counts = set()
    jittered = 0
    for seed in range(20):
        rec = _instances(np.random.default_rng(seed))
        ex = t(rec, np.random.default_rng(seed))
        assert ex["image"].shape == ex["foreground"].shape == (96, 96, 3)
        assert ex["mask"].shape == (96, 96, 1) and ex["mask"].dtype == np.float32
        assert set(np.unique(ex["mask"])) <= {0.0, 1.0}
        assert ex["caption"] in rec["captions"]
        for k in ("image", "foreground"):
            assert ex[k].dtype == np.float32 and -1 <= ex[k].min() and ex[k].max() <= 1
        # The output view is a horizontal crop of the 96 x 128 record (shorter side already 96):
        # find the offset from the target image, then check the union against the OR of instances.
        img = rec["image"].astype(np.float32) / 127.5 - 1
        ox = [o for o in range(33) if np.array_equal(img[:, o : o + 96], ex["image"])]
        assert len(ox) == 1
        inst = rec["masks"][:, :, ox[0] : ox[0] + 96].astype(bool)
        m = ex["mask"][..., 0] > 0
        chosen = [i for i in range(len(inst)) if (m & inst[i]).any()]
        for i in chosen:  # every touched instance is wholly inside the union
            assert (m[inst[i]]).all()
        np.testing.assert_array_equal(m, np.any(inst[chosen], axis=0))
        counts.add(len(chosen))
        # Colour jitter acts on the foreground only; the canvas is black (-1) elsewhere.
        assert (ex["foreground"][~m] == -1.0).all()
        jittered += int(not np.array_equal(ex["foreground"][m], ex["image"][m]))
    assert counts == {1, 2, 3}
    assert jittered >= 18


def test_anyscene_no_jitter_copies_objects_and_canvas_value():
    from input_pipeline import anyscene

    t = anyscene.make_transform(size=64, jitter_prob=0.0, canvas_value=255)
    rec = _instances(np.random.default_rng(5), 64, 64)
    ex = t(rec, np.random.default_rng(0))
    m = ex["mask"][..., 0] > 0
    np.testing.assert_array_equal(ex["foreground"][m], ex["image"][m])
    assert (ex["foreground"][~m] == 1.0).all()


def test_anyscene_resizes_shorter_side_and_keeps_alignment():
    from input_pipeline import anyscene

    rng = np.random.default_rng(2)
    img = np.zeros((200, 300, 3), np.uint8)
    masks = np.zeros((1, 200, 300), np.uint8)
    masks[0, 50:150, 100:200] = 1
    img[masks[0] > 0] = OBJ
    ex = anyscene.make_transform(size=100, jitter_prob=0.0)({"image": img, "masks": masks, "source": "m"}, rng)
    m = ex["mask"][..., 0] > 0
    assert m.sum() == pytest.approx(50 * 50, rel=0.05)  # 100 x 100 object at half scale
    inside = ndimage.binary_erosion(m, iterations=1)
    assert np.all(np.abs(ex["image"][inside] - (OBJ / 127.5 - 1)) < 1e-6)
    assert ex["caption"] == ""


def test_anyscene_benchmark_composite_is_deterministic():
    from input_pipeline import anyscene

    rec = _instances(np.random.default_rng(9), captions=())
    a = anyscene.benchmark_composite(rec, 3, seed=0, size=96)
    b = anyscene.benchmark_composite(rec, 3, seed=0, size=96)
    for k in ("image", "foreground", "mask"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["caption"] == b["caption"] and a["caption"].startswith("a photo of thing")
    # Centred crop of the 96 x 128 image, no jitter: objects copied verbatim.
    np.testing.assert_array_equal(a["image"], rec["image"][:, 16:112].astype(np.float32) / 127.5 - 1)
    m = a["mask"][..., 0] > 0
    np.testing.assert_array_equal(a["foreground"][m], a["image"][m])
    others = [anyscene.benchmark_composite(rec, i, seed=0, size=96)["mask"] for i in range(8)]
    assert any(not np.array_equal(a["mask"], o) for o in others)


def test_anyscene_errors():
    from input_pipeline import anyscene

    t = anyscene.make_transform(size=64)
    rec = _instances(np.random.default_rng(0), 64, 64)
    rec["masks"][:] = 0
    with pytest.raises(RecordError, match="mem://instances: no instance"):
        t(rec, np.random.default_rng(0))
    rec = _instances(np.random.default_rng(0), 64, 64)
    rec["masks"] = rec["masks"][:, :10]
    with pytest.raises(RecordError, match="'masks' must be"):
        t(rec, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------
# DreamCom


def _reference(rng, h, w, box):
    img = _background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    # An ellipse inside the box: the transform must use the box, not the object's outline.
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    img[mask > 0] = OBJ
    return {"image": img, "mask": mask, "source": "mem://ref"}


def test_dreamcom_outputs_and_box_survival_over_seeds():
    from input_pipeline import dreamcom

    t = dreamcom.make_transform(class_noun="dog", size=64, relax_step=0.0, crop_fallback="shrink")
    rng = np.random.default_rng(0)
    zoomed = 0
    for seed in range(60):
        h, w = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        rec = _reference(rng, h, w, (y0, y0 + bh, x0, x0 + bw))
        ex = t(rec, np.random.default_rng(seed))
        assert ex["prompt"] == "a photo of sks dog"
        for k, c in (("image", 3), ("masked_image", 3), ("mask", 1), ("loss_mask", 1)):
            assert ex[k].shape == (64, 64, c) and ex[k].dtype == np.float32
            assert -1 <= ex[k].min() and ex[k].max() <= 1
        m = ex["mask"][..., 0]
        assert set(np.unique(m)) <= {0.0, 1.0} and set(np.unique(ex["loss_mask"])) <= {0.0, 1.0}
        # Survival: the box pixels after the shorter-side resize, computed here from the record.
        scale = 64 / min(h, w)
        assert m.sum() > 0.8 * bh * bw * scale**2 * 0.95  # 5% slack for nearest-resize rounding
        # The mask is the (clipped) box, a filled rectangle, not the ellipse.
        ys, xs = np.nonzero(m)
        assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        # Masked image: zero in the box, the image elsewhere.
        assert (ex["masked_image"][m > 0] == 0).all()
        np.testing.assert_array_equal(ex["masked_image"][m == 0], ex["image"][m == 0])
        # Padding (zoom-out): excluded from the loss, black, never in the box.
        pad = ex["loss_mask"][..., 0] == 0
        assert not (pad & (m > 0)).any()
        if pad.any():
            zoomed += 1
            # Bilinear sampling blends the padding's inner ring with the image; beyond it, pure fill.
            deep = ndimage.binary_erosion(pad, np.ones((3, 3)), border_value=1)
            assert (ex["image"][deep] == -1.0).all()
    # p=0.6 of a zoom, half of them zoom-outs that pad; but the survival rule counts box pixels, so a
    # zoom-out below sqrt(0.8) = 0.894 always fails and most padded draws are redrawn.
    assert 2 <= zoomed <= 25


def test_dreamcom_fill_colour_determinism_and_errors():
    from input_pipeline import dreamcom

    rec = _reference(np.random.default_rng(1), 80, 120, (20, 60, 40, 80))
    t = dreamcom.make_transform(class_noun="cat", token="zwx", size=64, zoom_prob=1.0, zoom_range=(0.8, 0.85), fill=255)
    ex = t(rec, np.random.default_rng(0))
    pad = ex["loss_mask"][..., 0] == 0
    deep = ndimage.binary_erosion(pad, np.ones((3, 3)), border_value=1)
    assert deep.mean() > 0.2 and (ex["image"][deep] == 1.0).all()
    assert ex["prompt"] == "a photo of zwx cat"
    a, b = t(rec, np.random.default_rng(3)), t(rec, np.random.default_rng(3))
    for k in ("image", "mask", "loss_mask"):
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(RecordError, match="'mask' is empty"):
        t(dict(rec, mask=np.zeros((80, 120), np.uint8)), np.random.default_rng(0))
    with pytest.raises(RecordError, match="'image' must be uint8"):
        t(dict(rec, image=rec["image"].astype(np.float32)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="class_noun"):
        dreamcom.make_transform(class_noun="")


def _pil(image, hw, resample):
    """The released resize: PIL's (torchvision's Resize on PIL images; test.py's LANCZOS / NEAREST)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), resample))


@pytest.mark.parametrize("shape, box", [((120, 320), (20, 100, 60, 110)),    # tall box, landscape photo
                                        ((300, 100), (110, 150, 10, 90)),    # wide box, portrait photo
                                        ((100, 250), (30, 70, 40, 150))])    # wide box, often cut by the crop
def test_dreamcom_crop_rule_on_non_square_boxes(shape, box):
    """No zoom, fixed 80% rule: every example is a 64 x 64 window of the photo resized by PIL (shorter
    side to 64, as torchvision's Resize), the mask is the box inside that window, and the window keeps
    more than 80% of the box's pixels; the box's extent across the photo's long side is never cut."""
    from PIL import Image

    from input_pipeline import dreamcom

    rec = _reference(np.random.default_rng(4), *shape, box)
    h, w = shape
    hw = (64, int(64 * w / h)) if h <= w else (int(64 * h / w), 64)
    photo = _pil(rec["image"], hw, Image.BILINEAR).astype(np.float32) / 127.5 - 1
    boxm = np.zeros(shape, np.uint8)
    boxm[box[0]:box[1], box[2]:box[3]] = 255
    boxm = _pil(boxm, hw, Image.NEAREST) > 0
    t = dreamcom.make_transform(class_noun="dog", size=64, zoom_prob=0.0, relax_step=0.0, crop_fallback="shrink")
    offsets = set()
    for seed in range(12):
        ex = t(rec, np.random.default_rng(seed))
        assert ex["crop_fallback"] == 0.0
        windows = [(oy, ox) for oy in range(hw[0] - 63) for ox in range(hw[1] - 63)
                   if np.array_equal(ex["image"], photo[oy:oy + 64, ox:ox + 64])]
        assert len(windows) == 1, "the example is not one window of the PIL-resized photo"
        oy, ox = windows[0]
        offsets.add((oy, ox))
        np.testing.assert_array_equal(ex["mask"][..., 0], boxm[oy:oy + 64, ox:ox + 64])
        assert ex["mask"].sum() > 0.8 * boxm.sum()
        ys, xs = np.nonzero(boxm)
        long_axis = ys if h > w else xs
        inside = np.nonzero(ex["mask"][..., 0])[0 if h <= w else 1]
        short_extent = (xs if h > w else ys)
        assert inside.max() - inside.min() == short_extent.max() - short_extent.min()  # never cut across
        assert long_axis.size > 0
    assert len(offsets) > 1  # the window is drawn, not fixed


@pytest.mark.parametrize("fallback", ["shrink", "relax"])
def test_dreamcom_object_wider_than_any_crop_is_kept_and_reported(fallback, caplog):
    """A box wider than any crop can keep 80% of (the released redraw would never pass): never dropped.
    "shrink" (the paper's rule) shrinks the photo until the whole box fits one crop; "relax" (the released
    loop) keeps lowering the threshold by 0.02 every 20 draws until a draw passes. Either way the example
    says so (`crop_fallback` = 1, which the method logs as a training metric) and a warning names the file."""
    import logging

    from input_pipeline import dreamcom

    wide = _reference(np.random.default_rng(2), 64, 256, (10, 54, 5, 250))  # box 44 x 245 in a 64 x 256 photo
    t = dreamcom.make_transform(class_noun="bus", size=64, max_draws=30, crop_fallback=fallback)
    with caplog.at_level(logging.WARNING, logger="input_pipeline.dreamcom"):
        ex = t(wide, np.random.default_rng(0))
    assert ex["crop_fallback"] == 1.0
    assert any("mem://ref" in r.getMessage() and fallback in r.getMessage() for r in caplog.records)
    m = ex["mask"][..., 0]
    ys, xs = np.nonzero(m)
    assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle
    if fallback == "shrink":
        # the whole box, scaled by 64 / 245 on both axes: 11-12 x 64 pixels, aspect ratio kept
        assert abs((xs.max() - xs.min() + 1) - 64) <= 1 and abs((ys.max() - ys.min() + 1) - 44 * 64 / 245) <= 1
        pad = ex["loss_mask"][..., 0] == 0  # the shrunk photo is 16 rows high: the rest is padding
        assert 0.6 < pad.mean() < 0.8 and not (pad & (m > 0)).any()
    else:
        assert 64 * 44 * 0.2 < m.sum() < 0.8 * 245 * 44  # less than 80% of the box, but part of it
    assert (ex["masked_image"][m > 0] == 0).all()
    with pytest.raises(ValueError, match="crop_fallback"):
        dreamcom.make_transform(class_noun="bus", crop_fallback="skip")
    with pytest.raises(ValueError, match="relax_step"):
        dreamcom.make_transform(class_noun="bus", crop_fallback="relax", relax_step=0.0)


# ------------------------------------------------------------------------------------------------
# Through the grain pipeline: batching (str fields included) and skipping of filtered records


def test_transforms_batch_through_grain_pipeline():
    from input_pipeline import anyscene, dreamcom, pipeline

    rng = np.random.default_rng(0)
    scenes = [_instances(rng, 64, 80) for _ in range(4)]
    scenes[1]["masks"][:] = 0  # no eligible instance: skipped and counted
    it = pipeline.make_iterator(scenes, anyscene.make_transform(size=64), per_process_batch=2, seed=0)
    batch = next(it)
    assert batch["image"].shape == (2, 64, 64, 3) and batch["mask"].shape == (2, 64, 64, 1)
    assert len(batch["caption"]) == 2 and all(str(c) in scenes[0]["captions"] for c in batch["caption"])
    next(it)
    assert it.skipped.count >= 1

    refs = [_reference(rng, 90, 70, (20, 60, 15, 55)) for _ in range(3)]
    it = pipeline.make_iterator(refs, dreamcom.make_transform(class_noun="dog", size=64), per_process_batch=3, seed=1)
    batch = next(it)
    assert batch["masked_image"].shape == (3, 64, 64, 3) and batch["loss_mask"].shape == (3, 64, 64, 1)
    assert [str(p) for p in batch["prompt"]] == ["a photo of sks dog"] * 3

    pairs = [_rect_pair(rng, flat=False, dynamic=bool(i % 2)) for i in range(2)]
    it = pipeline.make_iterator(pairs, anydoor.make_transform(size=128, ref_size=56), per_process_batch=2, seed=2)
    batch = next(it)
    assert batch["collage"].shape == (2, 128, 128, 4) and batch["reference"].shape == (2, 56, 56, 3)
    assert sorted(batch["dynamic"].tolist()) == [0, 1]


def test_anydoor_paste_back_round_trip():
    """Pasting the example's own target square back reproduces the target image (up to resampling)."""
    rng = np.random.default_rng(6)
    rec = _rect_pair(rng, 200, 300, (60, 140, 20, 100), flat=False)  # near the border: the crop is clipped
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
    bg = _background(rng, 200, 300)
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
    want = _pil(photo, (512, 512), Image.LANCZOS)
    np.testing.assert_array_equal(ex["image"], want.astype(np.float32) / 127.5 - 1)
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[80:800, 100:900] = 255
    np.testing.assert_array_equal(ex["mask"][..., 0], _pil(mask, (512, 512), Image.NEAREST) > 0)
    opencv = cv2.resize(photo, (512, 512), interpolation=cv2.INTER_LANCZOS4).astype(int)
    diff = np.abs(opencv - want.astype(int))
    print(f"OpenCV Lanczos-4 vs PIL Lanczos on 872x1000 -> 512: mean {diff.mean():.2f}, max {diff.max()} grey levels")
    assert diff.mean() > 1.0  # a difference worth matching
    back = dreamcom.paste_region(want, np.zeros_like(photo), ex["region"])
    np.testing.assert_array_equal(back, _pil(want, photo.shape[:2], Image.LANCZOS))


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
