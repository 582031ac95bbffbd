"""launch_tpu.sh's generation and evaluation jobs (`--job compose|evaluate`) and `--stage SRC DST`, against the
fake `gcloud` of tests/fake_gcloud.py: it records every call, maps gs://BUCKET/... to a local folder (the fake
remote storage) for `gcloud storage rsync`, and runs the staging commands it is asked to run on the workers
here (one worker: the stage command's skip-when-present logic is what is under test)."""

import shlex

import fake_gcloud
import pytest


@pytest.fixture
def launch(tmp_path):
    env = {**fake_gcloud.install(tmp_path), "FAKE_TPU_EXISTS": "1"}  # the VM exists

    def run(*args):
        (tmp_path / "log").unlink(missing_ok=True)
        result = fake_gcloud.launch(env, *args)
        result.calls = fake_gcloud.logged(tmp_path)
        return result

    return run


def _command(call) -> list[str]:
    return shlex.split(next(a for a in call if a.startswith("--command="))[len("--command="):])


def _job(calls) -> list[str]:
    """The job's command line on the workers (after `cd ~/jcompose && [nohup] env VAR=... `)."""
    words = _command([c for c in calls if any(a.startswith("--command=cd ~/jcompose &&") and "python3 -m jcompose."
                                              in a for a in c)][-1])
    return words[words.index("python3"):]


def test_compose_job_generates_the_benchmark_on_every_worker(launch):
    result = launch("anyscene", "--job", "compose", "--workdir", "gs://b/run 1", "--", "--benchmark", "/tmp/bench",
                    "--base", "/tmp/sd15")
    assert result.returncode == 0, result.stderr
    job_call = [c for c in result.calls if "python3 -m jcompose.compose" in " ".join(c)][-1]
    assert "--worker=all" in job_call
    assert "JAX_COMPILATION_CACHE_DIR=gs://b/run 1/xla_cache" in _command(job_call)  # the workdir's cache
    assert _job(result.calls) == ["python3", "-m", "jcompose.compose", "anyscene", "--checkpoint=gs://b/run 1",
                                  "--out=gs://b/run 1/generated", "--multihost", "--benchmark", "/tmp/bench",
                                  "--base", "/tmp/sd15"]
    # the user's --out / --weights replace the defaults (AnyDoor's released model has no training run)
    result = launch("anydoor", "--job", "compose", "--workdir", "gs://b/r", "--", "--weights", "/tmp/release",
                    "--benchmark", "/tmp/bench", "--out=gs://b/gen")
    assert result.returncode == 0, result.stderr
    assert _job(result.calls) == ["python3", "-m", "jcompose.compose", "anydoor", "--multihost", "--weights",
                                  "/tmp/release", "--benchmark", "/tmp/bench", "--out=gs://b/gen"]


def test_evaluate_job_scores_on_every_worker_and_copies_the_scores(launch):
    result = launch("dreamcom", "--job", "evaluate", "--variant", "released", "--workdir", "gs://b/run", "--detach",
                    "--", "--config.manifest=/tmp/gen/manifest.json")
    assert result.returncode == 0, result.stderr
    assert _job(result.calls)[:5] == ["python3", "-m", "jcompose.evaluate", "--config=configs/eval/dreamcom.py:released",
                                      "--multihost"]
    assert {"--config.out=/tmp/jcompose-eval-jcompose-dreamcom", "--config.manifest=/tmp/gen/manifest.json"} <= set(
        _job(result.calls))
    assert "~/jcompose-evaluate.log" in _command(result.calls[-1])  # detached: its own log
    assert "gcloud storage rsync --recursive /tmp/jcompose-eval-jcompose-dreamcom gs://b/run/eval" in result.stdout
    result = launch("dreamcom", "--job", "evaluate", "--workdir", "gs://b/run", "--", "--config.manifest=/m.json")
    assert result.returncode == 0, result.stderr
    copy = result.calls[-1]  # after the job: worker 0 copies the scores next to the run
    assert "--worker=0" in copy and _command(copy) == ["gcloud", "storage", "rsync", "--recursive",
                                                       "/tmp/jcompose-eval-jcompose-dreamcom", "gs://b/run/eval"]


