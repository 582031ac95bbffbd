"""End-to-end `jcompose.evaluate` on a few generated PNGs with tiny random networks."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs.eval.base import base_config
from jcompose import evaluate


def _write_images(folder, seed, n=5, size=48):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        image = np.full((size, size, 3), rng.integers(0, 255, 3), np.uint8)
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(5, 12))]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def models(tiny_eval_models):
    return tiny_eval_models


def _config(models, generated, reference, out, prompts):
    c = base_config()
    c.metrics = ("fid", "kid", "clip_score", "clip_i", "dino", "lpips", "ssim", "aesthetic")
    c.generated, c.reference, c.out, c.prompts = str(generated), str(reference), str(out), str(prompts)
    c.batch_size, c.workers, c.pair_size = 4, 2, 32
    c.fid.weights, c.fid.kid_subset_size = "random", 4
    c.clip.model, c.dino.model = str(models / "clip"), str(models / "dino")
    c.lpips.weights = "random"
    c.aesthetic.head = str(models / "aesthetic.safetensors")
    return c


def _fid_by_hand(config, generated, reference):
    """FID recomputed outside evaluate's streaming and statistics: the same Inception features, one image
    at a time, the mean by numpy, and tr sqrt(s1 s2) from the small Gram matrix of the centred features:
    with s1 = A^T A / (n1 - 1) and s2 = B^T B / (n2 - 1), the non-zero eigenvalues of s1 s2 are those of the
    symmetric n2 x n2 matrix B A^T A B^T / ((n1 - 1)(n2 - 1)) (numpy eigvalsh), where evaluate takes the
    eigenvalues of the 2048 x 2048 product (and scipy's sqrtm of it took two minutes here)."""
    inception = evaluate.build_extractors(config)["inception"]
    apply = jax.jit(inception.apply)  # one image at a time, unbatched: not evaluate's program
    features = []
    for folder in (generated, reference):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
        features.append(np.concatenate([np.asarray(apply(inception.params, inception.prepare(im)[None]),
                                                   np.float64) for im in images]))
    (mu1, a), (mu2, b) = ((f.mean(0), f - f.mean(0)) for f in features)
    n1, n2 = len(a), len(b)
    gram = (b @ a.T) @ (a @ b.T) / ((n1 - 1) * (n2 - 1))
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
    traces = (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1)
    return float(((mu1 - mu2) ** 2).sum() + traces - 2 * trace_root)


def test_evaluate_end_to_end(tmp_path, models):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    generated = _write_images(tmp_path / "gen", 0)
    reference = _write_images(tmp_path / "ref", 1)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({f"img_{i}.png": f"a red circle {i}" for i in range(5)}))

    # generated against copies of itself: every paired metric at its identity value
    identity = _config(models, generated, generated, tmp_path / "same", prompts)
    identity.metrics = ("clip_i", "dino", "lpips", "ssim")
    same = evaluate.evaluate(identity, progress=False)
    assert same["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert same["lpips"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["clip_i"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert same["dino"]["mean"] == pytest.approx(1.0, abs=1e-5)

    config = _config(models, generated, reference, tmp_path / "out", prompts)
    config.fid.save_reference_stats = str(tmp_path / "ref_stats.npz")
    scores = evaluate.evaluate(config, progress=False)
    with np.load(tmp_path / "ref_stats.npz") as stats:  # pytorch-fid's fields
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048)
    out = tmp_path / "out"
    assert json.loads((out / "scores.json").read_text())["n_generated"] == 5
    assert (out / "report.html").read_text().count("<tr>") >= 8
    assert Image.open(out / "examples.png").size[0] == 256 and Image.open(out / "examples.png").size[1] > 5 * 128
    assert scores["fid"]["value"] > 0 and scores["fid"]["n_reference"] == 5
    np.testing.assert_allclose(scores["fid"]["value"], _fid_by_hand(config, generated, reference), rtol=1e-4)
    assert np.isfinite(scores["kid"]["mean"]) and np.isfinite(scores["aesthetic"]["mean"])
    assert scores["aesthetic"]["predictor"].startswith("LAION-Aesthetics predictor V1")  # the test head is linear
    both = scores["clip_score"]["both_conventions"]
    cos = scores["clip_score"]["mean_cosine"]
    assert both["torchmetrics"] == pytest.approx(max(100 * cos, 0)) and "AnyScene" in scores["clip_score"]["note"]
    assert scores["clip_score"]["convention"] == "torchmetrics"
    assert len(scores["per_image"]["clip_score_cos"]) == 5
    # SSIM per image equals scikit-image (Wang settings) on the same pairs' 8-bit values (48 px -> 32 px PIL bicubic)
    for i, value in enumerate(scores["per_image"]["ssim"]):
        a, b = (np.asarray(Image.open(d / f"img_{i}.png").convert("RGB").resize((32, 32), Image.BICUBIC))
                for d in (generated, reference))
        ref = skimage_metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, data_range=255,
                                                    use_sample_covariance=False, channel_axis=-1)
        assert value == pytest.approx(ref, abs=1e-4)


