"""A plan's files: plan.json (everything), plan.md (the verdict and tables) and hbm.png (memory per chip)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jcompose.plan.report import CATEGORIES

GiB = 2**30
COLOURS = {"params": (31, 119, 180), "optimizer": (255, 127, 14), "ema": (44, 160, 44), "frozen": (148, 103, 189),
           "batch": (140, 86, 75), "temp": (214, 39, 40), "outputs": (227, 119, 194), "code": (127, 127, 127),
           "other": (188, 189, 34)}


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GiB:.2f}"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def verdict(plan: dict) -> str:
    """One line: fits or not, with the train step's numbers."""
    lines = []
    for r in plan["programs"]:
        if "memory_bytes" not in r:
            lines.append(f"{r['program']}: refused by the compiler ({r.get('error', '')})")
            continue
        lines.append(f"{r['program']}: {_gib(r['memory_bytes']['total'])} of {_gib(r['hbm_bytes'])} GiB per chip "
                     f"({'fits' if r['fits'] else 'DOES NOT FIT'}, margin {plan['margin']:.0%}: "
                     f"{_gib(r['margin_bytes'])} GiB left)")
    head = "FITS" if plan["fits"] else "DOES NOT FIT"
    return (f"{head}: {plan['method']} on {plan['target']} ({plan['chips']} x {plan['chip']}), per-chip batch "
            f"{plan['per_chip_batch']:g}; " + "; ".join(lines))


def markdown(plan: dict, max_batches: list[dict] | None = None) -> str:
    out = [f"# Plan: {plan['method']} on {plan['target']}", "", f"**{verdict(plan)}**", "",
           f"Config `{plan['config']}`, mesh {plan['mesh']}, global batch {plan['batch_size']}"
           + (f" x {plan['models']} models" if plan["models"] > 1 else "")
           + f", {plan['image_size']} px, {plan['compute_dtype']}, remat {plan['remat']}, gradient accumulation "
           f"{plan['grad_accum']}, EMA {plan['ema']}, attention setting `{plan['attention_setting']}`. "
           f"Compiled ahead of time with jax {plan['jax']} on this machine, not run.", ""]
    out += [f"- {note}" for note in plan["notes"]] + ([""] if plan["notes"] else [])
    for r in plan["programs"]:
        out += [f"## {r['program']}", ""]
        if "memory_bytes" not in r:
            out += [f"The compiler refused the program: `{r.get('error', '')}`", ""]
            continue
        m = r["memory_bytes"]
        out += ["| per chip (GiB) | " + " | ".join(CATEGORIES) + " | total | HBM |",
                "|---" * (len(CATEGORIES) + 3) + "|",
                "| | " + " | ".join(_gib(m[c]) for c in CATEGORIES) + f" | **{_gib(m['total'])}** | {_gib(r['hbm_bytes'])} |",
                ""]
        roof = r["roofline"]
        out += [f"- FLOPs (model, counted on the program's jaxpr): {r['flops_per_chip'] / 1e12:.3f} TFLOP per chip per call, "
                f"{r['flops_per_image'] / 1e12:.3f} TFLOP per image ({r['images']} images per call); fused attention "
                f"kernels {r['attention_kernel_flops_global'] / max(r['flops_global'], 1):.1%} of it. Counted on the "
                f"compiled program: {r['compiled_flops_per_chip'] / 1e12:.3f} TFLOP per chip (padding, recomputation); "
                f"XLA's cost analysis: " + (f"{r['xla_cost_analysis_flops'] / 1e12:.3f}" if r["xla_cost_analysis_flops"]
                                             else "none") + " (loop bodies once, kernels left out).",
                f"- Roofline per call: compute {_seconds(roof['compute_s'])}, HBM {_seconds(roof['hbm_s'])}, "
                f"collectives {_seconds(roof['collectives_s'])} (apart); at the roofline MFU would be "
                + (f"{roof['mfu_at_roofline']:.0%}" if roof["mfu_at_roofline"] else "-") + ". A measured time t means "
                "MFU = FLOPs per chip / (t x peak): " + ", ".join(f"{k} MFU at {_seconds(v)}" for k, v in roof["step_s_at_mfu"].items()) + ".",
                "- Collectives per call: " + (", ".join(f"{k} x{v['count']:g} ({_gib(v['bytes'])} GiB)"
                                                       for k, v in r["collectives"].items()) or "none") + ".",
                "- Kernels in the compiled program: " + (", ".join(f"{k} x{v:g}" for k, v in sorted(r["kernels"].items()))
                                                         or "none") + ".",
                f"- Traced and lowered in {r['lower_s']:.0f} s, compiled in {r['compile_s']:.0f} s "
                f"({r['compile_cpu_s']:.0f} CPU s); host memory peak {r['host_peak_gib']:.2f} GiB.", ""]
        if not r["attention"]:  # e.g. the evaluation's CLIP / DINO: their own attention, left to XLA
            out += ["Attention: no UNet / ControlNet attention layers (the network's own attention runs as XLA ops).",
                    ""]
            continue
        kinds: dict[str, int] = {}
        for row in r["attention"].values():
            kinds[row["implementation"]] = kinds.get(row["implementation"], 0) + 1
        out += ["Attention per layer (" + ", ".join(f"{v} {k}" for k, v in kinds.items()) + "):", "",
                "| layer (calls: UNet and ControlNet share names) | kind | queries x keys | heads x dim | implementation | "
                "why not fused | calls |", "|---|---|---|---|---|---|---|"]
        out += [f"| {name} | {'cross' if a['cross'] else 'self'} | {a['q_len']} x {a['kv_len']} | {a['heads']} x "
                f"{a['head_dim']} | {a['implementation']} | {a['reason']} | {a['calls']} |"
                for name, a in r["attention"].items()]
        if r["attention_kernel_layers_in_program"]:
            out += ["", f"Attention kernels found in the compiled program, by layer "
                        f"({len(r['attention_kernel_layers_in_program'])}): "
                    + ", ".join(r["attention_kernel_layers_in_program"]) + "."]
        out.append("")
    if max_batches:
        out += ["## Largest per-chip batch (train step)", "", "| variant | per-chip batch | GiB per chip | one more | compiles | overrides | the configured batch, accumulated |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {b['variant']} | {b['per_chip_batch']} | {_gib(b.get('memory_bytes'))} | "
                + (f"{b['next_per_chip_batch']}: {_gib(b.get('next_memory_bytes'))}" if b.get("next_per_chip_batch") else "-")
                + f" | {b['compiles']} | `{b.get('overrides', b.get('note', ''))}` | "
                + (f"`{b['keeping_batch_overrides']}`" if b.get("keeping_batch_overrides") else "-") + " |"
                for b in max_batches]
        out.append("")
    return "\n".join(out)


