"""The AnyScene tab: a scene generated around uploaded foregrounds (RGBA, or RGB + mask), as
`python -m jcompose.compose anyscene` does (jcompose/methods/anyscene_inference.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from jcompose.cli import InputError, require_positive
from jcompose.demo import common, compiles, widgets
from jcompose.methods import anyscene_inference as inference


class AnySceneComposer:
    """A trained AnyScene run, loaded on the first request, and its compiled samplers (one per layout tokens,
    steps and guidance; jit keeps one program per canvas shape under each)."""

    def __init__(self, checkpoint: str):
        self.checkpoint = checkpoint
        self._loaded = None
        self._samplers: dict = {}
        self._lock = threading.Lock()

    def argv(self, foreground: str, mask: str | None, prompt: str, words: str, layout: bool, blend: str,
             steps: int, guidance: float, seed: int, out: Path) -> list[str]:
        """compose's arguments for one image."""
        argv = ["anyscene", "--checkpoint", self.checkpoint, "--foreground", foreground]
        if mask:
            argv += ["--mask", mask]
        argv += [f"--prompt={prompt}", f"--words={words}", "--blend", blend, "--steps", str(int(steps)),
                 "--guidance", repr(float(guidance)), "--seed", str(int(seed)), "--out", str(out)]
        return argv + ([] if layout else ["--no-layout"])

    def _load(self, args):
        with self._lock:
            if self._loaded is None:
                self._loaded = inference.load_anyscene(args)
            return self._loaded

    def compose(self, argv: list[str]) -> dict:
        """compose_anyscene's steps on the loaded run; writes args.out and returns {"image", "step"}."""
        import jax
        import jax.numpy as jnp

        from jcompose.tokens import token_positions

        args = common.parse(argv)
        if args.blend not in inference.BLENDS:
            raise InputError(f"--blend {args.blend!r}: expected one of {inference.BLENDS}")
        require_positive(("--steps", args.steps))
        composite, mask = inference.read_foregrounds(args.foreground, args.mask or [])
        if not args.prompt:
            raise InputError("--prompt: describe the scene")
        words = [w.strip() for w in (args.words or "").split(",") if w.strip()]
        method, params, frozen, step = self._load(args)
        try:
            per_word = [token_positions(method.pipe.tokenizer, args.prompt, [w], method.pipe.tokenizer.model_max_length)
                        for w in words]
        except ValueError as err:
            raise InputError(f"--words: {err}") from None
        tokens = tuple(sorted({k for positions in per_word for k in positions}))
        batch = {"foreground": jnp.asarray(composite[None]), "mask": jnp.asarray(mask[None]),
                 "input_ids": jnp.asarray(method.tokenize([args.prompt]))}
        key = (tokens, args.layout, args.steps, args.guidance)
        with self._lock:
            if key not in self._samplers:
                self._samplers[key] = inference.generator(method, tokens, args.layout, args.steps, args.guidance)
            generate = self._samplers[key]
        generated = generate(params, frozen, batch, jax.random.PRNGKey(args.seed))
        result = inference.blend_images(args.blend, batch["foreground"], generated, batch["mask"],
                                        method.config.sample.blend_erode)
        out = Path(args.out)
        inference.write_image(out, inference.to_uint8(np.asarray(result[0])))
        return {"image": str(out), "step": step}


def build(source, folders: common.RequestFolders) -> None:
    """The tab's components and its event, inside the caller's gr.Blocks / gr.Tab."""
    import gradio as gr

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
            blend = gr.Radio(list(inference.BLENDS), value="poisson", label="blend (the foreground put back)")
            steps, guidance, seed, samples = widgets.sampling_controls("anyscene", steps=25, guidance=7.5, seed=0)
            run = gr.Button("Compose", variant="primary", elem_id="anyscene-run")
        with gr.Column():
            outputs = widgets.result_components("anyscene")

    @widgets.reporting_errors
    def respond(foreground, mask, prompt, words, layout, blend, steps, guidance, seed, samples,
                progress=gr.Progress()):
        traced_before = compiles.count()
        fg = common.upload_path(foreground, "foreground")
        seeds = common.seeds_of(seed, samples)
        folder = folders.new("anyscene")
        images, commands = [], []
        for i, s in enumerate(seeds):
            progress(i / len(seeds), desc=f"image {i + 1} of {len(seeds)} (the first request compiles)")
            argv = composer.argv(fg, mask, prompt or "", words or "", layout, blend, steps, guidance, s,
                                 folder / f"{i}.png")
            images.append(composer.compose(argv)["image"])
            commands.append(common.command_line(argv))
        return widgets.finish(folder, images, commands, traced_before)

    run.click(respond, [foreground, mask, prompt, words, layout, blend, steps, guidance, seed, samples], outputs)

