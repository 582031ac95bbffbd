"""Every entry point answers bad user input with one `error: ...` line naming the file or field and
exit status 2; `--debug` / JCOMPOSE_DEBUG=1 show the traceback; internal errors keep theirs.

The table runs each entry point's `main` in this process (through `cli.run`, as `python -m` does);
a few cases run as real subprocesses to check what a user sees.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from toy_method import use_toy_method

from input_pipeline import anydoor_benchmark, anyscene_benchmark
from input_pipeline.sources import synthetic
from jcompose import cli, compose, convert, evaluate, sweep, train
from jcompose.bench import commands as bench_commands

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs of every kind, written once."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "a_file").write_text("not a folder")
    (root / "syntax.py").write_text("def get_config(arg):\n    return (\n")
    (root / "prompts.json").write_text("{'not': json")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    truth = synthetic.write_synthetic(root / "data", num_images=3, num_videos=0, image_size=(64, 80))
    coco = truth.coco_dir
    for image in sorted((coco / "images").glob("*.jpg"))[:1]:
        image.write_bytes(b"")  # a zero-byte image: a bad record
    missing = root / "missing_images"  # the same annotations, no image files at all
    (missing / "annotations").mkdir(parents=True)
    for name in ("instances.json", "captions.json"):
        (missing / "annotations" / name).write_text((coco / "annotations" / name).read_text())
    (missing / "images").mkdir()
    (root / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (root / "gen").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "gen" / "a.png")
    Image.fromarray(mask).save(root / "mask.png")
    (root / "sweep_syntax.py").write_text("def get_sweep(arg)\n    return {}\n")
    (root / "sweep_typo.py").write_text("def get_sweep(arg):\n    return {'config': 'configs/denoise.py:tiny', "
                                        "'runs': [{'optim.lrr': 1e-4}]}\n")
    (root / "sweep_raises.py").write_text("def get_sweep(arg):\n    return 1 / 0\n")
    (root / "sweep_ok.py").write_text("def get_sweep(arg):\n    return {'config': 'configs/denoise.py:tiny', "
                                      "'runs': [{'seed': 1}]}\n")
    # Hostile files: FID statistics holding a pickled object array, and FID weights whose pickle would run code.
    np.savez(root / "object_stats.npz", mu=np.array([1.0, "x", None], dtype=object), sigma=np.eye(3))
    (root / "evil_fid.pth").write_bytes(pickle.dumps({"Mixed_5b.branch1x1.conv.weight": _Evil()}))
    # A run whose stored config lost model.base (edited by hand): nothing can stand in for it.
    (root / "run_no_base" / "checkpoints" / "2").mkdir(parents=True)
    from configs.anyscene import get_config

    stored = json.loads(json.dumps(get_config("tiny").to_dict(), default=str))
    del stored["model"]["base"]
    (root / "run_no_base" / "config.json").write_text(json.dumps({"config": stored, "command": []}))
    return root


class _Evil:
    """Unpickled, it would create a marker file (it must never be)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"jcompose_pwned_{os.getpid()}"


def _anyscene_data(folder):
    return ["--config=configs/anyscene.py:tiny", f"--config.data.coco_root={folder}", "--config.data.image_dir=images",
            "--config.data.instances_json=annotations/instances.json",
            "--config.data.captions_json=annotations/captions.json"]


