"""AnyScene's extra training data: Open Images and face readers on fixtures in their real on-disk formats,
side-file captions with the "a photo of <labels>" fallback, and the weighted mixture.

Masks are drawn as rectangles at a lower resolution than their images; the expected masks at image
size are hand-computed from the nearest-neighbour rule (integer ratios: each pixel repeated; 2.5x:
the rows/columns worked out below) and checked against OpenCV's INTER_NEAREST, the resize the Open
Images converters use. Mixture shares are checked within 4 binomial standard deviations.
"""

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from configs.anyscene import get_config
from input_pipeline import anyscene as anyscene_data
from input_pipeline.anyscene_sources import anyscene_components, coco_paths, make_anyscene_source
from input_pipeline.captions import SideCaptions, fallback_caption, load_caption_file
from input_pipeline.records import RecordError
from input_pipeline.sources.coco import CocoSource
from input_pipeline.sources.faces import FaceSource
from input_pipeline.sources.openimages import OpenImagesSource, read_class_names, resize_nearest

COLUMNS = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
           "PredictedIoU", "Clicks"]
CLASSES = {"/m/0bt9lr": "Dog", "/m/01yrx": "Cat", "/m/01g317": "Person"}
ID_A, ID_B = "0a1b2c3d4e5f6789", "f0e1d2c3b4a59687"


def _rect(height, width, y0, y1, x0, x1):
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _write_png(path, values, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), "L")
    if mode == "1":
        image = image.point(lambda v: 255 if v else 0).convert("1")
    elif mode == "P":
        image = image.convert("P")
    image.save(path)


def _write_jpg(path, height, width, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), colour, np.uint8))


def _mask_row(mask_name, image_id, label):
    return [mask_name, image_id, label, mask_name.rsplit("_", 1)[1][:-4], "0.1", "0.9", "0.2", "0.8", "0.87",
            "0.3 0.4 1;0.5 0.6 0"]


@pytest.fixture(scope="module")
def openimages(tmp_path_factory):
    """An Open Images root: CSV + class descriptions + masks (flat and in a zip folder) + images (flat
    and in a CVDF folder). Returns (root, {mask name: mask at its own resolution})."""
    root = tmp_path_factory.mktemp("openimages")
    with open(root / "class-descriptions-boxable.csv", "w", newline="") as file:
        csv.writer(file).writerows(CLASSES.items())  # V5/V6: no header
    with open(root / "oidv7-class-descriptions.csv", "w", newline="") as file:
        csv.writer(file).writerows([["LabelName", "DisplayName"], *CLASSES.items()])
    _write_jpg(root / "train" / f"{ID_A}.jpg", 60, 80, (200, 30, 30))  # 2x its masks
    _write_jpg(root / "train" / f"train_{ID_B[0]}" / f"{ID_B}.jpg", 75, 100, (30, 200, 30))  # 2.5x
    masks = {
        f"{ID_A}_m0bt9lr_00000001.png": (_rect(30, 40, 5, 15, 8, 20), "L255", "/m/0bt9lr"),
        f"{ID_B}_m0bt9lr_00000002.png": (_rect(30, 40, 5, 15, 8, 20), "1", "/m/0bt9lr"),
        f"{ID_B}_m01yrx_00000003.png": (_rect(30, 40, 0, 30, 30, 40), "L01", "/m/01yrx"),
        f"{ID_B}_m01g317_00000004.png": (_rect(30, 40, 20, 22, 0, 2), "L255", "/m/01g317"),  # tiny
    }
    rows = []
    for name, (mask, mode, label) in masks.items():
        folder = root / "masks" if name.startswith(ID_A) else root / "masks" / f"train-masks-{name[0]}"
        values = mask * 255 if mode == "L255" else mask
        _write_png(folder / name, values, "1" if mode == "1" else "L")
        rows.append(_mask_row(name, name.split("_")[0], label))
    with open(root / "train-annotations-object-segmentation.csv", "w", newline="") as file:
        csv.writer(file).writerows([COLUMNS, *rows])
    (root / "captions.json").write_text(json.dumps({ID_A: "a brown dog on a red rug"}))
    return root, {name: mask for name, (mask, _, _) in masks.items()}


