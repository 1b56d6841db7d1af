#!/usr/bin/env bash
# Reproduces the default model ddnm-small-32: assemble the training images from skimage.data, then
# train for 2800 steps on one CPU thread (about an hour on a shared two-core machine).
# Pass --resume to continue a stopped run.
# Usage: data/train_default.sh [RUN_DIR] [--resume]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ddnm-small-32}
shift || true
python=${PYTHON:-.venv/bin/python}
"$python" data/assemble.py "$RUN/images"
"$python" -m cli.main train --data "$RUN/images" --out "$RUN" --config data/ddnm_small_32.json \
    --steps 2800 --batch-size 16 --lr 3e-4 --ema 0.999 --seed 0 --threads 1 \
    --checkpoint-every 200 "$@"
