"""Dataset readers against the content their fixtures wrote in the real on-disk formats.

The synthetic writer draws known masks and writes them as COCO polygons / RLE and YouTube-VOS palette
PNGs; the readers must give those masks back. RLE is also checked against hand-computed strings and
pycocotools' encoder, polygons against a hand-computed rectangle; bad input must name file and field.
"""

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline.records import RecordError
from input_pipeline.sources import coco, dreambooth, murecom, sa1b, saliency, synthetic, video


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.write_synthetic(root, num_images=6, num_videos=3, num_frames=6, image_size=(96, 128), seed=3)


def _boundary_band(mask):
    """Pixels within one pixel of the mask's edge (where rasterisation conventions may disagree)."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask, kernel).astype(bool) & ~cv2.erode(mask, kernel).astype(bool)


# ------------------------------------------------------------------------------------------- RLE / polygons

def test_rle_writer_matches_pycocotools_encoder():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 24, size=2)
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        reference = mask_utils.encode(np.asfortranarray(mask))
        assert synthetic.compress_counts(synthetic.rle_counts(mask)) == reference["counts"].decode()


def test_compressed_rle_hand_computed():
    # counts [2, 3, 4]: one char each ('2', '3', '4'); column-major 2 zeros, 3 ones, 4 zeros
    got = coco.decode_segmentation({"size": [3, 3], "counts": "234"}, 3, 3, "x.json", "a")
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 1, 0], [1, 0, 0]])
    # counts [1, 5, 1, 2]: the 4th is stored as 2 - 5 = -3 -> 5-bit group 29 -> chr(29 + 48) = 'M'
    got = coco.decode_segmentation({"size": [3, 3], "counts": "151M"}, 3, 3, "x.json", "a")
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 1, 1], [1, 1, 1]])
    # counts [40, 8]: 40 = 8 + 1*32 -> chars chr(8 + 32 + 48) = 'X', chr(1 + 48) = '1'; last column set
    got = coco.decode_segmentation({"size": [8, 6], "counts": "X18"}, 8, 6, "x.json", "a")
    expected = np.zeros((8, 6), np.uint8)
    expected[:, 5] = 1
    np.testing.assert_array_equal(got, expected)
    # the same mask as uncompressed counts
    got = coco.decode_segmentation({"size": [8, 6], "counts": [40, 8]}, 8, 6, "x.json", "a")
    np.testing.assert_array_equal(got, expected)


def test_polygon_hand_computed_rectangle():
    # COCO pixels are unit squares; the rectangle x in [1, 5], y in [1, 4] covers columns 1..4, rows 1..3
    got = coco.decode_segmentation([[1, 1, 5, 1, 5, 4, 1, 4]], 8, 8, "x.json", "a")
    expected = np.zeros((8, 8), np.uint8)
    expected[1:4, 1:5] = 1
    np.testing.assert_array_equal(got, expected)
    # two polygons of one object are merged
    got = coco.decode_segmentation([[1, 1, 5, 1, 5, 4, 1, 4], [6, 6, 8, 6, 8, 8, 6, 8]], 8, 8, "x.json", "a")
    expected[6:8, 6:8] = 1
    np.testing.assert_array_equal(got, expected)


# -------------------------------------------------------------------------------------------------- COCO

def test_coco_reader_returns_drawn_content(syn):
    source = coco.CocoSource(syn.coco_dir / "images", syn.coco_dir / "annotations" / "instances.json",
                             syn.coco_dir / "annotations" / "captions.json")
    assert len(source) == len(syn.images) == 6
    kinds = set()
    for i, truth in enumerate(syn.images):
        record = source[i]
        assert record["source"] == truth["file"]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (96, 128, 3)
        # JPEG (quality 95, chroma subsampled) stays close to the drawn RGB pixels, far from BGR order
        error = np.abs(record["image"].astype(float) - truth["image"]).mean()
        assert error < 8.0 and error < 0.5 * np.abs(record["image"][..., ::-1].astype(float) - truth["image"]).mean()
        assert record["masks"].dtype == np.uint8 and record["masks"].shape == truth["masks"].shape
        assert set(np.unique(record["masks"])) <= {0, 1}
        assert record["labels"] == truth["labels"]
        assert record["captions"] == truth["captions"]
        for got, drawn, kind in zip(record["masks"], truth["masks"], truth["encodings"]):
            kinds.add(kind)
            if kind == "polygon":  # OpenCV's fill vs COCO's area rasterisation differ on the edge only
                differ = got != drawn
                assert not (differ & ~_boundary_band(drawn)).any()
                assert (got & drawn).sum() / (got | drawn).sum() > 0.75
            else:  # RLE is lossless
                np.testing.assert_array_equal(got, drawn)
    assert kinds == {"polygon", "rle", "compressed_rle"}


def test_image_pair(syn):
    source = coco.CocoSource(syn.coco_dir / "images", syn.coco_dir / "annotations" / "instances.json")
    record = source[0]
    seen = set()
    for seed in range(20):
        pair = coco.image_pair(record, np.random.default_rng(seed))
        assert pair["dynamic"] is False and pair["source"] == record["source"]
        assert pair["reference_image"] is record["image"] and pair["target_image"] is record["image"]
        np.testing.assert_array_equal(pair["reference_mask"], pair["target_mask"])
        seen.add(next(k for k, m in enumerate(record["masks"]) if np.array_equal(m, pair["reference_mask"])))
    assert seen == set(range(len(record["masks"])))  # every instance gets picked
    empty = {**record, "masks": np.zeros((2, 96, 128), np.uint8)}
    with pytest.raises(RecordError, match="no instance with a non-empty mask"):
        coco.image_pair(empty, np.random.default_rng(0))


def _tiny_coco(tmp_path, segmentation, image_entry=None, write_image=True):
    """A one-image COCO file in the real format; returns (image_dir, json path)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    if write_image:
        cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.full((8, 8, 3), 128, np.uint8))
    data = {"images": [image_entry or {"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": segmentation}],
            "categories": [{"id": 7, "name": "thing"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path / "img", path


def test_lvis_style_coco_url_without_captions(tmp_path):
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4, 1, 4]], {
        "id": 1, "coco_url": "http://images.cocodataset.org/train2017/a.jpg", "height": 8, "width": 8})
    record = coco.CocoSource(image_dir, path)[0]
    assert record["labels"] == ["thing"] and record["captions"] == [] and record["masks"][0].sum() == 12


