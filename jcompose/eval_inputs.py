"""Evaluation inputs: folders of images paired by name, prompts, masks, the resizing of pixel-aligned
pairs, and the training run behind the images.

Folders are scanned from file headers before any feature is computed (`image_files.scan_folder`): every
accepted format, skipped file and conversion is counted for scores.json. Errors name the config field
(`config.generated`, `config.prompts`, ...) or the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jcompose.cli import InputError
from jcompose.image_files import Folder, ImageInfo, read_grey, read_image, scan_folder, summarize

PAIR_RESIZES = ("stretch", "keep_aspect")
SSIM_MIN_SIDE = 11  # the Gaussian window


@dataclasses.dataclass
class FolderInputs:
    """Everything a folder evaluation reads, checked: generated images and, by generated file stem, their
    references (clip_i / dino), pixel-metric targets (lpips / ssim), masks and prompts."""

    generated: Folder
    refs: dict[str, ImageInfo]
    targets: dict[str, ImageInfo]
    masks: dict[str, ImageInfo]
    prompts: dict[str, str]
    scanned: dict[str, Folder]

    def summary(self) -> dict:
        """scores.json's "inputs": per config field its folder, counts by format, conversions and skips."""
        return {field: folder.summary() for field, folder in self.scanned.items()}


def by_stem(folder: Folder | None, what: str, generated: Folder, needed_by: list[str]) -> dict[str, ImageInfo]:
    """Images of `config.<what>` by stem; every generated image needs one when `needed_by` is non-empty."""
    if folder is None:
        if needed_by:
            raise InputError(f"config.{what}: {needed_by} need a folder of images paired with the generated ones "
                             "by name")
        return {}
    files = {info.path.stem: info for info in folder.images}
    missing = [info.path.name for info in generated.images if info.path.stem not in files]
    if needed_by and missing:
        raise FileNotFoundError(f"config.{what}: no image named like generated {missing[:5]} "
                                f"({needed_by} pair files by name)")
    return files


def folder_inputs(config) -> FolderInputs:
    """Scans and pairs every folder the config's metrics need; raises before any image is decoded."""
    wanted = set(config.metrics)
    scanned = {"generated": scan_folder(config.generated, "generated")}
    for field in ("reference", "background", "masks"):
        if config[field]:
            scanned[field] = scan_folder(config[field], field)
    for field, folder in scanned.items():
        warn_skipped(folder, field)
    generated = scanned["generated"]
    refs = by_stem(scanned.get("reference"), "reference", generated, sorted(wanted & {"clip_i", "dino"}))
    pixel = sorted(wanted & {"lpips", "ssim"})
    target_field = "background" if config.background else "reference"
    targets = by_stem(scanned.get(target_field), target_field, generated, pixel) if pixel else {}
    masks = by_stem(scanned.get("masks"), "masks", generated, ["masks"]) if config.masks else {}
    prompts = read_prompts(config.prompts) if "clip_score" in wanted else {}
    missing = [info.path.name for info in generated.images if "clip_score" in wanted and info.path.stem not in prompts]
    if missing:
        raise InputError(f"config.prompts {config.prompts}: no prompt for {missing[:5]}")
    if pixel:
        rule = pair_rule(config)
        small = [info.path.name for info in generated.images
                 if min(pair_shape(info.shape, config.pair_size, rule)) < SSIM_MIN_SIDE]
        if small and "ssim" in wanted:
            raise InputError(f"config.pair_size = {config.pair_size}: {small[:5]} would be scored below "
                             f"{SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels (the SSIM window)")
    if masks and wanted & {"clip_i", "dino"}:
        for info in generated.images:  # an empty mask would fail one host mid-run: every host checks them all
            if not (read_grey(masks[info.path.stem]) > 127).any():
                raise InputError(f"{masks[info.path.stem].path}: mask has no foreground pixels (> 127)")
    return FolderInputs(generated, refs, targets, masks, prompts, scanned)


