"""The AnyScene tab: a scene generated around uploaded foregrounds (RGBA, or RGB + mask), as
`python -m jcompose.compose anyscene` does (jcompose/methods/anyscene_inference.py)."""

from __future__ import annotations

from pathlib import Path

from jcompose.cli import InputError
from jcompose.demo import common, compiles, widgets
from jcompose.methods import anyscene_inference as inference


class AnySceneComposer:
    """A trained AnyScene run, loaded on the first request; compose's own steps run on it (its compiled
    samplers are kept in the loaded model, one per layout tokens, steps and guidance; jit keeps one program
    per canvas shape under each)."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self.model = common.LoadedOnce(inference.load_anyscene)

    def argv(self, foreground: str, mask: str | None, prompt: str, words: str, layout: bool, blend: str,
             steps: int, guidance: float, seed: int, out: Path, attention: bool = False) -> list[str]:
        """compose's arguments for one image (`attention`: --show-attention, the maps in <out>_attention.png)."""
        argv = ["anyscene", "--checkpoint", self.checkpoint, "--foreground", foreground]
        if mask:
            argv += ["--mask", mask]
        argv += [f"--prompt={prompt}", f"--words={words}", "--blend", blend, "--steps", str(int(steps)),
                 "--guidance", repr(float(guidance)), "--seed", str(int(seed)), "--out", str(out)]
        return argv + ([] if layout else ["--no-layout"]) + (["--show-attention"] if attention else [])

    def compose(self, argv: list[str]) -> dict:
        """`python -m jcompose.compose <argv>` on the loaded run: writes args.out, returns {"image", "step", ...}."""
        args = common.parse(argv)
        request = inference.read_request(args)
        if not args.prompt:  # the page always sends one, maybe empty
            raise InputError("--prompt: describe the scene")
        return inference.run_anyscene(self.model(args), request)  # "attention": the grid, with --show-attention


def build(source, folders: common.RequestFolders, step_progress: bool = True) -> None:
    """The tab's components and its event, inside the caller's gr.Blocks / gr.Tab; `step_progress`: a progress
    bar per denoising step (common.StepProgress)."""
    import gradio as gr

    denoising = common.StepProgress(step_progress)
    composer = AnySceneComposer(source.path)
    with gr.Row():
        with gr.Column():
            foreground = gr.File(label="foreground (RGBA, or RGB with a mask)", file_types=["image"],
                                 elem_id="anyscene-foreground")
            mask = gr.File(label="mask (white = object; leave empty for RGBA)", file_types=["image"],
                           elem_id="anyscene-mask")
            prompt = gr.Textbox(label="prompt", placeholder="a dog on a beach", elem_id="anyscene-prompt")
            words = gr.Textbox(label="layout words (comma-separated prompt words kept inside the mask)",
                               elem_id="anyscene-words")
            layout = gr.Checkbox(value=True, label="layout control")
            attention = gr.Checkbox(value=False, elem_id="anyscene-attention-on",
                                    label="attention maps (each layout word's cross-attention over the result)")
            blend = gr.Radio(list(inference.BLENDS), value="poisson", label="blend (the foreground put back)")
            steps, guidance, seed, samples = widgets.sampling_controls("anyscene", steps=25, guidance=7.5, seed=0)
            run = gr.Button("Compose", variant="primary", elem_id="anyscene-run")
        with gr.Column():
            outputs = widgets.result_components("anyscene")
            maps = gr.Gallery(label="attention maps (the result, then each layout word's map over it)",
                              elem_id="anyscene-attention", format="png")

    @widgets.reporting_errors(extra_outputs=1)
    def respond(foreground, mask, prompt, words, layout, attention, blend, steps, guidance, seed, samples,
                progress=gr.Progress()):
        traced_before = compiles.count()
        fg = common.upload_path(foreground, "foreground")
        seeds = common.seeds_of(seed, samples)
        folder = folders.new("anyscene")
        images, grids, commands = [], [], []
        for i, s in enumerate(seeds):
            progress(i / len(seeds), desc=f"image {i + 1} of {len(seeds)} (the first request compiles)")
            argv = composer.argv(fg, mask, prompt or "", words or "", layout, blend, steps, guidance, s,
                                 folder / f"{i}.png", attention)
            with denoising.steps(progress, f"image {i + 1} of {len(seeds)}"):
                written = composer.compose(argv)
            images.append(written["image"])
            grids += [written["attention"]] if attention else []
            commands.append(common.command_line(argv))
        gallery, files, command, status = widgets.finish(folder, images, commands, traced_before)
        return gallery, files + grids, command, status, grids or None

    run.click(respond, [foreground, mask, prompt, words, layout, attention, blend, steps, guidance, seed, samples],
              [*outputs, maps])