def _oi_source(root, **kwargs):
    kwargs.setdefault("captions_json", root / "captions.json")
    return OpenImagesSource(root / "train-annotations-object-segmentation.csv", root / "masks", root / "train",
                            kwargs.pop("classes", root / "class-descriptions-boxable.csv"), **kwargs)


# -------------------------------------------------------------------------------------------- resize

def test_resize_nearest_matches_opencv():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w, height, width = rng.integers(1, 40, size=4)
        mask = (rng.random((h, w)) < 0.5).astype(np.uint8)
        reference = cv2.resize(mask, (int(width), int(height)), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resize_nearest(mask[None], height, width)[0], reference)


# --------------------------------------------------------------------------------------- Open Images

def test_openimages_records_are_the_drawn_masks(openimages):
    root, _ = openimages
    source = _oi_source(root)
    assert len(source) == 2
    a, b = source[0], source[1]
    assert a["image"].shape == (60, 80, 3) and b["image"].shape == (75, 100, 3)
    # written by OpenCV as BGR (200, 30, 30), i.e. blue: read back as RGB
    assert abs(a["image"][..., 0].mean() - 30) < 4 and abs(a["image"][..., 2].mean() - 200) < 4
    # 2x: every mask pixel repeated 2x2, rows 5..14 -> 10..29, cols 8..19 -> 16..39
    np.testing.assert_array_equal(a["masks"], _rect(60, 80, 10, 30, 16, 40)[None])
    # 2.5x (30x40 -> 75x100): out row i <- floor(0.4 i): rows [5, 15) -> i in [13, 38), cols [8, 20) -> [20, 50)
    dog, cat, person = _rect(75, 100, 13, 38, 20, 50), _rect(75, 100, 0, 75, 75, 100), _rect(75, 100, 50, 55, 0, 5)
    np.testing.assert_array_equal(b["masks"], np.stack([dog, cat, person]))
    assert a["labels"] == ["dog"] and b["labels"] == ["dog", "cat", "person"]
    assert a["masks"].dtype == np.uint8 and set(np.unique(b["masks"])) == {0, 1}
    # side-file caption (keyed by the ImageID stem) vs the fallback from the labels
    assert a["captions"] == ["a brown dog on a red rug"]
    assert b["captions"] == ["a photo of a dog, a cat and a person"]
    assert a["source"].endswith(f"train/{ID_A}.jpg") and b["source"].endswith(f"train_f/{ID_B}.jpg")


def test_openimages_options_and_v7_class_file(openimages):
    root, _ = openimages
    # person covers 25 / 7500 px = 0.33 %: dropped at 1 %; at most 1 instance keeps the largest (the cat)
    b = _oi_source(root, min_mask_area=0.01)[1]
    assert b["labels"] == ["dog", "cat"]
    b = _oi_source(root, max_instances=1)[1]
    assert b["labels"] == ["cat"] and b["masks"].shape == (1, 75, 100) and b["masks"][0, 0, 99] == 1
    b = _oi_source(root, classes=root / "oidv7-class-descriptions.csv", lowercase_labels=False, captions_json=None,
                   caption_fallback=False)[1]
    assert b["labels"] == ["Dog", "Cat", "Person"] and b["captions"] == []
    assert read_class_names(root / "oidv7-class-descriptions.csv") == CLASSES


def test_openimages_feeds_the_anyscene_transform(openimages):
    root, _ = openimages
    example = anyscene_data.make_transform(size=32)(_oi_source(root)[1], np.random.default_rng(0))
    assert example["caption"] == "a photo of a dog, a cat and a person"
    assert example["mask"].shape == (32, 32, 1) and example["mask"].sum() > 0


def _rewrite_csv(root, tmp_path, edit):
    rows = list(csv.reader(open(root / "train-annotations-object-segmentation.csv")))
    path = tmp_path / "train-annotations-object-segmentation.csv"
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows(edit(rows))
    return path


