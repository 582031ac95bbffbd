"""AnyDoor's extra training-data readers (VIPSeg, UVO, MVImgNet, VITON-HD, FashionTryon) against fixtures
written in each dataset's real on-disk format (tests/anydoor_source_writers.py).

Masks must come back as the drawn shapes exactly; the encodings are written out independently of the
readers (panoptic id -> RGB by hand, RLE by pycocotools' encoder, RGBA alpha, palette parse labels,
the FashionTryon erosion by scipy); frame pairs must follow the min-gap rule.
"""

import json
import os

import numpy as np
import pytest
from anydoor_source_writers import (
    MV_MASKS,
    UVO_TRACKS,
    VITON,
    H,
    W,
    frame_of,
    jpg,
    palette_png,
    rect,
    write_fashiontryon,
    write_mvimgnet,
    write_uvo,
    write_vipseg,
    write_vitonhd,
)
from PIL import Image

from input_pipeline.records import RecordError
from input_pipeline.sources import mvimgnet, tryon, uvo, vipseg

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
        i, j = frame_of(pair["reference_image"]), frame_of(pair["target_image"])
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
        i, j = frame_of(pair["reference_image"]), frame_of(pair["target_image"])
        assert j - i >= 2
        distances.add(j - i)
        np.testing.assert_array_equal(pair["reference_mask"], UVO_TRACKS[1][i])
        np.testing.assert_array_equal(pair["target_mask"], UVO_TRACKS[1][j])
    assert len(distances) > 1
    for seed in range(10):  # frames 1, 2, 4 of instance 2
        pair = uvo.sample_pair(by_id[2], np.random.default_rng(seed))
        np.testing.assert_array_equal(pair["target_mask"], UVO_TRACKS[2][frame_of(pair["target_image"])])


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
    jpg(frames / "vidA/0.jpg", np.zeros((H, W + 2, 3), np.uint8))
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
        i, j = frame_of(pair["reference_image"]), frame_of(pair["target_image"])
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
        assert frame_of(pair["reference_image"]) == 1 and frame_of(pair["target_image"]) == 2
        assert pair["dynamic"] == 2
    parse = root / "train/image-parse-v3/00001_00.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8), mode="RGB").save(parse)
    with pytest.raises(RecordError, match=r"00001_00\.png: annotation PNG has mode 'RGB'; expected a palette"):
        source[0]
    palette_png(parse, np.full((H, W), 2))
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
    np.testing.assert_array_equal(first["target_mask"], rect(11, 25, 15, 37))
    # touching the border: OpenCV pads with the maximum, i.e. scipy's border_value=1
    expected = ndimage.binary_erosion(truth["p2"] == 7, np.ones((3, 3)), iterations=3, border_value=1)
    np.testing.assert_array_equal(second["target_mask"], expected)
    assert expected[-1, -1] and not expected[16:19].any()
    assert frame_of(first["target_image"]) == 2 and frame_of(second["target_image"]) == 3
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
