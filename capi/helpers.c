// C helpers of the C ABI: the thread's last error and the calls into the
// app's callbacks (Go cannot call a C function pointer itself).
#include <stdlib.h>
#include "internal.h"

static __thread char *last_error;

__attribute__((visibility("hidden"))) void qtune_set_error(char *msg) {
	free(last_error);
	last_error = msg;
}

__attribute__((visibility("hidden"))) const char *qtune_get_error(void) { return last_error ? last_error : ""; }

__attribute__((visibility("hidden"))) void qtune_call_token(qtune_token_cb cb, void *user, int32_t token, const char *piece) { cb(user, token, piece); }

__attribute__((visibility("hidden"))) void qtune_call_log(qtune_log_cb cb, void *user, const char *line) { cb(user, line); }

__attribute__((visibility("hidden"))) void qtune_call_progress(qtune_progress_cb cb, void *user, int32_t iter, const char *kind, double loss, double lr,
                         double tps, int64_t trained, int64_t peak, const char *phase, int32_t micro, int32_t micros) {
	qtune_progress p = {iter, kind, loss, lr, tps, trained, peak, phase, micro, micros};
	cb(user, &p);
}
