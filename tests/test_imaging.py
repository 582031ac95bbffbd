"""jcompose.imaging against independent computations (scipy.ndimage, plain numpy formulas)."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from jcompose import imaging


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.uint8)


def _hf_reference(image, mask, thresh=50, work=256):
    """AnyDoor's HF map written with scipy: Sobel (reflect-101 border = scipy 'mirror'), binary erosion."""
    h, w = image.shape[:2]
    img = cv2.resize(image, (work, work)).astype(np.float64)
    m = cv2.resize(mask.astype(np.float32), (work, work)) > 0.5
    m = ndimage.binary_erosion(m, structure=np.ones((5, 5), bool), iterations=2, border_value=1)
    gx = np.stack([ndimage.sobel(img[..., c], axis=1, mode="mirror") for c in range(3)], -1)
    gy = np.stack([ndimage.sobel(img[..., c], axis=0, mode="mirror") for c in range(3)], -1)
    gx, gy = np.minimum(np.abs(gx), 255), np.minimum(np.abs(gy), 255)
    edge = np.rint(0.5 * gx + 0.5 * gy).max(-1) * m  # OpenCV rounds half to even, as np.rint
    edge[edge < thresh] = 0
    hf = np.floor(edge[..., None] / 255.0 * img).astype(np.uint8)
    return cv2.resize(hf, (w, h))


def test_sobel_hf_map_matches_scipy_reference():
    rng = np.random.default_rng(0)
    # Smooth random texture (blurred noise) so edges span weak and strong values around the threshold.
    image = cv2.GaussianBlur(rng.integers(0, 256, (180, 200, 3), dtype=np.uint8), (0, 0), 1.5)
    mask = _disc((180, 200), (90, 100), 70).astype(np.float32)
    got = imaging.sobel_hf_map(image, mask)
    want = _hf_reference(image, mask)
    assert got.shape == (180, 200, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    # float32 vs float64 in the final weighting may floor one level apart, and the final resize spreads it.
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01
    assert (want > 0).mean() > 0.1  # the map is not trivially empty
    # Outside the (eroded) mask there are no edges at all.
    far = _disc((180, 200), (90, 100), 80) == 0
    assert got[far].max() == 0


def test_sobel_hf_map_flat_object_is_black():
    image = np.full((64, 64, 3), 120, np.uint8)
    assert imaging.sobel_hf_map(image, np.ones((64, 64), np.float32)).max() == 0


def test_expand_box_ratio_and_clip():
    box = (100, 140, 50, 110)  # 40 x 60
    y0, y1, x0, x1 = imaging.expand_box(box, 1.5, (1000, 1000))
    assert abs((y1 - y0) - 60) <= 1 and abs((x1 - x0) - 90) <= 1
    assert abs((y0 + y1) / 2 - 120) <= 1 and abs((x0 + x1) / 2 - 80) <= 1
    assert imaging.expand_box(box, 10.0, (200, 150)) == (0, 200, 0, 150)


def test_square_box_is_square_inside_image():
    y0, y1, x0, x1 = imaging.square_box((100, 140, 50, 110), (1000, 1000))
    assert y1 - y0 == x1 - x0 == 60
    y0, y1, x0, x1 = imaging.square_box((0, 10, 0, 100), (50, 200))
    assert (y0, y1) == (0, 50) and (x0, x1) == (0, 100)


def test_bbox_pad_and_crop_helpers():
    mask = np.zeros((30, 40), np.uint8)
    mask[5:12, 7:31] = 1
    assert imaging.bbox_from_mask(mask) == (5, 12, 7, 31)
    assert imaging.bbox_from_mask(np.zeros((4, 4), np.uint8)) is None
    img = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    sq, (top, left) = imaging.pad_to_square(img, 7)
    assert sq.shape == (10, 10, 3) and (top, left) == (2, 0)
    np.testing.assert_array_equal(sq[2:8], img)
    assert (sq[:2] == 7).all() and (sq[8:] == 7).all()
    big = imaging.pad_around(img, 1.5, 255)
    assert big.shape == (9, 15, 3)
    np.testing.assert_array_equal(big[1:7, 2:12], img)
    assert imaging.box_in_box((10, 20, 30, 40), (5, 50, 25, 60)) == (5, 15, 5, 15)


def test_mask_concentration_and_largest_component():
    one = _disc((100, 100), (50, 50), 20)
    assert imaging.mask_concentration(one) == pytest.approx(1.0)
    two = np.maximum(_disc((100, 100), (25, 25), 12), _disc((100, 100), (70, 70), 12))
    assert imaging.mask_concentration(two) == pytest.approx(0.5, abs=1e-6)
    three = np.maximum(two, _disc((100, 100), (25, 75), 5))
    largest = imaging.largest_component(three)
    labels, n = ndimage.label(three, structure=np.ones((3, 3)))
    sizes = ndimage.sum(three, labels, range(1, n + 1))
    np.testing.assert_array_equal(largest, (labels == 1 + np.argmax(sizes)).astype(np.uint8))


def test_perturb_mask_is_connected_superset():
    gt = _disc((96, 96), (48, 40), 18)
    ious = []
    for seed in range(8):
        p = imaging.perturb_mask(gt, np.random.default_rng(seed))
        assert p.dtype == np.uint8 and set(np.unique(p)) <= {0, 1}
        assert (p[gt > 0] == 1).all()  # superset of the object
        assert ndimage.label(p, structure=np.ones((3, 3)))[1] == 1
        ious.append((gt & p).sum() / (gt | p).sum())
    assert min(ious) < 0.95  # it does perturb


def test_edge_band_matches_scipy():
    m = _disc((60, 60), (30, 30), 15)
    want = ndimage.binary_dilation(m, np.ones((5, 5))) & ~ndimage.binary_erosion(m, np.ones((5, 5)))
    np.testing.assert_array_equal(imaging.edge_band(m, 5), want.astype(np.uint8))


def test_colour_ops_match_formulas():
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    f = img.astype(np.float64)
    np.testing.assert_array_equal(
        imaging.brightness_contrast(img, 1.15, -0.1), np.clip(np.rint(f * 1.15 - 25.5), 0, 255).astype(np.uint8)
    )
    np.testing.assert_array_equal(imaging.gamma(img, 0.8), np.rint(255 * (f / 255) ** 0.8).astype(np.uint8))
    np.testing.assert_array_equal(
        imaging.rgb_shift(img, (20, -15, 3)), np.clip(f + np.array([20, -15, 3]), 0, 255).astype(np.uint8)
    )


def test_zoom_out_fills_border_and_keeps_centre():
    img = np.full((40, 40, 3), 200, np.uint8)
    out = imaging.zoom(img, 0.5, fill=0)
    assert (out[:9] == 0).all() and (out[:, 31:] == 0).all()
    assert (out[12:28, 12:28] == 200).all()
    np.testing.assert_array_equal(imaging.zoom(img, 1.0, fill=0), img)
    lab = imaging.zoom(np.ones((40, 40), np.uint8), 0.5, fill=2, nearest=True)
    assert set(np.unique(lab)) == {1, 2}


def test_resize_shorter_side():
    assert imaging.resize_shorter_side(np.zeros((300, 450, 3), np.uint8), 100).shape == (100, 150, 3)
    assert imaging.resize_shorter_side(np.zeros((450, 301), np.uint8), 100, nearest=True).shape == (149, 100)
