//go:build cgo

// Command capi is libqtune, the C ABI of qtune (capi/qtune.h), built with
//
//	go build -buildmode=c-shared -o libqtune.so ./capi
//	go build -buildmode=c-archive -o libqtune.a ./capi
//
// It is a thin layer: each function parses its JSON, calls the Go library
// (train.Run, train.Generate, model.Open) and maps the error to a status.
// It is the only package built with cgo; the qtune binary and the library
// beneath stay cgo-free (internal/layering).
package main

/*
#cgo CFLAGS: -std=c11 -D_POSIX_C_SOURCE=200809L
#include <stdlib.h>
#include "internal.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"runtime/cgo"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/format/gguf"
	"github.com/qtune/qtune/format/llama2c"
	"github.com/qtune/qtune/format/safetensors"
	"github.com/qtune/qtune/internal/fsx"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/train"
)

// abiVersion is QTUNE_ABI_VERSION of the header this library implements.
const abiVersion = 1

var versionText = C.CString("qtune 0.1 (C ABI 1)")

func main() {}

// errArgs marks a caller's mistake at the boundary (a NULL handle, JSON
// that does not parse).
var errArgs = errors.New("bad arguments")

// status maps an error to the header's codes and records its message as
// the thread's last error.
func status(err error) C.qtune_status {
	if err == nil {
		return C.QTUNE_OK
	}
	C.qtune_set_error(C.CString(err.Error()))
	switch {
	case errors.Is(err, context.Canceled):
		return C.QTUNE_ERR_CANCELLED
	case errors.Is(err, budget.ErrOverBudget), errors.Is(err, budget.ErrNoFit):
		return C.QTUNE_ERR_BUDGET
	case errors.Is(err, model.ErrUnsupported):
		return C.QTUNE_ERR_UNSUPPORTED
	case errors.Is(err, errArgs), errors.Is(err, train.ErrBadOptions):
		return C.QTUNE_ERR_ARGS
	case errors.Is(err, model.ErrFormat), errors.Is(err, model.ErrConfig), errors.Is(err, gguf.ErrFormat),
		errors.Is(err, safetensors.ErrFormat), errors.Is(err, llama2c.ErrFormat), errors.Is(err, fsx.ErrNotRegular),
		errors.Is(err, fsx.ErrChanged), errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission),
		errors.Is(err, data.ErrData), errors.Is(err, data.ErrNoData), errors.Is(err, data.ErrCache):
		return C.QTUNE_ERR_FILE
	}
	return C.QTUNE_ERR
}

// guard turns a panic below into a status (no panic crosses the boundary).
func guard(st *C.qtune_status) {
	if r := recover(); r != nil {
		*st = status(fmt.Errorf("qtune: internal error: %v", r))
	}
}

// goString is a C string as Go text ("" for NULL).
func goString(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

// decode parses optional JSON options (NULL or "": none) into v, refusing
// unknown keys.
func decode(s *C.char, v any) error {
	text := goString(s)
	if text == "" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("qtune: options: %v: %w", err, errArgs)
	}
	return nil
}

// give hands text to C through out (when out is not NULL).
func give(out **C.char, v any) error {
	if out == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	*out = C.CString(string(b))
	return nil
}

//export qtune_abi_version
func qtune_abi_version() C.int { return abiVersion }

//export qtune_version
func qtune_version() *C.char { return versionText }

//export qtune_last_error
func qtune_last_error() *C.char { return (*C.char)(unsafe.Pointer(C.qtune_get_error())) }

//export qtune_free_string
func qtune_free_string(s *C.char) { C.free(unsafe.Pointer(s)) }

// openOptions are qtune_model_open's options.
type openOptions struct {
	Tokenizer string `json:"tokenizer"`
	Adapter   string `json:"adapter"`
	MaxMem    string `json:"max_mem"`
}

//export qtune_model_open
func qtune_model_open(path *C.char, optionsJSON *C.char, out **C.qtune_model) (st C.qtune_status) {
	defer guard(&st)
	if path == nil || out == nil {
		return status(fmt.Errorf("qtune_model_open: NULL path or out: %w", errArgs))
	}
	*out = nil
	var o openOptions
	limit, err := decodeBudget(optionsJSON, &o, &o.MaxMem)
	if err != nil {
		return status(err)
	}
	m, err := model.Open(goString(path), model.Options{Tokenizer: o.Tokenizer})
	if err != nil {
		return status(err)
	}
	if o.Adapter != "" {
		if _, err := train.ApplyAdapterLimit(m, o.Adapter, limit); err != nil {
			m.Close()
			return status(err)
		}
	}
	h := (*C.qtune_model)(C.malloc(C.size_t(unsafe.Sizeof(C.qtune_model{}))))
	h.h = C.uintptr_t(cgo.NewHandle(m))
	*out = h
	return C.QTUNE_OK
}

//export qtune_model_free
func qtune_model_free(h *C.qtune_model) {
	if h == nil {
		return
	}
	ch := cgo.Handle(h.h)
	if m, ok := ch.Value().(*model.Model); ok {
		m.Close()
	}
	ch.Delete()
	C.free(unsafe.Pointer(h))
}

// decodeBudget is decode, then the budget the options name (maxMem, a
// field of v).
func decodeBudget(s *C.char, v any, maxMem *string) (int64, error) {
	if err := decode(s, v); err != nil {
		return 0, err
	}
	return parseBudget(*maxMem)
}

// parseBudget reads a size ("" or "0": none).
func parseBudget(s string) (int64, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	n, err := budget.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("qtune: max_mem: %v: %w", err, errArgs)
	}
	return n, nil
}

// generateOptions are qtune_generate's options.
type generateOptions struct {
	Prompt         string          `json:"prompt"`
	MaxTokens      *int            `json:"max_tokens"`
	Temp           *float64        `json:"temp"`
	TopP           *float64        `json:"top_p"`
	Seed           uint64          `json:"seed"`
	IgnoreEOS      bool            `json:"ignore_eos"`
	MaxMem         string          `json:"max_mem"`
	Chat           bool            `json:"chat"`
	Messages       []data.Message  `json:"messages"`
	ChatTemplate   string          `json:"chat_template"`
	TemplateKwargs json.RawMessage `json:"chat_template_kwargs"`
	ModelPath      string          `json:"model_path"`
}

//export qtune_generate
func qtune_generate(h *C.qtune_model, optionsJSON *C.char, onToken C.qtune_token_cb, user unsafe.Pointer, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	if h == nil {
		return status(fmt.Errorf("qtune_generate: NULL model: %w", errArgs))
	}
	m, ok := cgo.Handle(h.h).Value().(*model.Model)
	if !ok {
		return status(fmt.Errorf("qtune_generate: not a model handle: %w", errArgs))
	}
	var o generateOptions
	limit, err := decodeBudget(optionsJSON, &o, &o.MaxMem)
	if err != nil {
		return status(err)
	}
	g := train.GenerateOptions{Prompt: o.Prompt, Chat: o.Chat || len(o.Messages) > 0, Messages: o.Messages, ChatTemplate: o.ChatTemplate,
		ModelPath: o.ModelPath, MaxTokens: 128, Temp: 0.8, TopP: 0.9, Seed: o.Seed, IgnoreEOS: o.IgnoreEOS, MaxMem: limit}
	if len(o.TemplateKwargs) > 0 {
		g.TemplateKwargs = string(o.TemplateKwargs)
	}
	if o.MaxTokens != nil {
		g.MaxTokens = *o.MaxTokens
	}
	if o.Temp != nil {
		g.Temp = *o.Temp
	}
	if o.TopP != nil {
		g.TopP = *o.TopP
	}
	if g.Seed == 0 {
		g.Seed = seedFromClock()
	}
	if onToken != nil {
		g.OnToken = func(id int, piece string) {
			cs := C.CString(piece)
			C.qtune_call_token(onToken, user, C.int32_t(id), cs)
			C.free(unsafe.Pointer(cs))
		}
	}
	res, err := train.Generate(context.Background(), m, g)
	if err != nil {
		return status(err)
	}
	return status(give(out, struct {
		PromptTokens []int  `json:"prompt_tokens"`
		Tokens       []int  `json:"tokens"`
		Text         string `json:"text"`
	}{res.PromptTokens, res.Tokens, res.Text}))
}

// session is what a qtune_session holds: the cancel of the run in
// progress, or that a cancel came before it.
type session struct {
	mu        sync.Mutex
	cancel    context.CancelFunc
	cancelled bool
}

//export qtune_session_new
func qtune_session_new() *C.qtune_session {
	h := (*C.qtune_session)(C.malloc(C.size_t(unsafe.Sizeof(C.qtune_session{}))))
	h.h = C.uintptr_t(cgo.NewHandle(&session{}))
	return h
}

//export qtune_session_free
func qtune_session_free(h *C.qtune_session) {
	if h == nil {
		return
	}
	cgo.Handle(h.h).Delete()
	C.free(unsafe.Pointer(h))
}

func sessionOf(h *C.qtune_session) (*session, error) {
	if h == nil {
		return nil, fmt.Errorf("qtune: NULL session: %w", errArgs)
	}
	s, ok := cgo.Handle(h.h).Value().(*session)
	if !ok {
		return nil, fmt.Errorf("qtune: not a session handle: %w", errArgs)
	}
	return s, nil
}

//export qtune_cancel
func qtune_cancel(h *C.qtune_session) (st C.qtune_status) {
	defer guard(&st)
	s, err := sessionOf(h)
	if err != nil {
		return status(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelled = true
	if s.cancel != nil {
		s.cancel()
	}
	return C.QTUNE_OK
}

//export qtune_train
func qtune_train(h *C.qtune_session, configJSON *C.char, onProgress C.qtune_progress_cb, onLog C.qtune_log_cb, user unsafe.Pointer, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	s, err := sessionOf(h)
	if err != nil {
		return status(err)
	}
	cfg := train.Defaults()
	if err := train.ParseConfig([]byte(goString(configJSON)), &cfg); err != nil {
		return status(fmt.Errorf("qtune_train: config: %w", err))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.mu.Lock()
	if s.cancel != nil {
		s.mu.Unlock()
		return status(fmt.Errorf("qtune_train: the session runs a training already: %w", errArgs))
	}
	if s.cancelled {
		cancel()
	}
	s.cancel = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.cancel, s.cancelled = nil, false
		s.mu.Unlock()
	}()
	var log train.Logger
	if onLog != nil {
		log = func(line string) {
			cs := C.CString(line)
			C.qtune_call_log(onLog, user, cs)
			C.free(unsafe.Pointer(cs))
		}
	}
	var progress func(train.Progress)
	if onProgress != nil {
		kinds := map[string]*C.char{"train": C.CString("train"), "val": C.CString("val")}
		defer func() {
			for _, k := range kinds {
				C.free(unsafe.Pointer(k))
			}
		}()
		progress = func(p train.Progress) {
			kind := kinds[p.Kind]
			if kind == nil {
				kind = kinds["train"]
			}
			C.qtune_call_progress(onProgress, user, C.int32_t(p.Iter), kind, C.double(p.Loss), C.double(p.LearningRate),
				C.double(p.TokPerSec), C.int64_t(p.Trained), C.int64_t(p.PeakMem))
		}
	}
	res, err := train.Run(ctx, cfg, log, progress)
	if err != nil {
		return status(err)
	}
	r := struct {
		Iters        int      `json:"iters"`
		FirstValLoss *float64 `json:"first_val_loss"`
		FinalValLoss *float64 `json:"final_val_loss"`
		Trainable    int64    `json:"trainable"`
		AdapterPath  string   `json:"adapter_path"`
		Plan         string   `json:"plan"`
	}{Iters: res.Iters, FirstValLoss: finite(res.FirstValLoss), FinalValLoss: finite(res.FinalValLoss),
		Trainable: res.TrainableSize, AdapterPath: cfg.AdapterPath}
	if res.Plan != nil {
		r.Plan = res.Plan.String()
	}
	return status(give(out, r))
}

// finite is v, or nil (JSON null) when it is not a number.
func finite(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func seedFromClock() uint64 { return uint64(time.Now().UnixNano()) }