def warn_skipped(folder: Folder, what: str) -> None:
    """One stderr line (process 0) when a folder had files that are not scored, with counts by reason."""
    import sys

    import jax

    if folder.skipped and jax.process_index() == 0:
        reasons = "; ".join(f"{len(names)} {reason} (e.g. {names[0]})" for reason, names in sorted(folder.skipped.items()))
        print(f"warning: config.{what} {folder.path}: not scored: {reasons}", file=sys.stderr, flush=True)


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


# ------------------------------------------------------------------------------ masks and pixel pairs


def read_mask(path: Path | ImageInfo, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool foreground mask (luma > 127 of the upright image), resized (PIL nearest) to `shape`."""
    from PIL import Image

    grey = read_grey(path)
    if grey.shape != tuple(shape):
        grey = np.asarray(Image.fromarray(grey).resize((shape[1], shape[0]), resample=Image.NEAREST))
    return grey > 127


def crop_to_mask(image: np.ndarray, mask: np.ndarray, source: Path | None = None) -> np.ndarray:
    """The bounding box of the mask's foreground in `image`."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise InputError(f"{source}: mask has no foreground pixels (> 127)")
    return image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def pair_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """1 on background, 0 on the foreground, at the metric's resolution."""
    from PIL import Image

    if mask.shape != tuple(shape):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]),
                                                                             resample=Image.NEAREST)) > 127
    return (~mask).astype(np.float32)


def pair_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image resized (PIL bicubic) to `shape` for pixel-aligned metrics."""
    if image.shape[:2] == tuple(shape):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), resample=Image.BICUBIC))


def pair_rule(config) -> str:
    rule = config.get("pair_resize", "stretch")
    if rule not in PAIR_RESIZES:
        raise InputError(f"config.pair_resize = {rule!r}: expected one of {PAIR_RESIZES}")
    return rule


def pair_shape(shape: tuple[int, int], size: int, rule: str = "stretch") -> tuple[int, int]:
    """The (H, W) at which a generated image of `shape` and its target are compared by LPIPS / SSIM.

    size 0: the generated image's own size; "stretch": size x size (aspect ratio not kept);
    "keep_aspect": the shorter side becomes `size`, the longer keeps the ratio (rounded).
    """
    h, w = shape
    if not size:
        return h, w
    if rule == "stretch":
        return size, size
    return (size, max(1, round(size * w / h))) if h <= w else (max(1, round(size * h / w)), size)


def pixel_resizes(config, inputs: FolderInputs) -> dict:
    """scores.json's record of how LPIPS / SSIM pairs were resized, with counts."""
    rule = pair_rule(config)
    gens = inputs.generated.images
    shapes = [pair_shape(g.shape, config.pair_size, rule) for g in gens]
    resized = sum(g.shape != s for g, s in zip(gens, shapes, strict=True))
    aspect = sum(abs(g.height * s[1] - g.width * s[0]) > max(g.height, g.width) for g, s in zip(gens, shapes,
                                                                                                 strict=True))
    targets_resized = sum(inputs.targets[g.path.stem].shape != s for g, s in zip(gens, shapes, strict=True))
    if not config.pair_size:
        how = "native size: each pair at its generated image's size (the target resized to it if it differs)"
    elif rule == "stretch":
        how = f"both images stretched to {config.pair_size}x{config.pair_size}, aspect ratio not kept"
    else:
        how = f"both images resized so the generated one's shorter side is {config.pair_size}, aspect ratio kept"
    return {"rule": how + " (PIL bicubic; masks nearest)", "pair_size": config.pair_size, "pair_resize": rule,
            "generated_resized": int(resized), "generated_aspect_changed": int(aspect),
            "targets_resized": int(targets_resized), "distinct_sizes": len(set(shapes))}


# ------------------------------------------------------------------------------ the run behind the images


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


__all__ = ["FolderInputs", "by_stem", "crop_to_mask", "folder_inputs", "pair_image", "pair_mask", "pair_rule",
           "pair_shape", "pixel_resizes", "read_grey", "read_image", "read_mask", "read_prompts", "run_of",
           "scan_folder", "summarize", "write_scores"]
