"""Host-side image preprocessing of the reference tools (PIL resampling, as they do).

Inputs are (H, W, 3) uint8 images (what is read from PNG/JPEG files; convert engine images in
[-1, 1] with `fid.to_uint8`). Outputs are float32 (size, size, 3) network inputs.
"""

from __future__ import annotations

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return image


def resize_shortest_edge(image: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic resize so the shorter side is `size`; the longer is int(size * long / short).

    The rule of torchvision `Resize(size)` and of transformers' `shortest_edge` processors.
    """
    from PIL import Image

    image = _check(image)
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BICUBIC))


def center_crop(image: np.ndarray, size: int, rounding: str = "torchvision") -> np.ndarray:
    """(size, size) centre crop of an image at least that large.

    rounding: "torchvision" (top = round((h - size) / 2), half to even, as `CenterCrop`) or
    "transformers" (top = (h - size) // 2, as its image processors); they differ by one pixel when
    h - size is odd and ≡ 3 (mod 4).
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {h}x{w} image")
    if rounding == "torchvision":
        top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    elif rounding == "transformers":
        top, left = (h - size) // 2, (w - size) // 2
    else:
        raise ValueError(f"rounding {rounding!r}: expected 'torchvision' or 'transformers'")
    return image[top:top + size, left:left + size]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 -> [0, 1] -> (x - mean) / std, float32."""
    x = image.astype(np.float32) / 255.0
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def clip_input(image: np.ndarray, size: int = 224) -> np.ndarray:
    """OpenAI CLIP transform as transformers' CLIPImageProcessor: shortest side `size` (bicubic),
    centre crop, CLIP mean/std. Used by torchmetrics' CLIPScore."""
    return normalize(center_crop(resize_shortest_edge(image, size), size, "transformers"), CLIP_MEAN, CLIP_STD)


def dino_input(image: np.ndarray, resize: int = 256, size: int = 224) -> np.ndarray:
    """DreamBooth / MagicBrush DINO transform: Resize(256, bicubic) -> CenterCrop(224) ->
    ImageNet mean/std (torchvision semantics; not the HF preprocessor_config, which squashes)."""
    return normalize(center_crop(resize_shortest_edge(image, resize), size, "torchvision"), IMAGENET_MEAN,
                     IMAGENET_STD)
