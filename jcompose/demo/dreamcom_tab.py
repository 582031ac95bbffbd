"""The DreamCom tab: a fine-tuned object inpainted into a box of an uploaded background, the box drawn on
the image (or typed), as `python -m jcompose.compose dreamcom` does (jcompose/methods/dreamcom_inference.py)."""

from __future__ import annotations

from pathlib import Path

from jcompose.cli import InputError
from jcompose.demo import common, compiles, widgets
from jcompose.methods import dreamcom_inference as inference


class DreamComComposer:
    """A DreamCom run (one or several objects), loaded on the first request; compose's own steps run on it
    (its compiled samplers are kept in the loaded model, one per steps, guidance and attention rules; jit
    keeps one program per number of images under each)."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.model = common.LoadedOnce(inference.load_dreamcom)

    def argv(self, name: str, background: str, box: str, crop: bool, steps: int, guidance: float, seed: int,
             num: int, out: Path) -> list[str]:
        """compose's arguments for `num` images of object `name` (keys fold_in(seed, i))."""
        return ["dreamcom", "--checkpoint", self.checkpoint, "--object", name, "--background", background,
                "--box", box, "--do-crop" if crop else "--no-crop", "--num", str(int(num)), "--steps",
                str(int(steps)), "--guidance", repr(float(guidance)), "--seed", str(int(seed)), "--out", str(out)]

    def compose(self, argv: list[str]) -> dict:
        """`python -m jcompose.compose <argv>` on the loaded run: writes <args.out>/<i>.png, returns
        {"images", "step", ...}."""
        args = common.parse(argv)
        request = inference.read_request(args)
        return inference.run_dreamcom(self.model(args), request)


def build(source, folders: common.RequestFolders, step_progress: bool = True) -> None:
    """The tab's components and its events, inside the caller's gr.Blocks / gr.Tab; `step_progress`: a progress
    bar per denoising step (common.StepProgress)."""
    import gradio as gr

    denoising = common.StepProgress(step_progress)
    composer = DreamComComposer(source.path)
    with gr.Row():
        with gr.Column():
            name = gr.Dropdown(list(source.objects), value=source.objects[0], label="object",
                               interactive=len(source.objects) > 1, elem_id="dreamcom-object")
            background = gr.File(label="background", file_types=["image"], elem_id="dreamcom-background")
            canvas = gr.ImageEditor(label="draw over the place for the object (its bounding box is the box)",
                                    type="numpy", sources=(), transforms=(), elem_id="dreamcom-canvas",
                                    brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"))
            box = gr.Textbox(label="box x1,y1,x2,y2 (pixel corners, inclusive; drawn or typed)",
                             elem_id="dreamcom-box")
            crop = gr.Checkbox(value=True, label="inpaint a crop around a small box (released --do-crop)")
            steps, guidance, seed, samples = widgets.sampling_controls("dreamcom", steps=50, guidance=7.5, seed=666)
            run = gr.Button("Compose", variant="primary", elem_id="dreamcom-run")
        with gr.Column():
            outputs = widgets.result_components("dreamcom")

    background.change(widgets.show_on_canvas, background, canvas)
    canvas.change(widgets.drawn_box, [canvas, background, box], box)

    @widgets.reporting_errors
    def respond(name, background, box, crop, steps, guidance, seed, samples, progress=gr.Progress()):
        traced_before = compiles.count()
        path = common.upload_path(background, "background")
        if not (box or "").strip():
            raise InputError("box: draw over the place for the object or type x1,y1,x2,y2")
        num = len(common.seeds_of(seed, samples))
        folder = folders.new("dreamcom")
        progress(0, desc=f"{num} image(s) in one batched call (the first request compiles)")
        argv = composer.argv(name, path, box.strip(), crop, steps, guidance, seed, num, folder)
        with denoising.steps(progress, f"{num} image(s)"):
            images = composer.compose(argv)["images"]
        return widgets.finish(folder, images, [common.command_line(argv)], traced_before)

    run.click(respond, [name, background, box, crop, steps, guidance, seed, samples], outputs)
