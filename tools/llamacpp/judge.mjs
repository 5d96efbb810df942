// judge.mjs: the real llama.cpp as a judge for qtune's tests.
//
// Reads one JSON request on stdin, writes one JSON response on stdout:
//
//   request  {"model": path, "lora": path?, "loraScale": 1?, "ctx": 256?,
//             "prompts": [[id, ...], ...], "logits": bool, "generate": n}
//   response {"results": [{"logits": [[V floats] per position]?, "greedy": [n ids]}],
//             "vocab": V}
//
// Token ids go in exactly as given: no BOS is added and nothing is tokenized.
// logits[i] is llama.cpp's raw next-token logit vector after prompt[0..i]
// (one per position, straight from llama_get_logits_ith). greedy continues
// the prompt with argmax (temperature 0, no penalties, no other samplers).
// Every prompt runs in a fresh context, so no KV state leaks between them.
//
// Runs on the CPU only, one thread, F32 KV cache, no flash attention, fixed
// seed; it never builds or downloads anything (prebuilt binaries of the
// pinned node-llama-cpp). On error: one line on stderr, exit status 1.
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

function fail(msg) {
    process.stderr.write("judge: " + String(msg).replace(/\s+/g, " ").trim() + "\n");
    process.exit(1);
}

async function readStdin() {
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    return Buffer.concat(chunks).toString("utf8");
}

function checkRequest(req) {
    if (req == null || typeof req !== "object") throw new Error("request is not a JSON object");
    if (typeof req.model !== "string" || req.model === "") throw new Error("request: model path missing");
    if (req.lora != null && typeof req.lora !== "string") throw new Error("request: lora must be a path");
    if (req.loraScale != null && typeof req.loraScale !== "number") throw new Error("request: loraScale must be a number");
    if (!Array.isArray(req.prompts) || req.prompts.length === 0) throw new Error("request: prompts must be a non-empty array");
    for (const [i, p] of req.prompts.entries()) {
        if (!Array.isArray(p) || p.length === 0 || !p.every((t) => Number.isInteger(t) && t >= 0))
            throw new Error(`request: prompt ${i} must be a non-empty array of token ids`);
    }
    const gen = req.generate ?? 0;
    if (!Number.isInteger(gen) || gen < 0) throw new Error("request: generate must be a non-negative integer");
}

// greedyOpts asks the sampler for the argmax and nothing else: temperature 0
// selects llama.cpp's greedy sampler; penalties and biases stay unset.
const greedyOpts = { temperature: 0, seed: 0 };

// logitsArray turns node-llama-cpp's Map (token -> logit, sorted by value)
// back into a vector indexed by token id.
function logitsArray(map, vocab) {
    if (map == null || map.size !== vocab) throw new Error(`expected ${vocab} logits, got ${map?.size}`);
    const out = new Array(vocab);
    for (const [tok, v] of map) out[tok] = v;
    return out;
}

async function judgePrompt(model, ctxOpts, prompt, wantLogits, generate, vocab) {
    const context = await model.createContext(ctxOpts);
    try {
        const seq = context.getSequence();
        const last = prompt.length - 1;
        const input = prompt.map((tok, i) => {
            const next = {};
            if (wantLogits) next.logits = true;
            if (i === last && generate > 0) {
                next.token = true;
                next.options = greedyOpts;
            }
            return Object.keys(next).length === 0 ? tok : [tok, { generateNext: next }];
        });
        const out = await seq.controlledEvaluate(input);
        const res = { greedy: [] };
        if (wantLogits) res.logits = prompt.map((_, i) => logitsArray(out[i]?.next?.logits, vocab));
        if (generate > 0) {
            let tok = out[last]?.next?.token;
            for (;;) {
                if (tok == null) throw new Error("llama.cpp returned no token");
                res.greedy.push(tok);
                if (res.greedy.length === generate) break;
                const step = await seq.controlledEvaluate([[tok, { generateNext: { token: true, options: greedyOpts } }]]);
                tok = step[0]?.next?.token;
            }
        }
        return res;
    } finally {
        await context.dispose();
    }
}

async function main() {
    let req;
    try {
        req = JSON.parse(await readStdin());
    } catch (e) {
        throw new Error("request: " + e.message);
    }
    checkRequest(req);
    const n = req.ctx ?? 256;
    const longest = Math.max(...req.prompts.map((p) => p.length)) + (req.generate ?? 0);
    if (longest > n) throw new Error(`request: prompt plus generate is ${longest} tokens, ctx is ${n}`);

    const llama = await getLlama({
        gpu: false,
        build: "never",
        usePrebuiltBinaries: true,
        skipDownload: true,
        progressLogs: false,
        maxThreads: 1,
        logLevel: LlamaLogLevel.error,
        logger: () => {}, // llama.cpp's chatter would garble stderr's one-line contract
    });
    const model = await llama.loadModel({
        modelPath: req.model,
        gpuLayers: 0,
        defaultContextFlashAttention: false,
    });
    const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
    if (!Number.isInteger(vocab)) throw new Error("model has no tokenizer.ggml.tokens: vocabulary size unknown");
    for (const p of req.prompts) {
        for (const t of p) if (t >= vocab) throw new Error(`request: token id ${t} out of range (vocab ${vocab})`);
    }
    const ctxOpts = {
        contextSize: n,
        batchSize: n, // the whole prompt in one batch
        sequences: 1,
        threads: 1,
        flashAttention: false,
        experimentalKvCacheKeyType: "F32", // F16 keys and values would round before attention
        experimentalKvCacheValueType: "F32",
        failedCreationRemedy: false,
        ignoreMemorySafetyChecks: true,
    };
    if (req.lora != null) ctxOpts.lora = { adapters: [{ filePath: req.lora, scale: req.loraScale ?? 1 }] };

    const results = [];
    for (const p of req.prompts) results.push(await judgePrompt(model, ctxOpts, p, !!req.logits, req.generate ?? 0, vocab));
    process.stdout.write(JSON.stringify({ results, vocab }) + "\n");
    await model.dispose();
    await llama.dispose();
}

main().catch((e) => fail(e?.message ?? e));