TRAIN = [
    (["--config=configs/nope.py", "--workdir={w}"], "config configs/nope.py: no such file"),
    (["--config={f}/syntax.py", "--workdir={w}"], "syntax.py, line 2: syntax error: '(' was never closed"),
    (["--config=configs/denoise.py:huge", "--workdir={w}"], "configs/denoise.py: unknown variant 'huge'"),
    (["--config=configs/denoise.py:tiny", "--config.train.stepz=3", "--workdir={w}"],
     "--config.train.stepz: config.train has no field 'stepz'; did you mean 'train.steps'?"),
    (["--config=configs/denoise.py:tiny", "--config.trian.steps=3", "--workdir={w}"],
     "config has no field 'trian'; did you mean 'train'?"),
    (["--config=configs/denoise.py:tiny", "--config.train.steps=abc", "--workdir={w}"],
     "--config.train.steps=abc: invalid literal for int() with base 10: 'abc' (expected int, like the default 60)"),
    (["--config=configs/denoise.py:tiny", "--config.train.steps=-5", "--workdir={w}"],
     "config.train.steps = -5: expected a positive integer"),
    (["--config=configs/denoise.py:tiny", "--config.optim.schedule=linear", "--workdir={w}"],
     "config.optim.schedule = 'linear': expected 'constant' or 'cosine'"),
    (["--config=configs/denoise.py:tiny"], "--workdir=DIR are required"),
    (["--config=configs/denoise.py:tiny", "--workdir={f}/a_file"], "a_file: is a file, not a folder"),
    (["--config=configs/denoise.py:tiny", "--workdir={f}/a_file/run"], "a_file/run: not writable"),
    (["--config=configs/denoise.py:tiny", "--config.model.base=/nonexistent/sd15", "--workdir={w}"],
     "config.model (base '/nonexistent/sd15'): /nonexistent/sd15: base model folder not found"),
    (["--config=configs/denoise.py:tiny", "--workdirr={w}"], "Unknown command line flag 'workdirr'"),
    ([*_anyscene_data("{f}/data/coco"), "--config.data.strict=True", "--workdir={w}"],
     "000000.jpg: image file is empty (0 bytes)"),
    ([*_anyscene_data("{f}/missing_images"), "--workdir={w}"],
     "no usable record in the last 100 records: 'image file not found' x100"),
    (["--config=configs/denoise.py:tiny", "--workdir={w}", "--config.train.steps=-5", "stray_argument"],
     "unexpected argument 'stray_argument': python -m jcompose.train takes only flags (--name=value)"),
    (["--config=configs/denoise.py:tiny", "--workdir={w}", "--lock_lease=0"],
     "--lock_lease 0.0: expected a positive number of seconds"),
    (["--config=configs/denoise.py:tiny", "--workdir={w}", "--multihost", "--num_processes=2", "--process_id=2"],
     "--process_id 2: expected 0 to 1 (--num_processes 2)"),
    (["--config=configs/denoise.py:tiny", "--workdir={w}", "--multihost", "--coordinator_address=10.0.0.1"],
     "--coordinator_address '10.0.0.1': expected HOST:PORT of process 0"),
    (["--config=configs/denoise.py:tiny", "--workdir={w}", "--process_id=1"],
     "--coordinator_address / --num_processes / --process_id need --multihost"),
]

EVALUATE = [
    (["--config=configs/eval/nope.py"], "config configs/eval/nope.py: no such file"),
    (["--config=configs/eval/anyscene.py"], "config.out: set an output folder"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.fid.mdoe=clean"],
     "config.fid has no field 'mdoe'; did you mean 'fid.mode'?"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('clip_score',)"],
     "config.clip.model: clip_score needs a transformers CLIP folder"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('psnr',)"],
     "config.metrics: unknown ['psnr']"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('fid',)",
      "--config.fid.reference_stats={f}/stats.npz", "--config.generated={f}/gen"],
     "config.fid.reference_stats = '{f}/stats.npz': no such file"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('fid',)",
      "--config.generated={f}/nowhere", "--config.fid.weights=random"], "config.generated: {f}/nowhere is not a folder"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('clip_score',)",
      "--config.clip.model={f}", "--config.generated={f}/gen", "--config.prompts={f}/prompts.json"],
     "config.prompts {f}/prompts.json: invalid JSON"),
    (["--config=configs/eval/anyscene.py", "stray"], "unexpected argument 'stray'"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('fid',)",
      "--config.fid.weights=random", "--config.generated={f}/gen", "--config.fid.reference_stats={f}/object_stats.npz"],
     "object_stats.npz: field 'mu' is an object array (pickled Python objects), refused"),
    (["--config=configs/eval/anyscene.py", "--config.out={w}", "--config.metrics=('fid',)",
      "--config.fid.weights={f}/evil_fid.pth", "--config.generated={f}/gen", "--config.reference={f}/gen"],
     "evil_fid.pth: refuses to unpickle global"),
]

