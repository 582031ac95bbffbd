"""The AnyDoor tab: a reference object (RGBA, or RGB + mask) put into an uploaded background where the user
draws (or uploads) the target mask, optionally a second object with its target mask in the same image, as
`python -m jcompose.compose anydoor` does (jcompose/methods/anydoor_cli.py, anydoor_inference.py) with a
training run or the converted release."""

from __future__ import annotations

from pathlib import Path

from jcompose.cli import InputError
from jcompose.demo import common, compiles, widgets
from jcompose.methods import anydoor_cli as cli
from jcompose.methods import anydoor_inference as inference


class AnyDoorComposer:
    """An AnyDoor model (`kind` "run": --checkpoint, "release": --weights), loaded on the first request;
    compose's own steps run on it (its compiled sampler is anydoor_inference.sampler's, kept per steps; jit
    keeps one program per batch size)."""

    def __init__(self, path: str, kind: str):
        self.flag = "--weights" if kind == "release" else "--checkpoint"
        self.path = path
        self.model = common.LoadedOnce(cli.load_anydoor)

    def argv(self, objects: list[tuple[str, str | None, str]], background: str, shape_control: bool, paste: str,
             steps: int, guidance: float, seed: int, out: Path) -> list[str]:
        """compose's arguments for one image; `objects`: (reference, its mask or None for RGBA, target mask)
        each, repeated as --reference/--reference-mask/--mask in that order (compose pairs them by position)."""
        argv = ["anydoor", self.flag, self.path]
        for reference, _, _ in objects:
            argv += ["--reference", reference]
        for _, reference_mask, _ in objects:
            argv += ["--reference-mask", reference_mask] if reference_mask else []
        argv += ["--background", background]
        for _, _, mask in objects:
            argv += ["--mask", mask]
        argv += ["--paste", paste, "--steps", str(int(steps)), "--guidance", repr(float(guidance)),
                 "--seed", str(int(seed)), "--out", str(out)]
        return argv + (["--shape-control"] if shape_control else [])

    def compose(self, argv: list[str]) -> dict:
        """`python -m jcompose.compose <argv>` on the loaded model: writes args.out, returns {"image", "step"}."""
        args = common.parse(argv)
        request = cli.read_request(args)
        return cli.run_anydoor(self.model(args), request)


def build(source, folders: common.RequestFolders, step_progress: bool = True) -> None:
    """The tab's components and its events, inside the caller's gr.Blocks / gr.Tab; `step_progress`: a progress
    bar per denoising step (common.StepProgress)."""
    import gradio as gr

    denoising = common.StepProgress(step_progress)
    composer = AnyDoorComposer(source.path, source.kind)
    with gr.Row():
        with gr.Column():
            reference = gr.File(label="reference object (RGBA, or RGB with its mask)", file_types=["image"],
                                elem_id="anydoor-reference")
            reference_mask = gr.File(label="reference mask (white = object; leave empty for RGBA)",
                                     file_types=["image"], elem_id="anydoor-reference-mask")
            background = gr.File(label="background", file_types=["image"], elem_id="anydoor-background")
            canvas = gr.ImageEditor(label="draw where the object goes (or upload a target mask below)",
                                    type="numpy", sources=(), transforms=(), elem_id="anydoor-canvas",
                                    brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"))
            target = gr.File(label="target mask (white = where the object goes; instead of drawing)",
                             file_types=["image"], elem_id="anydoor-target")
            with gr.Accordion("second object (optional): composed into the same image", open=True):
                reference2 = gr.File(label="its reference (RGBA, or RGB with its mask)", file_types=["image"],
                                     elem_id="anydoor-reference2")
                reference_mask2 = gr.File(label="its reference mask (both objects give one, or neither)",
                                          file_types=["image"], elem_id="anydoor-reference-mask2")
                target2 = gr.File(label="its target mask (white = where it goes)", file_types=["image"],
                                  elem_id="anydoor-target2")
            shape_control = gr.Checkbox(value=False, label="shape control (follow the mask's shape, not its box)")
            paste = gr.Radio(list(inference.PASTE_MODES), value="crop", label="paste back the whole crop or the box")
            steps, guidance, seed, samples = widgets.sampling_controls("anydoor", steps=50, guidance=5.0, seed=0)
            run = gr.Button("Compose", variant="primary", elem_id="anydoor-run")
        with gr.Column():
            outputs = widgets.result_components("anydoor")

    background.change(widgets.show_on_canvas, background, canvas)

    @widgets.reporting_errors
    def respond(reference, reference_mask, background, canvas, target, reference2, reference_mask2, target2,
                shape_control, paste, steps, guidance, seed, samples, progress=gr.Progress()):
        traced_before = compiles.count()
        ref = common.upload_path(reference, "reference")
        bg = common.upload_path(background, "background")
        seeds = common.seeds_of(seed, samples)
        folder = folders.new("anydoor")
        if target:
            mask = str(target)
        else:
            drawn = common.drawn_mask(canvas, common.image_shape(bg, "background"))
            if drawn is None:
                raise InputError("target: draw where the object goes on the background, or upload a target mask")
            mask = common.write_mask(folder / "target_mask.png", drawn)
        objects = [(ref, reference_mask, mask), *second_object(reference2, reference_mask2, target2)]
        if len({bool(m) for _, m, _ in objects}) > 1:  # compose pairs --reference-mask with --reference by position
            raise InputError("reference masks: give one for each object, or none (RGBA references)")
        images, commands = [], []
        for i, s in enumerate(seeds):
            progress(i / len(seeds), desc=f"image {i + 1} of {len(seeds)} (the first request compiles)")
            argv = composer.argv(objects, bg, shape_control, paste, steps, guidance, s, folder / f"{i}.png")
            with denoising.steps(progress, f"image {i + 1} of {len(seeds)}"):
                images.append(composer.compose(argv)["image"])
            commands.append(common.command_line(argv))
        return widgets.finish(folder, images, commands, traced_before)

    run.click(respond, [reference, reference_mask, background, canvas, target, reference2, reference_mask2, target2,
                        shape_control, paste, steps, guidance, seed, samples], outputs)


def second_object(reference, reference_mask, target) -> list[tuple[str, str | None, str]]:
    """The optional second object's uploads -> [] (none given) or [(reference, its mask or None, target)];
    InputError when only part of it is given."""
    if not reference and not reference_mask and not target:
        return []
    if not reference or not target:
        raise InputError("second object: upload its reference and its target mask (or clear it)")
    return [(str(reference), str(reference_mask) if reference_mask else None, str(target))]