def test_openimages_bad_input_names_file_row_and_column(openimages, tmp_path):
    root, _ = openimages
    make = lambda csv_path, classes=root / "class-descriptions-boxable.csv": OpenImagesSource(
        csv_path, root / "masks", root / "train", classes)
    drop_label = lambda rows: [[v for k, v in enumerate(r) if k != 2] for r in rows]
    path = _rewrite_csv(root, tmp_path, drop_label)
    with pytest.raises(RecordError, match=r"header lacks column\(s\) \['LabelName'\]") as err:
        make(path)
    assert err.value.path == str(path)
    with pytest.raises(RecordError, match=r"line 3, column LabelName: '/m/0xyz' is not in .*boxable"):
        make(_rewrite_csv(root, tmp_path, lambda rows: rows[:2] + [rows[2][:2] + ["/m/0xyz"] + rows[2][3:]]))
    with pytest.raises(RecordError, match="line 2, column ImageID: empty"):
        make(_rewrite_csv(root, tmp_path, lambda rows: [rows[0], [rows[1][0], ""] + rows[1][2:]]))
    with pytest.raises(RecordError, match="line 2: expected 10 comma-separated fields"):
        make(_rewrite_csv(root, tmp_path, lambda rows: [rows[0], rows[1][:4]]))
    with pytest.raises(RecordError, match="line 2, column MaskPath: expected a PNG file name"):
        make(_rewrite_csv(root, tmp_path, lambda rows: [rows[0], ["sub/" + rows[1][0]] + rows[1][1:]]))
    bad_classes = tmp_path / "classes.csv"
    bad_classes.write_text("/m/0bt9lr,Dog\n/m/01yrx\n")
    with pytest.raises(RecordError, match="line 2: expected 'MID,display name'") as err:
        make(root / "train-annotations-object-segmentation.csv", bad_classes)
    assert err.value.path == str(bad_classes)
    with pytest.raises(RecordError, match="segmentation CSV not found"):
        make(tmp_path / "validation-annotations-object-segmentation.csv")
    # a mask listed in the CSV but absent on disk: named when its record is read
    path = _rewrite_csv(root, tmp_path, lambda rows: rows + [_mask_row(f"{ID_A}_m01yrx_0000000f.png", ID_A,
                                                                      "/m/01yrx")])
    with pytest.raises(RecordError, match="mask PNG not found") as err:
        make(path)[0]
    assert err.value.path.endswith(f"masks/{ID_A}_m01yrx_0000000f.png")


# ---------------------------------------------------------------------------------------------- faces

# a 32x32 label map (CelebAMask-HQ numbering) for 64x64 photos: skin 1, hair 13, cloth 18, background 0
LABELS = np.zeros((32, 32), np.uint8)
LABELS[4:12, 8:24] = 13
LABELS[12:24, 10:22] = 1
LABELS[26:32, 4:28] = 18


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffhq")
    for stem, folder in (("00000", "00000"), ("00001", "00000"), ("01000", "01000")):  # FFHQ's chunk folders
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "images" / folder / f"{stem}.png")
    _write_png(root / "masks" / "00000.png", _rect(32, 32, 8, 24, 4, 20) * 255, "L")
    _write_png(root / "masks" / "01000.png", _rect(16, 16, 0, 8, 0, 16), "1")  # another resolution again
    _write_png(root / "label_maps" / "00000" / "00000.png", LABELS, "L")
    _write_png(root / "label_maps" / "01000" / "01000.png", LABELS, "P")  # palette PNG: indices are labels
    (root / "captions.json").write_text(json.dumps({"00000.png": ["a smiling woman", "  "], "other/9.png": "x"}))
    return root


def test_faces_mask_folder(faces):
    source = FaceSource(faces / "images", mask_dir=faces / "masks", captions_json=faces / "captions.json")
    assert len(source) == 2  # 00001 has no mask
    first, second = source[0], source[1]
    np.testing.assert_array_equal(first["masks"], _rect(64, 64, 16, 48, 8, 40)[None])  # 2x
    np.testing.assert_array_equal(second["masks"], _rect(64, 64, 0, 32, 0, 64)[None])  # 4x
    assert first["labels"] == ["person"] and first["captions"] == ["a smiling woman"]
    assert second["captions"] == ["a photo of a person"] and second["image"].shape == (64, 64, 3)


