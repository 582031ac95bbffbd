"""AnyDoor's extra training-data readers (VIPSeg, UVO, MVImgNet, VITON-HD, FashionTryon) and the released
mixture, against fixtures written here in each dataset's real on-disk format.

Masks must come back as the drawn shapes exactly; the encodings are written out independently of the
readers (panoptic id -> RGB by hand, RLE by pycocotools' encoder, RGBA alpha, palette parse labels,
the FashionTryon erosion by scipy); frame pairs must follow the min-gap rule; the mixture's source
frequencies must match the released weights within 4 binomial sigma.
"""

import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline import anydoor_mixture as mixture
from input_pipeline import pipeline
from input_pipeline.records import RecordError
from input_pipeline.sources import mvimgnet, tryon, uvo, vipseg

H, W = 32, 48
LEVELS = [20 + 30 * t for t in range(8)]  # frame t has background grey LEVELS[t]: identifies frames in pairs


def _rect(y0, y1, x0, x1, shape=(H, W)):
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _jpg(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100])


def _frame(t, masks=()):
    """A frame: flat grey LEVELS[t] (top-left 8x8 block kept clear) with each object in its own colour."""
    image = np.full((H, W, 3), LEVELS[t], np.uint8)
    for k, mask in enumerate(masks):
        image[mask.astype(bool)] = (230 - 40 * k, 60 + 50 * k, 140)
    return image


def _frame_of(image):
    return int(np.argmin([abs(float(image[:8, :8].mean()) - level) for level in LEVELS]))


def _palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0] + [(37 * i) % 256 for i in range(3, 768)])
    image.save(path)


# ----------------------------------------------------------------------------------------- writers

def write_vipseg(root):
    """VIPSeg_720P: panoptic ids encoded to RGB here as (id % 256, id // 256 % 256, id // 256**2)."""
    truth = {}
    ids_by_video = {"v0": [{6100: _rect(10, 20, 10 + t, 20 + t), **({70001: _rect(22, 30, 30, 40)} if t >= 2 else {}),
                            **({300: _rect(12, 16, 36, 44)} if t == 0 else {})} for t in range(6)],
                    "v1": [{6100: _rect(10, 20, 10, 20)}],
                    "v2": [{5: _rect(9, 25, 9, 25 + 4 * t)} for t in range(2)]}
    for video, frames in ids_by_video.items():
        truth[video] = []
        for t, objects in enumerate(frames):
            ids = np.zeros((H, W), np.int64)
            for segment, mask in objects.items():
                ids[mask.astype(bool)] = segment
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            (root / "panomasksRGB" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, mode="RGB").save(root / "panomasksRGB" / video / f"{t:05d}.png")
            _jpg(root / "images" / video / f"{t:05d}.jpg", _frame(t, list(objects.values())))
            truth[video].append(ids)
    _jpg(root / "images" / "v2" / "00009.jpg", _frame(3))  # a frame without a panoptic PNG: left out
    return truth


UVO_TRACKS = {1: [_rect(9, 20, 9 + 3 * t, 20 + 3 * t) for t in range(5)],
              2: [None, _rect(20, 30, 10, 30), _rect(21, 30, 12, 30), None, _rect(22, 31, 14, 30)],
              3: [None, None, _rect(10, 14, 30, 40), None, None]}


def write_uvo(root, name="UVO_sparse_train_video_with_interpolation.json"):
    """UVO sparse: frames/<video>/<k>.jpg and a COCO-video JSON with pycocotools-encoded RLE (null where absent)."""
    from pycocotools import mask as mask_utils

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}

    videos = [{"id": 1, "file_names": [f"vidA/{k}.jpg" for k in range(5)], "height": H, "width": W, "length": 5},
              {"id": 2, "file_names": [f"vidB/{k}.jpg" for k in range(3)], "height": H, "width": W, "length": 3}]
    tracks = {**UVO_TRACKS, 4: [_rect(12, 28, 12, 28)] * 3}
    annotations = [{"id": ann, "video_id": 1 if ann < 4 else 2, "category_id": 1, "iscrowd": 0,
                    "segmentations": [None if m is None else rle(m) for m in masks],
                    "areas": [None if m is None else int(m.sum()) for m in masks]} for ann, masks in tracks.items()]
    for k in range(5):
        _jpg(root / "frames" / "vidA" / f"{k}.jpg", _frame(k, [m[k] for m in UVO_TRACKS.values() if m[k] is not None]))
    for k in range(3):
        _jpg(root / "frames" / "vidB" / f"{k}.jpg", _frame(k, [tracks[4][k]]))
    (root / name).write_text(json.dumps({"videos": videos, "annotations": annotations,
                                         "categories": [{"id": 1, "name": "object"}]}))
    return root / "frames", root / name