def test_coco_bad_input_names_file_and_field(tmp_path):
    # malformed segmentation: the error names the JSON file and the field, at read time
    image_dir, path = _tiny_coco(tmp_path, 5)
    source = coco.CocoSource(image_dir, path)
    with pytest.raises(RecordError, match=r"instances\.json: annotations\[0\]\.segmentation: expected polygons"):
        source[0]
    image_dir, path = _tiny_coco(tmp_path, {"size": [9, 8], "counts": "X18"})
    with pytest.raises(RecordError, match=r"annotations\[0\]\.segmentation\.size: \[9, 8\] differs"):
        coco.CocoSource(image_dir, path)[0]
    image_dir, path = _tiny_coco(tmp_path, {"size": [8, 8], "counts": [3, 4]})
    with pytest.raises(RecordError, match=r"segmentation\.counts: expected non-negative run lengths summing to"):
        coco.CocoSource(image_dir, path)[0]
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 2]])
    with pytest.raises(RecordError, match="at least 3 points"):
        coco.CocoSource(image_dir, path)[0]
    # missing or mistyped index fields fail at construction
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4]], {"id": "1", "file_name": "a.jpg"})
    with pytest.raises(RecordError, match=r"instances\.json: field 'images\[0\]\.id': expected int, got str"):
        coco.CocoSource(image_dir, path)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(RecordError, match="missing field 'categories'"):
        coco.CocoSource(image_dir, path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match=r"instances\.json: invalid JSON"):
        coco.CocoSource(image_dir, path)
    with pytest.raises(RecordError, match=r"nope\.json: JSON file not found"):
        coco.CocoSource(image_dir, tmp_path / "nope.json")
    # missing image file, and an image whose size disagrees with the JSON
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4]], {"id": 1, "file_name": "b.jpg", "height": 8,
                                                                  "width": 8})
    with pytest.raises(RecordError, match=r"b\.jpg: image file not found"):
        coco.CocoSource(image_dir, path)[0]
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4]], {"id": 1, "file_name": "a.jpg", "height": 9,
                                                                  "width": 8})
    with pytest.raises(RecordError, match=r"a\.jpg: image is 8x8 \(WxH\) but .*instances\.json says 8x9"):
        coco.CocoSource(image_dir, path)[0]
    (image_dir / "a.jpg").write_bytes(b"not an image")
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4]], write_image=False)
    with pytest.raises(RecordError, match=r"a\.jpg: not a decodable image"):
        coco.CocoSource(image_dir, path)[0]


