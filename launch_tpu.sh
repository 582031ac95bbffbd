#!/usr/bin/env bash
# Launch a jcompose training run on a Cloud TPU VM: `bash launch_tpu.sh <method> [options]`.
# Not yet implemented: the training engine (python -m jcompose.train) lands first; this script will
# then create or reuse the TPU VM, sync the code, install with the `tpu` extra and run the same
# train command on all workers.
set -euo pipefail
echo "launch_tpu.sh: not yet available: it arrives with the training engine (python -m jcompose.train)." >&2
echo "For now: pip install -e '.[tpu]' on the TPU VM and use jcompose's loaders directly." >&2
exit 2
