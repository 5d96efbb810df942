#!/usr/bin/env bash
# MeZO's peak resident memory next to `qtune eval` on the same model, the
# same records and the same sequence length (issue 6: MeZO trains with
# inference memory). Eval scores the records in 256-token windows; MeZO trains
# on them (batch 1 and batch 4, 256 tokens, 5 steps). Peak RSS is VmHWM.
#
#   scripts/mezo-mem.sh      # QTUNE=bin/qtune SHARED=../shared OUT=out/mezo-mem MODELS="stories 110M" (add 1B)
set -euo pipefail
S=${SHARED:-../shared}
Q=${QTUNE:-bin/qtune}
O=${OUT:-out/mezo-mem}
MODELS=${MODELS:-"stories 110M"}
mkdir -p "$O/data"
head -n 20 "$S/assets/data/tinyshakespeare/train.jsonl" >"$O/data/train.jsonl"
peak() { rm -f "$O/peak"; QTUNE_PEAK_FILE="$O/peak" "$@" >/dev/null 2>&1; echo $(($(cat "$O/peak") / 1024)); }
mib() { echo "scale=1; $1/1024" | bc; }
printf '| model | eval | MeZO batch 1 | MeZO batch 4 | batch 1 / eval |\n|---|---|---|---|---|\n'
for name in $MODELS; do
  case $name in
  stories) mm=$S/assets/models/stories260K.gguf ;;
  *) mm=$O/synth-$name-q4_0.gguf
     [ -f "$mm" ] || go run ./internal/cmd/synthgen -preset "$name" -type q4_0 -out "$mm" >/dev/null ;;
  esac
  e=$(peak $Q --quiet eval --model "$mm" --data "$O/data/train.jsonl" --max-seq-length 256)
  z() { peak $Q --quiet train --model "$mm" --data "$O/data" --method mezo --iters 5 --batch-size "$1" --max-seq-length 256 \
          --steps-per-eval 0 --steps-per-report 5 --cache-dir "$O/cache" --adapter-path "$O/adapter"; }
  z1=$(z 1); z4=$(z 4)
  printf '| %s | %s MiB | %s MiB | %s MiB | %+.1f%% |\n' "$(basename "$mm" .gguf)" "$(mib $e)" "$(mib $z1)" "$(mib $z4)" \
    "$(echo "100*($z1-$e)/$e" | bc -l)"
done | tee "$O/table.md"