def test_coco_filters(tmp_path):
    image_dir, path = _tiny_coco(tmp_path, [[1, 1, 5, 1, 5, 4, 1, 4]])
    data = json.loads(path.read_text())
    data["annotations"][0]["area"] = 12.0
    data["annotations"].append({"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 1, "area": 40.0,
                                "segmentation": {"size": [8, 8], "counts": [0, 40, 24]}})
    path.write_text(json.dumps(data))
    assert len(coco.CocoSource(image_dir, path)[0]["masks"]) == 1  # crowd dropped
    assert coco.CocoSource(image_dir, path, include_crowd=True)[0]["masks"].sum() == 12 + 40
    assert len(coco.CocoSource(image_dir, path, min_area=20)) == 0  # no annotation left: image dropped
    assert coco.CocoSource(image_dir, path, min_area=20, keep_empty=True)[0]["masks"].shape == (0, 8, 8)


# ------------------------------------------------------------------------------------------------- video

def test_youtube_vos_reader_and_meta(syn, tmp_path):
    source = video.VideoSource(syn.youtube_vos_dir)
    assert len(source) == 2 * len(syn.videos)
    for record in source:
        name = record["source"].rsplit("/", 1)[-1]
        truth = syn.videos[name]
        present = [t for t in range(len(truth["frames"])) if (truth["labels"][t] == record["object_id"]).any()]
        assert record["frame_paths"] == [truth["frames"][t] for t in present]
        assert record["mask_paths"] == [truth["annotations"][t] for t in present]
        assert record["min_gap"] == len(present) // 10
        if record["object_id"] == 2:
            assert present[0] == 2  # the second object enters at frame 2
    # scanning the PNGs (MOSE-style, no meta.json) finds the same index, and saves it for next time
    scanned = video.VideoSource(syn.youtube_vos_dir, "mose")
    assert [{**r, "dynamic": True} for r in scanned] == [r for r in source]
    assert {r["dynamic"] for r in scanned} == {2} and {r["dynamic"] for r in source} == {True}
    cache = tmp_path / "mose_meta.json"
    cache.write_text(json.dumps(scanned.index_meta()))
    assert [r for r in video.VideoSource(syn.youtube_vos_dir, "mose", meta_json=cache)] == [r for r in scanned]


def test_sample_pair_gap_and_masks(syn):
    source = video.VideoSource(syn.youtube_vos_dir, gap_divisor=2)
    record = source[0]
    truth = syn.videos[record["source"].rsplit("/", 1)[-1]]
    n, gap = len(record["frame_paths"]), record["min_gap"]
    assert gap == n // 2 >= 1
    distances = set()
    for seed in range(30):
        pair = video.sample_pair(record, np.random.default_rng(seed))
        i = truth["frames"].index(_closest_frame(pair["reference_image"], truth))
        j = truth["frames"].index(_closest_frame(pair["target_image"], truth))
        assert j - i >= gap
        distances.add(j - i)
        np.testing.assert_array_equal(pair["reference_mask"], truth["labels"][i] == record["object_id"])
        np.testing.assert_array_equal(pair["target_mask"], truth["labels"][j] == record["object_id"])
        assert pair["dynamic"] is True and pair["reference_mask"].dtype == np.uint8
    assert len(distances) > 1


def _closest_frame(image, truth):
    """Which written frame an image was read from (frames differ by motion; JPEG noise is small)."""
    errors = [np.abs(cv2.imread(f)[..., ::-1].astype(float) - image).mean() for f in truth["frames"]]
    assert min(errors) == 0.0
    return truth["frames"][int(np.argmin(errors))]


def test_davis_layout(syn, tmp_path):
    name = next(iter(syn.videos))
    for kind in ("JPEGImages", "Annotations"):
        shutil.copytree(syn.youtube_vos_dir / kind / name, tmp_path / kind / "480p" / name)
    source = video.VideoSource(tmp_path, "davis")
    assert [r["object_id"] for r in source] == [1, 2]
    assert source[0]["frame_paths"][0] == str(tmp_path / "JPEGImages" / "480p" / name / "00000.jpg")


