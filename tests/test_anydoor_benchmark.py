"""AnyDoor's benchmark (input_pipeline/anydoor_benchmark.py), `compose anydoor --benchmark` and the region
CLIP-I / DINO x 100 protocol (jcompose/metrics/anydoor_protocol.py) on constructed inputs with known answers."""

import json

import cv2
import ldm_fixtures as fx
import numpy as np
import pytest

from configs.eval.anydoor import get_config
from input_pipeline import anydoor_benchmark as bench
from input_pipeline.records import RecordError
from jcompose import evaluate
from jcompose.metrics import clip_score, dino, preprocess

# COCO-style images (w 200, h 160) and boxes [x, y, w, h]: which qualify (4-40% of the image, aspect
# 0.5-2, sides >= 64 px, not crowd) is worked out by hand in the comments.
COCO_BOXES = {
    1: [([10, 10, 80, 80], 0)],                               # 20%, square: yes
    2: [([5, 5, 60, 60], 0), ([0, 0, 150, 150], 1)],          # side 60 < 64; a crowd box: no
    3: [([0, 0, 190, 150], 0)],                               # 89%: no
    4: [([10, 10, 150, 64], 0)],                              # aspect 2.34: no
    5: [([0, 0, 70, 70], 0), ([100, 60, 90, 80], 0)],         # both qualify; the larger (90x80) is taken
    6: [([20.4, 30.2, 64.5, 100.2], 0)],                      # 20%, fractional: pixels [20, 30, 85, 131)
    7: [([50, 40, 100, 90], 0)],                              # yes
    8: [([30, 20, 80, 120], 0)],                              # aspect 0.67: yes
}
QUALIFYING = [1, 5, 6, 7, 8]


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A DreamBooth-like folder (sibling-PNG masks and RGBA cut-outs) and a COCO-val-like folder."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    for stem, (y0, x0, size) in {"00": (20, 16, 56), "01": (44, 44, 6)}.items():  # 01's object is too small
        photo = rng.integers(0, 255, (96, 96, 3), np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        mask[y0:y0 + size, x0:x0 + size] = 255
        _write(root / "dreambooth" / "dataset" / "backpack" / f"{stem}.jpg", photo)
        _write(root / "dreambooth" / "dataset" / "backpack" / f"{stem}.png", mask)
    for stem in ("00", "01"):
        alpha = np.zeros((90, 80), np.uint8)
        alpha[10:80, 15:65] = 255
        _write(root / "dreambooth" / "dataset" / "dog" / f"{stem}.png",
               np.dstack([rng.integers(0, 255, (90, 80, 3), np.uint8), alpha]))
    images, annotations = [], []
    for image_id, boxes in COCO_BOXES.items():
        name = f"{image_id:012d}.jpg"
        _write(root / "coco" / "val2017" / name, rng.integers(0, 255, (160, 200, 3), np.uint8))
        images.append({"id": image_id, "file_name": name, "width": 200, "height": 160})
        for box, crowd in boxes:
            annotations.append({"id": 100 * image_id + len(annotations), "image_id": image_id, "bbox": box,
                                "iscrowd": crowd, "category_id": 3})
    (root / "coco" / "annotations").mkdir()
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "car"}]}))
    return root


