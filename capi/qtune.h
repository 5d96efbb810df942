/*
 * qtune.h: the C ABI of libqtune, qtune's fine-tuning engine as a library
 * for apps (C, C++, Swift, Kotlin/JNI, Python ctypes, Rust, ...).
 *
 * Lifecycle
 *
 *   qtune_model *m;
 *   if (qtune_model_open("model.gguf", NULL, &m) != QTUNE_OK)
 *       fprintf(stderr, "%s\n", qtune_last_error());
 *   qtune_generate(m, "{\"prompt\":\"Once\",\"max_tokens\":32}", on_token, ud, NULL);
 *   qtune_model_apply_adapter(m, "adapters", NULL);   // then generate, evaluate
 *   qtune_evaluate(m, "{\"data\":\"valid.jsonl\"}", &result_json);
 *   qtune_model_remove_adapter(m);
 *   qtune_model_free(m);
 *
 *   qtune_session *s = qtune_session_new();
 *   qtune_train(s, config_json, on_progress, on_log, ud, &result_json);
 *   // from another thread, at any time: qtune_cancel(s);
 *   qtune_free_string(result_json);
 *   qtune_session_free(s);
 *
 * Conventions
 *
 * - Every call that can fail returns a qtune_status; QTUNE_OK is 0. The
 *   message of the last failure on the calling thread is qtune_last_error()
 *   (valid until the next failing call on that thread). No call panics
 *   across the boundary or exits the process.
 * - Options, configurations and results are JSON text (UTF-8). A
 *   configuration for qtune_train has the keys of `qtune train --config`
 *   (model, data, method, iters, batch_size, max_mem, adapter_path, ...).
 * - Strings that the library returns through a char ** are the caller's to
 *   release with qtune_free_string. Strings passed to callbacks are valid
 *   during the callback only. The library keeps no pointer given to it past
 *   the call that received it, except the `user` pointer, handed back to
 *   the callbacks of that call.
 * - Handles are opaque; each *_free takes NULL and does nothing.
 * - Structs passed to callbacks may grow fields at their end within an ABI
 *   version; read only the fields your header declares.
 *
 * Threads
 *
 * - qtune_version, qtune_abi_version, qtune_last_error, qtune_free_string,
 *   qtune_session_new/free, qtune_cancel and qtune_plan may be called from
 *   any thread.
 * - A qtune_model may be used by one thread at a time (calls on it are not
 *   synchronised); open one per thread to generate concurrently.
 * - A qtune_session runs one qtune_train at a time; qtune_cancel on it from
 *   another thread stops the run at its next micro-batch, after saving a
 *   state that `"resume": true` continues from.
 * - Callbacks run on the thread that made the call.
 *
 * Memory
 *
 * `max_mem` in a configuration or in generation options is a budget for
 * what qtune allocates and maps (its slabs, its heap share, the model's
 * pages it touches), not for the host process: size it as the memory you
 * can give qtune beside your app's own. The library limits the Go heap
 * while a call runs and restores the previous limit afterwards.
 *
 * One process can hold only one Go runtime: link one Go-built library
 * (libqtune or another c-shared Go library) into a process, not two.
 */
#ifndef QTUNE_H
#define QTUNE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes; qtune_abi_version() returns the
 * library's. A library with another value is not compatible. */
#define QTUNE_ABI_VERSION 1

typedef enum qtune_status {
    QTUNE_OK = 0,
    QTUNE_ERR = 1,             /* any other failure (see qtune_last_error) */
    QTUNE_ERR_ARGS = 2,        /* bad arguments or options (NULL handle, bad JSON, out of range) */
    QTUNE_ERR_FILE = 3,        /* a model, adapter, data or state file is damaged or not readable */
    QTUNE_ERR_UNSUPPORTED = 4, /* a model family or type qtune does not handle */
    QTUNE_ERR_BUDGET = 5,      /* the run does not fit max_mem (the message names one that does) */
    QTUNE_ERR_CANCELLED = 6    /* qtune_cancel stopped the call */
} qtune_status;

typedef struct qtune_model qtune_model;
typedef struct qtune_session qtune_session;

/* One report of a running training. kind is
 *   "phase"       a phase begins: phase is "converting base" (a float base
 *                 quantized to NF4 once, for qlora), "tokenizing",
 *                 "training", "validating" or "saving";
 *   "micro-batch" a micro-batch (one forward pass) of iteration iter
 *                 begins: micro_batch of micro_batches; a qtune_cancel is
 *                 seen at the next one;
 *   "train"       an optimizer step's report (every steps_per_report):
 *                 loss, learning_rate, tokens_per_s, trained_tokens,
 *                 peak_mem;
 *   "val"         a validation loss.
 * Fields that do not belong to the kind are 0. */
typedef struct qtune_progress {
    int32_t iter;
    const char *kind;
    double loss;
    double learning_rate;
    double tokens_per_s;
    int64_t trained_tokens;
    int64_t peak_mem;     /* bytes: the process's peak resident set */
    const char *phase;    /* the phase the report belongs to */
    int32_t micro_batch;  /* "micro-batch": 1-based */
    int32_t micro_batches;
} qtune_progress;

typedef void (*qtune_progress_cb)(void *user, const qtune_progress *p);
typedef void (*qtune_log_cb)(void *user, const char *line);
typedef void (*qtune_token_cb)(void *user, int32_t token, const char *piece);

#ifndef QTUNE_NO_PROTOTYPES

/* The library's ABI version (QTUNE_ABI_VERSION of the header it was built
 * with) and its version text ("qtune 0.x"; static storage). */
