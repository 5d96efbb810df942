#!/bin/sh
# The GPU check (make test-gpu, or the device machine): the GPU tests of
# kernels/cuda against the CPU, then the device-timed benchmarks beside
# PyTorch's same shapes. Test binaries are built beforehand (make
# gpu-binaries) so the machine needs no Go. Logs go to $OUT (or
# /tmp/qtune-gpu).
set -u
OUT=${OUT:-/tmp/qtune-gpu}
mkdir -p "$OUT"
BIN=${BIN:-out/gpu}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
export QTUNE_REQUIRE_GPU=1 QTUNE_CACHE="$OUT/cache"
rc=0
"$BIN/cuda.test" -test.v -test.run 'GPU|Count' -test.timeout 300s > "$OUT/tests.log" 2>&1 || rc=1
grep -E '^(--- |FAIL|ok|PASS)|gpu_test.go' "$OUT/tests.log"
"$BIN/cuda.test" -test.run '^$' -test.bench GPU -test.benchtime 20x -test.timeout 300s 2>&1 | tee "$OUT/bench.log" | grep -E 'Benchmark|FAIL|panic' || rc=1
if command -v python3 >/dev/null; then
	python3 scripts/gpu_peer.py 2>&1 | tee "$OUT/peer.log"
fi
exit $rc
