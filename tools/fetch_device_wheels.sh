#!/usr/bin/env bash
# Downloads the wheels the GPU image lacks (tools/device_wheels.txt) for CPython 3.12 on manylinux
# x86_64 into .whl/ (ignored through .git/info/exclude, never committed), then checks that every
# requirement is met and that the carry fits the device tool's 64 MiB (tools/check_wheels.py).
#   bash tools/fetch_device_wheels.sh [DEST]     # run here, with PyPI reachable
# Env: PYTHON_VERSION (3.12), PYTHON (python3: any Python with pip and packaging).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
py=${PYTHON:-python3}
version=${PYTHON_VERSION:-3.12}
if [ "$dest" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
  mkdir -p .git/info && echo '/.whl/' >> .git/info/exclude
fi
mkdir -p "$dest"
pins=$(grep -v '^\s*#' tools/device_wheels.txt | sed 's/#.*//' | xargs)
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms="$platforms --platform $p"; done
# shellcheck disable=SC2086
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
  $platforms -d "$dest" $pins
# Wheels of other versions left from an earlier pin would stop the offline install: remove them.
"$py" - "$dest" <<'PY'
import sys
from pathlib import Path
from packaging.utils import canonicalize_name, parse_wheel_filename
pins = {}
for line in Path("tools/device_wheels.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pins[canonicalize_name(name)] = version
for wheel in Path(sys.argv[1]).glob("*.whl"):
    name, version, *_ = parse_wheel_filename(wheel.name)
    if str(version) != pins.get(name):
        print(f"removing {wheel.name} (not pinned)")
        wheel.unlink()
PY
"$py" tools/check_wheels.py "$dest" --python-version "$version"
