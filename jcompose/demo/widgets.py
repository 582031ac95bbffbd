"""Components every tab has: sampling settings, the result (gallery, downloads, the reproducing command, a
status line)."""

from __future__ import annotations

import functools
from pathlib import Path


def sampling_controls(prefix: str, *, steps: int, guidance: float, seed: int):
    """steps, guidance, seed, samples components (ids `<prefix>-steps`, ...)."""
    import gradio as gr

    with gr.Row():
        steps_c = gr.Number(value=steps, precision=0, minimum=1, label="steps", elem_id=f"{prefix}-steps")
        guidance_c = gr.Number(value=guidance, label="guidance", elem_id=f"{prefix}-guidance")
        seed_c = gr.Number(value=seed, precision=0, label="seed", elem_id=f"{prefix}-seed")
        samples_c = gr.Number(value=1, precision=0, minimum=1, label="samples", elem_id=f"{prefix}-samples")
    return steps_c, guidance_c, seed_c, samples_c


def result_components(prefix: str):
    """[gallery, download files, command, status] (ids `<prefix>-gallery`, ...)."""
    import gradio as gr

    gallery = gr.Gallery(label="result", elem_id=f"{prefix}-gallery", format="png")
    files = gr.File(label="download", file_count="multiple", elem_id=f"{prefix}-files")
    command = gr.Textbox(label="the command that reproduces it", lines=2, elem_id=f"{prefix}-command",
                         buttons=["copy"])
    status = gr.Textbox(label="status", elem_id=f"{prefix}-status")
    return [gallery, files, command, status]


def finish(folder: Path, images: list[str], commands: list[str], traced_before: int):
    """The result components' values; the commands are also written to <folder>/command.sh. The status names
    the programs this request traced (0: every compiled program was reused) since `traced_before`."""
    from jcompose.demo import compiles

    script = folder / "command.sh"
    script.write_text("\n".join(commands) + "\n")
    status = (f"wrote {len(images)} image(s) to {folder}; programs traced (compiled) by this request: "
              f"{compiles.count() - traced_before}")
    return images, [*images, str(script)], "\n".join(commands), status


def show_on_canvas(path):
    """An uploaded background -> the drawing canvas's value (the image to draw over, no strokes yet)."""
    if not path:
        return None
    return {"background": str(path), "layers": [], "composite": str(path)}


def drawn_box(editor_value, background, current: str) -> str:
    """The box text for the strokes on the canvas (their bounding box at the background's size); the current
    text when nothing is drawn or the background is not readable (composing reports that)."""
    from jcompose.cli import InputError
    from jcompose.demo import common

    if not background:
        return current
    try:
        mask = common.drawn_mask(editor_value, common.image_shape(str(background), "background"))
    except InputError:
        return current
    return current if mask is None else common.box_text(mask)


def reporting_errors(respond=None, *, extra_outputs: int = 0):
    """Wraps a tab's event handler: an input error (the CLI's `error: ...` line) becomes the status line and a
    warning toast in the page, with the result fields emptied (and the `extra_outputs` the tab adds after
    them); the server serves on. Use as `@reporting_errors` or `@reporting_errors(extra_outputs=1)`."""
    if respond is None:
        return functools.partial(reporting_errors, extra_outputs=extra_outputs)
    from jcompose.cli import InputError

    @functools.wraps(respond)  # keeps the signature: gradio injects gr.Progress by it
    def handler(*args, **kwargs):
        import gradio as gr

        try:
            return respond(*args, **kwargs)
        except InputError as err:
            gr.Warning(f"error: {err}")
            return None, None, "", f"error: {err}", *([None] * extra_outputs)

    return handler
