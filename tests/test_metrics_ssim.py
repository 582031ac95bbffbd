"""SSIM against scikit-image with Wang et al. settings."""

import numpy as np
import pytest

from jcompose.metrics import ssim


def _skimage_ssim(a, b, data_range):
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=data_range, channel_axis=-1)


def test_matches_skimage_on_a_photo():
    data = pytest.importorskip("skimage.data")
    photo = data.astronaut()[100:196, 150:230].astype(np.float64)  # 96 x 80 crop, [0, 255]
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 20, photo.shape), 0, 255)
    ours = float(ssim.ssim(photo[None], noisy[None], data_range=255.0)[0])
    ref = _skimage_ssim(photo, noisy, 255.0)
    assert 0.2 < ref < 0.95
    assert abs(ours - ref) < 2e-5


def test_batch_in_minus_one_one(rng):
    a = rng.uniform(-1, 1, (3, 24, 31, 3))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    b[2] = a[2]
    ours = np.asarray(ssim.ssim(a, b, data_range=2.0))
    ref = [_skimage_ssim(a[i], b[i], 2.0) for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert abs(ours[2] - 1.0) < 1e-6


def test_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        ssim.ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 17, 3)), data_range=255.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim.ssim(np.zeros((1, 8, 16, 3)), np.zeros((1, 8, 16, 3)), data_range=255.0)


def _shifted_pairs():
    """Real photos (scikit-image's samples, one 240 x 320 crop each) and their brightness / colour shifts:
    +12 brightness (clipped), and a grey version against its sepia toning."""
    data = pytest.importorskip("skimage.data")
    pairs = {}
    for name in ("chelsea", "coffee"):
        photo = getattr(data, name)()[:240, :320]
        pairs[f"{name}_bright"] = (photo, np.clip(photo.astype(np.int16) + 12, 0, 255).astype(np.uint8))
        grey = np.repeat(np.round(photo @ np.array([0.299, 0.587, 0.114]))[..., None], 3, -1)
        sepia = grey @ np.array([[0.393, 0.349, 0.272], [0.769, 0.686, 0.534], [0.189, 0.168, 0.131]])
        pairs[f"{name}_sepia"] = (grey.astype(np.uint8), np.clip(np.round(sepia), 0, 255).astype(np.uint8))
    return pairs


def _skimage_uint8(a, b):
    """scikit-image on the 8-bit files' values (data_range 255, Wang settings)."""
    return _skimage_ssim(a, b, 255)


def test_pixel_values_match_skimage_on_shifted_photos():
    """SSIM is not offset-invariant: on pixel values it equals scikit-image; on [-1, 1] it does not."""
    pairs = _shifted_pairs()
    a = np.stack([p[0] for p in pairs.values()]).astype(np.float32)
    b = np.stack([p[1] for p in pairs.values()]).astype(np.float32)
    ours = np.asarray(ssim.ssim(a, b, data_range=ssim.PIXEL_RANGE))
    ref = np.array([_skimage_uint8(x, y) for x, y in pairs.values()])
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert ref.min() > 0.85  # the shifts keep the structure: what a reference tool reports
    signed = np.asarray(ssim.ssim(a / 127.5 - 1, b / 127.5 - 1, data_range=2.0))
    assert np.abs(signed - ref).max() > 0.2  # the old convention departs from it (chelsea +12: 0.708 vs 0.990)


def test_evaluate_scores_photo_files_as_skimage_does(tmp_path):
    """`evaluate` on PNG files of the shifted photos, at native size: per image, scikit-image's value."""
    from PIL import Image

    from configs.eval.base import base_config
    from jcompose import evaluate

    pairs = _shifted_pairs()
    for folder, k in (("gen", 1), ("ref", 0)):
        (tmp_path / folder).mkdir()
        for name, pair in pairs.items():
            Image.fromarray(pair[k]).save(tmp_path / folder / f"{name}.png")
    c = base_config()
    c.metrics, c.pair_size, c.batch_size, c.workers = ("ssim",), 0, 4, 2
    c.generated, c.reference, c.out = str(tmp_path / "gen"), str(tmp_path / "ref"), str(tmp_path / "out")
    scores = evaluate.evaluate(c, progress=False)
    got = dict(zip(scores["per_image"]["file"], scores["per_image"]["ssim"], strict=True))
    for name, (ref, gen) in pairs.items():
        assert got[f"{name}.png"] == pytest.approx(_skimage_uint8(gen, ref), abs=2e-5), name
    assert "data_range 255" in scores["ssim"]["values"]
