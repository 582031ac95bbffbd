"""AnyDoor's extra training datasets written in their real on-disk formats for the reader tests
(tests/test_sources_anydoor*.py): VIPSeg, UVO, MVImgNet, VITON-HD, FashionTryon, YouTube-VOS-style clips and
the image sets (saliency, SA-1B, LVIS). The encodings are written independently of the readers (panoptic
id -> RGB by hand, RLE by pycocotools' encoder, RGBA alpha, palette parse labels)."""

import json
import os

import cv2
import numpy as np
from PIL import Image

H, W = 32, 48
LEVELS = [20 + 30 * t for t in range(8)]  # frame t has background grey LEVELS[t]: identifies frames in pairs


def rect(y0, y1, x0, x1, shape=(H, W)):
    mask = np.zeros(shape, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def jpg(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100])


def frame(t, masks=()):
    """A frame: flat grey LEVELS[t] (top-left 8x8 block kept clear) with each object in its own colour."""
    image = np.full((H, W, 3), LEVELS[t], np.uint8)
    for k, mask in enumerate(masks):
        image[mask.astype(bool)] = (230 - 40 * k, 60 + 50 * k, 140)
    return image


def frame_of(image):
    return int(np.argmin([abs(float(image[:8, :8].mean()) - level) for level in LEVELS]))


def palette_png(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0] + [(37 * i) % 256 for i in range(3, 768)])
    image.save(path)


# ----------------------------------------------------------------------------------------- writers

def write_vipseg(root):
    """VIPSeg_720P: panoptic ids encoded to RGB here as (id % 256, id // 256 % 256, id // 256**2)."""
    truth = {}
    ids_by_video = {"v0": [{6100: rect(10, 20, 10 + t, 20 + t), **({70001: rect(22, 30, 30, 40)} if t >= 2 else {}),
                            **({300: rect(12, 16, 36, 44)} if t == 0 else {})} for t in range(6)],
                    "v1": [{6100: rect(10, 20, 10, 20)}],
                    "v2": [{5: rect(9, 25, 9, 25 + 4 * t)} for t in range(2)]}
    for video, frames in ids_by_video.items():
        truth[video] = []
        for t, objects in enumerate(frames):
            ids = np.zeros((H, W), np.int64)
            for segment, mask in objects.items():
                ids[mask.astype(bool)] = segment
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            (root / "panomasksRGB" / video).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, mode="RGB").save(root / "panomasksRGB" / video / f"{t:05d}.png")
            jpg(root / "images" / video / f"{t:05d}.jpg", frame(t, list(objects.values())))
            truth[video].append(ids)
    jpg(root / "images" / "v2" / "00009.jpg", frame(3))  # a frame without a panoptic PNG: left out
    return truth


UVO_TRACKS = {1: [rect(9, 20, 9 + 3 * t, 20 + 3 * t) for t in range(5)],
              2: [None, rect(20, 30, 10, 30), rect(21, 30, 12, 30), None, rect(22, 31, 14, 30)],
              3: [None, None, rect(10, 14, 30, 40), None, None]}


def write_uvo(root, name="UVO_sparse_train_video_with_interpolation.json"):
    """UVO sparse: frames/<video>/<k>.jpg and a COCO-video JSON with pycocotools-encoded RLE (null where absent)."""
    from pycocotools import mask as mask_utils

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}

    videos = [{"id": 1, "file_names": [f"vidA/{k}.jpg" for k in range(5)], "height": H, "width": W, "length": 5},
              {"id": 2, "file_names": [f"vidB/{k}.jpg" for k in range(3)], "height": H, "width": W, "length": 3}]
    tracks = {**UVO_TRACKS, 4: [rect(12, 28, 12, 28)] * 3}
    annotations = [{"id": ann, "video_id": 1 if ann < 4 else 2, "category_id": 1, "iscrowd": 0,
                    "segmentations": [None if m is None else rle(m) for m in masks],
                    "areas": [None if m is None else int(m.sum()) for m in masks]} for ann, masks in tracks.items()]
    for k in range(5):
        jpg(root / "frames" / "vidA" / f"{k}.jpg", frame(k, [m[k] for m in UVO_TRACKS.values() if m[k] is not None]))
    for k in range(3):
        jpg(root / "frames" / "vidB" / f"{k}.jpg", frame(k, [tracks[4][k]]))
    (root / name).write_text(json.dumps({"videos": videos, "annotations": annotations,
                                         "categories": [{"id": 1, "name": "object"}]}))
    return root / "frames", root / name


def rgba(path, mask, rng):
    """RGBA mask PNG: alpha 200 on the object, 100 (<= 128, not object) in a band around it, colour noise."""
    alpha = np.where(mask > 0, 200, np.where(cv2.dilate(mask, np.ones((5, 5), np.uint8)) > 0, 100, 0))
    rgba = np.dstack([rng.integers(0, 256, (*mask.shape, 3)), alpha]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, mode="RGBA").save(path)


MV_MASKS = {"1/a": [rect(8, 22, 8 + 4 * t, 22 + 4 * t) for t in range(4)], "1/b": [rect(10, 30, 10, 30)] * 2}


def write_mvimgnet(root):
    """MVImgNet: <class>/<object>/images/<frame>.jpg + <frame>_mask.png (RGBA); 2/c has no masks."""
    rng = np.random.default_rng(0)
    for obj, masks in MV_MASKS.items():
        for t, mask in enumerate(masks):
            jpg(root / obj / "images" / f"{t:03d}.jpg", frame(t, [mask]))
            rgba(root / obj / "images" / f"{t:03d}_mask.png", mask, rng)
    jpg(root / "1/a/images/009.jpg", frame(5))  # a view without a mask: not a frame
    for t in range(3):
        jpg(root / "2/c/images" / f"{t:03d}.jpg", frame(t))
    (root / "mvimagenet.txt").write_text("MVDir/1/a/images\nMVDir/2/c/images\n")
    return root


