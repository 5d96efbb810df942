#!/usr/bin/env bash
# Evidence for the zeroth-order and hybrid methods (issue 6): stories260K with
# NF4 and Q8_0 bases on SST-2 (MeZO's prompt "<sentence> It was" with
# " terrible" / " great"; 1,000 training examples; accuracy on the 872 dev
# examples in test.jsonl, summed log-likelihood of each candidate), for
# zero-shot, LoRA (first order), MeZO, LoHO-inter and LoHO-intra (zeroth-order
# part on the complementary entries, and on LoRA factors), with steps,
# wall time and peak resident memory (/usr/bin/time %M). Hyper-parameters were
# chosen on valid.jsonl (500 examples), never on test.jsonl.
# Then the memory check (scripts/mezo-mem.sh): MeZO's peak RSS next to
# `qtune eval` with the same model, records and sequence length.
#
#   scripts/evidence-zo.sh            # QTUNE=bin/qtune SHARED=../shared OUT=out/evidence-zo ITERS=500
set -euo pipefail
S=${SHARED:-../shared}
Q=${QTUNE:-bin/qtune}
M=$S/assets/models/stories260K.gguf
D=$S/assets/data/sst2
O=${OUT:-out/evidence-zo}
ITERS=${ITERS:-500}
mkdir -p "$O"
$Q --quiet quantize "$M" "$O/stories-q8_0.gguf" --type q8_0 >/dev/null
$Q --quiet quantize "$M" "$O/stories-nf4.gguf" --type nf4 >/dev/null
COMMON="--data $D --iters $ITERS --batch-size 8 --max-seq-length 128 --steps-per-report 100 --steps-per-eval 0 --seed 1 --cache-dir $O/cache"
acc() { sed -E 's/.*"accuracy":([0-9.]+).*/\1/'; }
# name | flags (LoRA rank 8, alpha 16, all seven modules in every method)
METHODS=(
  "lora|--method lora --learning-rate 3e-3"
  "mezo|--method mezo --zo-target lora --zo-learning-rate 1e-4 --epsilon 1e-2"
  "loho-inter|--method loho-inter --fo-layers auto --learning-rate 3e-3 --zo-learning-rate 1e-4 --epsilon 1e-2"
  "loho-intra|--method loho-intra --fo-ratio 0.5 --learning-rate 1e-3 --zo-learning-rate 1e-6 --epsilon 1e-2"
  "loho-intra-lora|--method loho-intra --zo-target lora --fo-ratio 0.5 --learning-rate 1e-3 --zo-learning-rate 1e-4 --epsilon 1e-2"
)
# ONLY="loho-intra lora" runs just those methods (names as in the first column).
ONLY=${ONLY:-}
{
printf '| base | method | SST-2 dev accuracy (872) | steps | wall | peak RSS |\n|---|---|---|---|---|---|\n'
for base in nf4 q8_0; do
  B="$O/stories-$base.gguf"
  a0=$($Q --quiet eval --model "$B" --data "$D/test.jsonl" --json | acc)
  rss0=$( { /usr/bin/time -f '%M' $Q --quiet eval --model "$B" --data "$D/test.jsonl" >/dev/null; } 2>&1 | tail -n 1)
  printf '| %s | zero-shot | %s | 0 | - | %.1f MB (eval) |\n' "$base" "$a0" "$(echo "$rss0/1024" | bc -l)"
  for entry in "${METHODS[@]}"; do
    name=${entry%%|*}; flags=${entry#*|}
    if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $name "* ]]; then continue; fi
    dir="$O/$name-$base"
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' $Q train --model "$B" $COMMON $flags --adapter-path "$dir" >/dev/null 2>"$dir.log"
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    rss=$(tail -n 1 "$dir.log")
    a1=$($Q --quiet eval --model "$B" --adapter "$dir" --data "$D/test.jsonl" --json | acc)
    printf '| %s | %s | %s | %d | %.0f s | %.1f MB |\n' "$base" "$name" "$a1" "$ITERS" "$wall" "$(echo "$rss/1024" | bc -l)"
  done
done
if [ -z "$ONLY" ]; then
echo
echo "Memory: MeZO next to qtune eval on the same model, records and sequence length"
QTUNE=$Q SHARED=$S OUT="$O/mem" scripts/mezo-mem.sh
fi
} | tee "$O/table.md"
