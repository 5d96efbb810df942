#!/usr/bin/env bash
# LoReML evidence (issue 6, item 6): stories260K with NF4 and Q8_0 bases on
# SST-2 with MeZO's prompt ("<sentence> It was" + " terrible" / " great"),
# 1,000 training examples, accuracy on the 872 GLUE dev examples (test.jsonl;
# valid.jsonl, 500 other training-split examples, is reported beside it and is
# the only split any choice may look at). Zero-shot, first-order LoRA and
# LoReML with the same steps, batch, sequence length and learning rate as
# scripts/evidence.sh; LoReML uses its defaults: stage 1 = a tenth of the
# iterations, keep ratio 0.5%, warm start γ = 1, stage-2 weight decay 0.1.
# Scoring: summed log-likelihood of each candidate's tokens (methods.md §6.2).
set -euo pipefail
S=${SHARED:-../shared}
Q=${QTUNE:-bin/qtune}
M=$S/assets/models/stories260K.gguf
O=${OUT:-out/evidence-loreml}
D=$S/assets/data/sst2
ITERS=${ITERS:-500}
mkdir -p "$O"
$Q --quiet quantize "$M" "$O/stories-q8_0.gguf" --type q8_0 >/dev/null
$Q --quiet quantize "$M" "$O/stories-nf4.gguf" --type nf4 >/dev/null
acc() { printf '%.3f' "$($Q --quiet eval --model "$1" ${2:+--adapter "$2"} --data "$D/$3.jsonl" --json | sed -E 's/.*"accuracy":([0-9.]+).*/\1/')"; }
printf '| base | method | test acc (872) | valid acc (500) | steps | wall | peak RSS | trainable entries |\n|---|---|---|---|---|---|---|---|\n'
for base in nf4 q8_0; do
  B="$O/stories-$base.gguf"
  printf '| %s | zero-shot | %s | %s | 0 | – | – | 0 |\n' "$base" "$(acc "$B" "" test)" "$(acc "$B" "" valid)"
  for method in lora loreml; do
    A="$O/sst2-$method-$base"
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' $Q train --model "$B" --data "$D" --method $method --iters "$ITERS" --batch-size 8 \
        --max-seq-length 128 --learning-rate 3e-3 --steps-per-report 50 --steps-per-eval 0 --seed 1 \
        --adapter-path "$A" >"$O/sst2-$method-$base.out" 2>"$O/sst2-$method-$base.log"
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    rss=$(tail -n 1 "$O/sst2-$method-$base.log")
    if [ $method = lora ]; then
      n=$(grep -oE '[0-9]+ trainable parameters' "$O/sst2-$method-$base.log" | head -1 | cut -d' ' -f1)
    else
      n=$(grep -o 'keeps [0-9]* entries.* + [0-9]* norm values' "$O/sst2-$method-$base.log" | head -1 |
          sed -E 's/keeps ([0-9]+) entries.* \+ ([0-9]+) norm values/\1 + \2 norms (stage 2)/')
      n="$(grep -oE '[0-9]+ parameters \(' "$O/sst2-$method-$base.log" | head -1 | cut -d' ' -f1) (stage 1), $n"
    fi
    printf '| %s | %s | %s | %s | %s | %.0f s | %.0f MB | %s |\n' "$base" "$method" "$(acc "$B" "$A" test)" "$(acc "$B" "$A" valid)" \
        "$ITERS" "$wall" "$(echo "$rss/1024" | bc -l)" "$n"
  done
done
