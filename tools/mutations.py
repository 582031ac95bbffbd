"""Planted bugs, one at a time, against the tests meant to catch them: the suite's kill rate.

    python tools/mutations.py --list                       # the mutations, their files and tests
    python tools/mutations.py                              # run all (long: a pytest run per mutation)
    python tools/mutations.py --only stacked_state_reversed,grad_accum_one_key
    python tools/mutations.py --area train_state --baseline --json /tmp/mutations.json

Each mutation (tools/mutation_list.py) is a text patch on one file: an exact snippet `old` (it must occur exactly once, else the
mutation is reported `stale` and its patch needs updating) replaced by `new`. The working tree is never
written: the tool copies the checkout's files (tracked and untracked, not ignored) into a temporary folder
once, patches the file there, runs `python -m pytest -q -n 0 -x <tests>` in the copy, and restores the file
before the next mutation; the copy is removed at exit, also on Ctrl-C or an error. Inside the copy `cwd` and
PYTHONPATH point at the copy, so its modules are imported, not the editable install's checkout (checked once
before the first mutation). Compiled XLA programs are shared through JAX_COMPILATION_CACHE_DIR (default
/tmp/jcompose-mutations-xla), so mutations that leave a program unchanged do not recompile it.

Outcomes: `killed` (pytest exit 1: a test failed; 2 or 3: the tests could not run, e.g. an import broke),
`survived` (exit 0: every test passed with the bug in place), `timeout`, `stale` (the patch no longer
applies), `error` (exit 4/5: a named test does not exist). `--baseline` first runs each mutation's tests on
the unpatched copy: a kill counts only where they pass there. The kill rate is killed / (killed + survived).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mutation_list import MUTATIONS  # the table of planted bugs (tools/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = "/tmp/jcompose-mutations-xla"


# ------------------------------------------------------------------------------------------ runner


def _copy_tree(destination: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files, as they are now, under `destination`."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")])))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE)
    env.pop("JCOMPOSE_REQUIRE_OPTIONAL", None)  # a missing oracle package skips here; it is not the bug's kill
    return env


def _run_pytest(copy: Path, tests: tuple[str, ...], timeout: float, extra: list[str]) -> tuple[str, int, float, str]:
    """(outcome, exit code, seconds, output tail) of pytest on `tests` inside the copy."""
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-x", "-p", "no:cacheprovider", *extra, *tests]
    start = time.time()
    proc = subprocess.Popen(command, cwd=copy, env=_env(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", -1, time.time() - start, out[-1500:]
    except BaseException:  # Ctrl-C: stop the test process group too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    code = proc.returncode
    outcome = {0: "survived", 1: "killed", 2: "killed", 3: "killed"}.get(code, "error")
    return outcome, code, time.time() - start, out[-1500:]


def _check_imports_from(copy: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import jcompose, input_pipeline; print(jcompose.__file__); "
                            "print(input_pipeline.__file__)"], cwd=copy, env=_env(copy), capture_output=True,
                           text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in probe):
        raise SystemExit(f"the copy's modules are not the ones imported ({probe}); check PYTHONPATH")


def run(mutations, *, timeout: float, baseline: bool, extra: list[str]) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="jcompose-mutations-") as folder:
        copy = Path(folder) / "repo"
        _copy_tree(copy)
        _check_imports_from(copy)
        baselines: dict[tuple[str, ...], str] = {}
        for mutation in mutations:
            path = copy / mutation.path
            original = path.read_text()
            row = {"name": mutation.name, "area": mutation.area, "tests": " ".join(mutation.tests),
                   "why": mutation.why}
            if original.count(mutation.old) != 1:
                row.update(outcome="stale", code=None, seconds=0.0,
                           tail=f"`old` occurs {original.count(mutation.old)} times in {mutation.path}")
            else:
                if baseline and mutation.tests not in baselines:
                    outcome, code, _, tail = _run_pytest(copy, mutation.tests, timeout, extra)
                    baselines[mutation.tests] = "pass" if outcome == "survived" else f"FAIL ({code}): {tail[-300:]}"
                try:
                    path.write_text(original.replace(mutation.old, mutation.new))
                    outcome, code, seconds, tail = _run_pytest(copy, mutation.tests, timeout, extra)
                finally:
                    path.write_text(original)
                row.update(outcome=outcome, code=code, seconds=round(seconds, 1), tail=tail)
                if baseline:
                    row["baseline"] = baselines[mutation.tests]
            results.append(row)
            print(f"{row['outcome']:>8}  {mutation.name}  ({row['seconds']:.0f} s)"
                  + (f"  baseline {row['baseline'][:60]}" if baseline else ""), flush=True)
    return results


def report(results: list[dict]) -> str:
    lines = ["| mutation | area | bug | tests | outcome | s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['area']} | {r['why']} | {r['tests']} | {r['outcome']} | {r['seconds']:.0f} |")
    counted = [r for r in results if r["outcome"] in ("killed", "survived")
               and r.get("baseline", "pass") == "pass"]
    killed = sum(r["outcome"] == "killed" for r in counted)
    rate = f"{killed}/{len(counted)} killed ({100 * killed / len(counted):.0f}%)" if counted else "nothing counted"
    other = [f"{r['name']}: {r['outcome']}" for r in results if r not in counted]
    return "\n".join(lines + ["", f"kill rate: {rate}" + (f"; not counted: {', '.join(other)}" if other else "")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--area", default="", help="only the mutations of this area (e.g. train_state, diffusion)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--baseline", action="store_true", help="first check each test set passes unpatched")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTATIONS}
        if unknown:
            parser.error(f"--only: unknown mutations {sorted(unknown)}")
        chosen = [m for m in chosen if m.name in names]
    if args.area:
        chosen = [m for m in chosen if m.area == args.area]
    if args.list:  # with whether each patch still applies to the checkout
        for m in chosen:
            count = (REPO / m.path).read_text().count(m.old)
            state = "" if count == 1 else f"  STALE: `old` found {count} times"
            print(f"{m.name:32} {m.path:42} {' '.join(m.tests)}{state}\n{'':32} {m.why}")
        return 0
    results = run(chosen, timeout=args.timeout, baseline=args.baseline, extra=args.pytest_args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
