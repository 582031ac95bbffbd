#!/usr/bin/env bash
# Train a jcompose method on a Cloud TPU VM (single host or pod slice), or generate its benchmark or
# evaluate it there on every chip:
#
#   bash launch_tpu.sh <method> [--job train|compose|evaluate] [options] [-- extra flags of the job]
#
# 0. plans the run for the accelerator first (`python -m jcompose.plan`: the train step compiled here for
#    the slice's chips) and stops with the numbers when it does not fit (`--skip-plan` launches anyway);
# 1. reuses the TPU VM `--name` if it exists, else creates it (on-demand, `--spot`, or through a
#    queued resource with `--queued`, waiting until it is ACTIVE);
# 2. copies this checkout (git-tracked and untracked-but-not-ignored files) to every worker;
# 3. installs it there with the `tpu` extra, and copies each `--stage SRC DST` folder (gs://) to DST on
#    every worker's disk, once (a later launch finds it there and skips the copy);
# 4. runs the same job on all workers (`--worker=all`), with a persistent XLA compilation cache:
#    train     python3 -m jcompose.train --config=configs/<method>.py[:variant] --workdir=WORKDIR --multihost
#    compose   python3 -m jcompose.compose <method> --checkpoint=WORKDIR --out=WORKDIR/generated --multihost
#              (the flags after -- name the --benchmark; resumable: a relaunch continues)
#    evaluate  python3 -m jcompose.evaluate --config=configs/eval/<method>.py[:variant] --multihost
#              --config.out=/tmp/jcompose-eval-<name> on the workers, copied to WORKDIR/eval afterwards
#
# `--dry-run` prints every command instead of running it. Checkpoints must go to storage all
# workers share: `--workdir gs://bucket/path` (or set JCOMPOSE_BUCKET and get
# gs://$JCOMPOSE_BUCKET/jcompose/<name>; the bucket with or without gs://).
#
# Example:
#   bash launch_tpu.sh anyscene --accelerator v5p-32 --zone us-east5-a --spot \
#       --workdir gs://my-bucket/anyscene-run1 -- --config.optim.lr=2e-5
#   bash launch_tpu.sh anyscene --job compose --workdir gs://my-bucket/anyscene-run1 \
#       --stage gs://my-bucket/models/sd15 /tmp/models/sd15 --stage gs://my-bucket/anyscene-bench /tmp/bench \
#       -- --base /tmp/models/sd15 --benchmark /tmp/bench
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash launch_tpu.sh <method> [options] [-- extra flags of the job]

  <method>              a config in configs/ (configs/<method>.py), e.g. anyscene, denoise
  --job JOB             train (default); compose: `compose <method> --benchmark ...` on every chip of the
                        slice (the flags after -- name the benchmark; default --checkpoint=<workdir>,
                        --out=<workdir>/generated); evaluate: configs/eval/<method>.py on every chip
                        (scores copied to <workdir>/eval)
  --variant V           config variant: configs/<method>.py:V, or configs/eval/<method>.py:V with --job
                        evaluate (default: the paper's settings); checked before any gcloud call
  --stage SRC DST       copy the gs:// folder SRC to the absolute path DST on every worker before the job,
                        once (skipped when a launch staged it there before); repeatable: base models,
                        released checkpoints, evaluation weights, benchmark folders, dataset roots
  --name NAME           TPU VM name (default: jcompose-<method>)
  --zone ZONE           default: $JCOMPOSE_TPU_ZONE or us-central2-b
  --accelerator TYPE    e.g. v4-8, v4-32, v5p-32, v6e-8 (default: $JCOMPOSE_TPU_TYPE or v4-32)
  --version VERSION     TPU VM runtime (default: $JCOMPOSE_TPU_VERSION or tpu-ubuntu2204-base)
  --project PROJECT     gcloud project (default: gcloud's configured project)
  --spot                spot (preemptible) capacity; training resumes from the last checkpoint
  --queued              request capacity through a queued resource and wait until it is ACTIVE
  --workdir URI         run directory shared by all workers (gs://...; default gs://$JCOMPOSE_BUCKET/jcompose/<name>)
  --cache-dir DIR       XLA compilation cache (default: <workdir>/xla_cache)
  --detach              start the job in the background on the workers (log: ~/jcompose-<job>.log)
  --skip-plan           launch without planning the run for the accelerator first (the plan compiles the
                        train step for the slice here, needs jax[tpu] locally, and stops a run that does
                        not fit; its report goes to --plan-dir)
  --plan-dir DIR        where the plan is written (default: $TMPDIR/jcompose-plan-<name>-<accelerator>)
  --dry-run             print the commands instead of running them (the plan still runs: its verdict is shown)
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
PROJECT="" SPOT=0 QUEUED=0 WORKDIR="" CACHE_DIR="" DETACH=0 DRY_RUN=0 SKIP_PLAN=0 PLAN_DIR="" EXTRA=()
JOB=train STAGES=()

need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) need_value "$@"; VARIANT=$2; shift 2 ;;
    --job) need_value "$@"; JOB=$2; shift 2 ;;
    --stage) [[ $# -ge 3 && $2 == gs://* && $3 == /* ]] || die "--stage needs SRC DST: a gs:// folder and an absolute path on the workers"
      STAGES+=("$2" "$3"); shift 3 ;;
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
    --skip-plan) SKIP_PLAN=1; shift ;;
    --plan-dir) need_value "$@"; PLAN_DIR=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1' (train flags go after --; see --help)" ;;
  esac
