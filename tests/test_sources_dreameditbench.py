"""DreamEditBench reader against a tiny copy of the released layout written here.

The fixture mirrors the Hugging Face release (data/addition_source/<set>/found<i>.jpg + bbox.json, stray
.DS_Store and image.png files, replacement_source without boxes) and the DreamBooth dataset folder the
references come from (dataset/<subject>/NN.jpg + prompts_and_classes.txt). Expected boxes are worked out by
hand from the 512-frame convention; bad files must be named with the expected form.
"""

import json

import cv2
import numpy as np
import pytest

from input_pipeline.records import RecordError
from input_pipeline.sources import dreameditbench as deb

CLASSES = """Classes

subject_name,class
backpack,backpack
backpack_dog,backpack
bear_plushie,stuffed animal
dog,dog
dog8,dog

Prompts

Object Prompts
prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
]
"""


def _photo(height, width, red):
    """A smooth RGB image with distinct channels (a channel swap or flip would not match)."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    planes = [np.full((height, width), red, np.float32), ramp, np.full((height, width), 30.0)]
    return np.stack(planes, -1).astype(np.uint8)


def _write_jpg(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])


def _bench(root):
    """Writes the fixture under `root`; returns (bench root, dreambooth root, {path: written image})."""
    data = root / "DreamEditBench" / "data"
    images = {}
    sets = {  # set -> {file: (height, width, box in the 512 frame)}
        "dog": {"found0.jpg": (48, 64, [100, 50, 300, 500]), "found1.jpg": (48, 64, [0, 0, 512, 512])},
        "backpack": {"found0.jpg": (40, 40, [256, 256, 257, 257])},
        "bear_plushie": {"found2.jpg": (32, 48, [0, 0, 256, 256]), "found10.jpg": (32, 48, [10, 20, 30, 40])},
    }
    for red, (name, files) in enumerate(sets.items()):
        for file, (height, width, _) in files.items():
            images[data / "addition_source" / name / file] = _photo(height, width, 60 + 60 * red)
            _write_jpg(data / "addition_source" / name / file, images[data / "addition_source" / name / file])
        (data / "addition_source" / name / "bbox.json").write_text(json.dumps({f: b for f, (_, _, b) in files.items()}))
    (data / "addition_source" / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    cv2.imwrite(str(data / "addition_source" / "bear_plushie" / "image.png"), np.zeros((4, 4, 3), np.uint8))
    _write_jpg(data / "replacement_source" / "dog" / "found0.jpg", _photo(30, 20, 90))
    (data / "addition_subset.csv").write_text("subject,file_name\n")
    dreambooth = root / "dreambooth" / "dataset"
    dreambooth.mkdir(parents=True)
    (dreambooth / "prompts_and_classes.txt").write_text(CLASSES)
    for k, subject in enumerate(["backpack", "backpack_dog", "bear_plushie", "dog", "dog8"]):
        for i in range(2):
            images[dreambooth / subject / f"0{i}.jpg"] = _photo(24, 32, 20 * k + i)
            _write_jpg(dreambooth / subject / f"0{i}.jpg", images[dreambooth / subject / f"0{i}.jpg"])
    return root / "DreamEditBench", root / "dreambooth", images


def _close(decoded, written):
    assert decoded.shape == written.shape and decoded.dtype == np.uint8
    difference = np.abs(decoded.astype(int) - written.astype(int))
    assert difference.max() <= 8 and difference.mean() < 1.5  # JPEG quality 100 on a smooth image


def test_addition_backgrounds_boxes_and_images(tmp_path):
    bench, _, images = _bench(tmp_path)
    backgrounds = deb.DreamEditBenchBackgrounds(bench)
    got = {(r["category"], r["source"].rsplit("/", 1)[1]): r for r in backgrounds}
    assert len(backgrounds) == 5 and list(got) == [  # sets sorted, files in natural order, strays ignored
        ("backpack", "found0.jpg"), ("bear_plushie", "found2.jpg"), ("bear_plushie", "found10.jpg"),
        ("dog", "found0.jpg"), ("dog", "found1.jpg")]
    # x0 = floor(x_min W / 512), x1 = ceil(x_max W / 512): 100*64/512 = 12.5 -> 12, 50*48/512 = 4.69 -> 4,
    # 300*64/512 = 37.5 -> 38, 500*48/512 = 46.9 -> 47
    assert got["dog", "found0.jpg"]["box"] == (12, 4, 38, 47)
    assert got["dog", "found1.jpg"]["box"] == (0, 0, 64, 48)
    assert got["backpack", "found0.jpg"]["box"] == (20, 20, 21, 21)  # a 1-pixel box stays 1 pixel (40/512 each)
    assert got["bear_plushie", "found2.jpg"]["box"] == (0, 0, 24, 16)
    # 10*48/512 = 0.94 -> 0, 20*32/512 = 1.25 -> 1, 30*48/512 = 2.81 -> 3, 40*32/512 = 2.5 -> 3
    assert got["bear_plushie", "found10.jpg"]["box"] == (0, 1, 3, 3)
    for record in backgrounds:
        _close(record["image"], images[tmp_path / "DreamEditBench" / "data" / "addition_source" / record["category"]
                                       / record["source"].rsplit("/", 1)[1]])
    # the data/ folder itself also works as root; boxes as image pixels with box_frame=None
    (bench / "data" / "addition_source" / "dog" / "bbox.json").write_text(
        '{"found0.jpg": [3, 4, 64, 48], "found1.jpg": [0, 1, 2, 3]}')
    pixels = deb.DreamEditBenchBackgrounds(bench / "data", sets=["dog"], box_frame=None)
    assert [r["box"] for r in pixels] == [(3, 4, 64, 48), (0, 1, 2, 3)]


def test_objects_pairs_and_references(tmp_path):
    bench, dreambooth, images = _bench(tmp_path)
    objs = deb.objects(bench, dreambooth)
    assert [(o.name, o.class_noun, o.background_set) for o in objs] == [
        ("backpack", "backpack", "backpack"), ("backpack_dog", "backpack", "backpack"),
        ("bear_plushie", "stuffed animal", "bear_plushie"), ("dog", "dog", "dog"), ("dog8", "dog", "dog")]
    backgrounds = deb.DreamEditBenchBackgrounds(bench)
    pairs = deb.pairs(backgrounds, objs)
    assert len(pairs) == 1 + 1 + 2 + 2 + 2  # each object x the backgrounds of its set
    assert all(backgrounds.items[i][2] == obj.background_set for obj, i in pairs)
    assert [i for obj, i in pairs if obj.name == "dog8"] == [3, 4]

    whole = deb.dreameditbench_references(dreambooth, "dog8", whole_image=True)
    assert len(whole) == 2
    for i, record in enumerate(whole):
        _close(record["image"], images[dreambooth / "dataset" / "dog8" / f"0{i}.jpg"])
        np.testing.assert_array_equal(record["mask"], np.ones((24, 32), np.uint8))
    masks = tmp_path / "masks" / "dog8"
    masks.mkdir(parents=True)
    written = []
    for i in range(2):
        mask = np.zeros((24, 32), np.uint8)
        mask[2 + i:20, 5:17 + i] = 255
        cv2.imwrite(str(masks / f"0{i}.png"), mask)
        written.append((mask > 0).astype(np.uint8))
    masked = deb.dreameditbench_references(dreambooth / "dataset", "dog8", mask_dir=tmp_path / "masks")
    for i, record in enumerate(masked):
        np.testing.assert_array_equal(record["mask"], written[i])
    with pytest.raises(RecordError, match=r"dataset/dog8: DreamBooth reference photos have no masks"):
        deb.dreameditbench_references(dreambooth, "dog8")
    with pytest.raises(RecordError, match=r"masks/dog/00\.png: mask of .*00\.jpg not found"):
        deb.dreameditbench_references(dreambooth, "dog", mask_dir=tmp_path / "masks")


def test_replacement_needs_boxes(tmp_path):
    bench, _, _ = _bench(tmp_path)
    with pytest.raises(RecordError, match=r"replacement_source: the release has no boxes for replacement"):
        deb.DreamEditBenchBackgrounds(bench, task="replacement")
    (tmp_path / "boxes" / "dog").mkdir(parents=True)
    (tmp_path / "boxes" / "dog" / "bbox.json").write_text('{"found0.jpg": [2, 3, 18, 29]}')
    source = deb.DreamEditBenchBackgrounds(bench, task="replacement", box_dir=tmp_path / "boxes", box_frame=None)
    assert len(source) == 1 and source[0]["box"] == (2, 3, 18, 29) and source[0]["image"].shape == (30, 20, 3)


BAD_BBOX = [  # (bbox.json text for set "dog", error the constructor must raise)
    (None, r"dog/bbox\.json: JSON file not found"),
    ('{"found0.jpg": [1, 2, 3, 4],', r"dog/bbox\.json: invalid JSON"),
    ('[[1, 2, 3, 4]]', r"dog/bbox\.json: expected a JSON object"),
    ('{"found0.jpg": [1, 2, 3, 4],\n"found1.jpg": [1, 2, 3]\n}',
     r"dog/bbox\.json: line 2, entry 'found1\.jpg': expected \[x_min, y_min, x_max, y_max\] integers"),
    ('{"found0.jpg": ["1", 2, 3, 4], "found1.jpg": [1, 2, 3, 4]}', r"entry 'found0\.jpg': expected \[x_min"),
    ('{"found0.jpg": [5, 5, 5, 9], "found1.jpg": [1, 2, 3, 4]}',
     r"entry 'found0\.jpg': box \[5, 5, 5, 9\] has zero area"),
    ('{"found0.jpg": [0, 0, 600, 10], "found1.jpg": [1, 2, 3, 4]}',
     r"box \[0, 0, 600, 10\] is outside the 512x512 frame"),
    ('{"found0.jpg": [1, 2, 3, 4]}', r"dog/found1\.jpg: no box for this background in .*dog/bbox\.json"),
]


@pytest.mark.parametrize("text, error", BAD_BBOX)
def test_bad_bbox_files_are_named(tmp_path, text, error):
    bench, _, _ = _bench(tmp_path)
    path = bench / "data" / "addition_source" / "dog" / "bbox.json"
    path.unlink() if text is None else path.write_text(text)
    with pytest.raises(RecordError, match=error):
        deb.DreamEditBenchBackgrounds(bench)


def test_bad_images_and_folders_are_named(tmp_path):
    bench, dreambooth, _ = _bench(tmp_path)
    folder = bench / "data" / "addition_source" / "dog"
    boxes = {f"found{i}.jpg": [0, 0, 9, 9] for i in (0, 1, 5)}
    (folder / "bbox.json").write_text(json.dumps(boxes))
    (folder / "found0.jpg").write_bytes(b"not a jpeg")
    source = deb.DreamEditBenchBackgrounds(bench, sets=["dog"])
    with pytest.raises(RecordError, match=r"dog/found0\.jpg: not a decodable image"):
        source[0]
    with pytest.raises(RecordError, match=r"dog/found5\.jpg: image file not found"):
        source[2]
    (folder / "bbox.json").write_text('{"found1.jpg": [0, 0, 65, 9]}')
    (folder / "found0.jpg").unlink()
    with pytest.raises(RecordError, match=r"dog/found1\.jpg: box \[0, 0, 65, 9\] in bbox\.json is empty or outside "
                                          r"the 64x48 image"):
        deb.DreamEditBenchBackgrounds(bench, sets=["dog"], box_frame=None)[0]
    with pytest.raises(RecordError, match=r"addition_source/cat: set folder not found"):
        deb.DreamEditBenchBackgrounds(bench, sets=["cat"])
    with pytest.raises(RecordError, match=r"nowhere: DreamEditBench folder not found"):
        deb.DreamEditBenchBackgrounds(tmp_path / "nowhere")
    classes = dreambooth / "dataset" / "prompts_and_classes.txt"
    classes.write_text(CLASSES.replace("bear_plushie,stuffed animal", "bear_plushie stuffed animal"))
    with pytest.raises(RecordError, match=r"prompts_and_classes\.txt: line 6: expected '<subject>,<class>'"):
        deb.objects(bench, dreambooth)
    classes.write_text(CLASSES.replace("dog8,dog", "wolf_plushie,stuffed animal"))
    with pytest.raises(RecordError, match=r"no background set for subject 'wolf_plushie' \(class 'stuffed animal'\)"):
        deb.objects(bench, dreambooth)
    classes.write_text("Classes\n\nbackpack,backpack\n")
    with pytest.raises(RecordError, match=r"prompts_and_classes\.txt: no 'subject_name,class' header"):
        deb.objects(bench, dreambooth)
    classes.unlink()
    with pytest.raises(RecordError, match=r"prompts_and_classes\.txt: DreamBooth classes file not found"):
        deb.objects(bench, dreambooth)


@pytest.mark.parametrize("objects, error", [
    ((), "config.data.objects is empty"),
    (("folder:/photos/dog:",), "no class noun after the folder"),
    (("folder:/photos/dog",), "expected 'murecom:<Category>/fg<k>', 'dreameditbench:<subject>' or 'folder:"),
    (("murecom:/fg1",), "'murecom:/fg1': expected 'murecom:<Category>/fg<k>'"),
    (("murecom:Dog/fg1", "folder:/x/Dog_fg1:dog"), "object names repeat"),
])
def test_object_specs_are_checked(objects, error):
    from types import SimpleNamespace

    from input_pipeline.dreamcom_objects import parse_objects

    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        parse_objects(SimpleNamespace(objects=objects))


def test_reference_folders_need_photos_with_masks(tmp_path):
    from input_pipeline.sources.dreambooth import ReferenceFolderSource

    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no reference photos found"):
        ReferenceFolderSource(tmp_path / "empty")
    with pytest.raises(RecordError, match="reference photo folder not found"):
        ReferenceFolderSource(tmp_path / "missing")
    (tmp_path / "unmasked").mkdir()
    cv2.imwrite(str(tmp_path / "unmasked" / "0.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RecordError, match="no mask found"):
        ReferenceFolderSource(tmp_path / "unmasked")
