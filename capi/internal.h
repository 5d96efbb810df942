// The C ABI's own declarations: qtune.h's types (its prototypes are the
// exported Go functions, which cgo declares itself) and the helpers.
#ifndef QTUNE_INTERNAL_H
#define QTUNE_INTERNAL_H
#define QTUNE_NO_PROTOTYPES
#include "qtune.h"

// A handle as C holds it: a cgo.Handle to the Go value, in C memory.
struct qtune_model { uintptr_t h; };
struct qtune_session { uintptr_t h; };

__attribute__((visibility("hidden"))) void qtune_set_error(char *msg);
__attribute__((visibility("hidden"))) const char *qtune_get_error(void);
__attribute__((visibility("hidden"))) void qtune_call_token(qtune_token_cb cb, void *user, int32_t token, const char *piece);
__attribute__((visibility("hidden"))) void qtune_call_log(qtune_log_cb cb, void *user, const char *line);
__attribute__((visibility("hidden"))) void qtune_call_progress(qtune_progress_cb cb, void *user, int32_t iter, const char *kind, double loss, double lr,
                         double tps, int64_t trained, int64_t peak, const char *phase, int32_t micro, int32_t micros);
#endif
