"""Compose images with a trained method: `python -m jcompose.compose <method> ...`.

    python -m jcompose.compose anyscene --base SD15 --checkpoint RUN --foreground fg.png --mask mask.png \
        --prompt "a dog on the beach" --words dog --out result.png
    python -m jcompose.compose dreamcom --checkpoint RUN --object Dog_fg1 --background bg.jpg \
        --box 40,60,200,220 --out DIR
    python -m jcompose.compose anydoor --checkpoint RUN --reference obj.png --reference-mask obj_mask.png \
        --background bg.jpg --mask target_mask.png --out result.png

`--checkpoint` is a training workdir (its newest readable checkpoint) or one step folder
(`RUN/checkpoints/<step>`). Each method's options and inference code live with the method
(`jcompose/methods/<name>_inference.py`); `python -m jcompose.compose <method> --help` lists them.
Input errors print one `error: ...` line and exit 2 (`--debug` or JCOMPOSE_DEBUG=1: the traceback).

`--benchmark` generates a whole benchmark on every device, resumably (`jcompose/generation.py`); with
`--multihost` (and `--coordinator_address/--num_processes/--process_id` where the platform does not provide
them) the same command on every host of a pod splits the items over all of them:

    python -m jcompose.compose anyscene --checkpoint gs://bucket/run --benchmark BENCH --out gs://bucket/gen \
        --multihost
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jcompose import cli, generation

# method -> the module whose `add_parser(subparsers)` registers its subcommand (imported on demand).
INFERENCE = {
    "anyscene": "jcompose.methods.anyscene_inference",
    "dreamcom": "jcompose.methods.dreamcom_inference",
    "anydoor": "jcompose.methods.anydoor_cli",
    "sd": "jcompose.methods.sd_baselines",  # untrained Stable Diffusion baselines (AnyScene's Table 1)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jcompose.compose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of input errors too (or set "
                        f"{cli.DEBUG_ENV}=1); accepted anywhere on the line")
    sub = parser.add_subparsers(dest="method", required=True)
    for module in INFERENCE.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Parses argv (without the program name), composes, prints what was written; returns it."""
    args = build_parser().parse_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        generation.start(args)  # --batch_size / --workers checked; --multihost joins the other hosts first
        written = args.run(args)
    what = f"{written['count']} images to " if "count" in written else ""
    if written.get("resumed"):
        what = f"{written['count']} images ({written['resumed']} already there from an earlier run) to "
    print(f"wrote {what}{written['image']} (checkpoint step {written['step']})"
          + (f" and {written['attention']}" if "attention" in written else ""))
    return written


if __name__ == "__main__":
    main()
