"""`evaluate`, the DreamCom protocol and the AnyDoor protocol on two hosts: two local CPU processes (2 devices each) joined by a
localhost `jax.distributed` coordinator (tests/eval_multihost_worker.py), against one process here.

Each host reads its share of the files (images of two sizes at native size, so batches are grouped by
size and the last ones padded), per-image scores are gathered: every number equals the single-process run
on the same files. Feature statistics (FID's) are reduced across hosts and KID's rows gathered in item order:
checked on 2048-d rows against numpy (Inception itself would add a minute of compiling to this test; its
single-process FID is tests/test_metrics_evaluate.py's).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import common
from jcompose import evaluate
from jcompose.metrics import fid

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("eval_multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _images(folder: Path, seed: int, sizes) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        image = np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8)
        image[h // 4: 3 * h // 4, w // 5: 4 * w // 5] = rng.integers(0, 255, 3)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")


def _jobs(root: Path, models: Path) -> list[dict]:
    sizes = [(40, 52), (33, 47), (40, 52), (33, 47), (40, 52)]  # batches of 4: 3 + 1 padding, 2 + 2 padding
    _images(root / "gen", 0, sizes)
    _images(root / "ref", 1, sizes)  # CLIP-I / DINO references
    _images(root / "bg", 2, sizes)  # LPIPS / SSIM targets
    # DreamCom manifest: 5 images on 2 backgrounds (two sizes, so two groups of background pairs)
    rng = np.random.default_rng(2)
    backgrounds = {"a": rng.integers(0, 255, (48, 64, 3), np.uint8), "b": rng.integers(0, 255, (40, 40, 3), np.uint8)}
    (root / "dc").mkdir()
    for name, image in backgrounds.items():
        Image.fromarray(image).save(root / "dc" / f"bg_{name}.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), np.uint8)).save(root / "dc" / "ref.png")
    entries = []
    for i, (bg, box) in enumerate([("a", [10, 8, 30, 24]), ("a", [10, 8, 30, 24]), ("b", [8, 8, 30, 30]),
                                   ("b", [8, 8, 30, 30]), ("a", [40, 20, 60, 40])]):
        image = backgrounds[bg].copy()
        image[box[1]:box[3], box[0]:box[2]] = rng.integers(0, 255, (box[3] - box[1], box[2] - box[0], 3))
        Image.fromarray(image).save(root / "dc" / f"{i}.png")
        entries.append({"image": f"{i}.png", "object": f"obj{i % 2}", "background": str(root / "dc" / f"bg_{bg}.png"),
                        "box": box, "references": [{"photo": str(root / "dc" / "ref.png")}]})
    (root / "dc" / "manifest.json").write_text(json.dumps({"benchmark": "t", "step": 3, "images": entries}))
    shared = {"clip.model": str(models / "clip"), "dino.model": str(models / "dino"), "lpips.weights": "random",
              "batch_size": 4, "workers": 2}
    # LPIPS / SSIM at native size (groups) and CLIP-I / DINO; the DreamCom job adds reference embeddings and
    # region scores.
    folder = {**shared, "generated": str(root / "gen"), "reference": str(root / "ref"), "background": str(root / "bg"),
              "pair_size": 0, "metrics": ["clip_i", "dino", "lpips", "ssim"]}
    dreamcom = {**shared, "manifest": str(root / "dc" / "manifest.json"), "pair_size": 0}
    # AnyDoor manifest (compose anydoor --benchmark's form): the same images, each its box and reference object
    (root / "ad").mkdir()
    Image.fromarray(rng.integers(0, 255, (36, 28, 4), np.uint8)).save(root / "ad" / "ref.png")  # RGBA cut-out
    (root / "ad" / "manifest.json").write_text(json.dumps({"benchmark": "t", "step": 3, "images": [
        {"image": str(root / "dc" / e["image"]), "object": e["object"], "reference": str(root / "ad" / "ref.png"),
         "box": e["box"]} for e in entries]}))
    anydoor = {**shared, "manifest": str(root / "ad" / "manifest.json")}
    return [{"name": "folder", "config": "configs/eval/dreamcom.py", "fields": folder},
            {"name": "dreamcom", "config": "configs/eval/dreamcom.py", "fields": dreamcom},
            {"name": "anydoor", "config": "configs/eval/anydoor.py", "fields": anydoor}]


def _configured(job: dict, out: Path):
    config = common.load(job["config"])
    for dotted, value in {**job["fields"], "out": str(out)}.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def test_plan_splits_items_over_processes_one_group_per_batch():
    """The convention every host follows: each item once, one group per global batch, each process's share at
    most the local batch and within one item of the others', padding marked -1 with a stand-in of the batch."""
    from jcompose.sharded_map import plan_batches

    groups = ["a", "b", "a", "a", "c", "b", "a", "a", "a"]
    plan = plan_batches(len(groups), 4, 2, groups)
    seen = np.concatenate([b.rows.reshape(-1) for b in plan])
    assert sorted(seen[seen >= 0].tolist()) == list(range(len(groups)))
    for batch in plan:
        members = batch.rows[batch.rows >= 0]
        assert len({groups[i] for i in members}) == 1 and batch.count == len(members) and batch.stand_in in members
        shares = (batch.rows >= 0).sum(axis=1)
        assert batch.rows.shape == (2, 2) and shares.max() - shares.min() <= 1
    assert [b.rows.tolist() for b in plan[:2]] == [[[0, 3], [2, 6]], [[7, -1], [8, -1]]]  # group "a": 6 items


