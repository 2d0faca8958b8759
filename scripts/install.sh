#!/usr/bin/env bash
# Create ./.venv (if missing) and install FedMMKT on Flower with its test tools.
#
#   TORCH_SPEC  the torch requirement installed first (default: torch==2.13.0). On a GPU machine
#               pass e.g. TORCH_SPEC="torch" to take the CUDA build PyPI serves.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev,dp,wandb]"
echo "installed into $(pwd)/.venv"
