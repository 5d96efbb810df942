#!/usr/bin/env bash
# make bench-mem: peak memory and speed of qtune under --max-mem budgets, on
# synthetic 110M and 1B Llama models (written once into $DIR) and stories260K.
# Prints one markdown table: model, type, job, budget, planned peak, measured
# peak (VmHWM), tokens/s. Budgets below the weights' size stream them.
set -euo pipefail
Q=${QTUNE:-bin/qtune}
DIR=${DIR:-/tmp/qtune-bench-mem}
SHARED=${SHARED:-../shared}
mkdir -p "$DIR/data"
cat > "$DIR/data/train.jsonl" <<'JSON'
{"text":"Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog Max, and every day they ran to the big tree by the pond."}
{"text":"One day, she saw a big, red ball in the grass. She wanted to play with it, but it was too high. Lily's mom said, let's go to the park and find a stick to reach it."}
JSON
for spec in 110M:q4_0 110M:nf4 1B:q4_0 1B:nf4; do
  p=${spec%%:*}; t=${spec##*:}
  [ -f "$DIR/$p-$t.gguf" ] || go run ./internal/cmd/synthgen -preset "$p" -type "$t" -out "$DIR/$p-$t.gguf" >&2
done
mib() { echo $(( $1 / 1048576 )); }
row() { # model type job budget args...
  local m=$1 t=$2 job=$3 b=$4; shift 4
  local mm=() ; [ "$b" != none ] && mm=(--max-mem "$b")
  local plan; plan=$($Q --quiet plan "$@" "${mm[@]}" 2>&1 | sed -n 's/memory plan: peak \([0-9.]* [KMG]iB\).*/\1/p')
  rm -f "$DIR/peak"
  local log rc=0; log=$(QTUNE_PEAK_FILE="$DIR/peak" $Q "$@" "${mm[@]}" 2>&1 >/dev/null) || rc=$?
  if [ "$rc" != 0 ] || [ ! -s "$DIR/peak" ]; then # a refusal or a failure, never a stale peak
    printf '| %s | %s | %s | %s | %s | failed (exit %s): %s | – |\n' "$m" "$t" "$job" "$b" "${plan:-–}" "$rc" "$(echo "$log" | grep -v '^[0-9:]* INF' | tail -1 | cut -c1-120)"
    return
  fi
  local tps; tps=$(echo "$log" | sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p; s/.*Tokens\/sec \([0-9.]*\).*/\1/p' | tail -1)
  printf '| %s | %s | %s | %s | %s | %s MiB | %.1f |\n' "$m" "$t" "$job" "$b" "$plan" "$(mib "$(cat "$DIR/peak")")" "${tps:-0}"
}
echo "| model | type | job | budget | planned peak | measured peak | tokens/s |"
echo "|---|---|---|---|---|---|---|"
S=$SHARED/golden/gguf/stories260K-q4_0.gguf
row stories260K Q4_0 generate none generate --model "$S" --prompt "Once upon a time" -n 64 --temp 0
row stories260K Q4_0 train-lora 32MiB train --model "$S" --data "$DIR/data" --iters 4 --batch-size 2 --max-seq-length 32 --steps-per-eval 0 --steps-per-report 4 --adapter-path "$DIR/ad"
for spec in 110M:q4_0:160MiB:68MiB 110M:nf4:160MiB:68MiB 1B:q4_0:1GiB:320MiB 1B:nf4:1GiB:320MiB; do
  IFS=: read -r p t above below <<<"$spec"
  M=$DIR/$p-$t.gguf
  for b in "$above" "$below"; do
    row "$p" "$t" generate "$b" generate --model "$M" --prompt "Once upon a time" -n 8 --temp 0
    row "$p" "$t" train-lora "$b" train --model "$M" --data "$DIR/data" --iters 2 --batch-size 2 --max-seq-length 32 --rank 2 --steps-per-eval 0 --steps-per-report 2 --adapter-path "$DIR/ad"
  done
done
