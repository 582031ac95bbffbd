#!/usr/bin/env bash
# Train a jcompose method on a Cloud TPU VM (single host or pod slice):
#
#   bash launch_tpu.sh <method> [options] [-- extra train flags]
#
# 1. reuses the TPU VM `--name` if it exists, else creates it (on-demand, `--spot`, or through a
#    queued resource with `--queued`, waiting until it is ACTIVE);
# 2. copies this checkout (git-tracked and untracked-but-not-ignored files) to every worker;
# 3. installs it there with the `tpu` extra;
# 4. runs the same `python3 -m jcompose.train --config=configs/<method>.py[:variant] --multihost`
#    on all workers (`--worker=all`), with a persistent XLA compilation cache.
#
# `--dry-run` prints every command instead of running it. Checkpoints must go to storage all
# workers share: `--workdir gs://bucket/path` (or set JCOMPOSE_BUCKET and get
# gs://$JCOMPOSE_BUCKET/jcompose/<name>; the bucket with or without gs://).
#
# Example:
#   bash launch_tpu.sh anyscene --accelerator v5p-32 --zone us-east5-a --spot \
#       --workdir gs://my-bucket/anyscene-run1 -- --config.optim.lr=2e-5
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash launch_tpu.sh <method> [options] [-- extra train flags]

  <method>              a config in configs/ (configs/<method>.py), e.g. anyscene, denoise
  --variant V           config variant: configs/<method>.py:V (default: the paper's settings); checked
                        before any gcloud call
  --name NAME           TPU VM name (default: jcompose-<method>)
  --zone ZONE           default: $JCOMPOSE_TPU_ZONE or us-central2-b
  --accelerator TYPE    e.g. v4-8, v4-32, v5p-32, v6e-8 (default: $JCOMPOSE_TPU_TYPE or v4-32)
  --version VERSION     TPU VM runtime (default: $JCOMPOSE_TPU_VERSION or tpu-ubuntu2204-base)
  --project PROJECT     gcloud project (default: gcloud's configured project)
  --spot                spot (preemptible) capacity; training resumes from the last checkpoint
  --queued              request capacity through a queued resource and wait until it is ACTIVE
  --workdir URI         run directory shared by all workers (gs://...; default gs://$JCOMPOSE_BUCKET/jcompose/<name>)
  --cache-dir DIR       XLA compilation cache (default: <workdir>/xla_cache)
  --detach              start training in the background on the workers (log: ~/jcompose-train.log)
  --dry-run             print the commands instead of running them
  -h, --help            this text
EOF
}

die() { echo "launch_tpu.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; -*) die "the first argument must be the method (e.g. anyscene), got '$1'" ;; esac
METHOD=$1; shift

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VARIANT="" NAME="jcompose-${METHOD}" ZONE=${JCOMPOSE_TPU_ZONE:-us-central2-b}
ACCELERATOR=${JCOMPOSE_TPU_TYPE:-v4-32} VERSION=${JCOMPOSE_TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT="" SPOT=0 QUEUED=0 WORKDIR="" CACHE_DIR="" DETACH=0 DRY_RUN=0 EXTRA=()

need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) need_value "$@"; VARIANT=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --zone) need_value "$@"; ZONE=$2; shift 2 ;;
    --accelerator) need_value "$@"; ACCELERATOR=$2; shift 2 ;;
    --version) need_value "$@"; VERSION=$2; shift 2 ;;
    --project) need_value "$@"; PROJECT=$2; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR=$2; shift 2 ;;
    --cache-dir) need_value "$@"; CACHE_DIR=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (train flags go after --; see --help)" ;;
  esac
done

