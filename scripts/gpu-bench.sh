#!/bin/sh
# GPU training throughput: qtune train --device cuda on synthetic 15M, 110M
# and 1B Llama models (Q4_0 and NF4 bases, LoRA rank 16 on every linear
# layer of every block, AdamW), beside PyTorch+PEFT (bf16 base) on the
# same shapes and batch, in the same run; then a 1B run under
# --max-vram 2GiB; then generation on the GPU and the CPU. Prints markdown
# tables. Needs bin/qtune and
# bin/synthgen (make gpu-binaries) and a data folder in $DATA.
set -u
Q=${QTUNE:-out/gpu/qtune}
G=${SYNTHGEN:-out/gpu/synthgen}
DIR=${DIR:-/tmp/qtune-gpu-bench}
DATA=${DATA:?a data folder (train.jsonl)}
B=${B:-4}
T=${T:-256}
ITERS=${ITERS:-8}
DEV=${DEV:-cuda}
SPECS=${SPECS-15M:q4_0 110M:q4_0 110M:nf4 1B:q4_0 1B:nf4}
GSPECS=${GSPECS-110M:q4_0 1B:q4_0 1B:nf4} # generation's models
GEN_N=${GEN_N:-128}
VRAM_RUNS=${VRAM_RUNS:-1} # 0 skips the runs under --max-vram
mkdir -p "$DIR"
[ -n "$SPECS" ] && echo "| shape | base | tool | batch | tokens/s | GPU memory at peak (beyond the CUDA context) |" && echo "|---|---|---|---|---|---|"
for spec in $SPECS; do
  p=${spec%%:*}; t=${spec##*:}
  M=$DIR/$p-$t.gguf
  [ -f "$M" ] || "$G" -preset "$p" -type "$t" -out "$M" >/dev/null 2>&1
  log=$("$Q" train --model "$M" --data "$DATA" --device "$DEV" --iters "$ITERS" --batch-size "$B" --max-seq-length "$T" --pack \
    --rank 16 --alpha 32 --num-layers -1 --learning-rate 1e-4 --steps-per-eval 0 --steps-per-report 1 --save-every 0 \
    --adapter-path "$DIR/ad-$p-$t" 2>&1)
  # the mean of the reports after the first two (compile and warm-up)
  tps=$(echo "$log" | sed -n 's/.*Tokens\/sec \([0-9.]*\).*/\1/p' | tail -n +3 | awk '{s+=$1; n++} END {if (n) printf "%.0f", s/n; else print "failed"}')
  peak=$(echo "$log" | sed -n 's/.*GPU memory: peak \([0-9.]* MiB\) allocated, \([0-9.]* MiB\) in use.*/\1 own allocations, \2 by the driver/p' | tail -1)
  [ "$tps" = failed ] && echo "$log" | tail -3 >&2
  echo "| $p | $t | qtune | ${B}x$T | $tps | ${peak:-–} |"
  if [ "$t" = q4_0 ] && command -v python3 >/dev/null; then
    j=$(python3 scripts/gpu_peer_lora.py --shape "$p" --batch "$B" --seq "$T" 2>/dev/null | tail -1)
    ptps=$(echo "$j" | sed -n 's/.*"tokens_per_s": \([0-9.]*\).*/\1/p')
    ppeak=$(echo "$j" | sed -n 's/.*"peak_gib": \([0-9.]*\).*/\1/p')
    echo "| $p | bf16 | PyTorch+PEFT | ${B}x$T | ${ptps:-failed} | ${ppeak:-–} GiB (max_memory_allocated) |"
  fi
done
# 1B under device budgets, one sequence of 256: 2 GiB holds every block;
# below, the first blocks stay and the others stream from host memory
# through two slots (after the warm-up step measures what the driver
# holds besides, the run is planned again with it); 1.2 GiB is refused.
M=$DIR/1B-nf4.gguf
[ "$VRAM_RUNS" = 1 ] && { [ -f "$M" ] || "$G" -preset 1B -type nf4 -out "$M" >/dev/null 2>&1; }
[ "$VRAM_RUNS" = 1 ] && for v in 2GiB 1.6GiB 1.4GiB 1.2GiB; do
  log=$("$Q" train --model "$M" --data "$DATA" --device cuda --max-vram "$v" --iters 6 --batch-size 1 --max-seq-length 256 --pack \
    --rank 16 --alpha 32 --num-layers -1 --steps-per-eval 0 --steps-per-report 1 --save-every 0 --adapter-path "$DIR/ad-vram" 2>&1)
  tps=$(echo "$log" | sed -n 's/.*Tokens\/sec \([0-9.]*\).*/\1/p' | tail -n +3 | awk '{s+=$1; n++} END {if (n) printf "%.0f", s/n}')
  echo
  echo "1B NF4 under --max-vram $v: ${tps:-no} tokens/s (iterations 3-6)"
  echo "$log" | grep -E "GPU memory|device:|planned again|qtune train" | sed 's/^[0-9:]* INF //'
done
# Host memory of a GPU run under --max-mem (1B NF4, blocks streamed under
# --max-vram 1.4GiB): the host plan, the CUDA driver's measured share, and
# the process's peak resident set (VmHWM) against the budget.
[ "$VRAM_RUNS" = 1 ] && for mm in 2GiB 1GiB; do
  pf=$DIR/peak-$mm; rm -f "$pf"
  log=$(QTUNE_PEAK_FILE=$pf "$Q" train --model "$M" --data "$DATA" --device cuda --max-vram 1.4GiB --max-mem "$mm" --iters 4 --batch-size 1 --max-seq-length 256 --pack \
    --rank 16 --alpha 32 --num-layers -1 --steps-per-eval 0 --steps-per-report 1 --save-every 0 --adapter-path "$DIR/ad-mem" 2>&1)
  echo
  echo "1B NF4 on the GPU under --max-mem $mm: peak resident set $(awk '{printf "%.1f MiB", $1/1048576}' "$pf" 2>/dev/null)"
  echo "$log" | grep -E "memory plan:|host memory:|qtune train" | sed 's/^[0-9:]* INF //'
done
# Generation on the GPU (the KV cache there; greedy, 128 tokens after a
# short prompt): tokens/s from qtune's log line, and the same on the CPU
# of that machine for scale.
echo
echo "| shape | base | device | generation tokens/s ($GEN_N tokens) |"
echo "|---|---|---|---|"
for spec in $GSPECS; do
  p=${spec%%:*}; t=${spec##*:}
  M=$DIR/$p-$t.gguf
  [ -f "$M" ] || "$G" -preset "$p" -type "$t" -out "$M" >/dev/null 2>&1
  for dev in cuda cpu; do
    log=$("$Q" generate --model "$M" --prompt "Once upon a time" -n "$GEN_N" --temp 0 --ignore-eos --device "$dev" 2>&1 >/dev/null)
    gtps=$(echo "$log" | sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' | tail -1)
    [ -z "$gtps" ] && echo "$log" | tail -2 >&2
    echo "| $p | $t | $dev | ${gtps:-failed} |"
  done
done
# After a long prompt (about 1,500 tokens cached): each token's attention
# splits its keys across blocks (cuda.AttentionDecode).
M=$DIR/1B-q4_0.gguf
if [ -f "$M" ]; then
  LONG=$(for i in $(seq 60); do printf 'Once upon a time '; done)
  log=$("$Q" generate --model "$M" --prompt "$LONG" -n "$GEN_N" --temp 0 --ignore-eos --device cuda 2>&1 >/dev/null)
  gtps=$(echo "$log" | sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p' | tail -1)
  echo "| 1B, after a 1,500-token prompt | q4_0 | cuda | ${gtps:-failed} |"
fi