SWEEP = [
    (["list", "--sweep=nope.py", "--root={w}"], "--sweep nope.py: no such file"),
    (["list", "--sweep={f}/sweep_syntax.py", "--root={w}"], "sweep_syntax.py, line 1: syntax error"),
    (["list", "--sweep={f}/sweep_typo.py", "--root={w}"],
     "run lrr=0.0001: --config.optim.lrr: config.optim has no field 'lrr'; did you mean 'optim.lr'?"),
    (["list", "--sweep={f}/sweep_raises.py", "--root={w}"], "get_sweep('') raised ZeroDivisionError"),
    (["run", "--sweep={f}/sweep_ok.py", "--root={w}", "--only=nope"], "--only ['nope']: not in the sweep"),
]

SYNTHETIC = [
    (["--out={w}", "--num_images", "-3"], "--num_images -3: expected an integer >= 0"),
    (["--out={w}", "--height", "16"], "--height 16: expected an integer >= 32"),
    (["--out={f}/a_file", "--num_images", "1", "--num_videos", "0"], "a_file: is a file, not a folder"),
]

BENCHMARK = [
    (["--out={w}"], "give --coco_root, or --image_dir and --instances_json"),
    (["--coco_root=/nonexistent", "--out={w}"], "--coco_root /nonexistent: no such folder"),
    (["--image_dir={f}/data/coco/images", "--instances_json={f}/nope.json", "--out={w}"],
     "nope.json: JSON file not found"),
    (["--image_dir={f}/data/coco/images", "--instances_json={f}/empty.json", "--out={w}"],
     "empty.json: no image with an annotation"),
    (["--image_dir={f}/data/coco/images", "--instances_json={f}/data/coco/annotations/instances.json", "--num=0",
      "--out={w}"], "--num 0: expected > 0"),
]

COMPOSE = [
    (["anyscene", "--checkpoint={f}/nowhere", "--foreground={f}/gen/a.png", "--mask={f}/mask.png", "--prompt=x",
      "--out={w}/o.png"], "--checkpoint {f}/nowhere: neither a training workdir"),
    (["anyscene", "--checkpoint={f}", "--foreground={f}/nope.png", "--mask={f}/mask.png", "--prompt=x",
      "--out={w}/o.png"], "--foreground {f}/nope.png: no such file"),
    (["anyscene", "--checkpoint={f}", "--foreground={f}/gen/a.png", "--mask={f}/gen/a.png", "--prompt=x",
      "--out={w}/o.png"], "--mask {f}/gen/a.png: empty foreground"),
    (["dreamcom", "--checkpoint={f}", "--background={f}/gen/a.png", "--box=1,2", "--out={w}"],
     "--box '1,2': expected four integers x1,y1,x2,y2"),
    (["anydoor", "--checkpoint={f}", "--reference={f}/gen/a.png", "--background={f}/gen/a.png",
      "--mask={f}/mask.png", "--out={w}/o.png"], "--reference {f}/gen/a.png: no --reference-mask given"),
    # Flags are checked before anything loads (a checkpoint that is not a run would fail later).
    (["dreamcom", "--checkpoint={f}", "--background={f}/gen/a.png", "--box=1,2,8,8", "--num", "0", "--out={w}"],
     "--num 0: expected a positive integer"),
    (["dreamcom", "--checkpoint={f}", "--background={f}/gen/a.png", "--box=1,2,8,8", "--self-attention", "sideways",
      "--out={w}"], "--self-attention 'sideways': expected one of released, paper, none"),
    (["anyscene", "--checkpoint={f}", "--foreground={f}/gen/a.png", "--mask={f}/mask.png", "--prompt=x", "--steps=0",
      "--out={w}/o.png"], "--steps 0: expected a positive integer"),
    (["anydoor", "--checkpoint={f}", "--reference={f}/gen/a.png", "--background={f}/gen/a.png",
      "--mask={f}/mask.png", "--steps=0", "--out={w}/o.png"], "--steps 0: expected a positive integer"),
    (["anyscene", "--checkpoint={f}/run_no_base/checkpoints/2", "--foreground={f}/gen/a.png", "--mask={f}/mask.png",
      "--prompt=x", "--out={w}/o.png"],
     "run_no_base/config.json: the stored config has no model.base: the record cannot say which model"),
]

