"""Benchmark generation on every device of every host, resumable: the engine of `compose <method> --benchmark`.

A method describes its benchmark as a `Job` (its item reader, its sampling function, its writer); the
engine knows no method. `generate(job, out)`:

* finds the items whose image is already written and valid (a PNG that decodes fully, of the item's size),
  each process checking its share, and generates only the others: a rerun after a kill or preemption
  continues where it stopped. Every image is written under a hidden temporary name and renamed, so a
  kill never leaves a partial file under an image's name (on gs:// one object write is atomic already).
* plans global batches over the pending items as every batch job does (`sharded_map.plan_batches`: the
  same plan on every process; process p reads items p, p + P, ... of each batch; the last batch of a
  group is padded with a stand-in whose image is never written). A batch is one global array sharded over
  the mesh's batch axes, so every device of every host samples its rows.
* item i samples with `job.key(i)` (its index in the full item list), computed on the device: image i is
  the same pixels on 1 device, on N, or on several hosts, and after a resume.
* reads ahead in `workers` threads (grain) and writes this process's rows in `workers` threads while
  the devices run the next batch; a tqdm bar (process 0) shows images/s.
* after all processes are done (a barrier), process 0 writes `manifest.json`: the job's settings, `count`
  (the number of items), the devices and processes of this run (`resumed`: images an earlier run had
  written) and one entry per item, in item order. It is written last: a folder holding a manifest whose
  `count` equals its number of `images` is complete.

A folder is resumed only with the settings it was started with (`.generation.json`, then the manifest):
other settings (checkpoint, steps, guidance, seed, ...) are refused before anything is generated.
`--out` may be gs://... (every host of a pod writes there); the readers' inputs are local paths.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import PartitionSpec as P

from jcompose import cli, parallel, sharded_map
from jcompose.cli import InputError
from jcompose.generation_files import (
    MANIFEST,
    SETTINGS,
    check_settings,
    encode_png,
    is_valid_image,
    jsonable,
    write_file,
)

PER_DEVICE_BATCH = 4  # images per device per call when --batch_size is not given


@dataclasses.dataclass(frozen=True, eq=False)
class Job:
    """What a method gives the engine for one benchmark.

    items: the output file of each item (a PNG path relative to the out folder), in benchmark order.
    read: host side, in reader threads: item index -> (model inputs: dict of fixed-shape numpy arrays, a
      context the writer gets back, e.g. the background to paste into).
    sample: traced under jit: (params, batch of stacked inputs (B, ...), keys (B, 2)) -> images
      (B, h, w, 3) float in [-1, 1].
    key: traced: item index (int32 scalar) -> PRNG key of that item.
    write: host side, in writer threads: (generated uint8 (h, w, 3), context) -> the uint8 RGB image to write.
    size: (H, W) the written image of item i has (read from the inputs' headers; checked on resume).
    entry: item i's manifest entry (json-ready; "image" is added).
    settings: what made the images (json-ready): the manifest's header; a folder resumes only with equal ones.
    params: group -> the parameter tree `sample` gets (group None without `groups`).
    groups: a hashable per item; items of different groups never share a batch (e.g. DreamCom's objects,
      each with its own fine-tuned UNet).
    encode: uint8 RGB (h, w, 3) -> the bytes of the file (default PNG; e.g. JPEG for a `.jpg` layout).
    done_modes: the PIL modes a file already there may have to count as done (the engine writes RGB; a user's
      folder of class photos may hold greyscale ones, which their reader converts).
    """

    items: Sequence[str]
    read: Callable[[int], tuple[dict[str, np.ndarray], Any]]
    sample: Callable[[Any, dict[str, jax.Array], jax.Array], jax.Array]
    key: Callable[[jax.Array], jax.Array]
    write: Callable[[np.ndarray, Any], np.ndarray]
    size: Callable[[int], tuple[int, int]]
    entry: Callable[[int], dict]
    settings: dict
    params: Callable[[Hashable | None], Any]
    groups: Sequence[Hashable] | None = None
    encode: Callable[[np.ndarray], bytes] = encode_png
    done_modes: tuple[str, ...] = ("RGB",)


# ------------------------------------------------------------------------------------ command line


def add_arguments(parser, batch_flags: Sequence[str] = ("--batch_size",)) -> None:
    """The generation flags of a method's `--benchmark` (batch size, threads, multi-host)."""
    group = parser.add_argument_group("benchmark generation (--benchmark)")
    group.add_argument(*batch_flags, dest="batch_size", type=int, default=None,
                       help=f"images each device samples per call (default {PER_DEVICE_BATCH}); the images depend on "
                            "it (float rounding), not on the number of devices or hosts")
    group.add_argument("--workers", type=int, default=4, help="reader and writer threads per host (default 4)")
    group.add_argument("--multihost", action="store_true",
                       help="call jax.distributed.initialize(): every host of a pod slice or multi-node job "
                            "generates its share (start the same command on every host)")
    group.add_argument("--coordinator_address", default=None, help="with --multihost: host:port of process 0 "
                       "(default: detected)")
    group.add_argument("--num_processes", type=int, default=None, help="with --multihost: number of processes")
    group.add_argument("--process_id", type=int, default=None, help="with --multihost: this process's index")


def start(args) -> None:
    """Checks the generation flags and, with --multihost, joins the other processes (before any JAX work)."""
    if getattr(args, "batch_size", None) is not None:
        cli.require_positive(("--batch_size", args.batch_size))
    if hasattr(args, "workers"):
        cli.require_positive(("--workers", args.workers))
    if not getattr(args, "multihost", False):
        stray = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id")
                 if getattr(args, k, None) is not None]
        if stray:
            raise InputError(f"{' / '.join(stray)}: only with --multihost")
        return
    if not getattr(args, "benchmark", None):
        raise InputError("--multihost: only with --benchmark (one image is composed on one host)")
    from jcompose import distributed

    distributed.start(args.coordinator_address, args.num_processes, args.process_id)


