"""A Python host of libqtune through ctypes (the standard library only),
written from capi/qtune.h: train LoRA adapters for four iterations with a
progress callback, cancel the run from it at iteration 2 and resume it,
open the model with the adapters, generate greedily with a token
callback, and show an error as a status and a message.

    python3 examples/python/qtune_ctypes.py out/libqtune.so MODEL DATA WORKDIR

The last line printed is a JSON summary (the tests read it).
"""
import ctypes as C
import json
import sys

QTUNE_OK, QTUNE_ERR_FILE, QTUNE_ERR_CANCELLED = 0, 3, 6


class Progress(C.Structure):
    _fields_ = [("iter", C.c_int32), ("kind", C.c_char_p), ("loss", C.c_double), ("learning_rate", C.c_double),
                ("tokens_per_s", C.c_double), ("trained_tokens", C.c_int64), ("peak_mem", C.c_int64),
                ("phase", C.c_char_p), ("micro_batch", C.c_int32), ("micro_batches", C.c_int32)]


PROGRESS_CB = C.CFUNCTYPE(None, C.c_void_p, C.POINTER(Progress))
LOG_CB = C.CFUNCTYPE(None, C.c_void_p, C.c_char_p)
TOKEN_CB = C.CFUNCTYPE(None, C.c_void_p, C.c_int32, C.c_char_p)


def load(path):
    lib = C.CDLL(path)
    lib.qtune_abi_version.restype = C.c_int
    lib.qtune_version.restype = C.c_char_p
    lib.qtune_last_error.restype = C.c_char_p
    lib.qtune_free_string.argtypes = [C.c_void_p]
    lib.qtune_model_open.argtypes = [C.c_char_p, C.c_char_p, C.POINTER(C.c_void_p)]
    lib.qtune_model_free.argtypes = [C.c_void_p]
    lib.qtune_generate.argtypes = [C.c_void_p, C.c_char_p, TOKEN_CB, C.c_void_p, C.POINTER(C.c_void_p)]
    lib.qtune_session_new.restype = C.c_void_p
    lib.qtune_session_free.argtypes = [C.c_void_p]
    lib.qtune_cancel.argtypes = [C.c_void_p]
    lib.qtune_train.argtypes = [C.c_void_p, C.c_char_p, PROGRESS_CB, LOG_CB, C.c_void_p, C.POINTER(C.c_void_p)]
    return lib


def take_string(lib, p):
    """The library's string at p, released."""
    s = C.string_at(p.value).decode()
    lib.qtune_free_string(p)
    return s


def check(lib, what, status):
    if status != QTUNE_OK:
        raise RuntimeError(f"{what}: status {status}: {lib.qtune_last_error().decode()}")


def main():
    lib_path, model, data, work = sys.argv[1:5]
    lib = load(lib_path)
    assert lib.qtune_abi_version() == 1, lib.qtune_abi_version()
    print(lib.qtune_version().decode())

    losses = {}  # iteration -> training loss
    phases = []
    session = lib.qtune_session_new()

    def progress(user, p):
        p = p.contents
        if p.kind == b"phase":
            phases.append(p.phase.decode())
        elif p.kind == b"train":
            losses[p.iter] = p.loss
            if p.iter == 2:
                lib.qtune_cancel(session)  # stops at the next micro-batch, state saved

    on_progress = PROGRESS_CB(progress)
    on_log = LOG_CB(lambda user, line: None)
    cfg = {"model": model, "data": data, "method": "lora", "iters": 4, "batch_size": 2, "max_seq_length": 32,
           "rank": 4, "alpha": 8, "seed": 3, "steps_per_report": 1, "steps_per_eval": 100, "save_every": 100,
           "adapter_path": f"{work}/adapters", "cache_dir": f"{work}/cache", "max_mem": "64MiB"}
    result = C.c_void_p()
    status = lib.qtune_train(session, json.dumps(cfg).encode(), on_progress, on_log, None, C.byref(result))
    cancelled = status == QTUNE_ERR_CANCELLED
    if cancelled:
        print("cancelled:", lib.qtune_last_error().decode())
        cfg["resume"] = True
        status = lib.qtune_train(session, json.dumps(cfg).encode(), on_progress, on_log, None, C.byref(result))
    check(lib, "qtune_train", status)
    print("trained:", take_string(lib, result))
    lib.qtune_session_free(session)

    m = C.c_void_p()
    check(lib, "qtune_model_open", lib.qtune_model_open(model.encode(), json.dumps({"adapter": f"{work}/adapters"}).encode(), C.byref(m)))
    streamed = []
    on_token = TOKEN_CB(lambda user, tok, piece: streamed.append(tok))
    out = C.c_void_p()
    opts = {"prompt": "One day", "max_tokens": 16, "temp": 0}
    check(lib, "qtune_generate", lib.qtune_generate(m, json.dumps(opts).encode(), on_token, None, C.byref(out)))
    gen = json.loads(take_string(lib, out))
    lib.qtune_model_free(m)

    bad = C.c_void_p()
    missing = lib.qtune_model_open(b"/nonexistent/model.gguf", None, C.byref(bad))
    print("missing model:", missing, lib.qtune_last_error().decode())
    print(json.dumps({"losses": losses, "cancelled": cancelled, "phases": phases, "generated": gen, "streamed": streamed,
                      "missing_status": missing}))


if __name__ == "__main__":
    main()
