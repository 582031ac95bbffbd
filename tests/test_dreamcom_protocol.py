"""DreamCom's evaluation protocol on constructed images with known answers."""

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