def mesh_of(devices: Sequence) -> jax.sharding.Mesh:
    """A ('data', 'fsdp') mesh over `devices` only (e.g. the first d of them, to compare device counts)."""
    return jax.make_mesh((len(devices), 1), parallel.BATCH_AXES, devices=list(devices),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def per_device_batch(args) -> int:
    """--batch_size (images per device per call), default PER_DEVICE_BATCH."""
    return args.batch_size or PER_DEVICE_BATCH


def done_items(job: Job, out: epath.Path, workers: int) -> np.ndarray:
    """bool (n,): item i's image is written and valid. Each process checks its share; every process gets all."""
    process, processes = jax.process_index(), jax.process_count()
    mine = range(process, len(job.items), processes)
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
        valid = list(pool.map(lambda i: is_valid_image(out / job.items[i], job.size(i), job.done_modes),
                              mine))  # missing: False
    done = np.zeros(len(job.items), np.uint8)
    done[list(mine)] = valid
    if processes > 1:
        from jax.experimental import multihost_utils

        done = multihost_utils.process_allgather(done).max(axis=0)
    return done.astype(bool)


# -------------------------------------------------------------------------------------- the engine


def to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255], rounded (on the device: a quarter of the bytes come back)."""
    return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One global batch: chunks (devices, per_device) item indices, row d the chunk device d samples (-1: a
    padding row); group: the group of its items."""

    chunks: np.ndarray
    group: Hashable


def plan(job: Job, done: np.ndarray, per_device: int, devices: int) -> list[Batch]:
    """The batches that generate the items not `done`.

    Each group's items are cut into chunks of `per_device` consecutive items, fixed by the item list alone;
    a device samples one chunk per batch (a partial last chunk padded with copies of its last item). So item
    i is sampled at the same row with the same neighbours by any number of devices or processes, and by a
    resume (a chunk with an item to redo is sampled whole; its other items are not written again).
    """
    members: dict[Hashable, list[int]] = {}
    for i in range(len(job.items)):
        members.setdefault(None if job.groups is None else job.groups[i], []).append(i)
    batches = []
    for group, items in members.items():
        chunks = [items[s:s + per_device] for s in range(0, len(items), per_device)]
        chunks = [c for c in chunks if not done[c].all()]
        for s in range(0, len(chunks), devices):
            rows = np.full((devices, per_device), -1, np.int32)
            for d, chunk in enumerate(chunks[s:s + devices]):
                rows[d, :len(chunk)] = chunk
            batches.append(Batch(rows, group))
    return batches