def test_faces_label_maps_default_and_chosen_labels(faces):
    source = FaceSource(faces / "images", label_dir=faces / "label_maps", label="face")
    expected = np.kron((LABELS > 0).astype(np.uint8), np.ones((2, 2), np.uint8))  # every label but 0, 2x
    for k in range(2):
        record = source[k]
        np.testing.assert_array_equal(record["masks"], expected[None])
        assert record["labels"] == ["face"] and record["captions"] == ["a photo of a face"]
    skin_only = FaceSource(faces / "images", label_dir=faces / "label_maps", foreground_labels=(1,))
    for k in range(2):  # grey ("L") and palette ("P") maps give the same ids
        np.testing.assert_array_equal(skin_only[k]["masks"][0],
                                      np.kron((LABELS == 1).astype(np.uint8), np.ones((2, 2), np.uint8)))
    no_hair = FaceSource(faces / "images", label_dir=faces / "label_maps", background_labels=(0, 13))[0]
    assert no_hair["masks"].sum() == 4 * np.isin(LABELS, (1, 18)).sum()
    example = anyscene_data.make_transform(size=32)(no_hair, np.random.default_rng(0))
    assert example["caption"] == "a photo of a person"


def test_faces_bad_input(faces, tmp_path):
    with pytest.raises(ValueError, match="exactly one of mask_dir"):
        FaceSource(faces / "images")
    with pytest.raises(RecordError, match="no photo has a matching mask") as err:
        FaceSource(faces / "images", mask_dir=tmp_path)
    assert err.value.path == str(faces / "images")
    wide = tmp_path / "wide"
    _write_png(wide / "00000.png", np.ones((32, 48), np.uint8), "L")
    with pytest.raises(RecordError, match="another aspect ratio") as err:
        FaceSource(faces / "images", mask_dir=wide)[0]
    assert err.value.path == str(wide / "00000.png")
    empty = tmp_path / "empty"
    _write_png(empty / "00000.png", np.full((32, 32), 13, np.uint8), "L")
    with pytest.raises(RecordError, match="no foreground pixel"):
        FaceSource(faces / "images", label_dir=empty, foreground_labels=(1,))[0]
    twice = tmp_path / "twice"
    for folder in ("a", "b"):
        _write_png(twice / folder / "00000.png", LABELS, "L")
    with pytest.raises(RecordError, match="stem '00000' also names"):
        FaceSource(faces / "images", label_dir=twice)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb / "00000.png")
    with pytest.raises(RecordError, match="mode 'RGB'"):
        FaceSource(faces / "images", label_dir=rgb)[0]


# -------------------------------------------------------------------------------------------- captions

def test_fallback_caption_english():
    assert fallback_caption(["dog"]) == "a photo of a dog"
    assert fallback_caption(["dog", "cat", "dog"]) == "a photo of a dog and a cat"
    assert fallback_caption(["apple", "person", "umbrella"]) == "a photo of an apple, a person and an umbrella"
    assert fallback_caption(["", " "]) == "" and fallback_caption([]) == ""


def test_side_captions_lookup_and_errors(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"a.jpg": "one", "b": ["two", "three"], "sub/c.png": " four ", "d.png": ""}))
    captions = SideCaptions(path)
    assert captions("/x/a.jpg", ["dog"]) == ["one"] and captions("/x/b.png", []) == ["two", "three"]
    assert captions("c.png", []) == ["four"] and captions("d.png", ["cat"]) == ["a photo of a cat"]
    assert SideCaptions(None, fallback=False)("a.jpg", ["dog"]) == []
    for content, message in (([1, 2], "top level: expected a JSON object"),
                             ({"a.jpg": 3}, "entry 'a.jpg': expected a caption string or a list"),
                             ({"a.jpg": ["x", None]}, "entry 'a.jpg': expected a caption string"),
                             ({"p/a.jpg": "x", "q/a.jpg": "y"}, "entries 'p/a.jpg' and 'q/a.jpg' name the same")):
        path.write_text(json.dumps(content))
        with pytest.raises(RecordError, match=message) as err:
            load_caption_file(path)
        assert err.value.path == str(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="invalid JSON"):
        load_caption_file(path)


# --------------------------------------------------------------------------------------------- mixture

