"""What an evaluation writes besides its numbers: where the images came from, and a report a person reads.

* `provenance`: the evaluation config (file and variant), the protocol, the checkpoint (training run and
  step, or released weights) and the training config's variant, for scores.json and the reports.
* `write_html`: report.html (summary table, provenance, inputs and their conversions, labelled examples).
* `examples_grid`: examples.png, a row per example: reference | generated thumbnails (aspect ratio kept),
  each captioned with its file name, the generated one with its per-image scores.

Only process 0 writes (`is_writer`); every process computes the same scores.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

NOT_RECORDED = "not recorded"


def is_writer() -> bool:
    """Whether this process writes outputs (process 0 of a multi-host job)."""
    import jax

    return jax.process_index() == 0


def provenance(config, protocol: str, header: dict | None = None) -> dict[str, Any]:
    """{"eval_config", "protocol", "checkpoint", "training_config", "training_config_variant"[, "generation"]}.

    header: a compose --benchmark manifest (its "run", "step", "weights", "variant" and settings). The
    checkpoint is `config.run` / the manifest's run with its step, or the released weights the manifest
    names. The training config is the `--config=FILE[:variant]` of the run record's command; its variant
    the manifest's (what generated the images), else the run config's `variant` field, else the command's.
    "generation" repeats the manifest's settings (everything but its image list).
    """
    from jcompose.eval_inputs import run_of

    header = header or {}
    run = run_of(config)
    checkpoint: dict[str, Any] = {}
    if run is not None:
        checkpoint = {"run": run["workdir"], "step": run["step"]}
    weights = header.get("weights")
    if weights and weights != checkpoint.get("run"):
        checkpoint["weights"] = str(weights)
    spec = training_config_spec(run["workdir"]) if run else None
    recorded = [v for v in (header.get("variant"), (run or {}).get("config", {}).get("variant")) if v
                and v != "unrecorded"]
    variant = recorded[0] if recorded else (spec.partition(":")[2] or "default") if spec else NOT_RECORDED
    out = {"eval_config": config.get("eval_config", NOT_RECORDED), "protocol": protocol,
           "checkpoint": checkpoint or f"{NOT_RECORDED} (set --config.run=WORKDIR, or evaluate a compose manifest)",
           "training_config": spec or NOT_RECORDED, "training_config_variant": variant}
    if header:
        out["generation"] = {k: v for k, v in header.items() if k != "images"}
    return out


def training_config_spec(workdir: str | Path) -> str | None:
    """The `--config=configs/<method>.py[:variant]` a run was started with, from its run record's command
    (None when the record has no such flag, e.g. a run started from Python)."""
    from jcompose import run_record

    try:
        command = json.loads((Path(workdir) / run_record.RECORD).read_text()).get("command", [])
    except (OSError, ValueError, AttributeError):
        return None
    for i, arg in enumerate(command):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(command):
            return command[i + 1]
    return None


def _caption_font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _thumb(image: np.ndarray, size: int):
    from PIL import Image, ImageOps

    tile = Image.new("RGB", (size, size), "white")
    small = ImageOps.contain(Image.fromarray(image), (size, size), Image.BICUBIC)
    tile.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return tile


def examples_grid(rows: list[list[tuple[np.ndarray | None, list[str]]]], thumb: int, path: Path) -> None:
    """Writes a grid: each row a list of (uint8 image or None, caption lines) cells; captions under images."""
    from PIL import Image, ImageDraw

    font = _caption_font()
    line_h = 13
    lines = max((len(c) for row in rows for _, c in row), default=0)
    cell_h = thumb + lines * line_h + 4
    cols = max((len(row) for row in rows), default=1)
    grid = Image.new("RGB", (cols * thumb, max(len(rows), 1) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        for c, (image, caption) in enumerate(row):
            x, y = c * thumb, r * cell_h
            if image is not None:
                grid.paste(_thumb(image, thumb), (x, y))
            for k, text in enumerate(caption):
                draw.text((x + 2, y + thumb + 2 + k * line_h), _fit(draw, text, font, thumb - 4), fill="black",
                          font=font)
    grid.save(path)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, shortened in the middle with '…' until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4 and draw.textlength(text[:keep // 2] + "…" + text[-(keep // 2):], font=font) > width:
        keep -= 1
    return text[:keep // 2] + "…" + text[-(keep // 2):]


def score_caption(per_image: dict[str, list], index: int, keys: list[str]) -> str:
    """"ssim 0.912  lpips 0.081" for one image from scores.json's per_image lists."""
    return "  ".join(f"{k} {per_image[k][index]:.3f}" for k in keys if k in per_image)


def write_html(out: Path, title: str, summary: dict[str, Any], sections: dict[str, Any],
               examples: list[dict[str, str]] | None = None) -> None:
    """report.html: the summary table, then each section as JSON, then the examples (names and scores)
    above examples.png when one was written."""
    def table(data: dict) -> str:
        return "<table border=1>" + "".join(
            f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(json.dumps(v, default=str))}</code></td></tr>"
            for k, v in data.items()) + "</table>"

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<h1>{html.escape(title)}</h1>", table(summary)]
    for name, content in sections.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(table(content) if isinstance(content, dict) else f"<p>{html.escape(str(content))}</p>")
    if examples is not None:
        parts.append("<h2>Examples</h2><table border=1><tr>" + "".join(
            f"<th>{html.escape(k)}</th>" for k in examples[0]) + "</tr>" if examples else "<h2>Examples</h2>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                  for row in examples]
        parts.append("</table><img src='examples.png'>" if examples else "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text("\n".join(parts) + "\n")
