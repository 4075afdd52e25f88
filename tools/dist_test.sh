#!/usr/bin/env bash
# Distributed testing with torchrun:
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options, e.g. --deploy]
# NNODES, NODE_RANK, MASTER_ADDR, PORT as for dist_train.sh. PYTHON: the interpreter
# (default: the repo's .venv/bin/python if there is one, else python from PATH). A bad
# input is printed once, as the last line (tools/dist_launch.sh).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
exec bash "$(dirname "$0")/dist_launch.sh" "$GPUS" test.py "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
