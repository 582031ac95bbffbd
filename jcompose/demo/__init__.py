"""A browser demo of every method a set of folders provides: `python -m jcompose.demo RUN_OR_FOLDER...`.

One tab per method (`sources.py` finds what each folder is: a training run of any method, by its
`config.json`, or AnyDoor's released checkpoint converted by `python -m jcompose.convert anydoor-ckpt`).
Each tab (`anyscene_tab.py`, `dreamcom_tab.py`, `anydoor_tab.py`) writes the uploads to files, builds the
`python -m jcompose.compose` command line for them, parses it with compose's own parser and runs compose's
own steps (each method's `read_request` and `run_<method>`) on a model loaded once by its `load_<method>`
(`common.LoadedOnce`), so a result equals what that command writes; the command is shown next to the
result. The loaded model keeps its compiled samplers per settings, jit one program per shape under each
(`compiles.py` counts compilations). gradio is imported only here (the `demo` extra).
"""
