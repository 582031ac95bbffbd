"""Faults a long run meets: a full disk and a read-only folder while checkpoints are written, and a kill
while a generated folder (tiny base, data, conversion, benchmark, export) is written.

The faults are real: the run folder sits on its own small tmpfs (a full disk fails orbax's and
tensorstore's own writes with ENOSPC), or its checkpoints folder is a read-only bind mount. Mounting
needs root or passwordless sudo; elsewhere each test re-runs itself inside `unshare --user
--map-root-user --mount`, where the user is root of a private mount namespace (skipped, saying so,
where the kernel allows none of these). Training runs use the toy least-squares method
(tests/toy_method.py), in process: what is tested is the loop's handling of the fault, and that the
run then resumes exactly (bitwise equal to a run that met no fault).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from toy_method import toy_config, use_toy_method

from jcompose import checkpoint, cli, train
from jcompose.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
INSIDE = "JCOMPOSE_TEST_IN_USERNS"


def _mount_prefix() -> list[str] | None:
    """How this process mounts: directly as root, through passwordless sudo (CI runners), or not at all."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def _mounts_here(request) -> bool:
    """True when this process may mount (root or sudo). Otherwise the test re-runs as root of a user
    namespace (False: its result was asserted there), or is skipped when the kernel allows none."""
    if _mount_prefix() is not None:
        return True
    reason = "mounting a small tmpfs needs root, passwordless sudo or unprivileged user namespaces (unshare -rm)"
    if os.environ.get(INSIDE) or not shutil.which("unshare"):
        pytest.skip(reason)
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"{reason}: {probe.stderr.decode().strip()}")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-q",
                             "-n", "0", "-p", "no:cacheprovider", request.node.nodeid], cwd=REPO,
                            env={**os.environ, INSIDE: "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return False


def _mount(*args: str) -> None:
    subprocess.run([*_mount_prefix(), "mount", *args], check=True, capture_output=True)


def _unmount(folder) -> None:
    subprocess.run([*_mount_prefix(), "umount", "-l", str(folder)], check=False, capture_output=True)


def _toy_argv(tmp_path, workdir, steps=STEPS):
    config = tmp_path / "toy_config.py"
    config.write_text("from toy_method import toy_config\n\ndef get_config(arg=''):\n"
                      f"    return toy_config(steps={steps}, sample_every=-1)\n")
    return [f"--config={config}", f"--workdir={workdir}"]


def _final_params(workdir):
    reader = Checkpointer(workdir)
    step = reader.steps()[-1]
    state, _ = reader.read(step)
    reader.close()
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The final state (params, optimizer state, EMA, step, rng) of a run that met no fault."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_toy_method(monkeypatch)
        workdir = tmp_path_factory.mktemp("straight") / "run"
        train.train(toy_config(steps=STEPS, sample_every=-1), workdir)
    return _final_params(workdir)


def _one_error_line(capsys, exit_info) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and "Exception" not in err, err
    return lines[0]


def _same(a, b):
    assert a[0] == b[0] and a[1].keys() == b[1].keys()
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key], err_msg=str(key))


_ENVIRONMENT = pytest.mark.skip_allowed("needs root, passwordless sudo or user namespaces to mount a tmpfs")


@_ENVIRONMENT
def test_a_full_disk_is_one_line_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys, request, straight):
    if not _mounts_here(request):
        return
    use_toy_method(monkeypatch)
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk))  # room for two of the toy's checkpoints
    try:
        argv = _toy_argv(tmp_path, disk / "run")
        with pytest.raises(SystemExit) as exit_info:
            cli.run(train.main, argv)
        line = _one_error_line(capsys, exit_info)
        folder = disk / "run" / "checkpoints"
        match = re.search(rf"error: {folder}: could not save checkpoint step (\d+): no space left on device "
                          r"\(a checkpoint needs about (\d+) KiB, (\d+) KiB free\)\. The last good checkpoint, step "
                          r"(\d+), is intact", line)
        assert match, line
        failed, needed, _, good = (int(g) for g in match.groups())
        assert 0 < good < failed < STEPS and needed > 16
        # Only committed steps remain (orbax's half-written <step>.orbax-checkpoint-tmp is gone).
        assert sorted(p.name for p in folder.iterdir()) == [str(s) for s in range(2, good + 1, 2)]
        _mount("-o", "remount,size=4m", str(disk))  # space freed: the same command resumes and finishes
        assert cli.run(train.main, argv) == 0
        assert f"resuming from {folder} at step {good}" in capsys.readouterr().out
        _same(_final_params(disk / "run"), straight)
    finally:
        _unmount(disk)