CONVERT = [
    (["to-flax", "{f}/nowhere", "{w}"], "{f}/nowhere: folder not found"),
    (["anydoor-ckpt", "{f}/a_file", "{w}"], "{f}/a_file: neither a zip archive nor a legacy torch pickle"),
    (["anydoor-ckpt", "{f}/gen/a.png", "{w}"], "{f}/gen/a.png: neither a zip archive nor a legacy torch pickle"),
    (["sd-ckpt", "{f}/nope.ckpt", "{w}"], "{f}/nope.ckpt: checkpoint file not found"),
]

BENCH = [
    (["train", "--config=configs/nope.py"], "config configs/nope.py: no such file"),
    (["suite", "--out={f}/a_file"], "--out {f}/a_file: is a file, not a folder"),
]

ANYDOOR_BENCHMARK = [
    (["--dreambooth={f}/nowhere", "--coco={f}/nowhere", "--out={w}"], "--dreambooth {f}/nowhere: no such folder"),
    (["--dreambooth={f}", "--out={w}"], "give --coco ROOT, or --image-dir and --instances"),
    (["--dreambooth={f}", "--coco={f}/nowhere", "--out={w}"], "{f}/nowhere/val2017: COCO image folder not found"),
]

CASES = ([("train", *c) for c in TRAIN] + [("evaluate", *c) for c in EVALUATE] + [("sweep", *c) for c in SWEEP]
         + [("synthetic", *c) for c in SYNTHETIC] + [("anyscene_benchmark", *c) for c in BENCHMARK]
         + [("compose", *c) for c in COMPOSE] + [("convert", *c) for c in CONVERT] + [("bench", *c) for c in BENCH]
         + [("anydoor_benchmark", *c) for c in ANYDOOR_BENCHMARK])
MAINS = {"train": train.main, "evaluate": evaluate.main, "sweep": sweep.main, "synthetic": synthetic.main,
         "anyscene_benchmark": anyscene_benchmark.main, "compose": compose.main, "convert": convert.main,
         "bench": bench_commands.main, "anydoor_benchmark": anydoor_benchmark.main}


