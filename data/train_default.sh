#!/usr/bin/env bash
# Reproduces the default model ddnm-small-32 (about an hour and a half on two CPU cores):
#   phase 1: 2800 steps on the skimage.data images (one thread);
#   phase 2: continued to 8000 steps with the packaged colour photographs added (two threads).
# Needs the training extra: pip install -e ".[train]". The EMA weights end up in RUN_DIR/ema.safetensors.
# Usage: data/train_default.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ddnm-small-32}
python=${PYTHON:-.venv/bin/python}
common=(--out "$RUN" --config data/ddnm_small_32.json --batch-size 16 --lr 3e-4 --ema 0.999
        --seed 0 --checkpoint-every 200)
"$python" data/assemble.py "$RUN/images-skimage" --skimage-only
"$python" -m ddnm.cli train --data "$RUN/images-skimage" "${common[@]}" --steps 2800 --threads 1
"$python" data/assemble.py "$RUN/images"
"$python" -m ddnm.cli train --data "$RUN/images" "${common[@]}" --steps 8000 --threads 2 --resume
