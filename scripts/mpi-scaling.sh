#!/bin/bash
# Data-parallel scaling on one machine: tokens/s of 1 and 2 ranks (one core
# each) for LoRA and MeZO, and the bytes each step sums over the ranks.
#   scripts/mpi-scaling.sh MODEL.gguf [RANK] [BATCH] [SEQ]
# e.g. scripts/mpi-scaling.sh /tmp/1B-q4_0.gguf 16 1 128 (go run
# ./internal/cmd/synthgen -preset 1B -type q4_0 -out /tmp/1B-q4_0.gguf).
# Prints every iteration's line; the README takes the mean of iterations 2-4.
set -eu
M=${1:?model}; R=${2:-16}; B=${3:-1}; T=${4:-128}
here=$(cd "$(dirname "$0")/.." && pwd)
D=${QTUNE_SHARED:-$here/../shared}/assets/data/tinyshakespeare
Q=$here/bin/qtune
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for method in lora mezo; do for np in 1 2; do
  echo "== $method, $np rank(s)"
  mpirun --oversubscribe --allow-run-as-root -np $np -x GOMAXPROCS=1 "$Q" train --model "$M" --data "$D" --method $method \
    --rank "$R" --iters 4 --batch-size "$B" --grad-accumulation-steps 2 --max-seq-length "$T" --steps-per-report 1 \
    --steps-per-eval 1000 --val-batches 1 --adapter-path "$out/$method-$np" 2>&1 | grep -E "Iter [0-9]+: Train|summed per step" | sed 's/.*INF *//'
done; done