def local_chunks(mesh, per_device: int) -> list[int]:
    """The chunk rows (devices of the batch axis) whose rows this process holds, in batch order."""
    sharding = parallel.batch_sharding(mesh)
    starts = sorted({index[0].start or 0 for index in
                     sharding.addressable_devices_indices_map((mesh.size * per_device,)).values()})
    slots = [start // per_device for start in starts]
    if slots != list(range(slots[0], slots[0] + len(slots))):
        raise RuntimeError(f"process {jax.process_index()} holds batch rows {starts}: not one block")
    return slots


def generate(job: Job, out: str | os.PathLike, *, per_device_batch: int = PER_DEVICE_BATCH, workers: int = 4,
             mesh=None, progress: bool = True, desc: str = "generating") -> dict[str, Any]:
    """Generates every item of `job` not yet written into `out` (module doc); returns
    {"image": out, "count": items, "generated": written by this run, "resumed": found already written}.

    per_device_batch: items each device samples per call (the global batch is that times the devices).
    Images depend on it at the level of float rounding (XLA's kernels differ by batch size), not on the
    number of devices or processes, which is why it is per device."""
    from tqdm import tqdm

    out = epath.Path(out)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    process = jax.process_index()
    n = len(job.items)
    check_settings(out, job.settings)
    if process == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / SETTINGS).exists() and not (out / MANIFEST).exists():
            write_file(out / SETTINGS, json.dumps({"settings": jsonable(job.settings)}, indent=1).encode())
    _barrier("jcompose.generation.start")
    done = done_items(job, out, workers)
    batches = plan(job, done, per_device_batch, mesh.size)
    bar = tqdm(total=n, initial=int(done.sum()), desc=desc, unit="img", disable=not progress or process != 0)
    if batches:
        _run(job, out, batches, done, mesh, per_device_batch, workers, bar)
    bar.close()
    _barrier("jcompose.generation.done")
    generated = int(n - done.sum())
    if process == 0:
        _write_manifest(job, out, mesh, generated=generated, per_device_batch=per_device_batch)
    return {"image": os.fspath(out), "count": n, "generated": generated, "resumed": n - generated}