def test_video_bad_input(syn, tmp_path):
    with pytest.raises(RecordError, match=r"JPEGImages: folder not found \(expected the youtube_vos layout"):
        video.VideoSource(tmp_path)
    with pytest.raises(ValueError, match="layout='vos'"):
        video.VideoSource(tmp_path, "vos")
    shutil.copytree(syn.youtube_vos_dir, tmp_path / "ds")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    first = next(iter(meta["videos"]))
    meta["videos"][first]["objects"]["1"]["frames"] = "00000"
    (tmp_path / "ds" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecordError, match=rf"meta\.json: field 'videos\.{first}\.objects\.1\.frames': expected list"):
        video.VideoSource(tmp_path / "ds")
    (tmp_path / "ds" / "meta.json").unlink()
    record = video.VideoSource(tmp_path / "ds")[0]
    # an RGB annotation (no object ids) and a frame where the object is missing
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(record["mask_paths"][-1])
    record = {**record, "min_gap": len(record["frame_paths"]) - 1}  # forces frames 0 and n-1
    with pytest.raises(RecordError, match=r"\.png: annotation PNG has mode 'RGB'; expected a palette"):
        video.sample_pair(record, np.random.default_rng(0))
    Image.fromarray(np.zeros((96, 128), np.uint8), mode="L").save(record["mask_paths"][-1])
    with pytest.raises(RecordError, match=r"\.png: object 1 is absent from this frame"):
        video.sample_pair(record, np.random.default_rng(0))
    missing = record["frame_paths"][0]
    (tmp_path / "ds" / missing.split("/ds/", 1)[1]).unlink()
    with pytest.raises(RecordError, match=r"00000\.jpg: image file not found"):
        video.sample_pair(record, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------- SA-1B

def _write_sa1b(folder, syn, index=0):
    """An SA-1B pair (jpg + json, compressed RLE from the writer's own encoder) from a synthetic image."""
    truth = syn.images[index]
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(truth["file"], folder / f"sa_{index}.jpg")
    rle = [{"size": list(m.shape), "counts": synthetic.compress_counts(synthetic.rle_counts(m))}
           for m in truth["masks"]]
    annotations = [{"id": k, "area": int(m.sum()), "bbox": [0, 0, 1, 1], "segmentation": r}
                   for k, (m, r) in enumerate(zip(truth["masks"], rle))]
    data = {"image": {"image_id": index, "height": 96, "width": 128, "file_name": f"sa_{index}.jpg"},
            "annotations": annotations}
    (folder / f"sa_{index}.json").write_text(json.dumps(data))
    return folder / f"sa_{index}.json"


def test_sa1b_reader(syn, tmp_path):
    _write_sa1b(tmp_path / "sub1", syn, 0)
    json_path = _write_sa1b(tmp_path / "sub2", syn, 1)
    source = sa1b.SA1BSource([tmp_path / "sub1", tmp_path / "sub2"])
    assert len(source) == 2
    record = source[1]
    truth = syn.images[1]
    order = np.argsort([-int(m.sum()) for m in truth["masks"]], kind="stable")  # the reader sorts by area
    np.testing.assert_array_equal(record["masks"], truth["masks"][order])
    assert record["labels"] == [""] * len(order) and record["captions"] == []
    areas = sorted((int(m.sum()) for m in truth["masks"]), reverse=True)
    assert len(sa1b.SA1BSource(tmp_path / "sub2", min_area=areas[0])[0]["masks"]) == 1
    largest = sa1b.SA1BSource(tmp_path / "sub2", max_masks=1)[0]["masks"]
    np.testing.assert_array_equal(largest[0], truth["masks"][order[0]])
    data = json.loads(json_path.read_text())
    del data["annotations"][1]["area"]
    json_path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"sa_1\.json: missing field 'annotations\[1\]\.area'"):
        sa1b.SA1BSource(tmp_path / "sub2")[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match=r"empty: no \*\.jpg with a same-name \*\.json"):
        sa1b.SA1BSource(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- saliency

def _grey_mask(mask):
    """Saliency datasets store 0/255 grey masks (with some anti-aliased grey)."""
    grey = (mask * 255).astype(np.uint8)
    grey[0, 0] = 100  # below the 128 threshold: background
    return grey


def test_saliency_one_and_two_folders(syn, tmp_path):
    msra, duts_img, duts_mask = tmp_path / "MSRA10K", tmp_path / "DUTS-TR-Image", tmp_path / "DUTS-TR-Mask"
    for folder in (msra, duts_img, duts_mask):
        folder.mkdir()
    for i, truth in enumerate(syn.images[:3]):
        mask = truth["masks"][0]
        for image_dir, mask_dir in ((msra, msra), (duts_img, duts_mask)):
            shutil.copy(truth["file"], image_dir / f"{i}.jpg")
            cv2.imwrite(str(mask_dir / f"{i}.png"), _grey_mask(mask))
    shutil.copy(syn.images[3]["file"], msra / "no_mask.jpg")  # left out: no mask
    for source in (saliency.SaliencySource(msra), saliency.SaliencySource(duts_img, duts_mask)):
        assert len(source) == 3
        for i in range(3):
            record = source[i]
            np.testing.assert_array_equal(record["masks"], syn.images[i]["masks"][:1])
            assert record["source"].endswith(f"{i}.jpg") and record["labels"] == [""]
    cv2.imwrite(str(duts_mask / "1.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(RecordError, match=r"Mask/1\.png: mask is 10x10 \(WxH\) but its image .*1\.jpg is 128x96"):
        saliency.SaliencySource(duts_img, duts_mask)[1]
    with pytest.raises(RecordError, match="no image with a matching mask"):
        saliency.SaliencySource(duts_mask)


# ------------------------------------------------------------------------------------ DreamBooth / MureCom

def test_reference_folder_mask_sources(syn, tmp_path):
    truth = syn.images[0]
    image, mask = truth["image"], truth["masks"][1]
    folder = tmp_path / "dog"
    folder.mkdir()
    cv2.imwrite(str(folder / "0.jpg"), image[..., ::-1])
    cv2.imwrite(str(folder / "0.png"), mask * 255)  # sibling mask
    rgba = np.concatenate([image, (mask * 255)[..., None]], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "1.png")  # cut-out with alpha
    source = dreambooth.ReferenceFolderSource(folder)
    assert len(source) == 2
    for record in source:
        np.testing.assert_array_equal(record["mask"], mask)
        assert record["image"].shape == (96, 128, 3)
    np.testing.assert_array_equal(source[1]["image"], image)  # PNG is lossless
    masks = tmp_path / "masks"
    masks.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), image[..., ::-1])
    with pytest.raises(RecordError, match=r"masks/a\.png: mask of .*a\.jpg not found"):
        dreambooth.ReferenceFolderSource(photos, masks)
    with pytest.raises(RecordError, match=r"photos/a\.jpg: no mask found"):
        dreambooth.ReferenceFolderSource(photos)
    cv2.imwrite(str(masks / "a.png"), np.zeros((96, 128), np.uint8))
    with pytest.raises(RecordError, match=r"a\.png: mask is empty"):
        dreambooth.ReferenceFolderSource(photos, masks)[0]


def test_murecom_layout(syn, tmp_path):
    category = tmp_path / "MureCom" / "Coffee cup"
    (category / "bg").mkdir(parents=True)
    (category / "fg1").mkdir()
    for i in range(2):
        shutil.copy(syn.images[i]["file"], category / "bg" / f"{i}.jpg")
    (category / "bg" / "bbox.txt").write_text("Coffee cup 0.jpg 3 4 10 12\nCoffee cup 1.jpg 0 0 127 95\n")
    truth = syn.images[2]
    cv2.imwrite(str(category / "fg1" / "0.jpg"), truth["image"][..., ::-1])
    Image.fromarray(truth["masks"][0].astype(bool)).save(category / "fg1" / "0.png")  # 1-bit PNG
    cv2.imwrite(str(category / "fg1" / "0_rmobj.jpg"), truth["image"][..., ::-1])  # newer layout extras
    cv2.imwrite(str(category / "fg1" / "0_bbox.png"), np.ones((96, 128), np.uint8) * 255)
    backgrounds = murecom.MureComBackgrounds(tmp_path / "MureCom")
    assert len(backgrounds) == 2
    record = backgrounds[0]
    assert record["box"] == (3, 4, 11, 13) and record["category"] == "Coffee cup"
    assert backgrounds[1]["box"] == (0, 0, 128, 96)  # inclusive 127/95 -> whole image
    assert record["image"].shape == (96, 128, 3) and record["source"].endswith("bg/0.jpg")
    references = murecom.murecom_references(tmp_path / "MureCom", "Coffee cup", fg=1)
    assert len(references) == 1
    np.testing.assert_array_equal(references[0]["mask"], truth["masks"][0])
    (category / "bg" / "bbox.txt").write_text("Coffee cup 0.jpg 3 4 200 12\nCoffee cup 1.jpg 3 x 4 5\n")
    with pytest.raises(RecordError, match=r"bbox\.txt: line 2: expected '<Category> <i>\.jpg x1 y1 x2 y2'"):
        murecom.MureComBackgrounds(tmp_path / "MureCom")
    (category / "bg" / "bbox.txt").write_text("Coffee cup 0.jpg 3 4 200 12\n")
    with pytest.raises(RecordError, match=r"0\.jpg: box .* is empty or outside the 128x96 image"):
        murecom.MureComBackgrounds(tmp_path / "MureCom")[0]