def bar_chart(plan: dict, path: Path, max_batches: list[dict] | None = None) -> None:
    """Horizontal stacked bars of memory per chip by category, one per program, against the chip's HBM."""
    from PIL import Image, ImageDraw

    rows = [(r["program"], r["memory_bytes"]) for r in plan["programs"] if "memory_bytes" in r]
    hbm = plan["hbm_bytes"]
    top = max([hbm] + [m["total"] for _, m in rows]) * 1.08
    width, left, bar, gap = 900, 120, 34, 18
    height = 70 + len(rows) * (bar + gap) + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    scale = (width - left - 30) / top
    draw.text((10, 10), f"{plan['method']} on {plan['target']}: memory per chip (GiB), per-chip batch "
                        f"{plan['per_chip_batch']:g}", fill="black")
    for i, (name, mem) in enumerate(rows):
        y = 50 + i * (bar + gap)
        draw.text((10, y + bar // 3), name, fill="black")
        x = left
        for category in CATEGORIES:
            w = mem[category] * scale
            if w >= 0.5:
                draw.rectangle([x, y, x + w, y + bar], fill=COLOURS[category])
            x += w
        draw.text((x + 4, y + bar // 3), f"{mem['total'] / GiB:.2f}", fill="black")
    for value, label, colour in ((hbm, f"HBM {hbm / GiB:.1f}", (0, 0, 0)),
                                 (hbm * (1 - plan["margin"]), f"-{plan['margin']:.0%}", (120, 120, 120))):
        x = left + value * scale
        draw.line([x, 40, x, height - 50], fill=colour, width=2)
        draw.text((x + 3, 36), label, fill=colour)
    x = left
    for category in CATEGORIES:
        draw.rectangle([x, height - 30, x + 12, height - 18], fill=COLOURS[category])
        draw.text((x + 16, height - 30), category, fill="black")
        x += 16 + 8 * len(category) + 14
    image.save(path)


def write(plan: dict, folder: str | Path, max_batches: list[dict] | None = None) -> Path:
    """plan.json, plan.md and hbm.png into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = dict(plan, max_batch=max_batches)
    (folder / "plan.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (folder / "plan.md").write_text(markdown(plan, max_batches) + "\n")
    bar_chart(plan, folder / "hbm.png", max_batches)
    return folder