def test_bad_inputs_are_named(tmp_path, models):
    generated = _write_images(tmp_path / "gen", 0, n=2)
    reference = _write_images(tmp_path / "ref", 1, n=1)
    c = _config(models, generated, reference, tmp_path / "out", tmp_path / "none.json")
    c.metrics = ("ssim",)
    with pytest.raises(FileNotFoundError, match=r"config.reference: no image named like generated \['img_1"):
        evaluate.evaluate(c, progress=False)
    c.metrics = ("clip_score",)
    with pytest.raises(FileNotFoundError, match="config.prompts"):
        evaluate.evaluate(c, progress=False)
    c.metrics = ("psnr",)
    with pytest.raises(ValueError, match="config.metrics: unknown"):
        evaluate.evaluate(c, progress=False)
    c.metrics = ("ssim",)
    c.generated = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.generated"):
        evaluate.evaluate(c, progress=False)


def test_dreamcom_protocol_with_masks(tmp_path, models):
    """Object pasted into a box of a background: foreground metrics see the box, background ones
    blank it, so an exact paste of the reference object scores identity on all four."""
    rng = np.random.default_rng(5)
    for name in ("gen", "bg", "obj", "mask"):
        (tmp_path / name).mkdir()
    for i in range(3):
        background = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        obj = rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)
        top, left = 5 + 3 * i, 30 - 4 * i
        composite = background.copy()
        composite[top:top + 20, left:left + 16] = obj
        mask = np.zeros((48, 64), np.uint8)
        mask[top:top + 20, left:left + 16] = 255
        Image.fromarray(composite).save(tmp_path / "gen" / f"{i}.png")
        Image.fromarray(background).save(tmp_path / "bg" / f"{i}.png")
        Image.fromarray(obj).save(tmp_path / "obj" / f"{i}.png")
        Image.fromarray(mask).save(tmp_path / "mask" / f"{i}.png")
    c = _config(models, tmp_path / "gen", tmp_path / "obj", tmp_path / "out", "")
    c.metrics = ("clip_i", "dino", "lpips", "ssim")
    c.background, c.masks, c.pair_size = str(tmp_path / "bg"), str(tmp_path / "mask"), 0
    scores = evaluate.evaluate(c, progress=False)
    assert scores["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert scores["lpips"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert scores["clip_i"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert scores["dino"]["mean"] == pytest.approx(1.0, abs=1e-5)
    # without the masks the same files are far from identity
    c.masks = ""
    c.out = str(tmp_path / "out2")
    unmasked = evaluate.evaluate(c, progress=False)
    assert unmasked["ssim"]["mean"] < 0.9 and unmasked["dino"]["mean"] < 0.999


def test_headline_clip_score_under_each_convention(tmp_path, models):
    """scores.json's headline `clip_score.value` equals the convention's formula applied by hand to cosines
    of embeddings computed outside evaluate (each image with the prompt of its own file name)."""
    from jcompose.metrics import clip_score, preprocess
    from jcompose.models import loading

    generated = _write_images(tmp_path / "gen", 3, n=6)
    prompts = {f"img_{i}.png": p for i, p in enumerate(["a red circle", "two dogs", "a blue square on grass",
                                                          "night sky", "a cup of tea", "the letter q"])}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    clip = clip_score.load_clip(str(models / "clip"))
    tokenizer = loading.load_tokenizer(str(models / "clip"))
    pixels = np.stack([preprocess.clip_input(np.asarray(Image.open(generated / n).convert("RGB")), 32) for n in prompts])
    tok = clip_score.tokenize(tokenizer, list(prompts.values()), 77)
    images = np.asarray(jax.jit(lambda x: clip_score.image_embeddings(clip.module, clip.params, x))(pixels), np.float64)
    texts = np.asarray(jax.jit(lambda i, m: clip_score.text_embeddings(clip.module, clip.params, i, m))(
        tok["input_ids"], tok["attention_mask"]), np.float64)
    cos = (images * texts).sum(-1) / np.linalg.norm(images, axis=-1) / np.linalg.norm(texts, axis=-1)
    hand = {"torchmetrics": max(100 * cos.mean(), 0.0), "hessel": float(np.mean(2.5 * np.maximum(cos, 0.0)))}
    assert (cos < 0).any() and (cos > 0).any()  # the clamp per image and on the mean differ on these
    for convention in ("torchmetrics", "hessel"):
        config = _config(models, generated, generated, tmp_path / convention, tmp_path / "prompts.json")
        config.metrics, config.clip.convention = ("clip_score",), convention
        scores = evaluate.evaluate(config, progress=False)
        stored = json.loads((tmp_path / convention / "scores.json").read_text())["clip_score"]
        assert stored["convention"] == convention
        assert stored["value"] == pytest.approx(hand[convention], rel=1e-5, abs=1e-6), convention
        np.testing.assert_allclose(scores["per_image"]["clip_score_cos"], cos, atol=1e-5)
        assert stored["both_conventions"] == pytest.approx(hand, rel=1e-5, abs=1e-6)
