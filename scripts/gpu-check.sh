#!/bin/sh
# The GPU check (make test-gpu, or on a device machine): kernels/cuda's
# tests against the CPU, the model's GPU step and generation (a KV cache on
# the device) against the CPU's, a training run on the GPU against the same
# run on the CPU, generate and chat on the GPU against the CPU's;
# then the kernels' device-timed benchmarks beside PyTorch's same shapes
# (GPU_KBENCH=1) and the training table beside PyTorch+PEFT (GPU_BENCH=1,
# scripts/gpu-bench.sh). Test binaries are built beforehand (make
# gpu-binaries) so the machine needs no Go; the tests read the shared
# assets from $QTUNE_SHARED. Logs go to $OUT (or /tmp/qtune-gpu).
set -u
OUT=${OUT:-/tmp/qtune-gpu}
mkdir -p "$OUT"
BIN=$(cd "${BIN:-out/gpu}" && pwd)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
"$BIN/qtune" devices 2>&1 | tee "$OUT/devices.txt" # the libraries qtune found, and where
export QTUNE_REQUIRE_GPU=1 QTUNE_CACHE=${QTUNE_CACHE:-/tmp/qtune-gpu-cache}
rc=0
run() { # log-name package-dir binary args...
  name=$1 dir=$2 bin=$3; shift 3
  (cd "$dir" && "$BIN/$bin" "$@") > "$OUT/$name.log" 2>&1 || rc=1
  grep -E '^(--- |FAIL|ok|PASS|panic)|_test.go:[0-9]+: ' "$OUT/$name.log" | grep -v '^=== ' | cut -c1-400
}
run tests-kernels kernels/cuda cuda.test -test.v -test.run 'GPU|Count' -test.timeout 300s
run tests-model model model.test -test.v -test.run 'GPU' -test.timeout 300s
run tests-train train train.test -test.v -test.run 'GPU|Device' -test.timeout 300s
run tests-cmd cmd/qtune cmd.test -test.v -test.run 'GPU' -test.timeout 300s
if [ "${GPU_KBENCH:-0}" = 1 ]; then
  (cd kernels/cuda && "$BIN/cuda.test" -test.run '^$' -test.bench GPU -test.benchtime 20x -test.timeout 300s) > "$OUT/bench-kernels.log" 2>&1 || rc=1
  grep -E 'Benchmark|FAIL|panic' "$OUT/bench-kernels.log"
  python3 scripts/gpu_peer.py 2>&1 | tee "$OUT/peer-kernels.log"
fi
if [ "${GPU_BENCH:-0}" = 1 ]; then
  QTUNE="$BIN/qtune" SYNTHGEN="$BIN/synthgen" DATA="${DATA:-$QTUNE_SHARED/assets/data/tinyshakespeare}" \
    ./scripts/gpu-bench.sh 2>&1 | tee "$OUT/bench-train.md"
fi
exit $rc
