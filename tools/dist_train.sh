#!/usr/bin/env bash
# Distributed training with torchrun (PyTorch DDP through mmengine):
#   bash tools/dist_train.sh CONFIG GPUS [train.py options]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT. PYTHON: the interpreter (default: the
# repo's .venv/bin/python if there is one, else python from PATH). Without GPUs torchrun
# starts CPU processes and tools/train.py switches to the gloo backend. A bad input is
# printed once, as the last line (tools/dist_launch.sh).
set -euo pipefail
CONFIG=$1
GPUS=$2
exec bash "$(dirname "$0")/dist_launch.sh" "$GPUS" train.py "$CONFIG" --launcher pytorch "${@:3}"
