"""AnyScene's content and edge losses against numpy/OpenCV references written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcompose import losses, morphology

cv2 = pytest.importorskip("cv2")


def _batch(seed=0, b=4, h=12, w=14):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    xhat = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
    mask = np.zeros((b, h, w, 1), np.float32)
    mask[0, 3:9, 4:10] = 1
    mask[1, 0:5, 0:6] = 1  # touches the image corner
    mask[2] = (rng.uniform(size=(h, w, 1)) > 0.6)
    # mask[3] stays empty
    return x0, xhat, mask


def _cv_band(m2d, dk, ek):
    return cv2.dilate(m2d, np.ones((dk, dk), np.uint8)) - cv2.erode(m2d, np.ones((ek, ek), np.uint8))


# ------------------------------------------------------------------------------------ morphology


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_erode_dilate_match_opencv(k):
    _, _, mask = _batch()
    kernel = np.ones((k, k), np.uint8)
    er = np.asarray(morphology.erode(mask, k))
    di = np.asarray(morphology.dilate(mask, k))
    for i in range(mask.shape[0]):
        np.testing.assert_array_equal(er[i, ..., 0], cv2.erode(mask[i, ..., 0], kernel))
        np.testing.assert_array_equal(di[i, ..., 0], cv2.dilate(mask[i, ..., 0], kernel))


@pytest.mark.parametrize("dk,ek", [(3, 3), (5, 3), (3, 5), (7, 1)])
def test_edge_band_matches_opencv(dk, ek):
    _, _, mask = _batch()
    band = np.asarray(losses.edge_band(mask, dk, ek))
    for i in range(mask.shape[0]):
        np.testing.assert_array_equal(band[i, ..., 0], _cv_band(mask[i, ..., 0], dk, ek))


# ------------------------------------------------------------------------------------- laplacian


@pytest.mark.parametrize("ksize", [1, 3, 5, 7])
def test_laplacian_matches_opencv(ksize):
    x0, _, _ = _batch(h=11, w=13)
    got = np.asarray(losses.laplacian(x0, ksize))
    for i in range(x0.shape[0]):
        want = cv2.Laplacian(x0[i], cv2.CV_32F, ksize=ksize)  # default border: BORDER_REFLECT_101
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-4 * 4**ksize)


def test_laplacian_hand_value():
    img = np.zeros((1, 5, 5, 1), np.float32)
    img[0, 2, 2, 0] = 1.0
    out = np.asarray(losses.laplacian(img, 1))[0, ..., 0]
    assert out[2, 2] == -4 and out[1, 2] == out[2, 1] == out[3, 2] == out[2, 3] == 1 and out[1, 1] == 0


# ------------------------------------------------------------------------------------------ losses


def _np_masked_mean(sq, weight):
    """Per-sample sum(weight * sq) / (channels * sum(weight)), 0 for an empty weight."""
    out = []
    for s, w in zip(sq, weight):
        n = w.sum() * s.shape[-1]
        out.append((s * w).sum() / n if n > 0 else 0.0)
    return np.array(out)


def test_content_loss_matches_numpy():
    x0, xhat, mask = _batch()
    want = _np_masked_mean((xhat.astype(np.float64) - x0) ** 2, mask)
    got = np.asarray(losses.content_loss(xhat, x0, mask, reduce="none"))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[3] == 0.0  # empty mask
    np.testing.assert_allclose(float(losses.content_loss(xhat, x0, mask)), want.mean(), rtol=1e-5)
    # Outside the mask nothing matters.
    other = np.where(mask > 0, xhat, 5.0).astype(np.float32)
    np.testing.assert_allclose(np.asarray(losses.content_loss(other, x0, mask, reduce="none")), want, rtol=1e-5)


def test_content_loss_hand_value():
    x0 = np.zeros((1, 2, 2, 3), np.float32)
    xhat = np.full((1, 2, 2, 3), 0.5, np.float32)
    mask = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)
    assert float(losses.content_loss(xhat, x0, mask)) == pytest.approx(0.25)


@pytest.mark.parametrize("ksize,dk,ek", [(1, 5, 5), (3, 3, 5)])
def test_edge_loss_matches_opencv_reference_with_gate(ksize, dk, ek):
    x0, xhat, mask = _batch(seed=1)
    t = np.array([0, 249, 250, 999])  # alpha * T = 250: gate is 1, 1, 0, 0
    sq, band = [], []
    for i in range(4):
        a, b = xhat[i].astype(np.float64), x0[i].astype(np.float64)
        diff = cv2.Laplacian(a, cv2.CV_64F, ksize=ksize) - cv2.Laplacian(b, cv2.CV_64F, ksize=ksize)
        sq.append(diff**2)
        band.append(_cv_band(mask[i, ..., 0], dk, ek)[..., None])
    ungated = _np_masked_mean(sq, band)
    want = ungated * np.array([1, 1, 0, 0])
    got = np.asarray(
        losses.edge_loss(
            xhat, x0, mask, t, alpha=0.25, num_train_timesteps=1000, laplacian_ksize=ksize,
            dilate_k=dk, erode_k=ek, reduce="none",
        )
    )
    assert np.all(ungated[:3] > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Another alpha opens the gate for t = 250 too; the batch mean counts gated-out samples as 0.
    got = losses.edge_loss(xhat, x0, mask, t, alpha=0.5, laplacian_ksize=ksize, dilate_k=dk, erode_k=ek)
    np.testing.assert_allclose(float(got), (ungated * np.array([1, 1, 1, 0])).mean(), rtol=1e-4)


def test_gradients_are_finite_and_analytic():
    x0, xhat, mask = _batch(seed=2)
    t = jnp.array([10, 100, 300, 5])

    g = np.asarray(jax.jit(jax.grad(lambda x: losses.content_loss(x, x0, mask)))(xhat))
    # d/dx of mean_b sum M (x - x0)^2 / (C * sum M): 2 M (x - x0) / (C * sum M * B); 0 for the empty mask.
    count = np.maximum(mask.sum(axis=(1, 2, 3), keepdims=True) * 3, 1)
    np.testing.assert_allclose(g, 2 * mask * (xhat - x0) / (count * 4), rtol=1e-5, atol=1e-8)

    ge = np.asarray(jax.jit(jax.grad(lambda x: losses.edge_loss(x, x0, mask, t, laplacian_ksize=3)))(xhat))
    assert np.all(np.isfinite(ge))
    assert np.abs(ge[2]).max() == 0 and np.abs(ge[3]).max() == 0  # gated out (t=300), empty mask
    assert np.abs(ge[0]).max() > 0 and np.abs(ge[1]).max() > 0
    # Matches a central finite difference of the loss along a random direction (float64 numpy reference).
    v = np.random.default_rng(3).normal(size=xhat.shape)

    def np_edge(x):
        lap = [cv2.Laplacian(x[i], cv2.CV_64F, ksize=3) for i in range(4)]
        lap0 = [cv2.Laplacian(x0[i].astype(np.float64), cv2.CV_64F, ksize=3) for i in range(4)]
        sq = [(a - b) ** 2 for a, b in zip(lap, lap0)]
        band = [_cv_band(mask[i, ..., 0], 5, 5)[..., None] for i in range(4)]
        return (_np_masked_mean(sq, band) * np.array([1, 1, 0, 0])).mean()

    eps = 1e-4
    fd = (np_edge(xhat.astype(np.float64) + eps * v) - np_edge(xhat.astype(np.float64) - eps * v)) / (2 * eps)
    np.testing.assert_allclose((ge * v).sum(), fd, rtol=1e-3)


def test_bf16_inputs_are_promoted():
    x0, xhat, mask = _batch(seed=4)
    got = losses.content_loss(jnp.asarray(xhat, jnp.bfloat16), jnp.asarray(x0, jnp.bfloat16), mask)
    assert got.dtype == jnp.float32


def test_bad_input():
    x0, xhat, mask = _batch()
    with pytest.raises(ValueError, match="mask must be"):
        losses.content_loss(xhat, x0, mask[..., 0])
    with pytest.raises(ValueError, match="one shape"):
        losses.content_loss(xhat[:, :5], x0, mask)
    with pytest.raises(ValueError, match="t must be"):
        losses.edge_loss(xhat, x0, mask, np.array([1, 2]))
    with pytest.raises(ValueError, match="odd int"):
        losses.laplacian(x0, 2)
    with pytest.raises(ValueError, match="reduce"):
        losses.content_loss(xhat, x0, mask, reduce="sum")
    with pytest.raises(ValueError, match="dilate kernel size"):
        losses.edge_band(mask, 0, 3)
