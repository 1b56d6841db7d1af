#!/usr/bin/env bash
# GPU throughput of the 256 x 256 ImageNet UNet under the sampler (bench/gpu.py), in under 8 min.
# Run from the repository root on a machine with a CUDA GPU and a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHON=${PYTHON:-python3}
PYTHONPATH=. timeout 480 "$PYTHON" bench/gpu.py --device cuda --budget-s 400 "$@"