@pytest.fixture(scope="module")
def mixture_roots(tmp_path_factory):
    """Open Images and faces roots of 32 one-mask images each (grain's index shuffle, used by the
    mixture, takes ~10 ms per element over 4 records but well under 1 ms over 32)."""
    root = tmp_path_factory.mktemp("mixture")
    oi, faces = root / "openimages", root / "ffhq"
    (oi / "masks").mkdir(parents=True)
    with open(oi / "class-descriptions-boxable.csv", "w", newline="") as file:
        csv.writer(file).writerows(CLASSES.items())
    rows = [COLUMNS]
    for k in range(32):
        image_id, mask_name = f"{k:016x}", f"{k:016x}_m0bt9lr_{k:08x}.png"
        _write_jpg(oi / "train" / f"{image_id}.jpg", 16, 16, (k, 100, 100))
        _write_png(oi / "masks" / mask_name, _rect(8, 8, 2, 6, 2, 6), "L")
        rows.append(_mask_row(mask_name, image_id, "/m/0bt9lr"))
        _write_jpg(faces / "images" / f"{k:05d}.jpg", 16, 16, (100, k, 100))
        _write_png(faces / "masks" / f"{k:05d}.png", _rect(8, 8, 1, 7, 2, 6) * 255, "L")
    with open(oi / "train-annotations-object-segmentation.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    return oi, faces


def _data(openimages_root, faces_root, **changes):
    data = get_config("tiny").data
    data.update(num_records=32, image_size=32, openimages_root=str(openimages_root), faces_root=str(faces_root),
                faces_masks="masks", faces_label_maps="")
    data.update(changes)
    return data


def _shares_within_4_sigma(mix, roots, weights, draws):
    counts = dict.fromkeys(roots, 0)
    for i in range(draws):
        source = mix[i]["source"]
        counts[next(name for name, root in roots.items() if source.startswith(root))] += 1
    total = sum(weights.values())
    for name, count in counts.items():
        p = weights.get(name, 0) / total  # a dataset left out must never be drawn
        assert abs(count - draws * p) <= 4 * np.sqrt(draws * p * (1 - p)), (name, count, draws * p)
    return counts


def test_mixture_shares_match_weights_and_renormalise(mixture_roots, tmp_path):
    oi, faces = mixture_roots
    weights = {"coco": 0.5, "openimages": 0.3, "faces": 0.2}
    data = _data(oi, faces, **{f"{k}_weight": v for k, v in weights.items()})
    roots = {"coco": str(tmp_path / "data" / "coco"), "openimages": str(oi), "faces": str(faces)}
    assert [(name, len(source)) for name, source, _ in anyscene_components(data, tmp_path)] == [
        ("coco", 32), ("openimages", 32), ("faces", 32)]
    counts = _shares_within_4_sigma(make_anyscene_source(data, tmp_path), roots, weights, 1200)
    assert min(counts.values()) > 0
    # faces left out (no root, or weight 0): the other two keep their ratio 5 : 3
    for change in ({"faces_root": ""}, {"faces_weight": 0.0}):
        data = _data(oi, change.get("faces_root", faces), coco_weight=0.5, openimages_weight=0.3,
                     faces_weight=change.get("faces_weight", 1.0))
        assert [name for name, _, _ in anyscene_components(data, tmp_path)] == ["coco", "openimages"]
        _shares_within_4_sigma(make_anyscene_source(data, tmp_path), roots, {"coco": 5, "openimages": 3}, 600)


def test_tiny_config_is_coco_synthetic_only(tmp_path):
    data = get_config("tiny").data
    data.num_records = 4
    source = make_anyscene_source(data, tmp_path)
    assert isinstance(source, CocoSource) and len(source) == 4
    image_dir, instances, captions = coco_paths(data, tmp_path)
    direct = CocoSource(image_dir, instances, captions)
    np.testing.assert_array_equal(source[1]["masks"], direct[1]["masks"])
    assert source[1]["captions"] == direct[1]["captions"] != []
    paper = get_config("").data
    assert paper.coco_root and paper.openimages_root and paper.faces_root  # the paper's three datasets


def test_mixture_config_errors(mixture_roots, tmp_path):
    oi, faces = mixture_roots
    with pytest.raises(ValueError, match="openimages_weight = -1.0: expected >= 0"):
        anyscene_components(_data(oi, faces, openimages_weight=-1.0), tmp_path)
    with pytest.raises(ValueError, match="no training data"):
        anyscene_components(_data("", "", coco_root=""), tmp_path)
    with pytest.raises(ValueError, match="faces_masks = 'masks', faces_label_maps = 'label_maps'"):
        anyscene_components(_data("", faces, coco_root="", faces_label_maps="label_maps"), tmp_path)
    with pytest.raises(ValueError, match="needs a workdir"):
        anyscene_components(_data("", ""), None)