def _rgba(path, mask, rng):
    """RGBA mask PNG: alpha 200 on the object, 100 (<= 128, not object) in a band around it, colour noise."""
    alpha = np.where(mask > 0, 200, np.where(cv2.dilate(mask, np.ones((5, 5), np.uint8)) > 0, 100, 0))
    rgba = np.dstack([rng.integers(0, 256, (*mask.shape, 3)), alpha]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, mode="RGBA").save(path)


MV_MASKS = {"1/a": [_rect(8, 22, 8 + 4 * t, 22 + 4 * t) for t in range(4)], "1/b": [_rect(10, 30, 10, 30)] * 2}


def write_mvimgnet(root):
    """MVImgNet: <class>/<object>/images/<frame>.jpg + <frame>_mask.png (RGBA); 2/c has no masks."""
    rng = np.random.default_rng(0)
    for obj, masks in MV_MASKS.items():
        for t, mask in enumerate(masks):
            _jpg(root / obj / "images" / f"{t:03d}.jpg", _frame(t, [mask]))
            _rgba(root / obj / "images" / f"{t:03d}_mask.png", mask, rng)
    _jpg(root / "1/a/images/009.jpg", _frame(5))  # a view without a mask: not a frame
    for t in range(3):
        _jpg(root / "2/c/images" / f"{t:03d}.jpg", _frame(t))
    (root / "mvimagenet.txt").write_text("MVDir/1/a/images\nMVDir/2/c/images\n")
    return root


VITON = {"00001_00": (_rect(4, 28, 8, 40), _rect(12, 24, 16, 32)), "00002_00": (_rect(8, 24, 16, 32), _rect(10, 30, 10, 38))}


def write_vitonhd(root):
    """VITON-HD train/: cloth + grey cloth-mask JPEGs, person JPEG, palette parse PNG (2 hair, 5 upper, 9 pants)."""
    for name, (cloth_mask, upper) in VITON.items():
        _jpg(root / "train/cloth" / f"{name}.jpg", _frame(1, [cloth_mask]))
        _jpg(root / "train/cloth-mask" / f"{name}.jpg", np.repeat(cloth_mask[..., None] * 255, 3, -1))
        labels = np.zeros((H, W), np.uint8)
        labels[2:8, 16:32], labels[upper.astype(bool)], labels[30:, 12:36] = 2, 5, 9
        _jpg(root / "train/image" / f"{name}.jpg", _frame(2, [upper]))
        _palette_png(root / "train/image-parse-v3" / f"{name}.png", labels)
    return root


def write_fashiontryon(root):
    """FashionTryon: g1/{target,mask}.jpg, g1/p1/segment.png (grey), g1/p2/segment.png (RGB, equal channels)."""
    garment = _rect(6, 26, 10, 38)
    _jpg(root / "g1/target.jpg", _frame(1, [garment]))
    _jpg(root / "g1/mask.jpg", np.repeat(garment[..., None] * 255, 3, -1))
    p1 = np.zeros((H, W), np.uint8)
    p1[8:28, 12:40], p1[2:6, 14:30] = 7, 3
    p2 = np.zeros((H, W), np.uint8)
    p2[16:, 20:] = 7  # touches the image border: OpenCV's erosion keeps border pixels (border = max)
    (root / "g1/p1").mkdir(parents=True)
    (root / "g1/p2").mkdir(parents=True)
    Image.fromarray(p1, mode="L").save(root / "g1/p1/segment.png")
    Image.fromarray(np.repeat(p2[..., None], 3, -1), mode="RGB").save(root / "g1/p2/segment.png")
    _jpg(root / "g1/p1.jpg", _frame(2, [p1 == 7]))
    _jpg(root / "g1/p2.jpg", _frame(3, [p2 == 7]))
    _jpg(root / "g2/target.jpg", _frame(1))  # a garment without a person: no record
    return {"p1": p1, "p2": p2, "garment": garment}


# ------------------------------------------------------------------------------------------ frame draw

