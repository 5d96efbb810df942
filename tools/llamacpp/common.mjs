// common.mjs: what the judge scripts share: one JSON request on stdin, one
// line of error on stderr, and llama.cpp opened on the CPU from the pinned
// prebuilt binaries (never built or downloaded).
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

// run calls main with the request read from stdin and writes its answer as
// one JSON line; any error becomes "name: message" on stderr and exit 1.
export function run(name, main) {
    (async () => {
        const chunks = [];
        for await (const c of process.stdin) chunks.push(c);
        let req;
        try {
            req = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch (e) {
            throw new Error("request: " + e.message);
        }
        if (req == null || typeof req !== "object") throw new Error("request is not a JSON object");
        if (typeof req.model !== "string" || req.model === "") throw new Error("request: model path missing");
        process.stdout.write(JSON.stringify(await main(req)) + "\n");
    })().catch((e) => {
        process.stderr.write(name + ": " + String(e?.message ?? e).replace(/\s+/g, " ").trim() + "\n");
        process.exit(1);
    });
}

// openLlama loads llama.cpp for the CPU, one thread, quiet.
export function openLlama() {
    return getLlama({
        gpu: false,
        build: "never",
        usePrebuiltBinaries: true,
        skipDownload: true,
        progressLogs: false,
        maxThreads: 1,
        logLevel: LlamaLogLevel.error,
        logger: () => {},
    });
}
