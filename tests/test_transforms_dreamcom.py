"""DreamCom's training transform on records drawn in memory (the crop rule against the released
PIL resizes too).

Facts are measured from the outputs (box sizes, colours, mask values) and compared with what the
released preprocessing or the paper prescribes, not with the transforms' own helpers.
"""

import numpy as np
import pytest
from scipy import ndimage
from transform_records import pil_resize, reference

from input_pipeline.records import RecordError


def test_dreamcom_outputs_and_box_survival_over_seeds():
    from input_pipeline import dreamcom

    t = dreamcom.make_transform(class_noun="dog", size=64, relax_step=0.0, crop_fallback="shrink")
    rng = np.random.default_rng(0)
    zoomed = 0
    for seed in range(60):
        h, w = int(rng.integers(64, 160)), int(rng.integers(64, 160))
        bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        rec = reference(rng, h, w, (y0, y0 + bh, x0, x0 + bw))
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

    rec = reference(np.random.default_rng(1), 80, 120, (20, 60, 40, 80))
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





@pytest.mark.parametrize("shape, box", [((120, 320), (20, 100, 60, 110)),    # tall box, landscape photo
                                        ((300, 100), (110, 150, 10, 90)),    # wide box, portrait photo
                                        ((100, 250), (30, 70, 40, 150))])    # wide box, often cut by the crop
def test_dreamcom_crop_rule_on_non_square_boxes(shape, box):
    """No zoom, fixed 80% rule: every example is a 64 x 64 window of the photo resized by PIL (shorter
    side to 64, as torchvision's Resize), the mask is the box inside that window, and the window keeps
    more than 80% of the box's pixels; the box's extent across the photo's long side is never cut."""
    from PIL import Image

    from input_pipeline import dreamcom

    rec = reference(np.random.default_rng(4), *shape, box)
    h, w = shape
    hw = (64, int(64 * w / h)) if h <= w else (int(64 * h / w), 64)
    photo = pil_resize(rec["image"], hw, Image.BILINEAR).astype(np.float32) / 127.5 - 1
    boxm = np.zeros(shape, np.uint8)
    boxm[box[0]:box[1], box[2]:box[3]] = 255
    boxm = pil_resize(boxm, hw, Image.NEAREST) > 0
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

    wide = reference(np.random.default_rng(2), 64, 256, (10, 54, 5, 250))  # box 44 x 245 in a 64 x 256 photo
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