def test_frame_pair_draw_follows_the_released_rule():
    n, gap, draws = 7, 2, 6000
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(draws):
        pair = vipseg.frame_pair_indices(n, gap, rng, "clip")
        counts[pair] = counts.get(pair, 0) + 1
    # released: start = randint(0, n - gap), end = start + randint(gap, n - start) (uppers exclusive)
    expected = {(i, j): 1 / (n - gap) / (n - gap - i) for i in range(n - gap) for j in range(i + gap, n)}
    assert set(counts) == set(expected)
    for cell, p in expected.items():
        assert abs(counts[cell] - draws * p) <= 4 * np.sqrt(draws * p * (1 - p)), cell
    assert vipseg.frame_pair_indices(1, 0, rng, "clip") == (0, 0)  # no minimum gap: the same frame
    with pytest.raises(RecordError, match="clip: 3 frames cannot give a pair 3 frames apart"):
        vipseg.frame_pair_indices(3, 3, rng, "clip")


# ------------------------------------------------------------------------------------------------ VIPSeg

@pytest.fixture(scope="module")
def vip(tmp_path_factory):
    root = tmp_path_factory.mktemp("VIPSeg_720P")
    return root, write_vipseg(root)


def test_panoptic_rgb_ids_hand_computed(tmp_path):
    colours = np.array([[[4, 24, 0], [1, 17, 1], [0, 0, 0]]], np.uint8)
    Image.fromarray(colours, mode="RGB").save(tmp_path / "p.png")
    # 4 + 24*256 = 6148; 1 + 17*256 + 1*65536 = 69889 (panopticapi rgb2id: R + 256 G + 256^2 B)
    np.testing.assert_array_equal(vipseg.read_panoptic_ids(tmp_path / "p.png"), [[6148, 69889, 0]])


def test_vipseg_reader_and_pairs(vip):
    root, truth = vip
    source = vipseg.VIPSegSource(root)
    assert [r["source"] for r in source] == [str(root / "images" / v) for v in ("v0", "v2")]  # v1: one frame
    assert [len(r["frame_paths"]) for r in source] == [6, 2] and {r["dynamic"] for r in source} == {1}
    assert source[0]["frame_paths"][:2] == [str(root / "images/v0/00000.jpg"), str(root / "images/v0/00001.jpg")]
    assert [r["min_gap"] for r in source] == [0, 0]  # n // 100
    record = vipseg.VIPSegSource(root, gap_divisor=2)[0]
    assert record["min_gap"] == 3
    distances, chosen = set(), set()
    for seed in range(40):
        pair = vipseg.sample_pair(record, np.random.default_rng(seed))
        i, j = _frame_of(pair["reference_image"]), _frame_of(pair["target_image"])
        assert j - i >= 3
        matches = [c for c in np.unique(truth["v0"][i]) if c and np.array_equal(pair["reference_mask"], truth["v0"][i] == c)]
        assert len(matches) == 1
        np.testing.assert_array_equal(pair["target_mask"], truth["v0"][j] == matches[0])
        assert pair["dynamic"] == 1 and pair["reference_mask"].dtype == np.uint8
        distances.add(j - i)
        chosen.add(int(matches[0]))
    assert len(distances) > 1 and chosen == {6100, 70001}  # 300 is only in frame 0: never common


