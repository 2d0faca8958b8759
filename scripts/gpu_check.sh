#!/usr/bin/env bash
# One FedMMKT round of the paper-flowers profile on tiny subsets, on the GPU if there is one.
# Offline: models are stand-ins of the real architectures built from config (see scripts/gpu_check.py).
# Figures go to stdout and, when OUT is set, to $OUT/gpu_check.json. Extra arguments pass through
# (e.g. --scale tiny, --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PYTHON" scripts/gpu_check.py "$@"
