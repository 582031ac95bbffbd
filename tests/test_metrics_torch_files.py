"""The torch-free weight reader against files written by torch itself, and refusal of unsafe pickles."""

import os
import pickle
import zipfile

import numpy as np
import pytest
from conftest import require_package

from jcompose.metrics import packaged_weights, torch_files


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_pickle_refused(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(torch_files.UnsafePickleError, match=r"evil.pth.*posix.system|evil.pth.*os.system"):
        torch_files.load(path)


def test_malicious_zip_pickle_refused(tmp_path):
    path = tmp_path / "evil_zip.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(torch_files.UnsafePickleError, match="refuses to unpickle global"):
        torch_files.load(path)


def test_not_a_weight_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(torch_files.TorchFileError, match="junk.pth"):
        torch_files.load(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_files.load(tmp_path / "missing.pth")


def test_safetensors_passthrough(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    out = torch_files.state_dict(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(out["a.weight"], tensors["a.weight"])


def _tensors(torch):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, 6, generator=gen)
    return {
        "f32": torch.randn(3, 4, generator=gen),
        "f64": torch.randn(5, generator=gen, dtype=torch.float64),
        "f16": torch.randn(2, 3, generator=gen).half(),
        "bf16": torch.randn(2, 7, generator=gen).bfloat16(),
        "i64": torch.arange(-5, 5),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(0, 250, 50, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        # views share one storage: offsets and non-contiguous strides
        "permuted": base.permute(2, 0, 1),
        "sliced": base[1:3, ::2, 1:],
        "transposed": base[2].t(),
        "row": base[3, 1],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=gen)),
    }


def _as_numpy(tensor):
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.float().numpy()
    return tensor.numpy()


@pytest.mark.parity
@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save_roundtrip(tmp_path, zipped):
    torch = pytest.importorskip("torch")
    tensors = _tensors(torch)
    path = tmp_path / "w.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zipped)
    assert zipfile.is_zipfile(path) == zipped
    out = torch_files.load(path)
    assert set(out) == set(tensors)
    for name, tensor in tensors.items():
        got = out[name]
        assert got.shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(got.astype(np.float64) if name == "bf16" else got, _as_numpy(tensor), err_msg=name)
    expected = {"f32": "float32", "f64": "float64", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
                "i8": "int8", "u8": "uint8", "bool": "bool", "param": "float32"}
    assert {k: out[k].dtype.name for k in expected} == expected
    assert all(v.flags.writeable and v.flags.c_contiguous for v in out.values())


@pytest.mark.parity
def test_nested_state_dict_and_ordered_dict(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    path = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    flat = torch_files.state_dict(path)
    reference = model.state_dict()
    assert set(flat) == set(reference)
    for name, tensor in reference.items():
        np.testing.assert_array_equal(flat[name], tensor.numpy(), err_msg=name)


@pytest.mark.parity
def test_torchscript_archive(tmp_path):
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
            self.register_buffer("scale", torch.linspace(0, 1, 5).view(1, 5, 1, 1))
            self.pad = [1, 2]

        def forward(self, x):
            return self.conv(x) * self.scale

    torch.manual_seed(0)
    scripted = torch.jit.script(Block().eval())
    path = tmp_path / "block.pt"
    torch.jit.save(scripted, path)
    tree = torch_files.load(path)
    assert isinstance(tree, torch_files.ScriptModule)
    assert tree["pad"] == [1, 2]
    flat = torch_files.flatten(tree)
    reference = {k: v.detach().numpy() for k, v in scripted.state_dict().items()}
    assert set(flat) == set(reference)
    for name, array in reference.items():
        np.testing.assert_array_equal(flat[name], array, err_msg=name)


@pytest.mark.parity
def test_frozen_torchscript_constants(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    frozen = torch.jit.freeze(torch.jit.script(torch.nn.Sequential(conv).eval()))
    torch.jit.save(frozen, tmp_path / "frozen.pt")
    tree = torch_files.load(tmp_path / "frozen.pt")
    got = sorted((c for c in tree.constants if isinstance(c, np.ndarray)), key=lambda a: a.size)
    want = sorted((conv.bias.detach().numpy(), conv.weight.detach().numpy()), key=lambda a: a.size)
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parity
def test_published_lpips_heads_equal_torch_load():
    """The legacy-format v0.1 LPIPS heads shipped in the `lpips` wheel read as torch reads them."""
    torch = pytest.importorskip("torch")
    require_package("lpips", "lpips==0.1.4", "LPIPS v0.1 heads")  # data only: its import needs torchvision
    for net in ("alex", "vgg"):
        path = packaged_weights.package_file("lpips", f"weights/v0.1/{net}.pth")
        ours = torch_files.state_dict(path)
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        assert set(ours) == set(theirs)
        for name, tensor in theirs.items():
            np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=f"{net}:{name}")