VITON = {"00001_00": (rect(4, 28, 8, 40), rect(12, 24, 16, 32)), "00002_00": (rect(8, 24, 16, 32), rect(10, 30, 10, 38))}


def write_vitonhd(root):
    """VITON-HD train/: cloth + grey cloth-mask JPEGs, person JPEG, palette parse PNG (2 hair, 5 upper, 9 pants)."""
    for name, (cloth_mask, upper) in VITON.items():
        jpg(root / "train/cloth" / f"{name}.jpg", frame(1, [cloth_mask]))
        jpg(root / "train/cloth-mask" / f"{name}.jpg", np.repeat(cloth_mask[..., None] * 255, 3, -1))
        labels = np.zeros((H, W), np.uint8)
        labels[2:8, 16:32], labels[upper.astype(bool)], labels[30:, 12:36] = 2, 5, 9
        jpg(root / "train/image" / f"{name}.jpg", frame(2, [upper]))
        palette_png(root / "train/image-parse-v3" / f"{name}.png", labels)
    return root


def write_fashiontryon(root):
    """FashionTryon: g1/{target,mask}.jpg, g1/p1/segment.png (grey), g1/p2/segment.png (RGB, equal channels)."""
    garment = rect(6, 26, 10, 38)
    jpg(root / "g1/target.jpg", frame(1, [garment]))
    jpg(root / "g1/mask.jpg", np.repeat(garment[..., None] * 255, 3, -1))
    p1 = np.zeros((H, W), np.uint8)
    p1[8:28, 12:40], p1[2:6, 14:30] = 7, 3
    p2 = np.zeros((H, W), np.uint8)
    p2[16:, 20:] = 7  # touches the image border: OpenCV's erosion keeps border pixels (border = max)
    (root / "g1/p1").mkdir(parents=True)
    (root / "g1/p2").mkdir(parents=True)
    Image.fromarray(p1, mode="L").save(root / "g1/p1/segment.png")
    Image.fromarray(np.repeat(p2[..., None], 3, -1), mode="RGB").save(root / "g1/p2/segment.png")
    jpg(root / "g1/p1.jpg", frame(2, [p1 == 7]))
    jpg(root / "g1/p2.jpg", frame(3, [p2 == 7]))
    jpg(root / "g2/target.jpg", frame(1))  # a garment without a person: no record
    return {"p1": p1, "p2": p2, "garment": garment}




def write_youtube_vos(root, meta=True):
    """YouTube-VOS layout: JPEGImages/<video>/*.jpg, palette Annotations (value = object id), meta.json."""
    objects = {}
    for t in range(4):
        labels = np.zeros((H, W), np.uint8)
        labels[9:20, 9 + 2 * t:22 + 2 * t], labels[22:30, 30:42] = 1, 2
        palette_png(root / "Annotations/vid0" / f"{t:05d}.png", labels)
        jpg(root / "JPEGImages/vid0" / f"{t:05d}.jpg", frame(t, [labels == 1, labels == 2]))
        for k in (1, 2):
            objects.setdefault(str(k), {"category": "thing", "frames": []})["frames"].append(f"{t:05d}")
    if meta:
        (root / "meta.json").write_text(json.dumps({"videos": {"vid0": {"objects": objects}}}))
    return root


def write_image_sets(root):
    """MSRA10K-style and DUTS-style saliency folders, one SA-1B folder, an LVIS json over COCO train2017."""
    from pycocotools import mask as mask_utils

    for k in range(2):
        jpg(root / f"msra/{k}.jpg", frame(k, [rect(6, 26, 8, 40)]))
        Image.fromarray(rect(6, 26, 8, 40) * 255, mode="L").save(root / f"msra/{k}.png")
    jpg(root / "duts/DUTS-TR/DUTS-TR-Image/a.jpg", frame(2))
    (root / "duts/DUTS-TR/DUTS-TR-Mask").mkdir(parents=True)
    Image.fromarray(rect(4, 28, 4, 44) * 255, mode="L").save(root / "duts/DUTS-TR/DUTS-TR-Mask/a.png")
    big, small = rect(10, 235, 10, 235, (240, 240)), rect(0, 20, 0, 20, (240, 240))
    jpg(root / "sam/sub1/sa_1.jpg", np.full((240, 240, 3), 90, np.uint8))
    anns = []
    for k, mask in enumerate((big, small)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append({"id": k, "area": int(mask.sum()), "bbox": [0, 0, 1, 1],
                     "segmentation": {"size": [240, 240], "counts": rle["counts"].decode("ascii")}})
    (root / "sam/sub1/sa_1.json").write_text(json.dumps(
        {"image": {"image_id": 1, "height": 240, "width": 240, "file_name": "sa_1.jpg"}, "annotations": anns}))
    jpg(root / "coco/train2017/000000000001.jpg", np.full((64, 64, 3), 70, np.uint8))
    (root / "coco/lvis_v1_train.json").write_text(json.dumps({
        "images": [{"id": 1, "height": 64, "width": 64,
                    "coco_url": "http://images.cocodataset.org/train2017/000000000001.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 3844, "bbox": [1, 1, 62, 62],
                         "segmentation": [[1, 1, 63, 1, 63, 63, 1, 63]]}],
        "categories": [{"id": 1, "name": "thing", "synonyms": ["thing"]}]}))
    return {"saliency": f"{root / 'msra'}{os.pathsep}{root / 'duts/DUTS-TR'}", "sam": str(root / "sam/sub1"),
            "lvis": str(root / "coco")}
