"""`python -m jcompose.demo RUN_OR_FOLDER... [--port 7860] [--share]`: the browser demo (the `demo` extra).

    python -m jcompose.demo runs/anyscene runs/dreamcom_dog anydoor_release --port 7860

Each folder is a training run (a workdir or one of its checkpoints/<step> folders) of any method, or
AnyDoor's released checkpoint converted with `python -m jcompose.convert anydoor-ckpt`. A folder that
is neither prints one `error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from jcompose import cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jcompose.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="RUN_OR_FOLDER", help="training runs / converted releases")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--no-step-progress", dest="step_progress", action="store_false",
                        help="progress per image, not per denoising step: the compiled samplers are then "
                             "compose's own programs (shared through JAX's compilation cache)")
    parser.add_argument("--out", default="", help="folder for results and drawn masks (default: a temporary one)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(cli.pop_debug(sys.argv[1:] if argv is None else argv))
    with cli.guard():
        from jcompose.demo import app

        demo = app.build(args.folders, args.out or None, args.step_progress)
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        allowed_paths=[str(demo.requests_root)])


if __name__ == "__main__":
    main()
