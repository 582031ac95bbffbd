"""Sweeps without Ray: expansion, validation, units and packing plans, stages (skip / resume / clear),
placements on GPU / TPU / CPU clusters, the table, TensorBoard reading, and the paper sweep files."""

import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jcompose import sweep
from jcompose.cli import InputError
from jcompose.sweeps import collect, report, scheduler, spec, stages, trial

REPO = Path(__file__).resolve().parents[1]
# Every paper sweep file (configs/sweeps/, helpers start with "_"; denoise_lr.py has no paper and no benchmark).
PAPER_SWEEPS = sorted(p.name for p in (REPO / "configs" / "sweeps").glob("*.py")
                      if not p.name.startswith("_") and p.name != "denoise_lr.py")


def test_grid_and_zip_expand_as_written():
    runs = sweep.grid(**{"optim.lr": [1e-4, 1e-5], "seed": [0, 1, 2]})
    assert len(runs) == 6 and runs[0] == {"optim.lr": 1e-4, "seed": 0} and runs[-1] == {"optim.lr": 1e-5, "seed": 2}
    assert sweep.zip_runs(**{"a.x": [1, 2], "b": ["p", "q"]}) == [{"a.x": 1, "b": "p"}, {"a.x": 2, "b": "q"}]
    with pytest.raises(ValueError, match="same length"):
        sweep.zip_runs(a=[1], b=[1, 2])
    name = sweep.run_name({"optim.lr": 1e-4, "model.base": "tiny:sd15", "flag": True})
    assert name == "lr=0.0001,base=tiny_sd15,flag=True"
    assert sweep.train_flags("configs/denoise.py:tiny", {"optim.lr": 3e-5, "model.base": "/m/sd"}) == [
        "--config=configs/denoise.py:tiny", "--config.optim.lr=3e-05", "--config.model.base=/m/sd"]