@pytest.mark.parametrize("entry, argv, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_input_errors_are_one_line_and_exit_2(entry, argv, expected, files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    fill = {"f": str(files), "w": str(tmp_path / "out")}
    argv = [a.format(**fill) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(MAINS[entry], argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(**fill) in lines[0], lines[0]
    assert not MARKER.exists()  # no hostile file ran anything


def test_an_unusable_checkpoint_is_an_input_error(tmp_path, monkeypatch, capsys):
    """A run trained with EMA, resumed with EMA switched off: the mismatch is named, exit 2."""
    use_toy_method(monkeypatch)
    config = tmp_path / "toy_config.py"
    config.write_text("from toy_method import toy_config\n\ndef get_config(arg=''):\n    return toy_config(steps=2)\n")
    argv = [f"--config={config}", f"--workdir={tmp_path / 'run'}"]
    assert cli.run(train.main, argv) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli.run(train.main, [*argv, "--config.train.ema_decay=0.0", "--config.train.steps=4"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "checkpoint step 2 does not fit" in err and "ema: only in the checkpoint" in err
    assert "set --config.train.ema_decay to its value" in err


def test_internal_errors_and_debug_keep_the_traceback(monkeypatch, tmp_path):
    def broken(argv):
        raise KeyError("an internal bug")

    with pytest.raises(KeyError):
        cli.run(broken, [])
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli.run(synthetic.main, [f"--out={tmp_path}", "--num_images", "-3"])
    with pytest.raises(cli.InputError, match="--num_images -3"):
        cli.run(synthetic.main, [f"--out={tmp_path}", "--num_images", "-3", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(cli.InputError, match="--num_images -3"):
        cli.run(synthetic.main, [f"--out={tmp_path}", "--num_images", "-3"])


@pytest.mark.parametrize("module, argv, expected", [
    ("jcompose.train", ["--config=configs/denoise.py:tiny", "--config.train.stepz=3", "--workdir=/tmp/x"],
     "did you mean 'train.steps'?"),
    ("jcompose.evaluate", ["--config=configs/eval/anyscene.py"], "config.out: set an output folder"),
    ("jcompose.sweep", ["list", "--sweep=nope.py", "--root=/tmp/x"], "--sweep nope.py: no such file"),
    ("input_pipeline.sources.synthetic", ["--out=/tmp/x", "--num_images", "-3"], "--num_images -3"),
    ("input_pipeline.anyscene_benchmark", ["--coco_root=/nonexistent", "--out=/tmp/x"], "--coco_root /nonexistent"),
    ("input_pipeline.anydoor_benchmark", ["--dreambooth=/nonexistent", "--out=/tmp/x"], "--dreambooth /nonexistent"),
    ("jcompose.bench", ["train", "--config=configs/nope.py"], "config configs/nope.py: no such file"),
    ("jcompose.compose", ["anydoor", "--checkpoint=/nonexistent", "--out=/tmp/x.png"], "--reference"),
    ("jcompose.convert", ["sd-ckpt", "/nonexistent.ckpt", "/tmp/x"], "/nonexistent.ckpt: checkpoint file not found"),
])
def test_what_a_user_sees(module, argv, expected):
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    result = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=env, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert expected in result.stderr
    if module in ("jcompose.train", "jcompose.bench"):  # --debug and the environment variable show the traceback
        for extra, more_env in ((["--debug"], {}), ([], {cli.DEBUG_ENV: "1"})):
            debug = subprocess.run([sys.executable, "-m", module, *argv, *extra], cwd=REPO, capture_output=True,
                                   text=True, timeout=300, env={**env, **more_env}, check=False)
            assert "Traceback" in debug.stderr and expected in debug.stderr and debug.returncode == 1


def test_multihost_without_a_coordinator_is_one_line():
    """No --coordinator_address and no cluster JAX can detect: one line, before jax.distributed's traceback
    (a fresh process: initialize must come before any JAX computation)."""
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV and not k.startswith(("SLURM_", "OMPI_"))
           and k not in ("KUBERNETES_SERVICE_HOST", "JAX_COORDINATOR_ADDRESS")}
    result = subprocess.run([sys.executable, "-m", "jcompose.train", "--config=configs/denoise.py:tiny",
                             "--workdir=/nonexistent/run", "--multihost"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**env, "TPU_SKIP_MDS_QUERY": "1"}, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: --multihost: jax.distributed.initialize failed: coordinator_address should be defined.")


def test_a_run_record_without_later_fields_gets_todays_defaults(tmp_path, caplog):
    """A run made before config.model.cond_format existed (or whose config.json lost it): the field comes
    from configs/anyscene.py in the variant the recorded command used, and a warning names it."""
    import logging

    from configs.anyscene import get_config
    from jcompose import inference

    stored = json.loads(json.dumps(get_config("tiny").to_dict(), default=str))
    stored["model"]["cond_format"] = "signed"  # the run's own value stays
    del stored["data"]["image_size"], stored["model"]["cond_format"]
    run = tmp_path / "run"
    (run / "checkpoints" / "2").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": stored, "command": [
        "python -m jcompose.train", "--config=configs/anyscene.py:tiny", f"--workdir={run}"]}))
    with caplog.at_level(logging.WARNING):
        _, config = inference.run_config(str(run / "checkpoints" / "2"), "anyscene")
    assert config.model.cond_format == get_config("tiny").model.cond_format
    assert config.data.image_size == get_config("tiny").data.image_size != get_config().data.image_size  # the variant
    assert f"{run / 'config.json'} lacks" in caplog.text and "model.cond_format = 'inpaint'" in caplog.text


def test_fid_statistics_holding_pickled_objects_are_refused_by_name(files):
    from jcompose.metrics import fid

    with pytest.raises(cli.InputError, match=r"object_stats.npz: field 'mu' is an object array"):
        fid.load_stats(files / "object_stats.npz")


def test_anydoor_weights_whose_parts_do_not_fit_are_named(tmp_path, capsys):
    """A converted release whose dinov2/ was swapped for a DINOv2 of another width than the projector's input."""
    import dataclasses

    import ldm_fixtures as fx
    from safetensors.numpy import save_file

    from jcompose.models import encoders, tiny, vit

    save_file(fx.anydoor_state_dict(7), str(tmp_path / "anydoor_pruned.safetensors"))
    assert convert.main(["anydoor-ckpt", str(tmp_path / "anydoor_pruned.safetensors"), str(tmp_path / "rel"),
                         "--sample-size", "8", "--head-channels", "16", "--dinov2-head-channels", "8"]) == 0
    wider = vit.Dinov2Model(dataclasses.replace(tiny.dinov2_config(), hidden_size=48, image_size=518))
    folder = tmp_path / "rel" / "dinov2"
    for path in folder.iterdir():
        path.unlink()
    encoders.export_encoder(wider, tiny.random_params(encoders.abstract_params(wider), 0), folder, ("safetensors",))
    from PIL import Image

    Image.fromarray(np.full((32, 32, 4), 255, np.uint8)).save(tmp_path / "ref.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "bg.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(compose.main, ["anydoor", "--weights", str(tmp_path / "rel"), "--reference", str(tmp_path / "ref.png"),
                               "--background", str(tmp_path / "bg.png"), "--mask", str(tmp_path / "mask.png"),
                               "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert (f"{tmp_path / 'rel' / 'projector' / 'projector.safetensors'} projects input width 32 (weight 64 x 32), but "
            f"{folder / 'config.json'} has hidden_size 48") in err


@pytest.mark.parametrize("entry, argv", [
    ("train", ["--config=configs/denoise.py:tiny", "--workdir={w}", "stray"]),
    ("evaluate", ["--config=configs/eval/anyscene.py", "--config.out={w}", "stray"]),
    ("sweep", ["list", "--sweep=configs/sweeps/denoise_lr.py:tiny", "--root={w}", "stray"]),
    ("synthetic", ["--out={w}", "stray"]),
    ("anyscene_benchmark", ["--coco_root={f}", "--out={w}", "stray"]),
    ("anydoor_benchmark", ["--dreambooth={f}", "--coco={f}", "--out={w}", "stray"]),
    ("compose", ["anyscene", "--checkpoint={f}", "--prompt=x", "--out={w}/o.png", "stray"]),
    ("convert", ["to-flax", "{f}/gen", "{w}", "stray"]),
    ("bench", ["data", "--method=anyscene", "stray"]),
])
def test_every_entry_point_refuses_a_stray_argument(entry, argv, files, tmp_path, monkeypatch, capsys):
    """A positional word no entry point takes is refused before any work (argparse's programs with their
    usage line and `<prog>: error: unrecognized arguments`, the absl ones with one `error:` line)."""
    monkeypatch.chdir(REPO)
    fill = {"f": str(files), "w": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as exit_info:
        cli.run(MAINS[entry], [a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert "unrecognized arguments: stray" in err or "error: unexpected argument 'stray'" in err, err
    assert not (tmp_path / "out").exists()