@_ENVIRONMENT
def test_a_read_only_checkpoints_folder_is_one_line_before_or_during_the_run(tmp_path, monkeypatch, capsys, request,
                                                                           straight):
    if not _mounts_here(request):
        return
    use_toy_method(monkeypatch)
    workdir = tmp_path / "run"
    folder = workdir / "checkpoints"
    folder.mkdir(parents=True)
    argv = _toy_argv(tmp_path, workdir)
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        with pytest.raises(SystemExit) as exit_info:  # read-only from the start: refused before the first step
            cli.run(train.main, argv)
        line = _one_error_line(capsys, exit_info)
        assert line.startswith(f"error: {folder}: not writable (read-only file system)"), line
        assert not (workdir / "metrics.json").exists()

        _mount("-o", "remount,rw,bind", str(folder))
        save = checkpoint.Checkpointer.save

        def save_then_turn_read_only(self, step, *args, **kwargs):
            if step == 6:  # the folder turns read-only while the run goes on (a remount, a lost mount)
                self.wait()
                _mount("-o", "remount,ro,bind", str(folder))
            return save(self, step, *args, **kwargs)

        monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_turn_read_only)
        with pytest.raises(SystemExit) as exit_info:
            cli.run(train.main, argv)
        line = _one_error_line(capsys, exit_info)
        assert line.startswith(f"error: {folder}: could not save checkpoint step 6: read-only file system"), line
        assert "The last good checkpoint, step 4, is intact" in line
        monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    finally:
        _unmount(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["2", "4"]
    assert cli.run(train.main, argv) == 0
    _same(_final_params(workdir), straight)


# ------------------------------------------------------------------ generated folders: whole or not at all

# A quick start's tiny base, killed while the text encoder is written (the writer announces it, then waits).
_KILLED_BASE = """
import sys, time
from jcompose.models import encoders

def stalled(*args, **kwargs):
    print("writing the text encoder", flush=True)
    time.sleep(600)

encoders.export_encoder = stalled
from jcompose.methods.base import base_folder
base_folder("tiny:sd15", sys.argv[1], 0)
"""


def _whole_base(folder) -> bool:
    """Every component of a tiny base with its config and weights (what loading it needs)."""
    return all((folder / part / "config.json").is_file() and any((folder / part).glob("*.msgpack"))
               for part in ("unet", "vae", "text_encoder")) and (folder / "tokenizer").is_dir()


def test_a_kill_while_the_tiny_base_is_written_leaves_nothing_a_rerun_trips_on(tmp_path):
    from jcompose.methods.base import base_folder

    workdir = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_BASE, str(workdir)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "writing the text encoder"
    writer.kill()
    writer.wait()
    base = workdir / "base"
    assert not (base / "sd15").exists()  # only the hidden partial copy, with the UNet and VAE written
    [partial] = base.iterdir()
    assert partial.name.startswith(".sd15.partial-") and (partial / "unet" / "config.json").is_file()
    folder = base_folder("tiny:sd15", workdir, 0)  # the rerun writes it whole and removes the dead one's copy
    assert sorted(p.name for p in base.iterdir()) == ["sd15"] and _whole_base(folder)

    # What an older jcompose left after such a kill (unet/ without config.json) is replaced too.
    legacy = tmp_path / "old" / "base" / "sd15"
    (legacy / "unet").mkdir(parents=True)
    (legacy / "unet" / "diffusion_flax_model.msgpack").write_bytes(b"half")
    assert _whole_base(base_folder("tiny:sd15", tmp_path / "old", 0))


class _Crash(Exception):
    """Stands in for a kill in the middle of a write."""


def _crash_on_call(monkeypatch, module, name, call):
    """Makes `module.name` raise _Crash on its `call`-th call (1-based)."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise _Crash(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_generated_data_converted_models_and_benchmarks_appear_whole(tmp_path, monkeypatch, tiny_bases):
    from input_pipeline import anyscene_benchmark
    from input_pipeline.sources import coco, synthetic, synthetic_murecom
    from jcompose import convert

    # Synthetic COCO + YouTube-VOS data: a crash in the videos leaves the images whole and no video folder.
    with monkeypatch.context() as patch:
        _crash_on_call(patch, synthetic, "_write_palette_png", 3)
        with pytest.raises(_Crash):
            synthetic.write_synthetic(tmp_path / "data", num_images=3, num_videos=2, image_size=(32, 40))
    assert _names(tmp_path / "data") == ["coco"]
    truth = synthetic.write_synthetic(tmp_path / "data", num_images=3, num_videos=2, image_size=(32, 40))
    assert _names(tmp_path / "data") == ["coco", "youtube_vos"]
    assert all(Path(f).is_file() for v in truth.videos.values() for f in v["frames"] + v["annotations"])
    assert all(Path(image["file"]).is_file() for image in truth.images)

    # Synthetic MureCom.
    with monkeypatch.context() as patch:
        _crash_on_call(patch, synthetic_murecom, "_write_mask", 4)
        with pytest.raises(_Crash):
            synthetic_murecom.write_synthetic_murecom(tmp_path / "murecom", size=(32, 40))
    assert not (tmp_path / "murecom").exists()
    synthetic_murecom.write_synthetic_murecom(tmp_path / "murecom", size=(32, 40))
    assert (tmp_path / "murecom" / "Toy" / "bg" / "bbox.txt").is_file()

    # A converted base folder: crashed after its first model folder, nothing; a non-empty destination refused.
    with monkeypatch.context() as patch:
        _crash_on_call(patch, convert, "convert_model", 2)
        with pytest.raises(_Crash):
            convert.convert(tiny_bases["sd15"], tmp_path / "converted", "diffusers")
    assert not (tmp_path / "converted").exists() and _names(tmp_path) == ["data", "murecom"]
    lines = convert.convert(tiny_bases["sd15"], tmp_path / "converted", "diffusers")
    assert all(".partial-" not in line for line in lines)
    assert (tmp_path / "converted" / "unet" / "config.json").is_file()
    with pytest.raises(cli.InputError, match="converted: is a folder holding other files"):
        convert.convert(tiny_bases["sd15"], tmp_path / "converted", "flax")

    # An AnyScene benchmark folder; a rerun replaces a complete one.
    source = coco.CocoSource(truth.coco_dir / "images", truth.coco_dir / "annotations" / "instances.json",
                             truth.coco_dir / "annotations" / "captions.json")
    with monkeypatch.context() as patch:
        _crash_on_call(patch, anyscene_benchmark, "_png", 4)
        with pytest.raises(_Crash):
            anyscene_benchmark.build_benchmark(source, tmp_path / "bench", num=2, size=32)
    assert not (tmp_path / "bench").exists()
    first = anyscene_benchmark.build_benchmark(source, tmp_path / "bench", num=2, size=32)
    again = anyscene_benchmark.build_benchmark(source, tmp_path / "bench", num=1, size=32)
    assert (first["pairs"], again["pairs"]) == (2, 1) and len(list((tmp_path / "bench" / "masks").iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial copy left anywhere


def test_an_export_killed_midway_leaves_no_model_folder(tmp_path):
    class Exporter:
        model_names = ["dog"]

        def export(self, params, folder):
            (Path(folder) / "unet").mkdir(parents=True)
            (Path(folder) / "unet" / "config.json").write_text("{}")
            raise _Crash("killed while the weights are written")

    with pytest.raises(_Crash):
        train.export_models(Exporter(), {"w": np.zeros(2)}, tmp_path / "export", models=1)
    assert _names(tmp_path / "export") == []
