/* train_generate: a C host of libqtune. It trains LoRA adapters on a
 * model, cancels the run at an iteration from its progress callback,
 * resumes it to the end, then generates with the adapters, streaming the
 * tokens.
 *
 *   cc -I capi examples/c/train_generate.c -L out -lqtune -o train_generate
 *   LD_LIBRARY_PATH=out ./train_generate MODEL DATA WORKDIR [CANCEL_AT]
 *
 * Output lines (for tests): "phase NAME", "progress ITER KIND LOSS",
 * "cancelled", "micro-batches N", "result JSON", "generated JSON".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtune.h"

struct run {
    qtune_session *session;
    int cancel_at;
    int micro_batches;
};

static void on_progress(void *user, const qtune_progress *p) {
    struct run *r = user;
    if (strcmp(p->kind, "phase") == 0) { /* converting base, tokenizing, training, validating, saving */
        printf("phase %s\n", p->phase);
        return;
    }
    if (strcmp(p->kind, "micro-batch") == 0) { /* every forward pass: a progress bar would move */
        r->micro_batches++;
        return;
    }
    printf("progress %d %s %.6f\n", p->iter, p->kind, p->loss);
    fflush(stdout);
    if (r->cancel_at > 0 && p->iter == r->cancel_at && strcmp(p->kind, "train") == 0)
        qtune_cancel(r->session); /* stops at the next micro-batch, state saved */
}

static void on_log(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "log: %s\n", line);
}

static void on_token(void *user, int32_t token, const char *piece) {
    (void)token;
    fputs(piece, (FILE *)user);
}

static int fail(const char *what, qtune_status st) {
    fprintf(stderr, "%s: status %d: %s\n", what, st, qtune_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL DATA WORKDIR [CANCEL_AT]\n", argv[0]);
        return 2;
    }
    if (qtune_abi_version() != QTUNE_ABI_VERSION) {
        fprintf(stderr, "libqtune ABI %d, header %d\n", qtune_abi_version(), QTUNE_ABI_VERSION);
        return 1;
    }
    const char *model = argv[1], *data = argv[2], *work = argv[3];
    struct run r = {qtune_session_new(), argc > 4 ? atoi(argv[4]) : 0, 0};

    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "{\"model\": \"%s\", \"data\": \"%s\", \"method\": \"lora\", \"iters\": 6, \"batch_size\": 2,"
             " \"max_seq_length\": 48, \"learning_rate\": 0.005, \"rank\": 4, \"alpha\": 8, \"seed\": 7,"
             " \"steps_per_report\": 1, \"steps_per_eval\": 100, \"save_every\": 100, \"max_mem\": \"64MiB\","
             " \"adapter_path\": \"%s/adapters\", \"cache_dir\": \"%s/cache\"%s}",
             model, data, work, work, "%s");
    char first[4200], again[4200];
    snprintf(first, sizeof first, cfg, "");
    snprintf(again, sizeof again, cfg, ", \"resume\": true");

    char *result = NULL;
    qtune_status st = qtune_train(r.session, first, on_progress, on_log, &r, &result);
    if (st == QTUNE_ERR_CANCELLED) {
        printf("cancelled\n");
        r.cancel_at = 0;
        st = qtune_train(r.session, again, on_progress, on_log, &r, &result);
    }
    if (st != QTUNE_OK)
        return fail("qtune_train", st);
    printf("micro-batches %d\n", r.micro_batches);
    printf("result %s\n", result);
    qtune_free_string(result);
    qtune_session_free(r.session);

    char opts[4200];
    snprintf(opts, sizeof opts, "{\"adapter\": \"%s/adapters\", \"max_mem\": \"64MiB\"}", work);
    qtune_model *m = NULL;
    if ((st = qtune_model_open(model, opts, &m)) != QTUNE_OK)
        return fail("qtune_model_open", st);
    char *gen = NULL;
    st = qtune_generate(m, "{\"prompt\": \"Once upon a time\", \"max_tokens\": 24, \"temp\": 0, \"max_mem\": \"64MiB\"}",
                        on_token, stderr, &gen);
    if (st != QTUNE_OK)
        return fail("qtune_generate", st);
    fputc('\n', stderr);
    printf("generated %s\n", gen);
    qtune_free_string(gen);
    qtune_model_free(m);

    /* errors are statuses and messages, never a crash */
    qtune_model *bad = NULL;
    st = qtune_model_open("/nonexistent/model.gguf", NULL, &bad);
    printf("missing model: status %d: %s\n", st, qtune_last_error());
    return st == QTUNE_ERR_FILE && bad == NULL ? 0 : 1;
}