def test_benchmark_follows_its_rules_and_seed(sources, tmp_path):
    summary = bench.build(sources / "dreambooth", sources / "coco", tmp_path / "a", num_backgrounds=3, seed=0)
    assert summary["qualifying_backgrounds"] == len(QUALIFYING) and summary["pairs"] == 2 * 3
    chosen = [int(b["name"]) for b in summary["backgrounds"]]
    assert chosen == sorted(chosen) and set(chosen) <= set(QUALIFYING)
    concepts = {c["name"]: c for c in summary["concepts"]}
    assert concepts["backpack"]["reference"] == "concepts/backpack/00.png"  # 01's object fails the filters
    rgba = cv2.imread(str(tmp_path / "a" / concepts["backpack"]["reference"]), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (96, 96, 4) and (rgba[..., 3] > 0).sum() == 56 * 56
    every = bench.build(sources / "dreambooth", sources / "coco", tmp_path / "all", num_backgrounds=5, seed=0)
    boxes = {int(b["name"]): b["box"] for b in every["backgrounds"]}
    assert boxes[5] == [100, 60, 190, 140] and boxes[6] == [20, 30, 85, 131]
    mask = cv2.imread(str(tmp_path / "all" / "backgrounds" / "000000000006_mask.png"), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 30, 85, 131) and mask.max() == 255
    copied = (tmp_path / "all" / "backgrounds" / "000000000006_GT.jpg").read_bytes()
    assert copied == (sources / "coco" / "val2017" / "000000000006.jpg").read_bytes()

    again = bench.build(sources / "dreambooth", sources / "coco", tmp_path / "b", num_backgrounds=3, seed=0)
    assert again["backgrounds"] == summary["backgrounds"] and again["concepts"] == summary["concepts"]
    others = [[b["name"] for b in bench.build(sources / "dreambooth", sources / "coco", tmp_path / f"s{s}",
                                              num_backgrounds=3, seed=s)["backgrounds"]] for s in (1, 2, 3)]
    assert any(names != [b["name"] for b in summary["backgrounds"]] for names in others)
    header, pairs = bench.read_benchmark(tmp_path / "a")
    assert [p["name"] for p in pairs][:3] == [f"backpack/{b['name']}" for b in summary["backgrounds"]]


def test_benchmark_errors_name_the_input(sources, tmp_path):
    with pytest.raises(RecordError, match=r"instances_val2017.json: only 5 images"):
        bench.build(sources / "dreambooth", sources / "coco", tmp_path / "x", num_backgrounds=6)
    bare = tmp_path / "bare"
    _write(bare / "vase" / "00.jpg", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(RecordError, match=r"00.jpg: no mask found.*--masks DIR.*--whole-photo"):
        bench.build(bare, sources / "coco", tmp_path / "y", num_backgrounds=2)
    whole = bench.build(bare, sources / "coco", tmp_path / "z", num_backgrounds=2, whole_photo=True)
    assert whole["concepts"][0]["mask_source"] is None and "whole photos" in whole["choices"][2]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--dreambooth", str(bare), "--out", str(tmp_path / "w")])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------------ protocol


def _embedder(models):
    clip = clip_score.load_clip(models / "clip")
    vit = dino.load_dino(models / "dino")

    def emb(image):
        c = np.asarray(clip_score.image_embeddings(clip.module, clip.params, preprocess.clip_input(image, 32)[None]))[0]
        d = np.asarray(dino.dino_embeddings(vit.module, vit.params, preprocess.dino_input(image, 36, 32)[None]))[0]
        return {"CLIP-I": c, "DINO": d}

    return emb


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def scored(tmp_path):
    """A reference cut-out (junk outside its mask) and two generated images: one whose box holds exactly
    the reference object on white, one with other content in the box."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (40, 30, 3), np.uint8)  # junk everywhere, object inside the mask
    alpha = np.zeros((40, 30), np.uint8)
    alpha[6:30, 5:25] = 255
    alpha[6:16, 5:13] = 0  # a notch: the crop holds white pixels inside its box
    ref = _write(tmp_path / "ref" / "r.png", np.dstack([photo, alpha]))
    obj = np.where(alpha[6:30, 5:25, None] > 0, photo[6:30, 5:25], np.uint8(255))
    box = [40, 12, 60, 36]  # x0, y0, x1, y1: 20 x 24, the object's size, so no resizing enters
    same = rng.integers(0, 255, (64, 96, 3), np.uint8)
    same[12:36, 40:60] = obj
    other = same.copy()
    other[12:36, 40:60] = rng.integers(0, 255, (24, 20, 3), np.uint8)
    gen = tmp_path / "gen"
    _write(gen / "obj" / "same.png", same)
    _write(gen / "obj" / "other.png", other)
    images = [{"image": f"obj/{n}.png", "object": "obj", "reference": str(ref), "background": "", "box": box}
              for n in ("same", "other")]
    (gen / "manifest.json").write_text(json.dumps({"benchmark": "test", "step": 3, "images": images}))
    return gen, ref, obj, photo, same, other, box


def _config(models, manifest, out):
    config = get_config()
    config.manifest, config.out = str(manifest), str(out)
    config.clip.model, config.dino.model = str(models / "clip"), str(models / "dino")
    config.batch_size, config.workers = 2, 1
    return config


def test_protocol_known_answers(scored, tiny_eval_models, tmp_path):
    gen, ref, obj, photo, same, other, box = scored
    emb = _embedder(tiny_eval_models)
    ref_e = emb(obj)
    scores = evaluate.evaluate(_config(tiny_eval_models, gen / "manifest.json", tmp_path / "o1"), progress=False)
    assert scores["protocol"] == "anydoor" and scores["n_images"] == 2
    assert "x 100" in scores["conventions"]["scale"] and scores["conventions"]["region"].startswith("the target box")
    for metric in ("CLIP-I", "DINO"):
        per = scores["per_image"][metric]
        assert per[0] == pytest.approx(100.0, abs=1e-3)  # the box holds the reference object on white
        hand = 100 * _cos(emb(other[12:36, 40:60])[metric], ref_e[metric])
        assert per[1] == pytest.approx(hand, abs=1e-3) and per[1] < 99
        assert scores[metric] == pytest.approx((100.0 + hand) / 2, abs=1e-3)

    config = _config(tiny_eval_models, gen / "manifest.json", tmp_path / "o2")
    config.crop = False  # whole images: the identical box no longer gives 100
    whole = evaluate.evaluate(config, progress=False)
    for metric in ("CLIP-I", "DINO"):
        assert whole["per_image"][metric][0] == pytest.approx(100 * _cos(emb(same)[metric], ref_e[metric]), abs=1e-3)
        assert whole["per_image"][metric][0] < 99
    config = _config(tiny_eval_models, gen / "manifest.json", tmp_path / "o3")
    config.reference_background = "photo"  # the junk outside the mask stays in the reference
    kept = evaluate.evaluate(config, progress=False)
    for metric in ("CLIP-I", "DINO"):
        hand = 100 * _cos(emb(obj)[metric], emb(photo[6:30, 5:25])[metric])
        assert kept["per_image"][metric][0] == pytest.approx(hand, abs=1e-3) and hand < 100 - 1e-2
    report = (tmp_path / "o1" / "report.md").read_text()
    assert "| CLIP Score ↑ | DINO Score ↑ |" in report and json.loads((tmp_path / "o1" / "scores.json").read_text())


def test_protocol_folder_mode_equals_the_manifest(scored, tiny_eval_models, tmp_path):
    gen, ref, obj, photo, same, other, box = scored
    folders = tmp_path / "folders"
    for name, image in (("same", same), ("other", other)):
        _write(folders / "gen" / f"{name}.png", image)
        _write(folders / "ref" / f"{name}.png", cv2.cvtColor(cv2.imread(str(ref), cv2.IMREAD_UNCHANGED),
                                                             cv2.COLOR_BGRA2RGBA))
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = 255
        _write(folders / "masks" / f"{name}.png", mask)
    config = _config(tiny_eval_models, "", tmp_path / "f")
    config.generated, config.reference = str(folders / "gen"), str(folders / "ref")
    with pytest.raises(evaluate.InputError, match="config.masks: the AnyDoor protocol scores the generated region"):
        evaluate.evaluate(config, progress=False)
    config.masks = str(folders / "masks")
    by_folder = evaluate.evaluate(config, progress=False)
    by_manifest = evaluate.evaluate(_config(tiny_eval_models, gen / "manifest.json", tmp_path / "m"), progress=False)
    # folders are listed by name: other, same
    for metric in ("CLIP-I", "DINO"):
        assert by_folder["per_image"][metric][::-1] == pytest.approx(by_manifest["per_image"][metric], abs=1e-4)


# ----------------------------------------------------------------------------- generation


def test_compose_benchmark_generates_every_pair_batched(sources, tiny_eval_models, tmp_path):
    """2 concepts x 2 backgrounds, --batch 3 (a full and a padded batch): every pair written, pair k equal to
    a single compose with seed + k, the manifest scored by the protocol."""
    from safetensors.numpy import save_file

    from jcompose import compose, convert

    save_file(fx.anydoor_state_dict(8), str(tmp_path / "release.safetensors"))
    assert convert.main(["anydoor-ckpt", str(tmp_path / "release.safetensors"), str(tmp_path / "rel"),
                         "--sample-size", "8", "--head-channels", "16", "--dinov2-head-channels", "8"]) == 0
    bench.build(sources / "dreambooth", sources / "coco", tmp_path / "bench", num_backgrounds=2, seed=0)
    written = compose.main(["anydoor", "--weights", str(tmp_path / "rel"), "--benchmark", str(tmp_path / "bench"),
                            "--batch", "3", "--steps", "2", "--dtype", "float32", "--seed", "10",
                            "--out", str(tmp_path / "gen")])
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    _, pairs = bench.read_benchmark(tmp_path / "bench")
    assert written["count"] == len(manifest["images"]) == len(pairs) == 4
    assert [e["seed"] for e in manifest["images"]] == [10, 11, 12, 13] and manifest["step"] == "unrecorded"
    # which configs/anydoor.py variant made the images: the released weights run the released settings
    assert (manifest["variant"], manifest["box_mask_prob"], manifest["crop_expand_tenths"]) == ("released", 0.3,
                                                                                                [15, 30])
    assert (manifest["collage_mask"], manifest["drop_first_row"]) == ("run_inference", True)
    k = 3  # the padded batch's only pair
    entry, pair = manifest["images"][k], pairs[k]
    compose.main(["anydoor", "--weights", str(tmp_path / "rel"), "--reference", str(pair["reference"]),
                  "--background", str(pair["background"]), "--mask", str(pair["mask"]), "--steps", "2",
                  "--dtype", "float32", "--seed", str(10 + k), "--out", str(tmp_path / "single.png")])
    batched = cv2.imread(str(tmp_path / "gen" / entry["image"])).astype(int)
    single = cv2.imread(str(tmp_path / "single.png")).astype(int)
    print(f"pair {k}: batched vs single compose max |diff| {np.abs(batched - single).max()} of 255")
    assert np.abs(batched - single).max() <= 1
    scores = evaluate.evaluate(_config(tiny_eval_models, tmp_path / "gen" / "manifest.json", tmp_path / "s"),
                               progress=False)
    assert scores["n_images"] == 4 and scores["n_objects"] == 2 and -100 <= scores["DINO"] <= 100