def _run(job: Job, out: epath.Path, batches: list[Batch], done: np.ndarray, mesh, per_device: int, workers: int,
         bar) -> None:
    import grain

    slots = local_chunks(mesh, per_device)

    def read(batch: Batch):
        """This process's rows of `batch`: (inputs, item index per row, [(row, item, context)] to write)."""
        arrays, index, to_write = [], [], []
        for slot in slots:
            chunk = [int(i) for i in batch.chunks[slot] if i >= 0]
            idle = not chunk
            if idle:  # no chunk for this device: sample a copy of one item, write nothing
                chunk = [int(batch.chunks[0, 0])]
            for i in chunk:
                inputs, context = job.read(i)
                if not idle and not done[i]:
                    to_write.append((len(arrays), i, context))
                arrays.append(inputs)
                index.append(i)
            arrays += [arrays[-1]] * (per_device - len(chunk))
            index += [index[-1]] * (per_device - len(chunk))
        stacked = {k: np.stack([a[k] for a in arrays]) for k in arrays[0]}
        return stacked, np.asarray(index, np.int32), to_write

    run = compiled_step(job, mesh)
    stream = grain.MapDataset.source(batches).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=max(workers, 1), prefetch_buffer_size=max(workers, 2)))
    made_dirs: set[str] = set()

    def write(item: int, generated: np.ndarray, context) -> None:
        path = out / job.items[item]
        if os.fspath(path.parent) not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(os.fspath(path.parent))
        write_file(path, job.encode(job.write(generated, context)))

    writes: deque[list[concurrent.futures.Future]] = deque()
    group, params, on_mesh = object(), None, {}
    with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as writer:
        def collect(images: jax.Array, to_write: list, count: int) -> None:
            rows = sharded_map.local_rows(images)
            writes.append([writer.submit(write, i, rows[row], context) for row, i, context in to_write])
            while len(writes) > 2:  # at most two batches of writes in flight: memory stays bounded
                for future in writes.popleft():
                    future.result()  # a failed write stops the run here
            bar.update(count)

        previous = None
        for (inputs, index, to_write), batch in zip(stream, batches, strict=True):
            if batch.group != group:  # each group's batches are consecutive: its params go to the devices once
                group, params = batch.group, _replicate(job.params(batch.group), mesh, on_mesh)
            # Dispatch this batch before fetching the previous one: the devices work while the host writes.
            images = run(params, parallel.global_batch(inputs, mesh), parallel.global_batch({"i": index}, mesh)["i"])
            if previous is not None:
                collect(*previous)
            items = batch.chunks[batch.chunks >= 0]
            previous = (images, to_write, int((~done[items]).sum()))
        if previous is not None:
            collect(*previous)
        for futures in writes:
            for future in futures:
                future.result()


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_step(job: Job, mesh):
    """The jitted step of `job` on `mesh`, kept with the job: generating again (a resume in the same process)
    reuses its trace and programs."""
    steps = _STEPS.setdefault(job, {})
    if mesh not in steps:  # not `job` in the closure: the cache must not keep its key alive
        steps[mesh] = jax.jit(step_function(job.sample, job.key, mesh), out_shardings=parallel.batch_sharding(mesh))
    return steps[mesh]


def step_function(sample: Callable, key: Callable, mesh=None) -> Callable:
    """What every batch of a job runs (jitted by `compiled_step`; `jcompose.plan` compiles it for a target):
    (params, batch of stacked inputs (B, ...), item indices int32 (B,)) -> uint8 images (B, h, w, 3).

    On a mesh of several devices each device samples its own rows (`shard_map` over the batch axes, the
    params replicated): inside, an item's sampler sees its own small batch (e.g. 2 rows with CFG) on one
    device, so the fused attention kernels run per device (under XLA's partitioning of the vmapped items a
    TPU's Pallas kernel saw that per-item batch, which does not divide over the devices, and fell back to
    XLA attention)."""
    def local(params, batch, index):
        return to_uint8(sample(params, batch, jax.vmap(key)(index)))

    if mesh is None or mesh.size == 1:
        return local
    rows = P(parallel.BATCH_AXES)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows), out_specs=rows, check_vma=False)


def _replicate(tree: Any, mesh, on_mesh: dict) -> Any:
    """`tree` replicated on `mesh`; leaves the previous group shared (e.g. a frozen VAE) are not sent again."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    placed = {}
    for leaf in leaves:
        known = on_mesh.get(id(leaf))
        placed[id(leaf)] = known if known is not None and known[0] is leaf else (leaf, parallel.put_replicated(leaf, mesh))
    on_mesh.clear()
    on_mesh.update(placed)
    return jax.tree_util.tree_unflatten(treedef, [placed[id(leaf)][1] for leaf in leaves])


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _write_manifest(job: Job, out: epath.Path, mesh, generated: int, per_device_batch: int) -> None:
    """manifest.json (module doc); an existing complete one with these settings is kept when nothing was made."""
    path = out / MANIFEST
    if not generated and path.exists():
        try:
            if len(json.loads(path.read_text()).get("images", [])) == len(job.items):
                return
        except ValueError:
            pass
    n = len(job.items)
    manifest = {**jsonable(job.settings), "count": n, "devices": int(mesh.size), "processes": jax.process_count(),
                "device_kind": mesh.devices.flat[0].device_kind, "per_device_batch": per_device_batch,
                "resumed": n - generated,
                "images": [{"image": job.items[i], **jsonable(job.entry(i))} for i in range(n)]}
    write_file(path, (json.dumps(manifest, indent=1) + "\n").encode())
    (out / SETTINGS).unlink(missing_ok=True)