def test_stage_copies_each_folder_once(launch, tmp_path):
    bucket = tmp_path / "gcs" / "bucket" / "models" / "sd15"
    (bucket / "unet").mkdir(parents=True)
    (bucket / "unet" / "config.json").write_text("{}")
    (bucket / "model_index.json").write_text("{}")
    dst = tmp_path / "worker" / "models" / "sd15"
    args = ("anyscene", "--job", "compose", "--workdir", "gs://b/r", "--stage", "gs://bucket/models/sd15/", str(dst),
            "--", "--benchmark", "/tmp/bench")
    result = launch(*args)
    assert result.returncode == 0, result.stderr
    rsyncs = [c for c in result.calls if c[:2] == ["storage", "rsync"]]
    assert rsyncs == [["storage", "rsync", "--recursive", "gs://bucket/models/sd15", str(dst)]]
    stage = next(c for c in result.calls if "jcompose-staged" in " ".join(c))
    assert "--worker=all" in stage  # on every worker, before the job
    assert result.calls.index(stage) < max(i for i, c in enumerate(result.calls) if "jcompose.compose" in " ".join(c))
    assert (dst / "unet" / "config.json").is_file() and (dst / "model_index.json").is_file()
    # a relaunch finds it staged and copies nothing
    result = launch(*args)
    assert result.returncode == 0, result.stderr
    assert not [c for c in result.calls if c[:2] == ["storage", "rsync"]]
    # an interrupted copy (no marker yet) is completed; another source at the same place is copied over
    (dst.parent / ".sd15.jcompose-staged").unlink()
    (dst / "model_index.json").unlink()
    assert launch(*args).returncode == 0 and (dst / "model_index.json").is_file()
    other = tmp_path / "gcs" / "bucket" / "models" / "sd15-v2"
    other.mkdir()
    (other / "new.json").write_text("{}")
    result = launch(*args[:5], "--stage", "gs://bucket/models/sd15-v2", str(dst), *args[8:])
    assert result.returncode == 0, result.stderr
    assert (dst / "new.json").is_file() and len([c for c in result.calls if c[:2] == ["storage", "rsync"]]) == 1


def test_dry_run_shows_the_stage_and_job_commands(launch, tmp_path):
    result = launch("anydoor", "--job", "compose", "--dry-run", "--workdir", "gs://b/r", "--stage",
                    "gs://b/my bench", "/tmp/bench", "--", "--benchmark", "/tmp/bench")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert any("gcloud storage rsync --recursive" in line and "gs://b/my bench" in line for line in lines)
    assert "jcompose.compose anydoor --checkpoint=gs://b/r --out=gs://b/r/generated --multihost" in lines[-1]
    assert not [c for c in result.calls if c[:2] == ["storage", "rsync"]]  # nothing ran


@pytest.mark.parametrize("args, message", [
    (("denoise", "--job", "compose", "--", "--benchmark", "/b"), "compose has no method 'denoise'"),
    (("anyscene", "--job", "compose"), "name the benchmark after --"),
    (("anyscene", "--job", "compose", "--variant", "tiny", "--", "--benchmark", "/b"), "--variant: --job compose"),
    (("anyscene", "--job", "sample"), "--job sample: expected train, compose or evaluate"),
    (("anyscene", "--job", "evaluate", "--variant", "nope"), "--variant nope"),
    (("anyscene", "--stage", "/data/x", "/tmp/x"), "--stage needs SRC DST"),
    (("anyscene", "--stage", "gs://b/x", "relative/x"), "--stage needs SRC DST"),
])
def test_bad_job_flags_are_refused_before_any_cloud_call(launch, args, message):
    result = launch(*args, "--workdir", "gs://b/r") if "--" not in args else launch(
        *args[:args.index("--")], "--workdir", "gs://b/r", *args[args.index("--"):])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.calls == []
