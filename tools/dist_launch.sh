#!/usr/bin/env bash
# torchrun for tools/dist_train.sh and tools/dist_test.sh (not called directly):
#   bash tools/dist_launch.sh NPROC TOOL [TOOL's arguments]
# NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON: see tools/dist_train.sh.
#
# Errors: our tools report bad input as one `error: ...` line (mmrepvgg/cli.py run_tool), in
# every process; torchrun then prints its own report of the failed processes (a traceback
# and a box per rank). Here each distinct error is printed once, last, and torchrun's report
# is kept only when no process printed an error line (a crash, whose traceback it points to).
set -euo pipefail
NPROC=$1
TOOL=$2
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
# the repo's environment (make env) unless PYTHON names another interpreter
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

# stderr filter: error lines (and their indented continuation lines) held back and printed
# once at the end; torchrun's own log lines and its failure report (from its "failed
# (exitcode" line on) held back and printed only if no error line came
FILTER='
function flush_err() { if (cur != "" && !(cur in seen)) { seen[cur] = 1; errs[++n] = cur }; cur = "" }
/^error: / { flush_err(); cur = $0; next }
cur != "" && /^  / { cur = cur "\n" $0; next }
{ flush_err() }
/torch\/distributed\/elastic\/.*failed \(exitcode/ { report = 1 }
report || /torch\/distributed\/elastic\// { rep[++m] = $0; next }
{ print; fflush() }
END {
    flush_err()
    if (n == 0) for (i = 1; i <= m; i++) print rep[i]
    for (i = 1; i <= n; i++) print errs[i]
}'

set +e
{
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m torch.distributed.run \
        --nnodes="$NNODES" \
        --node_rank="$NODE_RANK" \
        --master_addr="$MASTER_ADDR" \
        --nproc_per_node="$NPROC" \
        --master_port="$PORT" \
        "$ROOT/tools/$TOOL" "$@" 2>&1 1>&3 3>&- | awk "$FILTER" >&2
} 3>&1
exit $?
