// chatprompt.mjs: llama.cpp's chat prompt, as its server builds one, as a
// judge for qtune's tests.
//
// Reads one JSON request on stdin, writes one JSON response on stdout:
//
//   request  {"model": path, "conversations": [[{"role", "content"}, ...], ...],
//             "thinking": bool?}
//   response {"tokens": [[ids] per conversation], "texts": [string ...]}
//
// For each conversation, as llama.cpp's server does (common/chat.cpp,
// common_chat_template_direct_apply_impl): the GGUF's own
// tokenizer.chat_template is rendered with messages, bos_token and
// eos_token (the texts of the model's BOS and EOS ids), enable_thinking
// when thinking is given (the server always passes it, true by default) and
// add_generation_prompt; a leading BOS
// text is dropped when the model adds BOS; the text is tokenized by
// llama.cpp with parse_special, after the model's BOS when it asks for one.
// The renderer is Hugging Face's @huggingface/jinja (the one node-llama-cpp
// renders chat templates with). The model is loaded vocabulary-only. The
// server's rewrite of a system turn for templates without one is not done
// here. On error: one line on stderr, exit status 1.
import { Template } from "@huggingface/jinja";
import { openLlama, run } from "./common.mjs";

async function main(req) {
    const convs = req.conversations ?? [];
    if (!Array.isArray(convs)) throw new Error("request: conversations must be an array");

    const llama = await openLlama();
    const model = await llama.loadModel({ modelPath: req.model, gpuLayers: 0, vocabOnly: true });
    const source = model.fileInfo.metadata?.tokenizer?.chat_template;
    if (typeof source !== "string" || source === "") throw new Error("model has no tokenizer.chat_template");
    const template = new Template(source);
    const bos = model.tokens.bosString ?? "";
    const eos = model.tokens.eosString ?? "";
    const addBos = model.tokens.shouldPrependBosToken && model.tokens.bos != null;
    const res = { tokens: [], texts: [] };
    for (const messages of convs) {
        if (!Array.isArray(messages)) throw new Error("request: a conversation is not an array");
        let text = template.render({
            messages,
            bos_token: bos,
            eos_token: eos,
            ...(req.thinking == null ? {} : { enable_thinking: !!req.thinking }),
            add_generation_prompt: true,
        });
        const ids = [];
        if (addBos) {
            ids.push(model.tokens.bos);
            if (bos !== "" && text.startsWith(bos)) text = text.slice(bos.length);
        }
        ids.push(...model.tokenize(text, true));
        res.tokens.push(ids);
        res.texts.push(text);
    }
    await model.dispose();
    await llama.dispose();
    return res;
}

run("chatprompt", main);