int qtune_abi_version(void);
const char *qtune_version(void);

/* The message of the last failure on this thread ("" if none). */
const char *qtune_last_error(void);

/* Releases a string the library returned. */
void qtune_free_string(char *s);

/* Opens a model (GGUF file, Hugging Face folder, llama2.c file). The
 * model's weights stay in the file (mapped), not read whole.
 * options_json may be NULL, or {"tokenizer": "tok.bin" (llama2.c),
 * "adapter": "folder or file" (applied), "max_mem": "512MiB" (the budget
 * the adapter is read under)}. */
qtune_status qtune_model_open(const char *path, const char *options_json, qtune_model **out);
void qtune_model_free(qtune_model *m);

/* Generates from a prompt: options_json {"prompt": "...", "max_tokens": 128,
 * "temp": 0.8 (0: greedy), "top_p": 0.9, "seed": 0 (0: from the clock),
 * "ignore_eos": false, "max_mem": "256MiB", "chat": false (render with the
 * model's chat template: "messages": [{"role","content"}], then "prompt"
 * as a user turn), "chat_template": "file.jinja", "chat_template_kwargs":
 * {...}, "model_path": "where the model was opened from", "device": "cpu"
 * (or "cuda", "cuda:N", "auto": the GPU, the KV cache there too),
 * "max_vram": "2GiB", "gpu_precision": "bf16" or "f32"}.
 * on_token (may be NULL) is called with each token as it is made. When
 * out_json is not NULL it receives {"prompt_tokens": [...], "tokens":
 * [...], "text": "..."}. */
qtune_status qtune_generate(qtune_model *m, const char *options_json, qtune_token_cb on_token, void *user, char **out_json);

/* A session runs trainings and can cancel them. */
qtune_session *qtune_session_new(void);
void qtune_session_free(qtune_session *s);

/* Stops the training running on s (or the next one, if none runs yet) at
 * its next micro-batch; it saves a resumable state and returns
 * QTUNE_ERR_CANCELLED. Returns QTUNE_ERR_ARGS for a NULL session. */
qtune_status qtune_cancel(qtune_session *s);

/* Trains as `qtune train --config` would with config_json. on_progress and
 * on_log may be NULL. "cache_dir" is where token caches, a base converted
 * to NF4 and scratch files go; without it, a folder under the system's
 * temporary folder (the library writes nothing under the user's home
 * unless asked; the qtune command uses the user's cache folder). When out_json is not NULL it receives the result:
 * {"iters", "first_val_loss", "final_val_loss", "trainable", "adapter_path",
 * "plan"} (plan: the memory plan as text). */
qtune_status qtune_train(qtune_session *s, const char *config_json, qtune_progress_cb on_progress, qtune_log_cb on_log,
                         void *user, char **out_json);

/* The memory plan of a training (config_json as for qtune_train), made
 * without training: *out_json receives {"fits": true|false, "error": "..."
 * (when it does not fit: the message names a budget that does), "plan":
 * {"job", "budget", "peak", "margin", "micro_batch", "accum", "checkpoint",
 * "stream", "optimizer_on_disk", "spill_activations", "heap_limit",
 * "placement": ["host"|"disk", ...], "strategy": [...], "items":
 * [{"category", "bytes", "note", "off_heap"}, ...]}, "text": "the plan as
 * `qtune plan` prints it"}. A plan that does not fit is QTUNE_OK with
 * "fits": false; a configuration that cannot be planned is an error.
 * Thread-safe (opens its own model). */
qtune_status qtune_plan(const char *config_json, char **out_json);

/* Evaluates m on a data file: options_json {"data": "file", "limit": 0
 * (first N records; 0: all), "max_seq_length": 0 (0: the model's context,
 * at most 1024), "max_mem": "256MiB", "plan_only": false, "device",
 * "max_vram", "gpu_precision" as qtune_generate's}. *out_json:
 * {"kind": "text"|"prompt/completion", "loss", "ppl", "tokens"}
 * or, for classification data, {"kind", "accuracy", "n"}; with plan_only
 * {"plan": {...}} (as qtune_plan's). A malformed data file is
 * QTUNE_ERR_FILE with the file and line in the message. */
qtune_status qtune_evaluate(qtune_model *m, const char *options_json, char **out_json);

/* Applies an adapter to m (a PEFT folder, a GGUF adapter file or folder, or
 * a qtune output folder of any method), replacing one applied before.
 * options_json may be NULL or {"max_mem": "256MiB"} (the budget it is read
 * under). On failure m is left without an adapter. */
qtune_status qtune_model_apply_adapter(qtune_model *m, const char *path, const char *options_json);

/* Removes the adapter applied to m (the base model again; none: no-op). */
qtune_status qtune_model_remove_adapter(qtune_model *m);

/* Exports an adapter for m's base: options_json {"adapter": "folder",
 * "out": "folder or file.gguf", "merge": false, "type": "f16" (merged
 * matrices: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k, nf4), "model_path":
 * "where the base was opened from" (recorded in PEFT's config)}. Without
 * merge: PEFT and llama.cpp GGUF adapters in the folder out; with merge:
 * a whole GGUF model. *out_json: {"out", "matrices", "merged",
 * "tensors", "bytes"}. m must have no adapter applied. */
qtune_status qtune_export(qtune_model *m, const char *options_json, char **out_json);

#endif /* QTUNE_NO_PROTOTYPES */

#ifdef __cplusplus
}
#endif

#endif /* QTUNE_H */
