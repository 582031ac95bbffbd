"""The demo page: one tab per model the folders offer (sources.py), built by each method's tab module."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

from jcompose.demo import common, compiles, sources

TABS = {"anyscene": "jcompose.demo.anyscene_tab", "dreamcom": "jcompose.demo.dreamcom_tab",
        "anydoor": "jcompose.demo.anydoor_tab"}

INTRO = ("Put objects into images with jcompose. Each tab serves one model; the first request of a tab loads "
         "it and compiles its sampler (a minute on a CPU), later requests of the same settings and image "
         "size reuse the compiled program. Every result comes with the `python -m jcompose.compose` command "
         "that writes the same pixels.")


def build(folders: list[str], out: str | Path | None = None, step_progress: bool = True):
    """gr.Blocks serving every folder (InputError naming a folder that is neither a run nor a release).
    Results and drawn masks go to `out` (default: a new temporary folder). `step_progress`: a progress bar
    per denoising step (a callback in the compiled samplers; without it they are compose's very programs)."""
    import gradio as gr

    found = [sources.find(folder) for folder in folders]
    compiles.start()
    requests = common.RequestFolders(out or tempfile.mkdtemp(prefix="jcompose-demo-"))
    with gr.Blocks(title="jcompose demo") as demo:
        gr.Markdown(f"# jcompose\n{INTRO}")
        with gr.Tabs():
            for source in found:
                with gr.Tab(source.title, elem_id=f"tab-{source.method}"):
                    importlib.import_module(TABS[source.method]).build(source, requests, step_progress)
    demo.requests_root = requests.root
    return demo
