"""AnyDoor's training transform on records drawn in memory.

Facts are measured from the outputs (box sizes, colours, mask values) and compared with what the
released preprocessing or the paper prescribes, not with the transforms' own helpers.
"""

import numpy as np
import pytest
from scipy import ndimage
from transform_records import OBJ, extent, rect_pair

from input_pipeline import anydoor
from input_pipeline.records import RecordError


def test_anydoor_shapes_ranges_over_random_records():
    t = anydoor.make_transform()
    rng = np.random.default_rng(0)
    ok = 0
    for i in range(30):
        h, w = int(rng.integers(120, 320)), int(rng.integers(120, 320))
        bh, bw = int(rng.integers(h // 8, h // 2)), int(rng.integers(w // 8, w // 2))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        rec = rect_pair(rng, h, w, (y0, y0 + bh, x0, x0 + bw), flat=bool(i % 2), dynamic=bool(i % 3 == 0))
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
        rec = rect_pair(np.random.default_rng(seed), 400, 400, (175, 225, 175, 225))  # 50 px square object
        ex = t(rec, np.random.default_rng(seed))
        box = ex["collage"][..., 3] == 1  # augment=False: the mask channel is the target box
        side_out = np.mean(extent(box))
        h2 = ex["sizes"][2]
        box_side = side_out * h2 / 512  # back to target-image pixels
        assert box_side / 50 == pytest.approx(1.1, abs=0.03)
        crop_ratios.append(512 / side_out)
        # Reference: the non-white object inside the 224 square.
        obj = (ex["reference"] < 0.95).any(-1)
        ref_ratios.append(224 / np.mean(extent(obj)))
        # Centred object in a big image: no clipping; only box2squre's odd-side pixel leaves padding.
        assert (ex["collage"][..., 3] == -1).mean() <= 2 / h2
    assert min(crop_ratios) >= 1.3 - 0.03 and max(crop_ratios) <= 2.9 + 0.03
    assert min(crop_ratios) < 1.5 and max(crop_ratios) > 2.6  # the whole range is used
    assert min(ref_ratios) >= 1.1 - 0.03 and max(ref_ratios) <= 1.4 + 0.03
    assert min(ref_ratios) < 1.15 and max(ref_ratios) > 1.35


def test_anydoor_reference_on_white_and_collage_layout():
    t = anydoor.make_transform(augment=False)
    ex = t(rect_pair(np.random.default_rng(3)), np.random.default_rng(3))
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
    ex = t(rect_pair(np.random.default_rng(4), flat=False), np.random.default_rng(4))
    inner = ndimage.binary_erosion(ex["collage"][..., 3] == 1, iterations=3)
    assert (ex["collage"][..., :3][inner] > -1.0).mean() > 0.2


def test_anydoor_shape_mask_is_perturbed_superset_of_object():
    t = anydoor.make_transform(box_mask_prob=0.0)
    ex_count = 0
    for seed in range(6):
        ex = t(rect_pair(np.random.default_rng(seed)), np.random.default_rng(seed))
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
        ex = t(rect_pair(np.random.default_rng(seed), 120, 160, (48, 72, 68, 92)), np.random.default_rng(seed))
        m = ex["collage"][..., 3] == 1
        h, w = extent(m)
        rects += int(m.sum() == h * w)
    sd = (0.3 * 0.7 / n) ** 0.5
    assert abs(rects / n - 0.3) <= 4 * sd, rects / n


def test_anydoor_filters_raise_record_error():
    t = anydoor.make_transform()
    rng = np.random.default_rng(0)
    tiny = rect_pair(rng, box=(10, 14, 10, 14))
    with pytest.raises(RecordError, match="mask covers"):
        t(tiny, rng)
    two = rect_pair(rng)
    two["reference_mask"][20:80, 20:80] = 1
    with pytest.raises(RecordError, match="one piece"):
        t(two, rng)
    big = rect_pair(rng, 300, 400, (10, 290, 150, 250))  # 0.93 of the height after 1.1x
    with pytest.raises(RecordError, match="target box"):
        t(big, rng)
    thin = rect_pair(rng, 300, 400, (100, 110, 50, 390))  # short side under 10% of the image
    with pytest.raises(RecordError, match="under 0.1"):
        t(thin, rng)
    assert anydoor.make_transform(region_rule="both")(thin, rng)["target"].shape == (512, 512, 3)
    bad = rect_pair(rng)
    bad["target_mask"] = bad["target_mask"].astype(bool)
    with pytest.raises(RecordError, match="'target_mask' must be uint8"):
        t(bad, rng)
    bad = rect_pair(rng)
    del bad["dynamic"]
    with pytest.raises(RecordError, match="missing field 'dynamic'"):
        t(bad, rng)
    bad = rect_pair(rng)
    bad["dynamic"] = "video"
    with pytest.raises(RecordError, match="'dynamic'"):
        t(bad, rng)


def test_anydoor_dynamic_label_and_determinism():
    t = anydoor.make_transform()
    rec = rect_pair(np.random.default_rng(1), flat=False)
    a, b = t(rec, np.random.default_rng(7)), t(rec, np.random.default_rng(7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = t(rec, np.random.default_rng(8))
    assert any(not np.array_equal(a[k], c[k]) for k in ("reference", "target", "collage"))
    for value, want in ((True, 1), (False, 0), (2, 2)):
        assert int(t(dict(rec, dynamic=value), np.random.default_rng(0))["dynamic"]) == want
