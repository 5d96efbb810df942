// render.mjs: Hugging Face's own Jinja renderer (@huggingface/jinja, the
// one transformers.js and the Hub use for chat templates) as a judge for
// qtune's tests.
//
// Reads one JSON request on stdin, writes one JSON response on stdout:
//
//   request  {"templates": {name: source, ...},
//             "renders": [{"template": name, "context": {...}}, ...]}
//   response {"results": [{"output": string} | {"error": string}, ...]}
//
// Each template is parsed once (as `new Template(source)`, which turns on
// trim_blocks and lstrip_blocks as transformers does) and rendered with each
// context exactly as given: no globals beyond the package's own
// (raise_exception, strftime_now, range, true/false/none). A template that
// fails to parse or render gives {"error": message} for each of its renders;
// results come back in the order of "renders". Anything else wrong (bad
// request): one line on stderr, exit status 1.
import { Template } from "@huggingface/jinja";

function fail(msg) {
    process.stderr.write("hfjinja: " + String(msg).replace(/\s+/g, " ").trim() + "\n");
    process.exit(1);
}

async function readStdin() {
    const chunks = [];
    for await (const c of process.stdin) chunks.push(c);
    return Buffer.concat(chunks).toString("utf8");
}

function message(e) {
    return String(e && e.message !== undefined ? e.message : e);
}

async function main() {
    let req;
    try {
        req = JSON.parse(await readStdin());
    } catch (e) {
        fail("request: " + message(e));
    }
    if (req == null || typeof req !== "object" || typeof req.templates !== "object" || !Array.isArray(req.renders)) {
        fail("request needs {templates: {...}, renders: [...]}");
    }
    const parsed = new Map();
    for (const [name, src] of Object.entries(req.templates)) {
        if (typeof src !== "string") fail(`template ${name}: source is not a string`);
        try {
            parsed.set(name, { tmpl: new Template(src) });
        } catch (e) {
            parsed.set(name, { err: "parse: " + message(e) });
        }
    }
    const results = [];
    for (const r of req.renders) {
        const p = parsed.get(r.template);
        if (p === undefined) fail(`render names unknown template ${JSON.stringify(r.template)}`);
        if (p.err !== undefined) {
            results.push({ error: p.err });
            continue;
        }
        try {
            results.push({ output: p.tmpl.render(r.context ?? {}) });
        } catch (e) {
            results.push({ error: message(e) });
        }
    }
    process.stdout.write(JSON.stringify({ results }));
}

main().catch((e) => fail(message(e)));
