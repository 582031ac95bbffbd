"""DreamCom's evaluation protocol on constructed images with known answers."""

import functools
import json

import cv2
import numpy as np
import pytest

from configs.eval.dreamcom import get_config
from jcompose import evaluate
from jcompose.metrics import clip_score, dino, preprocess


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1] if image.ndim == 3 else image))
    return str(path)


@pytest.fixture
def scene(tmp_path):
    """A background, two reference photos of one object (with masks), and generated images for 2 pairs."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    obj = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    refs = []
    for i in range(2):
        photo = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        y, x = 4 + 10 * i, 6 + 8 * i
        photo[y:y + 24, x:x + 20] = obj if i == 0 else np.flip(obj, axis=1)
        mask[y:y + 24, x:x + 20] = 255
        refs.append({"photo": _write(tmp_path / f"ref/{i}.png", photo), "mask": _write(tmp_path / f"ref/{i}_m.png", mask)})
    box = [30, 10, 50, 34]  # x0, y0, x1, y1
    same = background.copy()
    same[10:34, 30:50] = obj  # the box holds exactly reference 0's foreground
    other_box = background.copy()
    other_box[10:34, 30:50] = rng.integers(0, 255, (24, 20, 3))
    bg_path = _write(tmp_path / "bg.png", background)
    entries = [{"image": "a/0.png", "object": "obj", "background": bg_path, "box": box, "references": refs},
               {"image": "a/1.png", "object": "obj", "background": bg_path, "box": box, "references": refs},
               {"image": "b/0.png", "object": "obj", "background": bg_path + "#2", "box": box, "references": [refs[0]]}]
    gen = tmp_path / "gen"
    _write(gen / "a/0.png", same)
    _write(gen / "a/1.png", other_box)
    _write(gen / "b/0.png", same)
    entries[2]["background"] = bg_path  # same file, its own pair through the object/background key below
    entries[2]["object"] = "obj-single-reference"
    (gen / "manifest.json").write_text(json.dumps({"benchmark": "test", "step": 1, "images": entries}))
    return gen, background, obj, refs, same, other_box


def test_protocol_known_answers(scene, tiny_eval_models, tmp_path):
    gen, background, obj, refs, same, other_box = scene
    config = get_config()
    config.manifest, config.out = str(gen / "manifest.json"), str(tmp_path / "out")
    config.clip.model, config.dino.model = str(tiny_eval_models / "clip"), str(tiny_eval_models / "dino")
    config.lpips.weights, config.pair_size, config.batch_size, config.workers = "random", 32, 2, 1
    scores = evaluate.evaluate(config, progress=False)
    pairs = {p["object"]: p for p in scores["per_pair"]}

    # identical crops give 1: pair 'obj-single-reference' compares reference 0's foreground with itself
    assert pairs["obj-single-reference"]["DINO"] == pytest.approx(1.0, abs=1e-5)
    assert pairs["obj-single-reference"]["CLIP"] == pytest.approx(1.0, abs=1e-5)
    # only the box changed between a/0 and a/1: the background scores are the same, and perfect
    for p in pairs.values():
        assert p["LPIPS"] == pytest.approx(0.0, abs=1e-6) and p["SSIM"] == pytest.approx(1.0, abs=1e-5)

    # averaging over references, by hand: embeddings from the models called directly, cosines in numpy
    clip = clip_score.load_clip(config.clip.model)
    vit = dino.load_dino(config.dino.model)

    def emb(kind, image):
        if kind == "clip":
            return np.asarray(clip_score.image_embeddings(clip.module, clip.params, preprocess.clip_input(image, 32)[None]))[0]
        return np.asarray(dino.dino_embeddings(vit.module, vit.params,
                                               preprocess.dino_input(image, resize=36, size=32)[None]))[0]

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    crops = [obj, np.flip(obj, axis=1)]  # the references' mask crops
    for kind, name in (("clip", "CLIP"), ("dino", "DINO")):
        refs_e = [emb(kind, c) for c in crops]
        per_image = [np.mean([cos(emb(kind, img[10:34, 30:50]), r) for r in refs_e]) for img in (same, other_box)]
        assert pairs["obj"][name] == pytest.approx(np.mean(per_image), abs=1e-5)
        over_pairs = np.mean([pairs["obj"][name], pairs["obj-single-reference"][name]])
        assert scores["foreground"][name] == pytest.approx(over_pairs, abs=1e-9)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| DINO ↑ | CLIP ↑ | LPIPS ↓ | SSIM ↑ |" in report and scores["n_pairs"] == 2


def test_bad_manifest_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"images": [{"image": "x.png"}]}))
    config = get_config()
    config.manifest, config.out = str(tmp_path / "manifest.json"), str(tmp_path / "out")
    with pytest.raises(evaluate.InputError, match=r"manifest.json: entry 0 needs image, object, background"):
        evaluate.evaluate(config, progress=False)


@pytest.fixture
def photo_scene(tmp_path):
    """A real photo as the background (scikit-image's chelsea, 120 x 160) and two generated images: 'bright'
    (+12 outside a small box: the released code inpaints a crop) and 'same' (the background unchanged outside
    a large box: the released code inpaints the whole image at 512 x 512)."""
    data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(3)
    background = np.ascontiguousarray(data.chelsea()[40:160, 100:260])
    bg_path = _write(tmp_path / "bg.png", background)
    photo = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[8:40, 8:40] = 255
    ref = {"photo": _write(tmp_path / "ref.png", photo), "mask": _write(tmp_path / "ref_m.png", mask)}
    boxes = {"bright": [60, 30, 100, 80], "same": [20, 10, 140, 110]}  # x0, y0, x1, y1: 8% and 62% of the image
    images = {"bright": np.clip(background.astype(np.int16) + 12, 0, 255).astype(np.uint8), "same": background.copy()}
    gen = tmp_path / "gen"
    for name, image in images.items():
        x0, y0, x1, y1 = boxes[name]
        image[y0:y1, x0:x1] = rng.integers(0, 255, (y1 - y0, x1 - x0, 3))
        _write(gen / f"{name}.png", image)
    entries = [{"image": f"{n}.png", "object": n, "background": bg_path, "box": boxes[n], "references": [ref]}
               for n in images]
    (gen / "manifest.json").write_text(json.dumps({"benchmark": "photo", "step": 7, "variant": "paper",
                                                    "self_attention": "paper", "images": entries}))
    return gen, background, images, boxes


@functools.cache
def _lpips_map():
    """The protocol's LPIPS (alex, spatial) with its smoke-run random weights, jitted once."""
    import jax

    from jcompose.metrics import lpips
    from jcompose.metrics.extractors import random_params

    zeros = np.zeros((1, 64, 64, 3), np.float32)
    params = random_params(lpips.LPIPS("alex"), zeros, zeros)
    return jax.jit(lambda a, b: lpips.LPIPS("alex", spatial=True).apply({"params": params}, a, b))


def _hand_background(gen, background, box, size=None, jpeg=False):
    """The background SSIM by scikit-image (8-bit values, data_range 255) and LPIPS by the module, both
    averaged outside the blanked box: the protocol computed step by step without jcompose's pipeline."""
    import io

    from PIL import Image
    from skimage.metrics import structural_similarity

    x0, y0, x1, y1 = box
    inside = np.zeros(gen.shape[:2], np.uint8)
    inside[y0:y1, x0:x1] = 255
    if size:
        gen, background = (np.asarray(Image.fromarray(a).resize((size, size), Image.LANCZOS)) for a in (gen, background))
        inside = np.asarray(Image.fromarray(inside).resize((size, size), Image.NEAREST))
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(gen).save(buffer, format="JPEG")  # PIL's default quality, as the released test.py
        gen = np.asarray(Image.open(buffer).convert("RGB"))
    box = (inside > 127)[..., None]
    g, b = (np.where(box, 127.5, a.astype(np.float64)) for a in (gen, background))
    _, ssim_map = structural_similarity(g, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255, channel_axis=-1, full=True)
    keep = ~box[..., 0]
    ssim_value = ssim_map[5:-5, 5:-5].mean(-1)[keep[5:-5, 5:-5]].mean()
    lp_map = np.asarray(_lpips_map()((g[None] / 127.5 - 1).astype(np.float32), (b[None] / 127.5 - 1).astype(np.float32)))
    return ssim_value, float(lp_map[0].reshape(keep.shape)[keep].mean())


def _photo_config(tiny_eval_models, gen, out, variant=""):
    config = get_config(variant)
    config.manifest, config.out = str(gen / "manifest.json"), str(out)
    config.clip.model, config.dino.model = str(tiny_eval_models / "clip"), str(tiny_eval_models / "dino")
    config.lpips.weights, config.pair_size, config.batch_size, config.workers = "random", 0, 2, 1
    return config


def test_background_ssim_is_skimage_on_pixel_values_under_both_protocols(photo_scene, tiny_eval_models, tmp_path):
    gen, background, images, boxes = photo_scene
    paper = evaluate.evaluate(_photo_config(tiny_eval_models, gen, tmp_path / "paper"), progress=False)
    released = evaluate.evaluate(_photo_config(tiny_eval_models, gen, tmp_path / "rel", "released"), progress=False)
    by_name = {run: dict(zip(s["per_image"]["image"], zip(s["per_image"]["SSIM"], s["per_image"]["LPIPS"],
                                                           strict=True), strict=True))
               for run, s in (("paper", paper), ("released", released))}
    for name, image in images.items():
        want = _hand_background(image, background, boxes[name])
        assert by_name["paper"][f"{name}.png"] == pytest.approx(want, abs=2e-5), name
    # released: 'bright' (small box) at the background's size, 'same' (large box) at 512 x 512; both JPEG'd
    want_bright = _hand_background(images["bright"], background, boxes["bright"], jpeg=True)
    want_same = _hand_background(images["same"], background, boxes["same"], size=512, jpeg=True)
    assert by_name["released"]["bright.png"] == pytest.approx(want_bright, abs=2e-5)
    assert by_name["released"]["same.png"] == pytest.approx(want_same, abs=2e-5)
    # an unchanged background: perfect under "paper", the JPEG round trip alone costs SSIM under "released"
    assert by_name["paper"]["same.png"][0] == pytest.approx(1.0, abs=1e-6)
    assert by_name["released"]["same.png"][0] < 0.99
    assert paper["background_protocol"] == "paper" and released["background_protocol"] == "released"
    assert released["provenance"]["eval_config"] == "configs/eval/dreamcom.py:released"
    assert released["provenance"]["training_config_variant"] == "paper"  # the manifest's: what generated them
    assert released["provenance"]["generation"]["self_attention"] == "paper"
    assert "1 whole-image inpaintings scored at 512x512, 1 cropped" in released["conventions"]["background_images"]
    for out in (tmp_path / "paper", tmp_path / "rel"):
        assert "dreamcom (background: " in (out / "report.md").read_text()
        assert "training config variant paper" in (out / "report.md").read_text()
        assert "dreamcom (background: " in (out / "report.html").read_text()
