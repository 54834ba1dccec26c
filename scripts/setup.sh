#!/usr/bin/env bash
# Create .venv and install tuner into it.  Usage: bash scripts/setup.sh [test]
#   "test" adds the test extras (pytest, PostgreSQL driver, optuna-dashboard, Lightning, transformers + accelerate:
#   tests/integrations runs the framework examples).
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build first: a plain `torch` requirement
# would pull a multi-GB CUDA build. Once a torch >= 2.4 is installed, `pip install -e .` adds nothing to it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "${PIP[@]}" "torch>=2.4"
    else
        "${PIP[@]}" "torch==${TUNER_TORCH_VERSION:-2.13.0}"
    fi
fi
extras="postgres,dashboard"
[ "${1:-}" = "test" ] && extras="test,$extras,lightning,hf"
"${PIP[@]}" -e ".[$extras]"
echo "tuner installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
