"""A fake `gcloud` on PATH for the launch_tpu.sh tests (test_launch_tpu.py, test_launch_jobs.py).

It appends each call's argv as one JSON line to $FAKE_GCLOUD_LOG and acts out what the script relies on:
`tpu-vm describe` succeeds only when FAKE_TPU_EXISTS=1 (the VM exists); a queued resource is
WAITING_FOR_RESOURCES at the first `queued-resources describe`, then ACTIVE; `tpu-vm scp` keeps a copy of the
uploaded archive as $FAKE_DIR/code.tar.gz; `storage rsync gs://BUCKET/... DST` copies from $FAKE_DIR/gcs/BUCKET/...
(the fake remote storage); an `ssh` whose --command stages a folder (it names `jcompose-staged`) runs it here,
on this one "worker". Everything else only logs.
"""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""#!/usr/bin/env python3
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
words = [a for a in args if not a.startswith("--")]
if words[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    sys.exit(0 if os.environ.get("FAKE_TPU_EXISTS") == "1" else 1)
if words[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    polls = os.path.join(os.environ["FAKE_DIR"], "polls")
    n = int(open(polls).read()) if os.path.exists(polls) else 0
    open(polls, "w").write(str(n + 1))
    print("ACTIVE" if n >= 1 else "WAITING_FOR_RESOURCES")
if words[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    shutil.copy(words[4], os.path.join(os.environ["FAKE_DIR"], "code.tar.gz"))
if words[:2] == ["storage", "rsync"]:
    src, dst = words[2:4]
    assert src.startswith("gs://"), src
    shutil.copytree(os.path.join(os.environ["FAKE_DIR"], "gcs", src[len("gs://"):]), dst, dirs_exist_ok=True)
if words[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = next(a for a in args if a.startswith("--command="))[len("--command="):]
    if "jcompose-staged" in command:  # a staging command: run it on this "worker"
        sys.exit(subprocess.run(["bash", "-c", command]).returncode)
"""


def install(folder: Path) -> dict:
    """Writes the fake into `folder`/bin; returns the environment that puts it first on PATH (log
    `folder`/log, remote storage `folder`/gcs, no JCOMPOSE_BUCKET)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(SCRIPT)
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(folder / "log"),
           "FAKE_DIR": str(folder)}
    env.pop("JCOMPOSE_BUCKET", None)
    return env


def logged(folder: Path) -> list[list[str]]:
    """Every logged call so far (argv lists, in order)."""
    log = folder / "log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def launch(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`bash launch_tpu.sh ARGS` under `env` (stdout/stderr captured as text)."""
    return subprocess.run(["bash", str(REPO / "launch_tpu.sh"), *args], check=False, capture_output=True, text=True,
                          env=env, timeout=120)
