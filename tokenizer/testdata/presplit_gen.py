# Generates presplit.json for TestPreSplitRegex with the regex module (PCRE-like
# \p{..} classes and lookahead). Test-data generator only; run: python3 presplit_gen.py
import regex, random, json
pats = {
 "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
 "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
 "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
alpha = list("aAsStTrReEvVlLmMdD'   \n\r\t0123,.!?-_\"") + ["\u00a0","\u2028","\u3000","½","Ä","é","日","本","🦙","\u200d","\u0301","٣","Ⅻ","\u2581","\x0b","\x0c","\x85", "\ufffd"]
random.seed(1)
cases = []
for i in range(800):
    n = random.randint(1, 14)
    s = "".join(random.choice(alpha) for _ in range(n))
    cases.append(s)
out = {"cases": []}
for s in cases:
    d = {"text": s}
    for k, p in pats.items():
        d[k] = regex.findall(p, s)
        assert "".join(d[k]) == s, (k, s)
    # smollm: \p{N} isolated, then gpt2 on the rest
    parts = []
    for m in regex.split(r"(\p{N})", s):
        if m == "": continue
        if regex.fullmatch(r"\p{N}", m): parts.append(m)
        else: parts += regex.findall(pats["gpt2"], m)
    d["smollm"] = parts
    out["cases"].append(d)
json.dump(out, open("presplit.json","w"), ensure_ascii=False)
print(len(cases))