if [[ ! -f "$REPO/configs/$METHOD.py" ]]; then
  available=$(cd "$REPO/configs" && ls -1 ./*.py | sed 's|^\./||; s|\.py$||' | grep -vE '^(common|__init__)$' | tr '\n' ' ')
  die "no config configs/$METHOD.py; available methods: $available"
fi
CONFIG="configs/$METHOD.py${VARIANT:+:$VARIANT}"
# The variant must exist before anything touches the cloud (dry run included). Ask the config itself
# when this machine has its Python dependencies; otherwise look for the variant's name in the file.
if [[ -n $VARIANT ]]; then
  PY=${JCOMPOSE_PYTHON:-python3}
  if "$PY" -c 'import ml_collections' >/dev/null 2>&1; then
    problem=$(cd "$REPO" && "$PY" -c '
import sys
from configs.common import load
try:
    load(sys.argv[1])
except Exception as err:
    print(str(err).splitlines()[0] if str(err) else type(err).__name__)
' "$CONFIG" 2>&1) || problem="could not load $CONFIG: $problem"
    [[ -z $problem ]] || die "--variant $VARIANT: $problem"
  elif ! grep -qE "[\"']${VARIANT}[\"']" "$REPO/configs/$METHOD.py"; then
    die "--variant $VARIANT: configs/$METHOD.py has no variant '$VARIANT'"
  fi
fi
if [[ -z $WORKDIR ]]; then
  [[ -n ${JCOMPOSE_BUCKET:-} ]] || die "--workdir gs://BUCKET/PATH is required (or set JCOMPOSE_BUCKET): all workers must write checkpoints to shared storage"
  BUCKET=${JCOMPOSE_BUCKET#gs://}  # with or without the scheme
  BUCKET=${BUCKET%/}
  WORKDIR="gs://${BUCKET}/jcompose/${NAME}"
fi
[[ $WORKDIR == gs://* ]] || echo "launch_tpu.sh: warning: --workdir $WORKDIR is not on GCS; on a multi-host slice each worker would write its own copy" >&2
CACHE_DIR=${CACHE_DIR:-$WORKDIR/xla_cache}

GCLOUD=(gcloud)
[[ -n $PROJECT ]] && GCLOUD+=(--project="$PROJECT")
TPU=("${GCLOUD[@]}" compute tpus tpu-vm)
SPOT_FLAG=()
[[ $SPOT == 1 ]] && SPOT_FLAG=(--spot)
QR=("${GCLOUD[@]}" compute tpus queued-resources)

# Shell-quotes one word readably: as is when safe, else in single quotes.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
quote_all() { local sep=""; for word in "$@"; do printf '%s' "$sep"; quote "$word"; sep=" "; done; }

# Every command that touches the cloud goes through `run`: printed (shell-quoted) and executed,
# or only printed with --dry-run.
run() {
  printf '+ %s\n' "$(quote_all "$@")"
  [[ $DRY_RUN == 1 ]] || "$@"
}

# ---------------------------------------------------------------- 1. the TPU VM
if [[ $DRY_RUN == 1 ]]; then
  echo "# reuse the TPU VM if this succeeds, otherwise create it:"
  run "${TPU[@]}" describe "$NAME" --zone="$ZONE" --format='value(state)'
  exists=0
else
  exists=0
  "${TPU[@]}" describe "$NAME" --zone="$ZONE" --format='value(state)' >/dev/null 2>&1 && exists=1
fi
if [[ $exists == 1 ]]; then
  echo "# reusing TPU VM $NAME in $ZONE"
elif [[ $QUEUED == 1 ]]; then
  run "${QR[@]}" create "$NAME-qr" --node-id="$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$VERSION" "${SPOT_FLAG[@]}"
  echo "# wait until the queued resource $NAME-qr is ACTIVE"
  if [[ $DRY_RUN == 1 ]]; then
    run "${QR[@]}" describe "$NAME-qr" --zone="$ZONE" --format='value(state.state)'
  else
    while :; do
      state=$("${QR[@]}" describe "$NAME-qr" --zone="$ZONE" --format='value(state.state)')
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $NAME-qr is $state" ;;
        *) echo "#   $NAME-qr: $state"; sleep "${JCOMPOSE_POLL_SECONDS:-30}" ;;
      esac
    done
  fi
else
  run "${TPU[@]}" create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$VERSION" "${SPOT_FLAG[@]}"
fi

# ---------------------------------------------------------------- 2. the code
ARCHIVE=$(mktemp "${TMPDIR:-/tmp}/jcompose-XXXXXX.tar.gz")
trap 'rm -f "$ARCHIVE"' EXIT
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar czf "$ARCHIVE")
else
  tar czf "$ARCHIVE" -C "$REPO" --exclude=.git --exclude='*.pyc' .
fi
echo "# code: $(tar tzf "$ARCHIVE" | wc -l) files from $REPO"
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:~/jcompose.tar.gz" --worker=all --zone="$ZONE"
SSH=("${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=all)
run "${SSH[@]}" --command='rm -rf ~/jcompose && mkdir -p ~/jcompose && tar xzf ~/jcompose.tar.gz -C ~/jcompose'

# ---------------------------------------------------------------- 3. install
run "${SSH[@]}" --command="cd ~/jcompose && python3 -m pip install -q -U pip && python3 -m pip install -q -e '.[tpu]'"

# ---------------------------------------------------------------- 4. train on every worker
train=$(quote_all env JAX_COMPILATION_CACHE_DIR="$CACHE_DIR" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1 \
  python3 -m jcompose.train --config="$CONFIG" --workdir="$WORKDIR" --multihost "${EXTRA[@]}")
if [[ $DETACH == 1 ]]; then
  run "${SSH[@]}" --command="cd ~/jcompose && nohup $train > ~/jcompose-train.log 2>&1 &"
  echo "# training runs in the background; follow it with:"
  echo "#   $(quote_all "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=0 --command='tail -f ~/jcompose-train.log')"
else
  run "${SSH[@]}" --command="cd ~/jcompose && $train"
fi
echo "# checkpoints and TensorBoard logs: $WORKDIR"
