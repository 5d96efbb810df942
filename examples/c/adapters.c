/* adapters: a C host of libqtune working with a trained adapter. It plans
 * a training without running it, applies the adapter to a model and
 * evaluates with and without it, and exports it for other tools (PEFT and
 * llama.cpp GGUF).
 *
 *   cc -I capi examples/c/adapters.c -L out -lqtune -o adapters
 *   LD_LIBRARY_PATH=out ./adapters MODEL DATA_FOLDER ADAPTER_FOLDER EXPORT_FOLDER [BAD_JSONL]
 *
 * Output lines (for tests): "plan JSON", "tight-plan JSON", "eval-adapter
 * JSON", "eval-base JSON", "export JSON", "bad-device STATUS MESSAGE",
 * "bad-data STATUS MESSAGE".
 */
#include <stdio.h>
#include <stdlib.h>

#include "qtune.h"

static int fail(const char *what, qtune_status st) {
    fprintf(stderr, "%s: status %d: %s\n", what, st, qtune_last_error());
    return 1;
}

/* prints "label JSON" and releases the JSON */
static void show(const char *label, char *json) {
    printf("%s %s\n", label, json);
    qtune_free_string(json);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL DATA_FOLDER ADAPTER_FOLDER EXPORT_FOLDER [BAD_JSONL]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *data = argv[2], *adapter = argv[3], *exported = argv[4];
    char buf[4096];
    char *out = NULL;
    qtune_status st;

    /* The memory plan of a training, at a comfortable and a tight budget. */
    const char *cfg = "{\"model\": \"%s\", \"data\": \"%s\", \"method\": \"lora\", \"batch_size\": 2,"
                      " \"max_seq_length\": 48, \"rank\": 4, \"max_mem\": \"%s\"}";
    snprintf(buf, sizeof buf, cfg, model, data, "64MiB");
    if ((st = qtune_plan(buf, &out)) != QTUNE_OK)
        return fail("qtune_plan", st);
    show("plan", out);
    snprintf(buf, sizeof buf, cfg, model, data, "3MiB");
    if ((st = qtune_plan(buf, &out)) != QTUNE_OK)
        return fail("qtune_plan (tight)", st);
    show("tight-plan", out);

    qtune_model *m = NULL;
    if ((st = qtune_model_open(model, NULL, &m)) != QTUNE_OK)
        return fail("qtune_model_open", st);

    /* Evaluation with the adapter, then without it. */
    char eval[4200];
    snprintf(eval, sizeof eval, "{\"data\": \"%s/valid.jsonl\", \"limit\": 5, \"max_mem\": \"64MiB\"}", data);
    if ((st = qtune_model_apply_adapter(m, adapter, "{\"max_mem\": \"64MiB\"}")) != QTUNE_OK)
        return fail("qtune_model_apply_adapter", st);
    if ((st = qtune_evaluate(m, eval, &out)) != QTUNE_OK)
        return fail("qtune_evaluate", st);
    show("eval-adapter", out);
    if ((st = qtune_model_remove_adapter(m)) != QTUNE_OK)
        return fail("qtune_model_remove_adapter", st);
    if ((st = qtune_evaluate(m, eval, &out)) != QTUNE_OK)
        return fail("qtune_evaluate", st);
    show("eval-base", out);

    /* Export: PEFT + GGUF adapters for other tools. */
    snprintf(buf, sizeof buf, "{\"adapter\": \"%s\", \"out\": \"%s\"}", adapter, exported);
    if ((st = qtune_export(m, buf, &out)) != QTUNE_OK)
        return fail("qtune_export", st);
    show("export", out);

    /* A device that does not exist: a usage status before any work. */
    st = qtune_evaluate(m, "{\"data\": \"x\", \"device\": \"tpu\"}", &out);
    printf("bad-device %d %s\n", st, qtune_last_error());

    /* Bad data: a status and a message naming the file and line. */
    if (argc > 5) {
        snprintf(buf, sizeof buf, "{\"data\": \"%s\"}", argv[5]);
        st = qtune_evaluate(m, buf, &out);
        printf("bad-data %d %s\n", st, qtune_last_error());
    }
    qtune_model_free(m);
    return 0;
}
