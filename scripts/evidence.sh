#!/usr/bin/env bash
# Reproduces the README's fine-tuning evidence: stories260K with NF4 and Q8_0
# bases, LoRA on tinyshakespeare (validation loss before/after) and on SST-2
# with MeZO's prompt (test accuracy before/after 1,000 training examples).
set -euo pipefail
S=${SHARED:-../shared}
Q=${QTUNE:-bin/qtune}
M=$S/assets/models/stories260K.gguf
O=${OUT:-out/evidence}
mkdir -p "$O"
$Q --quiet quantize "$M" "$O/stories-q8_0.gguf" --type q8_0 >/dev/null
$Q --quiet quantize "$M" "$O/stories-nf4.gguf" --type nf4 >/dev/null
printf '| base | task | before | after | iters | wall | peak RSS |\n|---|---|---|---|---|---|---|\n'
for base in nf4 q8_0; do
  B="$O/stories-$base.gguf"
  start=$(date +%s.%N)
  line=$(/usr/bin/time -f '%M' $Q --quiet train --model "$B" --data "$S/assets/data/tinyshakespeare" --method lora \
      --iters 200 --batch-size 4 --max-seq-length 256 --learning-rate 3e-3 --steps-per-report 200 --steps-per-eval 200 \
      --val-batches 50 --seed 1 --adapter-path "$O/shakespeare-$base" 2>"$O/shakespeare-$base.log")
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(tail -n 1 "$O/shakespeare-$base.log")
  before=$(echo "$line" | sed -E 's/.*validation loss ([0-9.]+) -> ([0-9.]+).*/\1/')
  after=$(echo "$line" | sed -E 's/.*validation loss ([0-9.]+) -> ([0-9.]+).*/\2/')
  printf '| %s | tinyshakespeare val loss | %s | %s | 200 | %.0f s | %.0f MB |\n' "$base" "$before" "$after" "$wall" "$(echo "$rss/1024" | bc -l)"
  acc0=$($Q --quiet eval --model "$B" --data "$S/assets/data/sst2/test.jsonl" --json | sed -E 's/.*"accuracy":([0-9.]+).*/\1/')
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' $Q --quiet train --model "$B" --data "$S/assets/data/sst2" --method lora --iters 500 --batch-size 8 \
      --max-seq-length 128 --learning-rate 3e-3 --steps-per-report 500 --steps-per-eval 0 --seed 1 \
      --adapter-path "$O/sst2-$base" >/dev/null 2>"$O/sst2-$base.log"
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(tail -n 1 "$O/sst2-$base.log")
  acc1=$($Q --quiet eval --model "$B" --adapter "$O/sst2-$base" --data "$S/assets/data/sst2/test.jsonl" --json | sed -E 's/.*"accuracy":([0-9.]+).*/\1/')
  printf '| %s | SST-2 test accuracy (872) | %s | %s | 500 | %.0f s | %.0f MB |\n' "$base" "$acc0" "$acc1" "$wall" "$(echo "$rss/1024" | bc -l)"
done
