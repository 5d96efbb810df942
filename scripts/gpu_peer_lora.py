"""PyTorch + PEFT on the GPU: the peer of `make test-gpu`'s training table.

A Llama of the given shape with random weights (transformers'
LlamaForCausalLM, bf16, its default attention), the base frozen, PEFT LoRA
rank 16 (alpha 32) on every linear layer of every block, AdamW, random
tokens, causal LM loss. Prints one JSON line per shape: tokens/s and peak
GPU memory (torch.cuda.max_memory_allocated)."""
import argparse, json, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model

SHAPES = {  # internal/synth's presets
    "15M": dict(dim=288, hidden=768, layers=6, heads=6, kv=6),
    "110M": dict(dim=768, hidden=2048, layers=12, heads=12, kv=12),
    "1B": dict(dim=2048, hidden=8192, layers=16, heads=32, kv=8),
}

ap = argparse.ArgumentParser()
ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--steps", type=int, default=10)
a = ap.parse_args()
s = SHAPES[a.shape]
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=s["dim"], intermediate_size=s["hidden"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["heads"], num_key_value_heads=s["kv"], vocab_size=32000,
                  max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)
with torch.device("cuda"):  # initialised on the GPU: minutes less for 1B
    model = LlamaForCausalLM(cfg).to(dtype=torch.bfloat16)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
gen = torch.Generator(device="cuda").manual_seed(1)

def step():
    tok = torch.randint(0, 32000, (a.batch, a.seq), device="cuda", generator=gen)
    loss = model(input_ids=tok, labels=tok).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

for _ in range(2):
    step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
torch.cuda.synchronize()
dt = (time.perf_counter() - t0) / a.steps
print(json.dumps({"shape": a.shape, "batch": a.batch, "seq": a.seq, "tokens_per_s": round(a.batch * a.seq / dt, 1),
                  "sec_per_step": round(dt, 4), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                  "torch": torch.__version__}))
