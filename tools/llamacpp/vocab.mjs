// vocab.mjs: the real llama.cpp's tokenizer as a judge for qtune's tests.
//
// Reads one JSON request on stdin, writes one JSON response on stdout:
//
//   request  {"model": path, "texts": [string, ...]?, "special": bool?, "eog": bool?}
//   response {"tokens": [[ids] per text], "eog": [ids]?, "vocab": V}
//
// The model is loaded vocabulary-only (a vocab-only GGUF is enough).
// tokens[i] is llama_tokenize(text, add_special=false, parse_special=special):
// no BOS is added; with special, special-token text becomes its id.
// eog lists every id llama_vocab_is_eog holds true for, ascending: the
// end-of-generation set llama.cpp stops on. On error: one line on stderr,
// exit status 1.
import { openLlama, run } from "./common.mjs";

async function main(req) {
    const texts = req.texts ?? [];
    if (!Array.isArray(texts) || !texts.every((t) => typeof t === "string")) throw new Error("request: texts must be an array of strings");

    const llama = await openLlama();
    const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0, vocabOnly: true });
    const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
    if (!Number.isInteger(vocab)) throw new Error("model has no tokenizer.ggml.tokens");
    const res = { tokens: texts.map((t) => Array.from(model.tokenize(t, !!req.special))), vocab };
    if (req.eog) {
        res.eog = [];
        for (let id = 0; id < vocab; id++) if (model.isEogToken(id)) res.eog.push(id);
    }
    await model.dispose();
    await llama.dispose();
    return res;
}

run("vocab", main);
