"""Writes the README's demo screenshots, docs/demo_<method>.png: the demo serving tiny runs of each method
(random weights, tests/demo_runs.py), one image composed per tab, each tab captured by the system's
headless Chromium (playwright). The pictures show the page, not what a trained model makes.

    python tools/demo_screenshots.py [--out docs]
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # tiny runs: no accelerator wanted (an installed libtpu probes for one)


def shrink(path: Path, width: int = 800) -> None:
    """A README-sized screenshot: `width` pixels wide, 128-colour palette PNG (about a fifth of the bytes)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    args = parser.parse_args()
    import cv2
    import demo_runs
    import numpy as np
    from playwright.sync_api import sync_playwright

    from jcompose.demo import app

    root = Path(tempfile.mkdtemp(prefix="jcompose-demo-shots-"))
    runs = [demo_runs.write_run(root / "anyscene", "configs/anyscene.py:tiny", seed=1),
            demo_runs.write_run(root / "dreamcom", "configs/dreamcom.py:tiny", seed=2,
                                objects=("murecom:Toy/fg1", "murecom:Cup/fg1")),
            demo_runs.write_run(root / "anydoor", "configs/anydoor.py:tiny", seed=3)]
    fg, mask = demo_runs.photo((64, 64), 0), np.zeros((64, 64), np.uint8)
    mask[16:48, 20:52] = 255
    ref, ref_mask = demo_runs.photo((64, 64), 2), np.zeros((64, 64), np.uint8)
    ref_mask[8:56, 12:52] = 255
    target, target2 = np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)
    target[16:48, 30:66] = 255
    target2[40:62, 70:94] = 255
    files = {"foreground": np.dstack([fg, mask]), "background": demo_runs.photo((64, 96), 1),
             "reference": np.dstack([ref, ref_mask]), "target": target, "target2": target2}
    for name, image in files.items():
        cv2.imwrite(str(root / f"{name}.png"), image)
    demo = app.build([str(r) for r in runs], root / "requests")
    demo.queue().launch(server_port=7899, prevent_thread_lock=True, quiet=True, allowed_paths=[str(root)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.set_default_timeout(600_000)
        page.goto("http://127.0.0.1:7899/")

        def upload(elem, name):
            page.locator(f"#{elem} input[type=file]").set_input_files(str(root / f"{name}.png"))
            page.wait_for_timeout(1000)

        def fill(elem, value):
            page.locator(f"#{elem} textarea, #{elem} input").first.fill(str(value))

        def compose(prefix):
            page.click(f"#{prefix}-run")
            page.wait_for_function(f"document.querySelector('#{prefix}-status textarea').value.startsWith('wrote')")
            page.screenshot(path=str(out / f"demo_{prefix}.png"), full_page=True)
            shrink(out / f"demo_{prefix}.png")

        page.get_by_role("tab", name="AnyScene:").click()
        upload("anyscene-foreground", "foreground")
        fill("anyscene-prompt", "a photo of a dog on a beach")
        fill("anyscene-words", "dog")
        fill("anyscene-steps", 4)
        page.locator("#anyscene-attention-on input").check()
        compose("anyscene")

        page.get_by_role("tab", name="DreamCom:").click()
        upload("dreamcom-background", "background")
        page.wait_for_selector("#dreamcom-canvas button[title=Brush]")
        page.wait_for_timeout(3000)  # the canvas draws the background
        page.click("#dreamcom-canvas button[title=Brush]")
        box = page.locator("#dreamcom-canvas canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 30, cy - 20)
        page.mouse.down()
        page.mouse.move(cx + 30, cy + 20, steps=8)
        page.mouse.up()
        page.wait_for_function("document.querySelector('#dreamcom-box textarea').value.split(',').length === 4")
        fill("dreamcom-steps", 4)
        fill("dreamcom-samples", 2)
        compose("dreamcom")

        page.get_by_role("tab", name="AnyDoor:").click()
        upload("anydoor-reference", "reference")
        upload("anydoor-background", "background")
        upload("anydoor-target", "target")
        upload("anydoor-reference2", "foreground")
        upload("anydoor-target2", "target2")
        fill("anydoor-steps", 4)
        compose("anydoor")
        browser.close()
    demo.close()
    shutil.rmtree(root, ignore_errors=True)
    print("wrote", ", ".join(str(out / f"demo_{m}.png") for m in ("anyscene", "dreamcom", "anydoor")))


if __name__ == "__main__":
    main()
