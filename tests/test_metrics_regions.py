"""Region-restricted scores on constructed images with known answers (images are pixel values in [0, 255])."""

import numpy as np
import pytest

from jcompose.metrics import lpips, regions, ssim
from jcompose.models import tiny


def _lpips():
    import jax

    module = lpips.LPIPS("alex", spatial=True)
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3)), np.zeros((1, 64, 64, 3)))
    params = tiny.random_params(abstract["params"], 0)
    return module, {k: (np.abs(v) if k.startswith("lin_") else v) for k, v in params.items()}


def _scene(rng, box, size=64):
    image = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    mask = np.zeros((size, size, 1), np.float32)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 1
    return image, mask


def test_background_scores_ignore_the_box_and_see_the_background(rng):
    module, params = _lpips()
    background, mask = _scene(rng, (16, 40, 20, 52))
    other_box = np.where(mask > 0, rng.uniform(0, 255, background.shape), background).astype(np.float32)
    changed_bg = np.where(mask > 0, background, np.clip(background + 38, 0, 255)).astype(np.float32)
    gen = np.stack([background, other_box, changed_bg])
    bg, m = np.stack([background] * 3), np.stack([mask] * 3)
    lp = np.asarray(regions.background_lpips(module, params, gen, bg, m))
    ss = np.asarray(regions.background_ssim(gen, bg, m))
    assert lp[0] == 0 and lp[1] == 0 and lp[2] > 1e-3  # only the background counts
    assert ss[0] == pytest.approx(1.0) and ss[1] == pytest.approx(1.0) and ss[2] < 0.99


def test_background_scores_average_outside_the_box_only(rng):
    """Hand computation: the maps' mean over pixels outside the box (LPIPS on [-1, 1], SSIM on the pixel
    values by scikit-image's map with data_range 255); a bigger box does not improve it."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    module, params = _lpips()
    background, small = _scene(rng, (24, 32, 24, 32))
    _, large = _scene(rng, (8, 56, 8, 56))
    gen = np.clip(background + rng.normal(0, 90, background.shape), 0, 255).astype(np.float32)
    for mask in (small, large):
        blank_g, blank_b = np.where(mask > 0, 127.5, gen), np.where(mask > 0, 127.5, background)
        full = np.asarray(module.apply({"params": params}, blank_g[None] / 127.5 - 1, blank_b[None] / 127.5 - 1))[0]
        keep = mask[..., 0] == 0
        got = float(regions.background_lpips(module, params, gen[None], background[None], mask[None])[0])
        assert got == pytest.approx(full[keep].mean(), rel=1e-5)
        _, ssim_map = skimage_metrics.structural_similarity(
            blank_g.astype(np.float64), blank_b.astype(np.float64), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=255, channel_axis=-1, full=True)
        got = float(regions.background_ssim(gen[None], background[None], mask[None])[0])
        assert got == pytest.approx(ssim_map[5:-5, 5:-5].mean(-1)[keep[5:-5, 5:-5]].mean(), rel=1e-5)
    # The whole-image mean of blanked images drifts towards a perfect score as the box grows; ours does not.
    scores = [float(regions.background_ssim(gen[None], background[None], m[None])[0]) for m in (small, large)]
    whole = [float(ssim.ssim(np.where(m > 0, 127.5, gen)[None], np.where(m > 0, 127.5, background)[None],
                             data_range=255.0)[0]) for m in (small, large)]
    assert whole[1] - whole[0] > 0.15 and abs(scores[1] - scores[0]) < 0.05, (whole, scores)


def test_reference_similarity_by_hand(rng):
    gen = rng.normal(size=(2, 8))
    refs = rng.normal(size=(2, 3, 8))
    valid = np.array([[True, True, True], [True, False, True]])
    got = regions.reference_similarity(gen, refs, valid)

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    want = [np.mean([cos(gen[0], refs[0, r]) for r in range(3)]), np.mean([cos(gen[1], refs[1, r]) for r in (0, 2)])]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    same = regions.reference_similarity(refs[:, 0], refs[:, :1])
    np.testing.assert_allclose(same, 1.0)  # identical crops give 1
    with pytest.raises(ValueError, match="at least one reference"):
        regions.reference_similarity(gen, refs, np.zeros((2, 3), bool))
