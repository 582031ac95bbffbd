"""Benchmark generation in a subprocess for tests/test_generation.py (not a test itself).

    python tests/generation_worker.py single ROOT OUT [JOBS]       4 CPU devices, one process
    python tests/generation_worker.py pair PORT PROCESS_ID ROOT OUT [JOBS]   one of two processes, 2 devices each
    python tests/generation_worker.py toy OUT [HANG_AFTER]         the toy job on 1 device (its writer hangs
                                                                   after HANG_AFTER images: killed by the test)

`single` generates every job (tests/generation_setup.py: "toy" and the three methods, or the comma list JOBS)
on a 1-device mesh into OUT/1/<job> and on the 4-device mesh into OUT/4/<job>, then resumes a damaged copy
of OUT/4/<job> (two images deleted, one truncated, a stray partial file) into OUT/resumed/<job> and records
what the resume generated in OUT/resumed/<job>.json. With the AnyScene job it also runs `python -m jcompose.bench generate` on 1 and 4
devices into OUT/bench.json. `pair` generates every job on the 4 devices of the two
processes into OUT/2/<job>. `toy` writes what it generated to OUT/result.json.
"""

import json
import shutil
import sys
import time
from pathlib import Path

MODE = sys.argv[1]
DEVICES = {"single": 4, "pair": 2, "toy": 1}[MODE]
# The checkout this file belongs to (jcompose, configs, input_pipeline) and tests/ (generation_setup) come first:
# a script's sys.path holds only its own folder, and an installed jcompose may be another checkout's.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import forced_devices  # noqa: E402

forced_devices.force_here(DEVICES)

import jax  # noqa: E402

if MODE == "pair":
    port, process_id = int(sys.argv[2]), int(sys.argv[3])
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    assert jax.process_count() == 2 and jax.device_count() == 4
    root, out, names = Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else ""
elif MODE == "single":
    root, out, names = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""

import generation_setup as setup  # noqa: E402

from jcompose import generation  # noqa: E402

if MODE == "toy":
    out, hang_after = Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None
    result = generation.generate(setup.toy_job(hang_after=hang_after), out, per_device_batch=2, workers=1,
                                 progress=False)
    (out / "result.json").write_text(json.dumps(result))
    sys.exit(0)
wanted = names.split(",") if names else ["toy", "anyscene", "dreamcom", "anydoor"]
START = time.perf_counter()


def log(what: str) -> None:  # where a slow run spends its time (printed when the test fails)
    print(f"{time.perf_counter() - START:7.1f} s  {what}", flush=True)


jobs = {"toy": setup.toy_job()} if "toy" in wanted else {}
for name in wanted:
    if name != "toy":
        jobs.update(setup.jobs(root, name))
log("jobs built")
if MODE == "pair":
    for name, job in jobs.items():
        generation.generate(job, out / "2" / name, per_device_batch=setup.BATCH, workers=2, progress=False)
        log(f"{name} on 2 processes")
    print(f"process {jax.process_index()} done", flush=True)
    sys.exit(0)
one = generation.mesh_of(jax.devices()[:1])
for name, job in jobs.items():
    generation.generate(job, out / "1" / name, per_device_batch=setup.BATCH, workers=2, progress=False, mesh=one)
    log(f"{name} on 1 device")
    generation.generate(job, out / "4" / name, per_device_batch=setup.BATCH, workers=2, progress=False)
    log(f"{name} on 4 devices")
    # a damaged copy of the 4-device folder, resumed
    damaged = out / "resumed" / name
    shutil.copytree(out / "4" / name, damaged)
    (damaged / "manifest.json").unlink()
    images = [damaged / item for item in job.items]
    images[0].unlink()
    images[-1].unlink()
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 2])  # a file cut short (what a non-atomic writer leaves)
    (images[2].parent / f".{images[2].name}.partial-1-abc").write_bytes(data[:10])
    result = generation.generate(job, damaged, per_device_batch=setup.BATCH, workers=2, progress=False)
    (out / "resumed" / f"{name}.json").write_text(json.dumps(result))
    log(f"{name} resumed")
if "anyscene" in wanted:  # `bench generate` on the AnyScene job's shapes (its programs come from the cache)
    from jcompose.bench import commands

    report = commands.run(["generate", "--model", "tiny", "--base", setup.models(root)["sd15"], "--size",
                           str(setup.SIZE), "--steps", str(setup.STEPS), "--per-device-batch", str(setup.BATCH),
                           "--batches", "1", "--devices", "1,all", "--workers", "2"])
    (out / "bench.json").write_text(json.dumps(report))
    log("bench generate")
print("single done", flush=True)
