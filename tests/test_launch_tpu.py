"""launch_tpu.sh against the fake `gcloud` of tests/fake_gcloud.py and a fake `jcompose.plan`, both recording
their arguments in one log (so the order of planning and cloud calls shows)."""

import re
import shlex
import subprocess
import tarfile

import fake_gcloud
import pytest

# Stands in for `python -m jcompose.plan`: logs ["PLAN", args...], prints a verdict, exits FAKE_PLAN_STATUS.
FAKE_PLAN = r"""import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(["PLAN"] + sys.argv[1:]) + "\n")
status = int(os.environ.get("FAKE_PLAN_STATUS", "0"))
print({0: "FITS: fake plan", 3: "DOES NOT FIT: fake plan, train: 120.00 of 95.00 GiB per chip"}.get(status, "error: x"))
sys.exit(status)
"""


@pytest.fixture
def fake(tmp_path):
    env = fake_gcloud.install(tmp_path)
    plan = tmp_path / "bin" / "fake_plan.py"
    plan.write_text(FAKE_PLAN)
    env.update(JCOMPOSE_POLL_SECONDS="0", JCOMPOSE_PLAN_CMD=f"python3 {plan}")

    def launch(*args, **extra_env):
        return fake_gcloud.launch({**env, **extra_env}, *args)

    def logged():
        return fake_gcloud.logged(tmp_path)

    def calls():  # gcloud's
        return [c for c in logged() if c[:1] != ["PLAN"]]

    launch.calls, launch.logged, launch.env, launch.dir = calls, logged, env, tmp_path
    return launch


ARGS = ("denoise", "--variant", "tiny", "--zone", "us-east5-a", "--accelerator", "v5p-32", "--spot",
        "--workdir", "gs://bucket/run 1", "--", "--config.optim.lr=2e-5", "--config.model.base=my base's")


def _train_command(call):
    command = next(a for a in call if a.startswith("--command="))[len("--command="):]
    return shlex.split(command)