def _close(a, b, path=""):
    """Every number of two score trees equal (1e-5 relative or absolute), every other leaf identical."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), path
    else:
        assert a == b, path


def test_two_processes_score_like_one(tmp_path, tiny_eval_models):
    jobs = _jobs(tmp_path / "data", tiny_eval_models)
    multi = tmp_path / "multi"
    multi.mkdir()
    for job in jobs:
        job["fields"]["out"] = str(multi / job["name"])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs + [{"name": "stats", "stats": 11}]))
    env = dict(os.environ)  # the worker sets its device count (tests/forced_devices.py)
    port = _free_port()
    pair = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i), str(tmp_path / "jobs.json"), str(multi)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True) for i in range(2)]
    try:
        single = {job["name"]: evaluate.evaluate(_configured(job, tmp_path / "single" / job["name"]), progress=False)
                  for job in jobs}  # meanwhile, here: one process, one device
        outputs = [proc.communicate(timeout=300)[0] for proc in pair]
    finally:
        for proc in pair:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, out in zip(pair, outputs, strict=True):
        assert proc.returncode == 0, "\n".join(line for line in out.splitlines() if "Gloo" not in line)[-3000:]
    for job in jobs:
        name = job["name"]
        hosts = [json.loads((multi / f"{name}_{p}.json").read_text()) for p in range(2)]
        want = json.loads(json.dumps(single[name], default=str))
        for got in hosts:  # both hosts hold every score, equal to one process's
            _close(got, want, name)
        assert (multi / name / "scores.json").exists()  # written once, by process 0
    assert single["folder"]["preprocessing"]["lpips_ssim"]["distinct_sizes"] == 2
    # Feature statistics: each host accumulated its own rows, the merged mean / covariance are numpy's on all
    # rows, KID saw the rows in item order (its subsets depend on the order).
    rows = np.stack([np.random.default_rng(i).normal(size=2048).astype(np.float32) + i % 3 for i in range(11)])
    stats = [json.loads((multi / f"stats_{p}.json").read_text()) for p in range(2)]
    assert sorted(s["n_local"] for s in stats) == [5, 6] and all(s["n"] == 11 for s in stats)
    sigma = np.cov(rows.astype(np.float64), rowvar=False)
    kid = fid.kernel_inception_distance(rows, rows[::-1] + 0.5, subset_size=4)
    for s in stats:
        np.testing.assert_allclose(s["mu"], rows.astype(np.float64).mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(s["sigma_diag"], np.diag(sigma), rtol=1e-12)
        assert s["sigma_01"] == pytest.approx(sigma[0, 1], rel=1e-9)
        assert s["kid"] == pytest.approx(list(kid), rel=1e-9)
