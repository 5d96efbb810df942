#!/usr/bin/env bash
# make bench-peer: qtune against the PyTorch peer (../shared/bench/peer_lora_bench.py,
# what a user would otherwise run on a CPU) in the same run, on the peer's own shapes:
# LoRA rank 16 (alpha 32) on every linear layer of every block, AdamW, or MeZO;
# 15M at batch 4 x 256 and 110M at batch 2 x 256 tokens, 2 threads.
# qtune trains synthetic models of the same shapes (F32 like the peer, and Q4_0/NF4)
# on Shakespeare packed into 256-token rows; tokens/s is the mean over STEPS steps after
# one warm-up step (the peer does the same), peak RSS is VmHWM.
# Needs Debian's python3-torch (PyTorch 1.13): apt-get install -y python3-torch python3-numpy.
set -euo pipefail
S=${SHARED:-../shared}
Q=${QTUNE:-bin/qtune}
O=${OUT:-/tmp/qtune-bench-peer}
STEPS=${STEPS:-4}
METHODS=${METHODS:-"lora mezo"} # METHODS=mezo runs only the MeZO rows
PY=${PY:-/usr/bin/python3}
mkdir -p "$O"
if ! $PY -c 'import torch' 2>/dev/null; then
  echo "bench-peer: $PY has no torch (apt-get install -y python3-torch python3-numpy)" >&2
  exit 1
fi
mib() { echo "scale=0; $1 / 1048576" | bc; }
echo "| shape | method | engine | weights | tokens/s | s/step | peak RSS |"
echo "|---|---|---|---|---|---|---|"
for cfg in 15M 110M; do
  case $cfg in 15M) B=4 ;; 110M) B=2 ;; esac
  for method in $METHODS; do
    flag=""; [ $method = mezo ] && flag=--mezo
    j=$($PY "$S/bench/peer_lora_bench.py" --config $cfg --threads 2 --steps "$STEPS" $flag)
    tps=$(echo "$j" | sed -n 's/.*"tokens_per_s": \([0-9.]*\).*/\1/p')
    sps=$(echo "$j" | sed -n 's/.*"sec_per_step": \([0-9.]*\).*/\1/p')
    rss=$(echo "$j" | sed -n 's/.*"peak_rss_mib": \([0-9.]*\).*/\1/p')
    printf '| %s | %s | PyTorch 1.13 | F32 | %s | %s | %s MiB |\n' $cfg $method "$tps" "$sps" "$rss"
    for typ in f32 q4_0 nf4; do
      m="$O/$cfg-$typ.gguf"
      [ -f "$m" ] || go run ./internal/cmd/synthgen -preset $cfg -type $typ -out "$m" >/dev/null
      log=$(QTUNE_PEAK_FILE="$O/peak" $Q train --model "$m" --data "$S/assets/data/tinyshakespeare" --method $method \
        --rank 16 --alpha 32 --targets all --batch-size $B --max-seq-length 256 --pack --iters $((STEPS + 1)) \
        --steps-per-report 1 --steps-per-eval 0 --learning-rate 1e-4 --zo-learning-rate 1e-4 --epsilon 1e-3 \
        --cache-dir "$O/cache" --adapter-path "$O/ad" 2>&1 >/dev/null)
      stats=$(echo "$log" | sed -n 's/^Iter \([0-9]*\):.*It\/sec \([0-9.]*\), Tokens\/sec \([0-9.]*\).*/\1 \2 \3/p' |
        awk 'NR > 1 { n++; it += 1/$2; tok += $3 } END { if (n) printf "%.1f %.3f", tok/n, it/n }')
      printf '| %s | %s | qtune | %s | %s | %s | %s MiB |\n' $cfg $method "${typ^^}" ${stats:-"- -"} "$(mib "$(cat "$O/peak")")"
    done
  done
done