done

if [[ ! -f "$REPO/configs/$METHOD.py" ]]; then
  available=$(cd "$REPO/configs" && ls -1 ./*.py | sed 's|^\./||; s|\.py$||' | grep -vE '^(common|__init__)$' | tr '\n' ' ')
  die "no config configs/$METHOD.py; available methods: $available"
fi
CONFIG_FILE="configs/$METHOD.py"
has_flag() {  # whether the extra flags (after --) give $1, as `$1 VALUE` or `$1=VALUE`
  local arg
  for arg in ${EXTRA[@]+"${EXTRA[@]}"}; do [[ $arg == "$1" || $arg == "$1="* ]] && return 0; done
  return 1
}
case "$JOB" in
  train) ;;
  compose)
    case "$METHOD" in anyscene|dreamcom|anydoor) ;; *) die "--job compose: compose has no method '$METHOD' (anyscene, dreamcom, anydoor)" ;; esac
    [[ -z $VARIANT ]] || die "--variant: --job compose generates with the settings of the run it reads (compose flags go after --)"
    has_flag --benchmark || die "--job compose: name the benchmark after --, e.g. -- --benchmark /tmp/bench (staged with --stage)" ;;
  evaluate)
    CONFIG_FILE="configs/eval/$METHOD.py"
    [[ -f "$REPO/$CONFIG_FILE" ]] || die "--job evaluate: no evaluation config $CONFIG_FILE" ;;
  *) die "--job $JOB: expected train, compose or evaluate" ;;
esac
CONFIG="$CONFIG_FILE${VARIANT:+:$VARIANT}"
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
  elif ! grep -qE "[\"']${VARIANT}[\"']" "$REPO/$CONFIG_FILE"; then
    die "--variant $VARIANT: $CONFIG_FILE has no variant '$VARIANT'"
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

# ---------------------------------------------------------------- 0. will it fit?
# The run's train step compiled for the accelerator's chips on this machine (jcompose.plan): exit 0 fits,
# 3 does not fit, anything else is a failure to plan. Only the --config.* overrides reach the plan.
if [[ $JOB != train ]]; then
  echo "# plan: only for --job train (it compiles the train step); --job $JOB starts without it"
elif [[ $SKIP_PLAN == 1 ]]; then
  echo "# plan skipped (--skip-plan): launching without checking that the run fits $ACCELERATOR"
else
  PLAN_DIR=${PLAN_DIR:-${TMPDIR:-/tmp}/jcompose-plan-$NAME-$ACCELERATOR}
  overrides=()
  for arg in "${EXTRA[@]}"; do [[ $arg == --config.* ]] && overrides+=("$arg"); done
  read -r -a PLAN_CMD <<< "${JCOMPOSE_PLAN_CMD:-${JCOMPOSE_PYTHON:-python3} -m jcompose.plan}"
  echo "# planning $CONFIG on $ACCELERATOR: compiling the train step for its chips here (minutes; --skip-plan skips)"
  status=0
  (cd "$REPO" && "${PLAN_CMD[@]}" --config="$CONFIG" --target="$ACCELERATOR" --programs=train --out="$PLAN_DIR" \
    ${overrides[@]+"${overrides[@]}"}) || status=$?
  if [[ $status == 3 ]]; then
    echo "launch_tpu.sh: the run does not fit $ACCELERATOR (numbers above; report: $PLAN_DIR/plan.md). Find a batch" \
      "that fits with: python -m jcompose.plan --config=$CONFIG --target=$ACCELERATOR --max_batch; or --skip-plan" >&2
    [[ $DRY_RUN == 1 ]] || exit 3
    echo "# (dry run) a real launch stops here; the commands it would run otherwise:"
  elif [[ $status != 0 ]]; then
    die "planning the run failed (exit $status; the plan compiles here: pip install -e \".[plan]\"), or launch with --skip-plan"
  else
    echo "# plan: fits; report: $PLAN_DIR/plan.md"
  fi
fi

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

# ---------------------------------------------------------------- 3b. weights and data on every worker
# Each --stage folder is copied once per worker: a marker beside DST records the source it holds, so a
# relaunch skips it; an interrupted copy has no marker and is completed by the next launch (rsync).
for ((i = 0; i < ${#STAGES[@]}; i += 2)); do
  src=${STAGES[i]%/} dst=${STAGES[i + 1]%/}
  marker="$(dirname "$dst")/.$(basename "$dst").jcompose-staged"
  stage="if [ \"\$(cat $(quote "$marker") 2>/dev/null)\" = $(quote "$src") ]; then echo staged already: $(quote "$dst");"
  stage+=" else mkdir -p $(quote "$dst") && gcloud storage rsync --recursive $(quote "$src") $(quote "$dst")"
  stage+=" && echo $(quote "$src") > $(quote "$marker"); fi"
  run "${SSH[@]}" --command="$stage"
done

# ---------------------------------------------------------------- 4. the job on every worker
EVAL_OUT="/tmp/jcompose-eval-$NAME"
case "$JOB" in
  train) job=(python3 -m jcompose.train --config="$CONFIG" --workdir="$WORKDIR" --multihost) ;;
  compose)
    job=(python3 -m jcompose.compose "$METHOD")
    has_flag --checkpoint || has_flag --weights || job+=(--checkpoint="$WORKDIR")
    has_flag --out || job+=(--out="$WORKDIR/generated")
    job+=(--multihost) ;;
  evaluate)
    job=(python3 -m jcompose.evaluate --config="$CONFIG" --multihost)
    has_flag --config.out || job+=(--config.out="$EVAL_OUT") ;;
esac
command=$(quote_all env JAX_COMPILATION_CACHE_DIR="$CACHE_DIR" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1 \
  "${job[@]}" ${EXTRA[@]+"${EXTRA[@]}"})
LOG="~/jcompose-$JOB.log"
COPY_SCORES=("${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=0
             --command="gcloud storage rsync --recursive $(quote "$EVAL_OUT") $(quote "$WORKDIR/eval")")
if [[ $DETACH == 1 ]]; then
  run "${SSH[@]}" --command="cd ~/jcompose && nohup $command > $LOG 2>&1 &"
  echo "# the $JOB job runs in the background; follow it with:"
  echo "#   $(quote_all "${TPU[@]}" ssh "$NAME" --zone="$ZONE" --worker=0 --command="tail -f $LOG")"
  [[ $JOB == evaluate ]] && ! has_flag --config.out && echo "# then copy the scores: $(quote_all "${COPY_SCORES[@]}")"
else
  run "${SSH[@]}" --command="cd ~/jcompose && $command"
  if [[ $JOB == evaluate ]] && ! has_flag --config.out; then
    run "${COPY_SCORES[@]}"
  fi
fi
case "$JOB" in
  train) echo "# checkpoints and TensorBoard logs: $WORKDIR" ;;
  compose) has_flag --out && echo "# images and manifest.json: the --out folder" || echo "# images and manifest.json: $WORKDIR/generated" ;;
  evaluate) has_flag --config.out && echo "# scores: the --config.out folder on worker 0" || echo "# scores: $WORKDIR/eval" ;;
esac
