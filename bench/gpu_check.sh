#!/usr/bin/env bash
# The GPU check: one command, at most 8 minutes, every result in one JSON file.
#
#   bench/gpu_check.sh [OUT.json]          (default: result/gpu_check.json)
#   FLOWDIS_REF_GLOW=DIR bench/gpu_check.sh  (DIR: a rosinality/glow-pytorch checkout, model.py)
#   PYTHON=/path/to/python                 (default: .venv/bin/python, else python3)
#   GPU_CHECK_TESTS="tests/test_x.py ..."  (which tests; default: all on CUDA, a few on a CPU)
#   GPU_CHECK_SCALE=4                      (multiply every time limit: for the CPU fallback on
#                                           a slow or shared CPU; the GPU run keeps 1)
#
# Sections, each under its own time limit (seconds): the test suite with the device-taking
# tests on CUDA (pytest --device auto; 230), the thesis config's training throughput, ours and
# the reference, float32 / TF32 / bf16 autocast (90), test.py frames/s in float32 and with
# --precision auto (60), peak GPU memory with and without --low_memory (45), a 1-GPU torchrun
# run (45). Without CUDA each section runs its CPU fallback (tiny sizes, a few tests), which
# checks that the script works. A section that fails or runs out of time is recorded as such
# and the next one still runs. See bench/README.md.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-result/gpu_check.json}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
START=$(date +%s)
SCALE=${GPU_CHECK_SCALE:-1}
BUDGET=$(( 480 * SCALE ))
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

record() {  # record SECTION JSON-VALUE
    "$PY" - "$OUT" "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
out, section, value = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
data = json.loads(out.read_text()) if out.is_file() else {}
data[section] = value
tmp = out.with_name(out.name + ".tmp")
tmp.write_text(json.dumps(data, indent=2) + "\n")
tmp.replace(out)
EOF
}

# --- the test suite, device-taking tests on CUDA
if [ -n "${GPU_CHECK_TESTS:-}" ]; then
    TESTS=$GPU_CHECK_TESTS
elif [ "$CUDA" = 1 ]; then
    # the device-taking tests first (pytest drops the repeated paths), so they run even if
    # the suite as a whole outlasts its limit
    TESTS="tests/test_precision.py tests/test_training.py tests/test_talking.py tests/test_mi_flow.py tests/test_pose_flow_train.py tests/test_ad_flow.py tests"
else
    # a few device-taking tests: the whole suite takes 5+ minutes on a 2-core CPU
    TESTS="tests/test_precision.py::test_bf16_conditioners_keep_the_round_trip_within_one_grey_level tests/test_precision.py::test_resolve_precision_per_hardware"
fi
LOG=$(mktemp)
t0=$(date +%s)
# shellcheck disable=SC2086
timeout $(( 230 * SCALE )) "$PY" -m pytest -q -p no:cacheprovider --device auto -rf $TESTS >"$LOG" 2>&1
rc=$?
SUMMARY=$(grep -E '(passed|failed|error|no tests ran)' "$LOG" | tail -n 1)
[ -z "$SUMMARY" ] && SUMMARY="no summary (rc $rc; 124: ran past its time limit)"
FAILED=$(grep -E '^FAILED ' "$LOG" | head -n 20 | "$PY" -c "import json,sys; print(json.dumps(sys.stdin.read().splitlines()))")
record tests "$("$PY" -c "import json,sys; print(json.dumps({'tests': sys.argv[1], 'cuda': sys.argv[2] == '1', 'rc': int(sys.argv[3]), 'timed_out': sys.argv[3] == '124', 'summary': sys.argv[4], 'failed': json.loads(sys.argv[5]), 'seconds': int(sys.argv[6])}))" "$TESTS" "$CUDA" "$rc" "$SUMMARY" "$FAILED" "$(( $(date +%s) - t0 ))")"
rm -f "$LOG"
echo "tests: $SUMMARY"

# --- the measured sections
for spec in throughput:90 test_py:60 low_memory:45 torchrun:45; do
    name=${spec%%:*}
    limit=${spec##*:}
    limit=$(( limit * SCALE ))
    left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 10 ]; then
        record "$name" '{"skipped": "the time budget (8 minutes x GPU_CHECK_SCALE) was spent"}'
        continue
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" "$PY" bench/gpu_check.py "$name" --out "$OUT"
    rc=$?
    if [ "$rc" = 124 ]; then
        record "$name" "{\"error\": \"ran past its ${limit} s limit\"}"
    fi
done
record total_seconds "$(( $(date +%s) - START ))"
record time_limit_scale "$SCALE"
echo "results: $OUT ($(( $(date +%s) - START )) s)"