def test_creates_syncs_installs_and_trains_on_all_workers(fake):
    result = fake(*ARGS)
    assert result.returncode == 0, result.stderr
    calls = fake.calls()
    kinds = [c[3] for c in calls]
    assert kinds == ["describe", "create", "scp", "ssh", "ssh", "ssh"], calls
    create = calls[1]
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "jcompose-denoise"]
    assert {"--zone=us-east5-a", "--accelerator-type=v5p-32", "--version=tpu-ubuntu2204-base", "--spot"} <= set(create)
    for call in calls[2:]:
        assert "--worker=all" in call and "--zone=us-east5-a" in call
    assert _train_command(calls[4])[-4:] == ["python3", "-m", "pip", "install", "-q", "-e", ".[tpu]"][-4:]
    train = _train_command(calls[5])
    assert train[:3] == ["cd", "~/jcompose", "&&"]
    assert "JAX_COMPILATION_CACHE_DIR=gs://bucket/run 1/xla_cache" in train
    i = train.index("python3")
    assert train[i:] == ["python3", "-m", "jcompose.train", "--config=configs/denoise.py:tiny",
                         "--workdir=gs://bucket/run 1", "--multihost", "--config.optim.lr=2e-5",
                         "--config.model.base=my base's"]
    with tarfile.open(fake.dir / "code.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"jcompose/train.py", "configs/denoise.py", "pyproject.toml", "launch_tpu.sh"} <= names
    assert not any(n.startswith(".git/") for n in names)


def test_reuses_an_existing_vm(fake):
    result = fake(*ARGS, FAKE_TPU_EXISTS="1")
    assert result.returncode == 0, result.stderr
    assert [c[3] for c in fake.calls()] == ["describe", "scp", "ssh", "ssh", "ssh"]
    assert "reusing TPU VM jcompose-denoise" in result.stdout


def test_queued_resource_waits_until_active(fake):
    result = fake("denoise", "--queued", "--name", "qr-test", "--workdir", "gs://b/r", "--detach")
    assert result.returncode == 0, result.stderr
    calls = fake.calls()
    assert [c[2:4] for c in calls[:4]] == [["tpu-vm", "describe"], ["queued-resources", "create"],
                                          ["queued-resources", "describe"], ["queued-resources", "describe"]]
    assert "--node-id=qr-test" in calls[1] and "--accelerator-type=v4-32" in calls[1]
    train = _train_command(calls[-1])
    assert train[3] == "nohup" and train[-4:] == [">", "~/jcompose-train.log", "2>&1", "&"]


def test_dry_run_prints_the_same_commands_it_would_run(fake):
    dry = fake(*ARGS[:-3], "--dry-run", *ARGS[-3:])
    assert dry.returncode == 0, dry.stderr
    assert fake.calls() == []  # nothing executed
    printed = [line[2:] for line in dry.stdout.splitlines() if line.startswith("+ ")]
    # Running the printed lines through a shell gives exactly the argv of a real run (the archive
    # name aside): the dry run is copy-pasteable.
    for line in printed:
        subprocess.run(["bash", "-c", line], env=fake.env, capture_output=True, check=False)  # describe: no VM
    replayed = fake.calls()
    (fake.dir / "log").unlink()
    assert fake(*ARGS).returncode == 0
    real = fake.calls()
    assert [c for c in replayed if "scp" not in c] == [c for c in real if "scp" not in c]
    assert [c[3] for c in replayed] == ["describe", "create", "scp", "ssh", "ssh", "ssh"]


@pytest.mark.parametrize("args, message", [
    (("nomethod", "--workdir", "gs://b/r"), "no config configs/nomethod.py; available methods: .*denoise"),
    (("denoise",), "--workdir gs://BUCKET/PATH is required"),
    (("denoise", "--workdir", "gs://b/r", "--zone"), "--zone needs a value"),
    (("denoise", "--workdir", "gs://b/r", "--frobnicate"), "unknown option '--frobnicate'"),
    (("--dry-run",), "the first argument must be the method"),
])
def test_bad_arguments_fail_clearly(fake, args, message):
    result = fake(*args)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert fake.calls() == []


def test_bucket_env_gives_the_default_workdir(fake):
    result = fake("denoise", "--dry-run", JCOMPOSE_BUCKET="my-bucket")
    assert result.returncode == 0, result.stderr
    assert "--workdir=gs://my-bucket/jcompose/jcompose-denoise" in result.stdout


@pytest.mark.parametrize("method", ["anyscene", "dreamcom", "anydoor"])
def test_method_dry_run_prints_the_pod_command(fake, method):
    result = fake(method, "--dry-run", "--accelerator", "v5p-64", "--workdir", f"gs://b/{method}")
    assert result.returncode == 0, result.stderr
    train = next(line for line in result.stdout.splitlines() if "jcompose.train" in line)
    assert "--worker=all" in train and f"--config=configs/{method}.py" in train and "--multihost" in train
    assert fake.calls() == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_unknown_variant_is_refused_before_any_gcloud_call(fake, dry_run):
    result = fake("anyscene", "--variant", "huge", "--workdir", "gs://b/r", *(["--dry-run"] if dry_run else []))
    assert result.returncode == 2, result.stdout
    assert "configs/anyscene.py" in result.stderr and "'huge'" in result.stderr, result.stderr
    assert "+ gcloud" not in result.stdout and fake.calls() == []


@pytest.mark.parametrize("bucket", ["my-bucket", "gs://my-bucket", "gs://my-bucket/"])
def test_bucket_with_or_without_the_scheme(fake, bucket):
    result = fake("denoise", "--dry-run", JCOMPOSE_BUCKET=bucket)
    assert result.returncode == 0, result.stderr
    assert "--workdir=gs://my-bucket/jcompose/jcompose-denoise" in result.stdout
    assert "gs://gs://" not in result.stdout and "bucket//" not in result.stdout


def test_variant_check_without_the_python_dependencies(fake):
    """On a machine without ml_collections the variant's name is looked up in the config file."""
    refused = fake("anyscene", "--variant", "huge", "--workdir", "gs://b/r", "--dry-run", JCOMPOSE_PYTHON="/nonexistent")
    assert refused.returncode == 2 and "configs/anyscene.py has no variant 'huge'" in refused.stderr
    accepted = fake("anyscene", "--variant", "tiny", "--workdir", "gs://b/r", "--dry-run", JCOMPOSE_PYTHON="/nonexistent")
    assert accepted.returncode == 0 and "--config=configs/anyscene.py:tiny" in accepted.stdout


def test_plans_the_run_before_any_cloud_call(fake):
    result = fake(*ARGS)
    assert result.returncode == 0, result.stderr
    log = fake.logged()
    plan = log[0]
    assert plan[0] == "PLAN" and all(c[0] != "PLAN" for c in log[1:])  # first, and once
    assert plan[1:5] == ["--config=configs/denoise.py:tiny", "--target=v5p-32", "--programs=train",
                         "--out=" + plan[4].split("=", 1)[1]]
    assert plan[5:] == ["--config.optim.lr=2e-5", "--config.model.base=my base's"]  # the config overrides only
    assert "FITS: fake plan" in result.stdout and "plan: fits" in result.stdout


def test_a_run_that_does_not_fit_stops_before_any_cloud_call(fake):
    result = fake(*ARGS, FAKE_PLAN_STATUS="3")
    assert result.returncode == 3
    assert "120.00 of 95.00 GiB" in result.stdout and "does not fit v5p-32" in result.stderr
    assert "--skip-plan" in result.stderr and "--max_batch" in result.stderr
    assert fake.calls() == []
    skipped = fake(*ARGS[:-3], "--skip-plan", *ARGS[-3:], FAKE_PLAN_STATUS="3")
    assert skipped.returncode == 0, skipped.stderr
    assert [c[0] for c in fake.logged()].count("PLAN") == 1  # not planned the second time
    assert [c[3] for c in fake.calls()] == ["describe", "create", "scp", "ssh", "ssh", "ssh"]


def test_dry_run_shows_the_verdict_and_the_commands(fake):
    result = fake(*ARGS[:-3], "--dry-run", *ARGS[-3:], FAKE_PLAN_STATUS="3")
    assert result.returncode == 0, result.stderr
    assert "DOES NOT FIT: fake plan" in result.stdout and "a real launch stops here" in result.stdout
    assert any(line.startswith("+ gcloud") for line in result.stdout.splitlines())
    assert fake.calls() == []


def test_a_failed_plan_stops_the_launch(fake):
    result = fake(*ARGS, FAKE_PLAN_STATUS="2")
    assert result.returncode == 2 and "planning the run failed" in result.stderr and "--skip-plan" in result.stderr
    assert fake.calls() == []