def test_vipseg_bad_input(vip, tmp_path):
    root, _ = vip
    (tmp_path / "images").mkdir()
    with pytest.raises(RecordError, match=r"panomasksRGB: folder not found \(expected the VIPSeg_720P layout"):
        vipseg.VIPSegSource(tmp_path)
    record = {**vipseg.VIPSegSource(root)[1], "min_gap": 1}  # v2: frames 0 and 1
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(bad)
    with pytest.raises(RecordError, match=r"bad\.png: panoptic PNG has mode 'L'; expected an RGB PNG"):
        vipseg.sample_pair({**record, "mask_paths": [str(bad)] * 2}, np.random.default_rng(0))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(RecordError, match=r"bad\.jpg: not a decodable image"):
        vipseg.sample_pair({**record, "frame_paths": [str(tmp_path / "bad.jpg")] * 2}, np.random.default_rng(0))
    other = tmp_path / "other.png"
    Image.fromarray(np.full((H, W, 3), (9, 0, 0), np.uint8), mode="RGB").save(other)  # id 9 only
    with pytest.raises(RecordError, match="v2: frames 0 and 1 share no non-void segment"):
        vipseg.sample_pair({**record, "mask_paths": [record["mask_paths"][0], str(other)]}, np.random.default_rng(0))
    two = np.zeros((H, W, 3), np.uint8)
    two[9:14, 9:14] = two[20:25, 20:25] = (5, 0, 0)  # segment 5 in two pieces
    Image.fromarray(two, mode="RGB").save(tmp_path / "two.png")
    with pytest.raises(RecordError, match=r"two\.png: segment 5 is in several pieces"):
        vipseg.sample_pair({**record, "mask_paths": [str(tmp_path / "two.png"), record["mask_paths"][1]]},
                           np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------- UVO

def test_uvo_reader_and_pairs(tmp_path):
    frames, video_json = write_uvo(tmp_path)
    source = uvo.UVOSource(frames, video_json)
    assert [r["object_id"] for r in source] == [1, 2, 4]  # 3 has a mask in one frame only
    by_id = {r["object_id"]: r for r in source}
    assert by_id[2]["frame_paths"] == [str(frames / f"vidA/{k}.jpg") for k in (1, 2, 4)]  # nulls left out
    assert [r["min_gap"] for r in source] == [0, 0, 0] and {r["dynamic"] for r in source} == {1}
    assert [r["min_gap"] for r in uvo.UVOSource(frames, video_json, gap_divisor=5)] == [1, 0, 0]  # val K = 5
    record = uvo.UVOSource(frames, video_json, gap_divisor=2)[0]
    assert record["min_gap"] == 2
    distances = set()
    for seed in range(30):
        pair = uvo.sample_pair(record, np.random.default_rng(seed))
        i, j = _frame_of(pair["reference_image"]), _frame_of(pair["target_image"])
        assert j - i >= 2
        distances.add(j - i)
        np.testing.assert_array_equal(pair["reference_mask"], UVO_TRACKS[1][i])
        np.testing.assert_array_equal(pair["target_mask"], UVO_TRACKS[1][j])
    assert len(distances) > 1
    for seed in range(10):  # frames 1, 2, 4 of instance 2
        pair = uvo.sample_pair(by_id[2], np.random.default_rng(seed))
        np.testing.assert_array_equal(pair["target_mask"], UVO_TRACKS[2][_frame_of(pair["target_image"])])


def test_uvo_bad_input(tmp_path):
    frames, video_json = write_uvo(tmp_path)
    with pytest.raises(RecordError, match="nowhere: UVO frames folder not found"):
        uvo.UVOSource(tmp_path / "nowhere", video_json)
    with pytest.raises(RecordError, match="missing.json: JSON file not found"):
        uvo.UVOSource(frames, tmp_path / "missing.json")
    data = json.loads(video_json.read_text())
    broken = json.loads(json.dumps(data))
    broken["annotations"][1]["segmentations"].pop()
    (tmp_path / "short.json").write_text(json.dumps(broken))
    with pytest.raises(RecordError, match=r"short\.json: annotations\[1\]\.segmentations has 4 entries but video 1 "
                                          r"has 5 file_names"):
        uvo.UVOSource(frames, tmp_path / "short.json")
    broken = json.loads(json.dumps(data))
    broken["annotations"][0]["video_id"] = 7
    (tmp_path / "video.json").write_text(json.dumps(broken))
    with pytest.raises(RecordError, match=r"annotations\[0\]\.video_id: 7 is not among videos\[\]\.id"):
        uvo.UVOSource(frames, tmp_path / "video.json")
    broken = json.loads(json.dumps(data))
    broken["annotations"][0]["segmentations"][3]["size"] = [H + 1, W]
    broken["annotations"][0]["segmentations"][4] = {"size": [H, W], "counts": [H * W]}  # empty
    (tmp_path / "rle.json").write_text(json.dumps(broken))
    record = {**uvo.UVOSource(frames, tmp_path / "rle.json")[0], "min_gap": 4}  # frames 0 and 4
    with pytest.raises(RecordError, match=r"rle\.json: annotations\[0\]\.segmentations\[4\]: empty mask"):
        uvo.sample_pair(record, np.random.default_rng(0))
    record = {**record, "frame_paths": record["frame_paths"][:4], "segmentations": json.dumps(
        json.loads(record["segmentations"])[:4]), "min_gap": 3}  # frames 0 and 3
    with pytest.raises(RecordError, match=r"annotations\[0\]\.segmentations\[3\]\.size: \[33, 48\] differs"):
        uvo.sample_pair(record, np.random.default_rng(0))
    _jpg(frames / "vidA/0.jpg", np.zeros((H, W + 2, 3), np.uint8))
    with pytest.raises(RecordError, match=r"vidA/0\.jpg: frame is 50x32 \(WxH\) but .*says 48x32"):
        uvo.sample_pair(record, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- MVImgNet

def test_mvimgnet_scan_list_and_pairs(tmp_path):
    root = write_mvimgnet(tmp_path / "mv")
    source = mvimgnet.MVImgNetSource(root)
    assert source.folders == [str(root / "1/a/images"), str(root / "1/b/images")]  # 2/c: no masks
    record = source[0]
    assert record["mask_paths"] == [str(root / f"1/a/images/{t:03d}_mask.png") for t in range(4)]
    assert record["frame_paths"] == [str(root / f"1/a/images/{t:03d}.jpg") for t in range(4)]
    assert record["min_gap"] == 4 // 8 and record["dynamic"] == 2
    listed = mvimgnet.MVImgNetSource(root, list_file=root / "mvimagenet.txt")
    assert listed.folders == [str(root / "1/a/images"), str(root / "2/c/images")]
    assert listed[0] == record
    with pytest.raises(RecordError, match=r"2/c/images: 0 mask PNGs named <frame>_\*\.png; expected at least 2"):
        listed[1]
    record = mvimgnet.MVImgNetSource(root, gap_divisor=2)[0]
    assert record["min_gap"] == 2
    distances = set()
    for seed in range(30):
        pair = mvimgnet.sample_pair(record, np.random.default_rng(seed))
        i, j = _frame_of(pair["reference_image"]), _frame_of(pair["target_image"])
        assert j - i >= 2 and pair["dynamic"] == 2
        distances.add(j - i)
        np.testing.assert_array_equal(pair["reference_mask"], MV_MASKS["1/a"][i])  # alpha 100 band excluded
        np.testing.assert_array_equal(pair["target_mask"], MV_MASKS["1/a"][j])
    assert len(distances) > 1


def test_mvimgnet_bad_input(tmp_path):
    root = write_mvimgnet(tmp_path / "mv")
    with pytest.raises(RecordError, match=r"nowhere: MVImgNet folder not found \(expected root/<class>/<object>"):
        mvimgnet.MVImgNetSource(tmp_path / "nowhere")
    with pytest.raises(RecordError, match="list.txt: MVImgNet list file not found"):
        mvimgnet.MVImgNetSource(root, list_file=tmp_path / "list.txt")
    record = {**mvimgnet.MVImgNetSource(root)[1], "min_gap": 1}  # 1/b: views 0 and 1
    Image.fromarray(np.full((H, W, 3), 255, np.uint8), mode="RGB").save(record["mask_paths"][1])
    with pytest.raises(RecordError, match=r"001_mask\.png: mask PNG has mode 'RGB'; expected an RGBA PNG"):
        mvimgnet.sample_pair(record, np.random.default_rng(0))
    data = (tmp_path / "mv/1/a/images/000_mask.png").read_bytes()
    with open(record["mask_paths"][1], "wb") as file:
        file.write(data[:len(data) // 2])  # cut short: PIL's "image file is truncated"
    with pytest.raises(RecordError, match=r"001_mask\.png: not a readable PNG"):
        mvimgnet.sample_pair(record, np.random.default_rng(0))
    Image.fromarray(np.full((H, W, 4), 128, np.uint8), mode="RGBA").save(record["mask_paths"][1])
    with pytest.raises(RecordError, match=r"001_mask\.png: empty mask \(no alpha above 128\)"):
        mvimgnet.sample_pair(record, np.random.default_rng(0))
    os.remove(record["frame_paths"][0])
    with pytest.raises(RecordError, match=r"000\.jpg: image file not found"):
        mvimgnet.sample_pair(record, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- try-on

def test_vitonhd_pairs_and_bad_input(tmp_path):
    root = write_vitonhd(tmp_path / "viton")
    source = tryon.VitonHDSource(root)
    assert len(source) == 2
    for index, (cloth_mask, upper) in enumerate(VITON.values()):
        pair = source[index]
        np.testing.assert_array_equal(pair["reference_mask"], cloth_mask)
        np.testing.assert_array_equal(pair["target_mask"], upper)  # label 5 only, not hair (2) or pants (9)
        assert _frame_of(pair["reference_image"]) == 1 and _frame_of(pair["target_image"]) == 2
        assert pair["dynamic"] == 2
    parse = root / "train/image-parse-v3/00001_00.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8), mode="RGB").save(parse)
    with pytest.raises(RecordError, match=r"00001_00\.png: annotation PNG has mode 'RGB'; expected a palette"):
        source[0]
    _palette_png(parse, np.full((H, W), 2))
    with pytest.raises(RecordError, match=r"00001_00\.png: empty mask \(expected label 5 = upper clothes\)"):
        source[0]
    os.rename(root / "train/cloth-mask", root / "train/masks")
    with pytest.raises(RecordError, match=r"train/cloth-mask: folder not found \(expected the VITON-HD layout"):
        tryon.VitonHDSource(root)


def test_fashiontryon_pairs_and_bad_input(tmp_path):
    from scipy import ndimage

    root = tmp_path / "fashion"
    truth = write_fashiontryon(root)
    source = tryon.FashionTryonSource(root)
    assert source.pairs == [(str(root / "g1"), "p1"), (str(root / "g1"), "p2")]  # g2 has no person
    first, second = source[0], source[1]
    np.testing.assert_array_equal(first["reference_mask"], truth["garment"])
    # label-7 box rows 8..27, cols 12..39 after three 3x3 erosions: rows 11..24, cols 15..36 (hand)
    np.testing.assert_array_equal(first["target_mask"], _rect(11, 25, 15, 37))
    # touching the border: OpenCV pads with the maximum, i.e. scipy's border_value=1
    expected = ndimage.binary_erosion(truth["p2"] == 7, np.ones((3, 3)), iterations=3, border_value=1)
    np.testing.assert_array_equal(second["target_mask"], expected)
    assert expected[-1, -1] and not expected[16:19].any()
    assert _frame_of(first["target_image"]) == 2 and _frame_of(second["target_image"]) == 3
    assert first["dynamic"] == second["dynamic"] == 2
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 7
    Image.fromarray(colour, mode="RGB").save(root / "g1/p2/segment.png")
    with pytest.raises(RecordError, match=r"p2/segment\.png: parsing PNG is colour with differing channels"):
        source[1]
    small = np.zeros((H, W), np.uint8)
    small[10:14, 10:14] = 7  # 4x4: gone after three erosions
    Image.fromarray(small, mode="L").save(root / "g1/p2/segment.png")
    with pytest.raises(RecordError, match=r"p2/segment\.png: empty mask \(expected label 7 surviving 3 3x3"):
        source[1]
    os.remove(root / "g1/p1.jpg")
    with pytest.raises(RecordError, match=r"g1/p1\.jpg: image file not found"):
        source[0]
    with pytest.raises(RecordError, match=r"nowhere: FashionTryon folder not found"):
        tryon.FashionTryonSource(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ mixture

# reference/anydoor.md 3.2, typed out here: (released __len__, dynamic, check_region_size variant)
RELEASED = {"saliency": (20000, 0, "any"), "sam": (20000, 0, "any"), "lvis": (20000, 0, "any"),
            "ytb_vos": (40000, 1, "both"), "vipseg": (30000, 1, "any"), "ytb_vis": (40000, 1, "both"),
            "uvo": (25000, 1, "both"), "uvo_val": (8000, 1, "both"), "mose": (40000, 2, "any"),
            "vitonhd": (20000, 2, "both"), "fashiontryon": (5000, 2, "both"), "mvimgnet": (40000, 2, "both")}
IMAGE_SETS = ("saliency", "sam", "lvis")


def write_youtube_vos(root, meta=True):
    """YouTube-VOS layout: JPEGImages/<video>/*.jpg, palette Annotations (value = object id), meta.json."""
    objects = {}
    for t in range(4):
        labels = np.zeros((H, W), np.uint8)
        labels[9:20, 9 + 2 * t:22 + 2 * t], labels[22:30, 30:42] = 1, 2
        _palette_png(root / "Annotations/vid0" / f"{t:05d}.png", labels)
        _jpg(root / "JPEGImages/vid0" / f"{t:05d}.jpg", _frame(t, [labels == 1, labels == 2]))
        for k in (1, 2):
            objects.setdefault(str(k), {"category": "thing", "frames": []})["frames"].append(f"{t:05d}")
    if meta:
        (root / "meta.json").write_text(json.dumps({"videos": {"vid0": {"objects": objects}}}))
    return root


def write_image_sets(root):
    """MSRA10K-style and DUTS-style saliency folders, one SA-1B folder, an LVIS json over COCO train2017."""
    from pycocotools import mask as mask_utils

    for k in range(2):
        _jpg(root / f"msra/{k}.jpg", _frame(k, [_rect(6, 26, 8, 40)]))
        Image.fromarray(_rect(6, 26, 8, 40) * 255, mode="L").save(root / f"msra/{k}.png")
    _jpg(root / "duts/DUTS-TR/DUTS-TR-Image/a.jpg", _frame(2))
    (root / "duts/DUTS-TR/DUTS-TR-Mask").mkdir(parents=True)
    Image.fromarray(_rect(4, 28, 4, 44) * 255, mode="L").save(root / "duts/DUTS-TR/DUTS-TR-Mask/a.png")
    big, small = _rect(10, 235, 10, 235, (240, 240)), _rect(0, 20, 0, 20, (240, 240))
    _jpg(root / "sam/sub1/sa_1.jpg", np.full((240, 240, 3), 90, np.uint8))
    anns = []
    for k, mask in enumerate((big, small)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append({"id": k, "area": int(mask.sum()), "bbox": [0, 0, 1, 1],
                     "segmentation": {"size": [240, 240], "counts": rle["counts"].decode("ascii")}})
    (root / "sam/sub1/sa_1.json").write_text(json.dumps(
        {"image": {"image_id": 1, "height": 240, "width": 240, "file_name": "sa_1.jpg"}, "annotations": anns}))
    _jpg(root / "coco/train2017/000000000001.jpg", np.full((64, 64, 3), 70, np.uint8))
    (root / "coco/lvis_v1_train.json").write_text(json.dumps({
        "images": [{"id": 1, "height": 64, "width": 64,
                    "coco_url": "http://images.cocodataset.org/train2017/000000000001.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 3844, "bbox": [1, 1, 62, 62],
                         "segmentation": [[1, 1, 63, 1, 63, 63, 1, 63]]}],
        "categories": [{"id": 1, "name": "thing", "synonyms": ["thing"]}]}))
    return {"saliency": f"{root / 'msra'}{os.pathsep}{root / 'duts/DUTS-TR'}", "sam": str(root / "sam/sub1"),
            "lvis": str(root / "coco")}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    root = tmp_path_factory.mktemp("anydoor_data")
    frames, train_json = write_uvo(root / "uvo")
    _, val_json = write_uvo(root / "uvo", "UVO_sparse_val_video.json")
    write_vipseg(root / "vipseg")
    write_fashiontryon(root / "fashion")
    return {**write_image_sets(root), "ytb_vos": str(write_youtube_vos(root / "ytb_vos")),
            "ytb_vis": str(write_youtube_vos(root / "ytb_vis")), "mose": str(write_youtube_vos(root / "mose", False)),
            "vipseg": str(root / "vipseg"), "uvo_frames": str(frames), "uvo_json": str(train_json),
            "uvo_val_json": str(val_json), "vitonhd": str(write_vitonhd(root / "viton")),
            "fashiontryon": str(root / "fashion"), "mvimgnet": str(write_mvimgnet(root / "mv"))}


def test_clip_frame_order_is_the_released_directory_order_or_sorted(roots, tmp_path):
    """The min-gap pairing counts in the clip's frame order. frame_order="released": the released loaders'
    order, os.listdir's for MOSE, VIPSeg and MVImgNet (ext4: a hash order, not time) and meta.json's for
    YouTube-VOS; "sorted": by name. The oracle is os.listdir itself and a meta.json listed backwards."""
    def names(paths):
        return [os.path.basename(p) for p in paths]

    def listed(folder, suffix, keep):
        return [n for n in os.listdir(folder) if n.endswith(suffix) and n in keep]

    ytb = write_youtube_vos(tmp_path / "ytb")
    meta = json.loads((ytb / "meta.json").read_text())
    for obj in meta["videos"]["vid0"]["objects"].values():
        obj["frames"] = obj["frames"][::-1]
    (ytb / "meta.json").write_text(json.dumps(meta))
    built = {}
    for order in ("released", "sorted"):
        components = mixture.anydoor_components({**roots, "ytb_vos": str(ytb)}, frame_order=order)
        built[order] = {name: source for name, source, _, _ in components}
    for name, key, suffix in (("mose", "frame_paths", ".jpg"), ("vipseg", "frame_paths", ".jpg"),
                              ("mvimgnet", "mask_paths", ".png")):
        for k in range(len(built["released"][name])):
            released, by_name = (names(built[order][name][k][key]) for order in ("released", "sorted"))
            folder = os.path.dirname(built["released"][name][k][key][0])
            assert released == listed(folder, suffix, released), (name, k)
            assert by_name == sorted(released), (name, k)
    for k in range(len(built["released"]["ytb_vos"])):
        released, by_name = (names(built[order]["ytb_vos"][k]["frame_paths"]) for order in ("released", "sorted"))
        assert released == sorted(released, reverse=True) and by_name == sorted(released)
    with pytest.raises(ValueError, match="frame_order"):
        mixture.anydoor_components(roots, frame_order="shuffled")


def test_released_weights_table():
    assert mixture.RELEASED_WEIGHTS == {name: length * (1 if name in IMAGE_SETS else 2)
                                        for name, (length, _, _) in RELEASED.items()}
    total = sum(mixture.RELEASED_WEIGHTS.values())
    assert total == 556000
    share = lambda names: round(100 * sum(mixture.RELEASED_WEIGHTS[n] for n in names) / total, 1)
    assert [share(g) for g in (IMAGE_SETS, ("ytb_vos", "vipseg", "ytb_vis", "uvo", "uvo_val", "mose"),
                               ("vitonhd", "fashiontryon"), ("mvimgnet",))] == [10.8, 65.8, 9.0, 14.4]
    assert [share([n for n, v in RELEASED.items() if v[1] == d]) for d in (0, 1, 2)] == [10.8, 51.4, 37.8]


def _draw(mix, n):
    counts = dict.fromkeys(RELEASED, 0)
    for i in range(n):
        pair = mix[i]
        name = pair["dataset"]
        counts[name] += 1
        length, dynamic, rule = RELEASED[name]
        assert pair["dynamic"] == dynamic and pair["region_rule"] == rule, name
        assert pair["max_target_region"] == (1.0 if name in ("vitonhd", "fashiontryon") else 0.8)
        for role in ("reference", "target"):
            image, mask = pair[f"{role}_image"], pair[f"{role}_mask"]
            assert image.dtype == np.uint8 and image.shape[:2] == mask.shape and mask.any() and mask.max() == 1
        if name in IMAGE_SETS:
            assert pair["reference_image"] is pair["target_image"]  # released: ref = tar for image sets
    return counts


def _assert_shares(counts, weights, n):
    total = sum(weights.values())
    for name, count in counts.items():
        p = weights.get(name, 0) / total
        assert abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p)), (name, count, n * p)


class _Repeated:
    """A source read `times` over: grain's index shuffle costs ~50/n ms per element on an n-record source,
    so the fixture's 1-3 record sources are lengthened to draw thousands of elements quickly."""

    def __init__(self, source, times):
        self.source, self.times = source, times

    def __len__(self):
        return len(self.source) * self.times

    def __getitem__(self, index):
        return self.source[index % len(self.source)]


def _lengthened(components):
    return pipeline.mix_sources([(_Repeated(s, 400), w, prepare) for _, s, w, prepare in components], seed=3)


RELEASED_SHARES = {name: v[0] * (1 if name in IMAGE_SETS else 2) for name, v in RELEASED.items()}


def test_released_mixture_frequencies_and_labels(roots, capsys):
    n = 278
    counts = _draw(mixture.released_mixture(roots, seed=0), n)
    line = capsys.readouterr().out.strip()
    assert line.startswith("AnyDoor mixture: saliency 3.6% (dynamic 0, 3 records), sam 3.6% (dynamic 0, 1 records)")
    assert "mvimgnet 14.4% (dynamic 2, 2 records)" in line and "left out" not in line
    _assert_shares(counts, RELEASED_SHARES, n)
    assert min(counts.values()) > 0
    # the same components over many more draws (sources lengthened), for a tight band: 4 sigma of 2780
    # draws is 1.4% (absolute) for the 3.6% sets, 2.7% for the 14.4% ones
    _assert_shares(_draw(_lengthened(mixture.anydoor_components(roots)), 2780), RELEASED_SHARES, 2780)


def test_mixture_leaves_out_missing_roots_and_renormalises(roots, capsys):
    kept = {k: v for k, v in roots.items() if k not in ("sam", "mose", "fashiontryon", "mvimgnet", "uvo_val_json")}
    mixture.released_mixture({**kept, "mose": ""}, seed=1)
    assert capsys.readouterr().out.strip().endswith("; left out: sam, uvo_val, mose, fashiontryon, mvimgnet")
    n = 1000
    counts = _draw(_lengthened(mixture.anydoor_components({**kept, "mose": ""})), n)
    weights = {name: w for name, w in RELEASED_SHARES.items()
               if name not in ("sam", "uvo_val", "mose", "fashiontryon", "mvimgnet")}
    _assert_shares(counts, weights, n)
    assert counts["sam"] == counts["mose"] == counts["mvimgnet"] == 0
    # a weight override: 0 leaves a dataset out, others are renormalised
    components = mixture.anydoor_components(kept, {"vipseg": 0, "lvis": 60000})
    assert [c[0] for c in components] == ["saliency", "lvis", "ytb_vos", "ytb_vis", "uvo", "vitonhd"]
    assert [c[2] for c in components] == [20000, 60000, 80000, 80000, 50000, 40000]
    with pytest.raises(ValueError, match=r"unknown AnyDoor dataset key\(s\) \['vip_seg'\]"):
        mixture.anydoor_components({"vip_seg": "x"})
    with pytest.raises(ValueError, match="no AnyDoor training data"):
        mixture.anydoor_components({"uvo_frames": roots["uvo_frames"]})  # UVO needs a JSON too
    with pytest.raises(RecordError, match=r"nowhere/images: folder not found \(expected the VIPSeg_720P"):
        mixture.anydoor_components({"vipseg": "/nowhere"})
