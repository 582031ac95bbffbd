"""LAION aesthetic heads: files written by torch.save, scored as the reference torch MLP scores."""

import numpy as np
import pytest

from jcompose.metrics import aesthetic, torch_files


def _mlp(torch, relu):
    """improved-aesthetic-predictor's MLP (simple_inference.py), with or without its ReLUs."""
    nn = torch.nn
    widths = [768, 1024, 128, 64, 16]
    drops = [0.2, 0.2, 0.1]
    layers = []
    for i in range(4):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if relu:
            layers.append(nn.ReLU())
        if i < 3:
            layers.append(nn.Dropout(drops[i]))
    layers.append(nn.Linear(16, 1))
    return nn.Sequential(*layers).eval()


@pytest.mark.parity
@pytest.mark.parametrize("relu", [False, True])
def test_mlp_heads_match_torch(tmp_path, rng, relu):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mlp = _mlp(torch, relu)
    keys = {k.split(".")[0] for k in mlp.state_dict()}
    assert keys == ({"0", "3", "6", "9", "11"} if relu else {"0", "2", "4", "6", "7"})
    path = tmp_path / "head.pth"
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, path)
    head = aesthetic.load_head(path)
    assert [r for _, _, r in head] == [relu] * 4 + [False]
    emb = rng.normal(size=(4, 768)).astype(np.float32)
    ours = np.asarray(aesthetic.score(head, emb))
    with torch.no_grad():
        e = torch.from_numpy(emb)
        ref = mlp(e / e.norm(dim=-1, keepdim=True)).reshape(-1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_linear_v1_head_by_hand(tmp_path, rng):
    from safetensors.numpy import save_file

    w, b = rng.normal(size=(1, 768)).astype(np.float32), np.array([5.0], np.float32)
    save_file({"weight": w, "bias": b}, str(tmp_path / "v1.safetensors"))
    head = aesthetic.load_head(tmp_path / "v1.safetensors")
    emb = rng.normal(size=(3, 768))
    expected = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)) @ w[0] + 5.0
    np.testing.assert_allclose(np.asarray(aesthetic.score(head, emb)), expected, rtol=1e-5)


def test_not_a_head(tmp_path):
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(torch_files.TorchFileError, match="x.safetensors: expected an aesthetic head"):
        aesthetic.load_head(tmp_path / "x.safetensors")


@pytest.mark.parity
def test_v1_linear_head_matches_torch_and_versions_are_told_apart(tmp_path, rng):
    """LAION-Aesthetics V1 (`sa_0_4_vit_l_14_linear.pth`: one nn.Linear(768, 1)) vs torch on the same
    L2-normalised embeddings; V1 and V2 heads are recognised, and a wrong version is refused by name."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    linear = torch.nn.Linear(768, 1).eval()
    torch.save(linear.state_dict(), tmp_path / "sa_0_4_vit_l_14_linear.pth")
    head = aesthetic.load_head(tmp_path / "sa_0_4_vit_l_14_linear.pth")
    emb = rng.normal(size=(4, 768)).astype(np.float32)
    with torch.no_grad():
        e = torch.from_numpy(emb)
        ref = linear(e / e.norm(dim=-1, keepdim=True)).reshape(-1).numpy()
    np.testing.assert_allclose(np.asarray(aesthetic.score(head, emb)), ref, rtol=1e-5, atol=1e-6)
    assert aesthetic.version_of(head) == "v1"
    mlp = _mlp(torch, relu=False)
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, tmp_path / "v2.pth")
    v2 = aesthetic.load_head(tmp_path / "v2.pth")
    assert aesthetic.version_of(v2) == "v2" and aesthetic.check_version(v2, "v2", "v2.pth") == "v2"
    with pytest.raises(ValueError, match=r"config.aesthetic.version = 'v1', but v2.pth is a v2 head"):
        aesthetic.check_version(v2, "v1", "v2.pth")