def _sweep_file(tmp_path, body, name="my_sweep.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("x = 1\n", "defines no get_sweep"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': []}\n", "at least one run"),
    ("def get_sweep(arg):\n    return {'config': 'configs/nope.py', 'runs': [{'seed': 1}]}\n",
     "no such file configs/nope.py"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': [{'seed': 1}, {'seed': 1}]}\n",
     r"same overrides: \['seed=1'\]"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': [{'seed': 1}], 'generat': []}\n",
     r"unknown keys \['generat'\]"),
    ("def get_sweep(arg):\n    return {'config': 'configs/denoise.py', 'runs': [{'compose.steps': 2}]}\n",
     r"sets compose flags \['steps'\] but the sweep has no generate command"),
    ("from jcompose.sweep import Variant\ndef get_sweep(arg):\n    return {'config': 'configs/dreamcom.py', "
     "'runs': [Variant('base', train=False)], 'generate': ['dreamcom', '--checkpoint', '{run}']}\n",
     r"run base trains nothing \(train=False\) but its generate command uses \{run\}"),
    ("def get_sweep(arg):\n    return {'config': 'configs/dreamcom.py', 'runs': [{'evaluate.dino.modle': 'x'}], "
     "'generate': ['dreamcom'], 'evaluate': {'config': 'configs/eval/dreamcom.py'}}\n",
     r"evaluate.dino.modle: config.dino has no field 'modle'; did you mean 'dino.model'"),
])
def test_bad_sweep_files_are_named(tmp_path, monkeypatch, body, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(_sweep_file(tmp_path, body))


def test_tpu_commands_are_valid_launch_commands(monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = sweep.load_sweep("configs/sweeps/denoise_lr.py")
    commands = sweep.tpu_commands(loaded, "gs://bucket/lr-sweep", "lr")
    assert len(commands) == 4
    for i, command in enumerate(commands):
        args = shlex.split(command)
        args.insert(args.index("--"), "--dry-run")  # what launch_tpu.sh would do, without gcloud
        if "--skip-plan" in (REPO / "launch_tpu.sh").read_text():  # planning for a TPU needs libtpu here
            args.insert(args.index("--"), "--skip-plan")
        dry = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert f"create lr-{i} " in dry.stdout
        assert "--config=configs/denoise.py" in dry.stdout and "--workdir=gs://bucket/lr-sweep/train/lr=" in dry.stdout


MIXED = """
from jcompose.sweep import grid

def get_sweep(arg):
    runs = grid(**{"optim.lr": [1e-4, 3e-4], "compose.self-attention": ["released", "none"]})
    runs.append({"optim.lr": 1e-4, "optim.weight_decay": 0.1, "compose.self-attention": "none"})
    return {"config": "configs/dreamcom.py:tiny", "runs": runs, "pack": True, "set": {"train.steps": 4},
            "generate": ["dreamcom", "--checkpoint", "{run}", "--benchmark", "murecom", "{run}/data/murecom",
                         "--out", "{generated}"],
            "evaluate": {"config": "configs/eval/dreamcom.py", "manifest": "{generated}/manifest.json"}}
"""


def test_inference_only_axes_share_training_and_packable_runs_pack(tmp_path, monkeypatch):
    """An inference-only axis (compose.*) never makes a second training run; runs differing only in a
    packable value (lr) form one packed unit; a non-packable difference (weight decay) stays its own."""
    monkeypatch.chdir(REPO)
    loaded = sweep.load_sweep(_sweep_file(tmp_path, MIXED))
    runs = loaded.training_runs()
    assert list(runs) == ["lr=0.0001", "lr=0.0003", "lr=0.0001,weight_decay=0.1"]  # 5 variants, 3 trainings
    assert runs["lr=0.0003"] == {"train.steps": 4, "optim.lr": 3e-4}  # the fixed keys too
    units = trial.plan_units(loaded)
    assert [(u.name, list(u.members)) for u in units] == [
        ("pack-default", ["lr=0.0001", "lr=0.0003"]), ("lr=0.0001,weight_decay=0.1", ["lr=0.0001,weight_decay=0.1"])]
    assert all(len(u.members) == 1 for u in trial.plan_units(loaded, pack=False))
    layout = trial.Layout("/r")
    by_name = {v.name: v for v in loaded.variants.values()}
    released, none = by_name["lr=0.0001,self-attention=released"], by_name["lr=0.0001,self-attention=none"]
    config = trial.trial_config(loaded, released)
    gen_a = trial.generate_stage(loaded, layout, released, config)
    gen_b = trial.generate_stage(loaded, layout, none, config)
    assert gen_a.argv[-2:] == ("--self-attention", "released") and gen_b.argv[-2:] == ("--self-attention", "none")
    assert "--checkpoint /r/train/lr=0.0001 " in gen_a.command and "--checkpoint /r/train/lr=0.0001 " in gen_b.command
    assert "/r/train/lr=0.0001/data/murecom --out /r/trials/lr=0.0001,self-attention=released/generated" in gen_a.command
    evaluation = trial.evaluate_stage(loaded, layout, released, config)
    assert evaluation.command == ("python -m jcompose.evaluate --config=configs/eval/dreamcom.py "
                                  "--config.manifest=/r/trials/lr=0.0001,self-attention=released/generated/"
                                  "manifest.json --config.out=/r/trials/lr=0.0001,self-attention=released/eval")
    packed = trial.train_stage(loaded, layout, units[0])
    assert packed.argv[:2] == ("-m", "jcompose.sweeps.packing") and packed.folder == "/r/packs/pack-default"
    single = trial.train_stage(loaded, layout, units[1], multihost=True)
    assert single.command == ("python -m jcompose.train --config=configs/dreamcom.py:tiny --config.train.steps=4 "
                              "--config.optim.lr=0.0001 --config.optim.weight_decay=0.1 "
                              "--workdir=/r/train/lr=0.0001,weight_decay=0.1 --multihost")


@pytest.mark.parametrize("name", PAPER_SWEEPS)
def test_paper_sweeps_list_their_trials_on_the_full_configs(name, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    assert sweep.main(["list", f"--sweep=configs/sweeps/{name}", f"--root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    loaded = sweep.load_sweep(f"configs/sweeps/{name}")
    assert ":tiny" not in loaded.config
    for variant in loaded.variants.values():
        assert f"trial {variant.name}" in out
    assert any(v.paper for v in loaded.variants.values()) and loaded.paper.get("source")  # published values, cited
    assert out.count("python -m jcompose.compose") == len(loaded.variants)
    assert out.count("python -m jcompose.evaluate") == len(loaded.variants)


def test_dreamcom_attention_trains_once_with_the_papers_rows(monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = sweep.load_sweep("configs/sweeps/dreamcom_attention.py")
    assert len(loaded.training_runs()) == 1 and len(loaded.variants) == 4
    rows = {v.label: (v.overrides, v.paper) for v in loaded.variants.values()}
    assert rows["-Both"] == ({"compose.cross-attention": "vanilla", "compose.self-attention": "none"},
                             {"foreground.DINO": 0.546, "foreground.CLIP": 0.764})
    assert rows["DreamCom"][1] == {"foreground.DINO": 0.584, "foreground.CLIP": 0.778}


# ------------------------------------------------------------------------------------------ stages


def _stage(tmp_path, code, name="generate", clear=True):
    return stages.Stage(name, ("-c", code), str(tmp_path / "out"), clear_on_change=clear)


def test_stages_skip_when_done_resume_when_killed_and_clear_another_commands_outputs(tmp_path):
    write = "import pathlib; p = pathlib.Path('{}'); p.mkdir(exist_ok=True); (p / 'a.png').write_text('{}')"
    out = tmp_path / "out"
    first = _stage(tmp_path, write.format(out, "1"))
    assert stages.run_stage(first, {})["status"] == "done" and (out / "a.png").read_text() == "1"
    assert stages.run_stage(first, {})["status"] == "skipped"  # finished: not rerun
    assert first.log.read_text().count("=====") == 2  # one attempt (header + exit line)
    # Killed: started but not done, same command -> rerun into the same folder, outputs kept for it to resume.
    first.marker("done").unlink()
    (out / "partial.png").write_text("x")
    assert stages.run_stage(first, {})["status"] == "done" and (out / "partial.png").exists()
    # Another command (the sweep file changed): the old command's outputs go first (the log stays).
    second = _stage(tmp_path, write.format(out, "2"))
    assert stages.run_stage(second, {})["status"] == "done"
    assert not (out / "partial.png").exists() and (out / "a.png").read_text() == "2" and second.log.exists()
    # A training folder is never cleared (the trainer decides what a changed command may do).
    third = _stage(tmp_path, write.format(out, "3"), name="train", clear=False)
    (out / "checkpoint").write_text("keep")
    stages.run_stage(third, {})
    assert (out / "checkpoint").exists()


def test_a_failing_stage_reports_its_log_and_stops_its_trial(tmp_path):
    bad = _stage(tmp_path, "import sys; print('no such benchmark folder', file=sys.stderr); sys.exit(2)")
    after = _stage(tmp_path, "print('never')", name="evaluate")
    result = trial.run_stages([bad, after], {}, None)
    assert result["status"] == "failed" and result["failed"] == "generate" and result["log"] == str(bad.log)
    assert "no such benchmark folder" in result["tail"] and "exit code 2" in result["tail"]
    assert not bad.marker("done").exists() and not after.log.exists()


def test_cpu_trials_see_their_devices_and_keep_other_xla_flags():
    env = stages.stage_env({"XLA_FLAGS": "--xla_backend_optimization_level=1 "
                                         "--xla_force_host_platform_device_count=8"}, cpu_devices=2)
    assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=1 --xla_force_host_platform_device_count=2"
    assert "XLA_FLAGS" not in stages.stage_env({}, cpu_devices=0)


# ---------------------------------------------------------------------------------------- placement


def test_placement_on_gpu_cpu_and_tpu_clusters():
    gpu = scheduler.placement({"CPU": 32.0, "GPU": 2.0}, 1)
    assert gpu.kind == "gpu" and gpu.task_options() == {"num_cpus": 1, "num_gpus": 1} and gpu.cpu_devices == 0
    assert scheduler.placement({"CPU": 32.0, "GPU": 2.0}, 2).task_options()["num_gpus"] == 2
    with pytest.raises(InputError, match="--devices 3: the cluster has 2 GPU"):
        scheduler.placement({"CPU": 32.0, "GPU": 2.0}, 3)
    cpu = scheduler.placement({"CPU": 2.0}, 1)
    assert cpu.kind == "cpu" and cpu.task_options() == {"num_cpus": 1} and cpu.cpu_devices == 1
    with pytest.raises(InputError, match="--devices 4: the cluster has 2 CPU"):
        scheduler.placement({"CPU": 2.0}, 4)


def test_tpu_slices_give_multi_host_trials_whole_hosts(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="the sweep extra (ray) is not installed: pip install -e '.[sweep]'")
    monkeypatch.chdir(REPO)
    # v5p 2x2x2 = 8 chips on 2 hosts of 4; v6e 4x4 = 16 chips on 4 hosts of 4; v5litepod 2x4 = one host of 8.
    for tpu, hosts, chips in (("v5p:2x2x2", 2, 4), ("v6e:4x4", 4, 4), ("v5litepod:2x4", 1, 8)):
        place = scheduler.placement({}, 1, tpu)
        assert (place.kind, place.hosts, place.devices) == ("tpu", hosts, chips), tpu
        assert place.task_options() == {"num_cpus": 1, "resources": {"TPU": chips}}
    with pytest.raises(InputError, match="--tpu v5p: expected <version>:<topology>"):
        scheduler.placement({}, 1, "v5p")
    # The command every host of a slice runs: the ordinary train command with --multihost.
    loaded = sweep.load_sweep("configs/sweeps/dreamcom_attention.py")
    unit = trial.plan_units(loaded)[0]
    stage = trial.train_stage(loaded, trial.Layout("/shared/sweep"), unit, multihost=True)
    assert stage.command == ("python -m jcompose.train --config=configs/dreamcom.py "
                             "--workdir=/shared/sweep/train/default --multihost")


# ------------------------------------------------------------------------------------------- tables


def test_protocol_metrics_name_every_metric_of_each_protocol():
    dreamcom = {"protocol": "dreamcom", "checkpoint_step": 400, "foreground": {"DINO": 0.5, "CLIP": 0.7},
                "background": {"LPIPS": 0.1, "SSIM": 0.8}, "n_images": 10, "conventions": {"scale": 1.0},
                "per_pair": [{"DINO": 0.1}]}
    assert collect.protocol_metrics(dreamcom) == {"foreground.DINO": 0.5, "foreground.CLIP": 0.7,
                                                  "background.LPIPS": 0.1, "background.SSIM": 0.8}
    anydoor = {"CLIP-I": 81.0, "DINO": 64.0, "n_objects": 3, "per_image": {"DINO": [1.0]}, "run": {"step": 3}}
    assert collect.protocol_metrics(anydoor) == {"CLIP-I": 81.0, "DINO": 64.0}
    anyscene = {"n_generated": 4, "fid": {"value": 16.1, "mode": "pytorch-fid", "n_reference": 4},
                "kid": {"mean": 0.01, "std": 0.002, "subset_size": 4},
                "clip_score": {"value": 25.0, "convention": "torchmetrics", "mean_cosine": 0.25,
                               "both_conventions": {"torchmetrics": 25.0, "hessel": 0.625}},
                "aesthetic": {"mean": 5.9, "head": "h.pth"}}
    assert collect.protocol_metrics(anyscene) == {
        "fid": 16.1, "kid": 0.01, "kid.std": 0.002, "clip_score": 25.0, "clip_score.mean_cosine": 0.25,
        "clip_score.torchmetrics": 25.0, "clip_score.hessel": 0.625, "aesthetic": 5.9}


def test_collect_labels_each_row_from_the_runs_stored_config(tmp_path):
    """Rows carry what each run was trained with (its config.json), not what the sweep file says now; a
    run that has not started shows its overrides; fields sharing a last name keep their whole path; the
    paper's value sits beside its metric."""
    from toy_method import toy_config

    from jcompose import run_record

    runs = {name: {"optim.lr": lr, "model.dropout": 0.0, "loss.dropout": 0.1} for name, lr in
            (("a", 0.1), ("b", 0.2), ("c", 0.3))}
    for name, lr in (("a", 0.5), ("b", 0.2)):  # a ran with lr 0.5: the sweep file was edited since
        config = toy_config()
        config.optim.lr = lr
        config.model.dropout = 0.0
        config.loss = {"dropout": 0.1}
        folder = Path(trial.Layout(str(tmp_path)).run(spec.training_key(runs[name])))
        folder.mkdir(parents=True)
        run_record.record(config, folder, resuming=False, argv=["train"])
        (folder / "metrics.json").write_text(json.dumps({"step": 4, "loss": 1.5}))
    scores = tmp_path / "trials" / "a" / "eval" / "scores.json"
    scores.parent.mkdir(parents=True)
    scores.write_text(json.dumps({"DINO": 60.0, "n_images": 2}))
    variants = {n: spec.Variant(n, o, paper={"DINO": 67.8} if n == "a" else {}) for n, o in runs.items()}
    loaded = spec.Sweep(spec="s.py", config="configs/denoise.py", variants=variants)
    rows = collect.collect(loaded, str(tmp_path))
    assert rows[0] == {"run": "a", "lr": 0.5, "model.dropout": 0.0, "loss.dropout": 0.1, "DINO": 60.0,
                       "DINO (paper)": 67.8, "train step": 4, "train loss": 1.5}
    assert rows[1] == {"run": "b", "lr": 0.2, "model.dropout": 0.0, "loss.dropout": 0.1, "train step": 4,
                       "train loss": 1.5}
    assert rows[2] == {"run": "c", "lr": 0.3, "model.dropout": 0.0, "loss.dropout": 0.1}  # not started yet
    assert collect.columns(rows)[4:6] == ["DINO", "DINO (paper)"]
    assert collect.metric_columns(loaded, rows) == ["DINO"]


def test_loss_curves_are_read_from_tensorboard_event_files(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step, value in ((2, 1.5), (4, 1.25), (6, 0.5)):
        writer.add_scalar("train/loss", value, step)
        writer.add_scalar("train/lr", 1e-4, step)
    writer.close()
    steps, values = report.read_scalars(tmp_path / "tb", "train/loss")
    np.testing.assert_array_equal(steps, [2, 4, 6])
    np.testing.assert_allclose(values, [1.5, 1.25, 0.5])
    steps, values = report.loss_curve(str(tmp_path))
    assert list(steps) == [2, 4, 6]
    # A packed model's own curve in its pack's events, under the tag the writer cleaned ("=" is not kept).
    writer = SummaryWriter(str(tmp_path / "pack" / "tb"))
    for step, value in ((2, 3.0), (4, 2.0)):
        writer.add_scalar("train/loss/lr=0.0001", value, step)
        writer.add_scalar("train/loss/lr=0.0003", value + 1, step)
    writer.close()
    run = tmp_path / "runs" / "lr=0.0001"
    run.mkdir(parents=True)
    (run / "packed_from.json").write_text(json.dumps({"pack": str(tmp_path / "pack"), "model": 0,
                                                      "names": ["lr=0.0001", "lr=0.0003"]}))
    steps, values = report.loss_curve(str(run))
    assert list(steps) == [2, 4] and list(values) == [3.0, 2.0]


def test_sweep_cli_still_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jcompose.sweep", "list", "--sweep=configs/sweeps/denoise_lr.py:tiny",
                             f"--root={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("python -m jcompose.train --config=configs/denoise.py:tiny") == 4


def test_cluster_recipes_match_the_pinned_ray_and_the_tpu_placement():
    """configs/ray/: the Ray version the clusters run is the sweep extra's; the KubeRay TPU group's hosts per
    slice and chips per host are what Ray's slice placement group reserves for that topology."""
    pytest.importorskip("ray", reason="the sweep extra (ray) is not installed: pip install -e '.[sweep]'")
    import re

    import yaml

    pinned = re.search(r'"ray==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    kuberay = yaml.safe_load((REPO / "configs" / "ray" / "kuberay_tpu_gpu.yaml").read_text())
    assert kuberay["spec"]["rayVersion"] == pinned
    assert f"ray[default]=={pinned}" in (REPO / "configs" / "ray" / "gcp_gpu_cluster.yaml").read_text()
    tpu_group = next(g for g in kuberay["spec"]["workerGroupSpecs"] if g["groupName"].startswith("tpu"))
    selector = tpu_group["template"]["spec"]["nodeSelector"]
    version = selector["cloud.google.com/gke-tpu-accelerator"].removeprefix("tpu-").removesuffix("-slice")
    place = scheduler.placement({}, 1, f"{version}:{selector['cloud.google.com/gke-tpu-topology']}")
    chips = tpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"]
    assert (tpu_group["numOfHosts"], int(chips)) == (place.hosts, place.devices)
