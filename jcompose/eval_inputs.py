"""Evaluation inputs: image folders, prompts, masks, paired images, and the threaded batching of them.

Errors name the config field (`config.generated`, `config.prompts`, ...) or the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jcompose.cli import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder: str | Path, what: str) -> list[Path]:
    """Image files of a folder, sorted by name; errors name the config field."""
    folder = Path(folder)
    if not str(folder) or not folder.is_dir():
        raise FileNotFoundError(f"config.{what}: {folder!s} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"config.{what}: {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None


def read_prompts(path: str | Path) -> dict[str, str]:
    """Prompts by image file stem: a JSON object {"name": "prompt"} or lines `name<TAB>prompt`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config.prompts: {path} not found")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"config.prompts {path}: invalid JSON ({err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(f"config.prompts {path}: the JSON must be an object of file name -> prompt string")
        return {Path(k).stem: v for k, v in data.items()}
    prompts = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            if "\t" not in line:
                raise InputError(f"config.prompts {path}, line {n}: expected 'name<TAB>prompt'")
            name, prompt = line.split("\t", 1)
            prompts[Path(name).stem] = prompt
    return prompts


def batches(items: list, prepare: Callable[[Any], dict], batch_size: int, workers: int) -> Iterator[tuple[dict, int]]:
    """grain pipeline: prepare items in threads, batch; the last batch is padded (valid count given)."""
    import grain

    ds = grain.MapDataset.source(items).map(prepare).batch(batch_size, drop_remainder=False)
    for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=max(workers, 1), prefetch_buffer_size=max(workers, 2))):
        n = len(next(iter(batch.values())))
        if n < batch_size:
            batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in batch.items()}
        yield batch, n


def by_stem(folder: str, what: str, generated: list[Path], needed_by: list[str]) -> dict[str, Path]:
    """Files of `config.<what>` by stem; every generated image needs one when `needed_by` is non-empty."""
    if not needed_by:
        return {p.stem: p for p in list_images(folder, what)} if folder else {}
    if not folder:
        raise InputError(f"config.{what}: {needed_by} need a folder of images paired with the generated ones by name")
    files = {p.stem: p for p in list_images(folder, what)}
    missing = [p.name for p in generated if p.stem not in files]
    if missing:
        raise FileNotFoundError(f"config.{what}: no image named like generated {missing[:5]} "
                                f"({needed_by} pair files by name)")
    return files


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool foreground mask (pixels > 127 of the grey image), resized (nearest) to `shape`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            grey = image.convert("L")
            if grey.size != (shape[1], shape[0]):
                grey = grey.resize((shape[1], shape[0]), resample=Image.NEAREST)
            return np.asarray(grey) > 127
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path}: unreadable mask ({err})") from None


def crop_to_mask(image: np.ndarray, mask: np.ndarray, source: Path | None = None) -> np.ndarray:
    """The bounding box of the mask's foreground in `image`."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError(f"{source}: mask has no foreground pixels (> 127)")
    return image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def pair_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """1 on background, 0 on the foreground, at the metric's resolution."""
    from PIL import Image

    if mask.shape != shape:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]),
                                                                             resample=Image.NEAREST)) > 127
    return (~mask).astype(np.float32)


def pair_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image resized (PIL bicubic) to `shape` for pixel-aligned metrics."""
    if image.shape[:2] == shape:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), resample=Image.BICUBIC))


def run_of(config) -> dict | None:
    """The training run behind the images being scored, or None when none is named: `config.run` (a
    workdir or `<workdir>/checkpoints/<step>`), else the `run` that `compose --benchmark` records in
    `config.manifest`. Its stored config (`config.json`) must be of `config.method` (InputError naming
    both otherwise); returns {"workdir", "step", "method", "config"} for scores.json."""
    from jcompose import inference, run_record

    path, step = str(config.get("run") or ""), None
    if not path and config.get("manifest") and Path(config.manifest).is_file():
        try:
            manifest = json.loads(Path(config.manifest).read_text())
        except ValueError as err:
            raise InputError(f"config.manifest {config.manifest}: invalid JSON ({err})") from None
        path, step = str(manifest.get("run") or ""), manifest.get("step")
    if not path:
        return None
    workdir, newest = inference.resolve_checkpoint(path)
    stored = run_record.read_config(workdir)
    if stored is None:
        raise InputError(f"config.run {path}: {workdir} has no {run_record.RECORD} (the config the run was "
                         "trained with)")
    if config.get("method") and stored.method != config.method:
        raise InputError(f"config.run {path}: a {stored.method!r} run, not {config.method!r} (the protocol of "
                         "this evaluation config)")
    return {"workdir": str(workdir), "step": step if step is not None else newest, "method": stored.method,
            "config": stored.to_dict()}


def write_scores(folder: str | Path, scores: dict, config) -> None:
    """`folder/scores.json`: the scores, and under "run" the training run that made the images (`run_of`)
    when one is known."""
    run = run_of(config)
    if run is not None:
        scores = {**scores, "run": run}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scores.json").write_text(json.dumps(scores, indent=2, default=str) + "\n")
