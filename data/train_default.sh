#!/usr/bin/env bash
# Reproduces the default model ddnm-small-32 in two phases, each on one CPU thread:
#   1. 2800 steps from scratch on the skimage.data images (about an hour on a shared two-core machine);
#   2. 3600 steps fine-tuning phase 1's EMA weights with four natural photographs added
#      (scikit-learn, matplotlib and SciPy 1.9.3 sample images; about 35 minutes).
# Pass --resume to continue a stopped phase.
# Usage: data/train_default.sh [RUN_DIR] [--resume]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ddnm-small-32}
shift || true
python=${PYTHON:-.venv/bin/python}
common=(--config data/ddnm_small_32.json --batch-size 16 --ema 0.999 --threads 1
        --checkpoint-every 200)

"$python" data/assemble.py "$RUN/phase1/images"
"$python" -m ddnm.cli train --data "$RUN/phase1/images" --out "$RUN/phase1" "${common[@]}" \
    --steps 2800 --lr 3e-4 --seed 0 "$@"

"$python" -m pip install -q scikit-learn matplotlib
"$python" -m pip download -q scipy==1.9.3 --no-deps --only-binary :all: --python-version 3.11 \
    -d "$RUN/wheels"
"$python" data/assemble.py "$RUN/phase2/images" --photographs "$RUN"/wheels/scipy-1.9.3-*.whl
"$python" -m ddnm.cli train --data "$RUN/phase2/images" --out "$RUN/phase2" "${common[@]}" \
    --init "$RUN/phase1/ema.safetensors" --steps 3600 --lr 2e-4 --seed 1 "$@"
echo "cp $RUN/phase2/ema.safetensors ddnm/models/weights/ddnm-small-32.safetensors"
