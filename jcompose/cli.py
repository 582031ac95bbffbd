"""Command-line error handling shared by every `python -m ...` entry point.

An error caused by the user's input (a file, a flag, a config field, a checkpoint, a data record)
prints one `error: ...` line naming it and exits with status 2. `--debug` on the command line, or
`JCOMPOSE_DEBUG=1` in the environment, shows the traceback instead. Any other exception is an
internal error and keeps its traceback.

    def main(argv):            # argparse or `parse_absl_flags`; raises InputError & co.
        ...
    if __name__ == "__main__":
        sys.exit(cli.run(main))
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

DEBUG_FLAG = "--debug"
DEBUG_ENV = "JCOMPOSE_DEBUG"
EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """A user input (file, flag, config field) is unusable; the message names it and what was expected."""


# Error classes of other modules that always mean bad user input. Looked up only in modules already
# imported (an exception of a module never imported cannot have been raised), so importing this
# module stays cheap.
_INPUT_ERROR_CLASSES = (
    ("input_pipeline.records", "RecordError"),
    ("jcompose.checkpoint", "CheckpointError"),
    ("configs.common", "ConfigError"),
    ("jcompose.models.diffusers_config", "ConfigError"),
    ("jcompose.models.pt_layout", "LayoutError"),
    ("jcompose.metrics.torch_files", "TorchFileError"),
    ("jcompose.metrics.torch_files", "UnsafePickleError"),  # a weight file that would run code: refused, named
    ("jcompose.train", "NonFiniteLoss"),
)
# Raised by the standard library for paths the user gave (a missing file, a workdir that is a file).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_input_error(err: BaseException) -> bool:
    """Whether `err` reports bad user input (printed as one line) rather than an internal fault."""
    if isinstance(err, (InputError, *_PATH_ERRORS)):
        return True
    for module_name, class_name in _INPUT_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if cls is not None and isinstance(err, cls):
            return True
    return False


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def pop_debug(argv: Sequence[str]) -> list[str]:
    """`argv` without `--debug`; when it was there, turns debugging on (also for child processes)."""
    argv = list(argv)
    if DEBUG_FLAG in argv:
        argv = [a for a in argv if a != DEBUG_FLAG]
        os.environ[DEBUG_ENV] = "1"
    return argv


def message(err: BaseException) -> str:
    """The error's text on one line (OSErrors without a path get their class name)."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(text: str) -> NoReturn:
    print(f"error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_INPUT_ERROR)


def report(err: BaseException, debug: bool = False) -> NoReturn:
    """For an `except` block: an input error becomes `error: ...` and exit 2; anything else, or any
    error while debugging (`debug` or JCOMPOSE_DEBUG), is re-raised with its traceback."""
    if debug or debug_enabled() or not is_input_error(err):
        raise err
    fail(message(err))


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Input errors raised inside become `error: ...` and exit 2 (unless debugging)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised unless it is the user's input
        if debug_enabled() or not is_input_error(err):
            raise
        fail(message(err))


@contextlib.contextmanager
def input_errors(prefix: str = "") -> Iterator[None]:
    """OSError/ValueError raised inside become InputError (prefixed): for steps that only read what
    the user pointed at (a model folder, a data folder), whose readers name the file at fault."""
    try:
        yield
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{prefix}{message(err)}") from err


def require_positive(*flags: tuple[str, int]) -> None:
    """InputError naming the first (flag, value) pair whose value is not a positive integer: for counts a
    command checks before it loads anything (`--num 0` would otherwise fail deep inside)."""
    for flag, value in flags:
        if value < 1:
            raise InputError(f"{flag} {value}: expected a positive integer")


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)` (argv without the program name) as an entry point; returns the exit code."""
    argv = pop_debug(sys.argv[1:] if argv is None else argv)
    with guard():
        code = main(argv)
    return code if isinstance(code, int) else 0


# ------------------------------------------------------------------------------ absl + config flags


def parse_absl_flags(argv: Sequence[str], define: Callable[[Any, list[str]], None], *, prog: str,
                     config_flag: str | None = "config"):
    """Parses `argv` (without the program name) into a fresh absl FlagValues; returns it.

    `define(flag_values, full_argv)` defines the program's flags on it (config_flags needs the full
    argv to find the overrides). A `--<config_flag>=file.py[:arg]` and each `--<config_flag>.a.b=v`
    override are checked first, so a missing file, a syntax error, an unknown variant or field (with
    a "did you mean") or a value of the wrong type raise InputError naming it, not absl's traceback.
    `--help` prints the flags and exits 0; a positional argument (a stray word) raises InputError.
    """
    from absl import flags

    full = [prog, *argv]
    values = flags.FlagValues()
    define(values, full)
    for name in ("verbosity", "logtostderr", "alsologtostderr"):  # absl logging's own flags
        if name in flags.FLAGS and name not in values:
            values[name] = flags.FLAGS[name]
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        print(f"usage: {prog} [flags]\n\n{values.get_help()}")
        raise SystemExit(0)
    config = _check_config_flags(argv, config_flag) if config_flag else None
    try:
        rest = values(full)[1:]
    except flags.Error as err:
        raise InputError(_flag_message(err, config, config_flag)) from None
    if rest:  # absl leaves positional arguments to the program; these programs take none
        raise InputError(f"unexpected argument {rest[0]!r}: {prog} takes only flags (--name=value)")
    if not flags.FLAGS.is_parsed():  # absl logging and grain's workers look at the global flags
        flags.FLAGS.mark_as_parsed()
    return values


def _check_config_flags(argv: Sequence[str], name: str):
    """Loads the config named by --<name> and checks every override's field; returns the config."""
    from configs import common

    spec, overrides = None, []
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        key, has_value, value = arg.partition("=")
        if key in (f"--{name}", f"-{name}"):
            spec = value if has_value else (argv[i + 1] if i + 1 < len(argv) else "")
        elif key.startswith((f"--{name}.", f"-{name}.", f"--no{name}.")):
            overrides.append(key.split(".", 1)[1])
    if spec is None:
        if overrides:
            raise InputError(f"--{name}.{overrides[0]}: give --{name}=FILE.py[:variant] first")
        return None
    config = common.load(spec, flag=f"--{name}")
    for dotted in overrides:
        common.check_override(config, dotted, flag=f"--{name}")
    return config


def _flag_message(err, config, config_flag) -> str:
    """absl's flag error, with the expected type when it is a config override."""
    text = message(err).removeprefix("flag ")
    if config is not None and text.startswith(f"--{config_flag}."):
        dotted = text.split("=", 1)[0].split(".", 1)[1].split(":", 1)[0]
        try:
            current = config
            for part in dotted.split("."):
                current = current[part]
        except (KeyError, TypeError):
            return text
        text += f" (expected {type(current).__name__}, like the default {current!r})"
    return text
