"""Records drawn in memory for the transform tests (tests/test_transforms*.py): backgrounds of mid-range
noise, AnyDoor pairs with a rectangular object, AnyScene instances, DreamCom references, PIL's resize."""

import numpy as np

# Object and background colours chosen so that each can be told apart after resizing.
OBJ = np.array([230, 30, 40], np.uint8)


def background(rng, h, w):
    """Mid-range noise in [40, 200]: never white (255), never black (0), never the object colour."""
    return rng.integers(40, 201, (h, w, 3), dtype=np.uint8)


def rect_pair(rng, h=300, w=400, box=(120, 180, 170, 230), flat=True, dynamic=False):
    """One image as reference and target (AnyDoor's image rule) with a rectangular object."""
    img = background(rng, h, w)
    y0, y1, x0, x1 = box
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    img[y0:y1, x0:x1] = OBJ if flat else rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    return {
        "reference_image": img,
        "reference_mask": mask,
        "target_image": img.copy(),
        "target_mask": mask.copy(),
        "dynamic": dynamic,
        "source": "mem://pair",
    }


def extent(mask2d):
    rows, cols = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1



def instances(rng, h=96, w=128, n=4, captions=("a cat on a mat", "two objects")):
    """Disjoint rectangular instances on noise; instance i is filled with grey level 60 + 40 i."""
    img = background(rng, h, w)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        y0, x0 = int(rng.integers(0, h - h // 3)), (w // n) * i
        masks[i, y0 : y0 + h // 3, x0 : x0 + w // n - 2] = 1
    return {
        "image": img,
        "masks": masks,
        "labels": [f"thing{i}" for i in range(n)],
        "captions": list(captions),
        "source": "mem://instances",
    }


def reference(rng, h, w, box):
    img = background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    # An ellipse inside the box: the transform must use the box, not the object's outline.
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
    mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    img[mask > 0] = OBJ
    return {"image": img, "mask": mask, "source": "mem://ref"}


def pil_resize(image, hw, resample):
    """The released resize: PIL's (torchvision's Resize on PIL images; test.py's LANCZOS / NEAREST)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), resample))

