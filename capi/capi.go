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
	"github.com/qtune/qtune/quant"
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
	cm := &cmodel{path: goString(path), opt: model.Options{Tokenizer: o.Tokenizer}}
	if cm.m, err = model.Open(cm.path, cm.opt); err != nil {
		return status(err)
	}
	if o.Adapter != "" {
		if err := cm.apply(o.Adapter, limit); err != nil {
			cm.m.Close()
			return status(err)
		}
	}
	h := (*C.qtune_model)(C.malloc(C.size_t(unsafe.Sizeof(C.qtune_model{}))))
	h.h = C.uintptr_t(cgo.NewHandle(cm))
	*out = h
	return C.QTUNE_OK
}

// cmodel is what a qtune_model holds: the model and how it was opened (an
// adapter is removed by opening the base again: some adapters rewrite
// the model's own tensors, and the mapping makes opening cheap).
type cmodel struct {
	m       *model.Model
	path    string
	opt     model.Options
	adapter string
}

// apply applies an adapter to the base (none applied).
func (c *cmodel) apply(path string, limit int64) error {
	if _, err := train.ApplyAdapterLimit(c.m, path, limit); err != nil {
		return err
	}
	c.adapter = path
	return nil
}

// base puts the base model back when an adapter is applied.
func (c *cmodel) base() error {
	if c.adapter == "" {
		return nil
	}
	return c.reopen()
}

// reopen opens the base model again in place of c.m.
func (c *cmodel) reopen() error {
	m, err := model.Open(c.path, c.opt)
	if err != nil {
		return err
	}
	c.m.Close()
	c.m, c.adapter = m, ""
	return nil
}

func modelOf(h *C.qtune_model, call string) (*cmodel, error) {
	if h == nil {
		return nil, fmt.Errorf("%s: NULL model: %w", call, errArgs)
	}
	c, ok := cgo.Handle(h.h).Value().(*cmodel)
	if !ok {
		return nil, fmt.Errorf("%s: not a model handle: %w", call, errArgs)
	}
	return c, nil
}

//export qtune_model_apply_adapter
func qtune_model_apply_adapter(h *C.qtune_model, path *C.char, optionsJSON *C.char) (st C.qtune_status) {
	defer guard(&st)
	c, err := modelOf(h, "qtune_model_apply_adapter")
	if err != nil {
		return status(err)
	}
	if path == nil {
		return status(fmt.Errorf("qtune_model_apply_adapter: NULL path: %w", errArgs))
	}
	var o struct {
		MaxMem string `json:"max_mem"`
	}
	limit, err := decodeBudget(optionsJSON, &o, &o.MaxMem)
	if err != nil {
		return status(err)
	}
	if err := c.base(); err != nil {
		return status(err)
	}
	if err := c.apply(goString(path), limit); err != nil {
		// the model may hold part of it: open the base again
		if berr := c.reopen(); berr != nil {
			return status(fmt.Errorf("%w (and opening the base again: %v)", err, berr))
		}
		return status(err)
	}
	return C.QTUNE_OK
}

//export qtune_model_remove_adapter
func qtune_model_remove_adapter(h *C.qtune_model) (st C.qtune_status) {
	defer guard(&st)
	c, err := modelOf(h, "qtune_model_remove_adapter")
	if err != nil {
		return status(err)
	}
	return status(c.base())
}

//export qtune_model_free
func qtune_model_free(h *C.qtune_model) {
	if h == nil {
		return
	}
	ch := cgo.Handle(h.h)
	if c, ok := ch.Value().(*cmodel); ok {
		c.m.Close()
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
	deviceJSON
}

// deviceJSON are where generate and evaluate run (train's options).
type deviceJSON struct {
	Device       string `json:"device"`
	MaxVRAM      string `json:"max_vram"`
	GPUPrecision string `json:"gpu_precision"`
}

func (o deviceJSON) options() (train.DeviceOptions, error) {
	d := train.DeviceOptions{Device: o.Device, GPUPrecision: o.GPUPrecision}
	if o.MaxVRAM != "" && o.MaxVRAM != "0" {
		v, err := budget.ParseSize(o.MaxVRAM)
		if err != nil {
			return d, fmt.Errorf("qtune: max_vram: %v: %w", err, errArgs)
		}
		d.MaxVRAM = v
	}
	return d, d.Check()
}

//export qtune_generate
func qtune_generate(h *C.qtune_model, optionsJSON *C.char, onToken C.qtune_token_cb, user unsafe.Pointer, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	c, err := modelOf(h, "qtune_generate")
	if err != nil {
		return status(err)
	}
	m := c.m
	var o generateOptions
	limit, err := decodeBudget(optionsJSON, &o, &o.MaxMem)
	if err != nil {
		return status(err)
	}
	if o.ModelPath == "" {
		o.ModelPath = c.path
	}
	dev, err := o.deviceJSON.options()
	if err != nil {
		return status(err)
	}
	g := train.GenerateOptions{Prompt: o.Prompt, Chat: o.Chat || len(o.Messages) > 0, Messages: o.Messages, ChatTemplate: o.ChatTemplate,
		ModelPath: o.ModelPath, MaxTokens: 128, Temp: 0.8, TopP: 0.9, Seed: o.Seed, IgnoreEOS: o.IgnoreEOS, MaxMem: limit, DeviceOptions: dev}
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
	cfg.PhaseReports = true
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
		// the few texts a report names, made once in C memory
		texts := map[string]*C.char{}
		defer func() {
			for _, t := range texts {
				C.free(unsafe.Pointer(t))
			}
		}()
		text := func(s string) *C.char {
			t, ok := texts[s]
			if !ok {
				t = C.CString(s)
				texts[s] = t
			}
			return t
		}
		progress = func(p train.Progress) {
			C.qtune_call_progress(onProgress, user, C.int32_t(p.Iter), text(p.Kind), C.double(p.Loss), C.double(p.LearningRate),
				C.double(p.TokPerSec), C.int64_t(p.Trained), C.int64_t(p.PeakMem), text(p.Phase), C.int32_t(p.MicroBatch), C.int32_t(p.MicroBatches))
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

//export qtune_plan
func qtune_plan(configJSON *C.char, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	if out == nil {
		return status(fmt.Errorf("qtune_plan: NULL out: %w", errArgs))
	}
	cfg := train.Defaults()
	if err := train.ParseConfig([]byte(goString(configJSON)), &cfg); err != nil {
		return status(fmt.Errorf("qtune_plan: config: %w", err))
	}
	cfg.DryRun = true
	res, err := train.Run(context.Background(), cfg, nil, nil)
	if res == nil || res.Plan == nil {
		if err == nil {
			err = errors.New("qtune_plan: no plan was made")
		}
		return status(err)
	}
	return status(give(out, planResult(res.Plan, err)))
}

// planJSON is a plan as qtune_plan gives it.
type planJSON struct {
	Fits  bool         `json:"fits"`
	Error string       `json:"error,omitempty"`
	Plan  *budget.Plan `json:"plan"`
	Text  string       `json:"text"`
}

func planResult(p *budget.Plan, err error) planJSON {
	r := planJSON{Fits: err == nil, Plan: p, Text: p.String()}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// evaluateOptions are qtune_evaluate's options.
type evaluateOptions struct {
	Data         string `json:"data"`
	Limit        int    `json:"limit"`
	MaxSeqLength int    `json:"max_seq_length"`
	MaxMem       string `json:"max_mem"`
	PlanOnly     bool   `json:"plan_only"`
	deviceJSON
}

//export qtune_evaluate
func qtune_evaluate(h *C.qtune_model, optionsJSON *C.char, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	c, err := modelOf(h, "qtune_evaluate")
	if err != nil {
		return status(err)
	}
	var o evaluateOptions
	limit, err := decodeBudget(optionsJSON, &o, &o.MaxMem)
	if err != nil {
		return status(err)
	}
	dev, err := o.deviceJSON.options()
	if err != nil {
		return status(err)
	}
	opt := train.EvaluateOptions{Data: o.Data, Limit: o.Limit, MaxSeqLen: o.MaxSeqLength, MaxMem: limit, DeviceOptions: dev,
		OnPlan: func(*budget.Plan) bool { return !o.PlanOnly }}
	ev, err := train.Evaluate(context.Background(), c.m, opt)
	if err != nil {
		return status(err)
	}
	if o.PlanOnly {
		return status(give(out, struct {
			Plan *budget.Plan `json:"plan"`
		}{ev.Plan}))
	}
	if ev.Class != nil {
		return status(give(out, struct {
			Kind string `json:"kind"`
			*train.ClassResult
		}{ev.Kind.String(), ev.Class}))
	}
	return status(give(out, struct {
		Kind string `json:"kind"`
		*train.LMResult
	}{ev.Kind.String(), ev.LM}))
}

// exportOptions are qtune_export's options.
type exportOptions struct {
	Adapter   string `json:"adapter"`
	Out       string `json:"out"`
	Merge     bool   `json:"merge"`
	Type      string `json:"type"`
	ModelPath string `json:"model_path"`
}

//export qtune_export
func qtune_export(h *C.qtune_model, optionsJSON *C.char, out **C.char) (st C.qtune_status) {
	defer guard(&st)
	c, err := modelOf(h, "qtune_export")
	if err != nil {
		return status(err)
	}
	o := exportOptions{Type: "f16"}
	if err := decode(optionsJSON, &o); err != nil {
		return status(err)
	}
	if c.adapter != "" {
		return status(fmt.Errorf("qtune_export: the model has an adapter applied (%s): export works on the base; remove it first: %w", c.adapter, errArgs))
	}
	t, err := quant.ParseType(o.Type)
	if err != nil {
		return status(fmt.Errorf("qtune_export: type %q: %w", o.Type, errArgs))
	}
	if o.ModelPath == "" {
		o.ModelPath = c.path
	}
	ex, err := train.Export(c.m, train.ExportOptions{Adapter: o.Adapter, Out: o.Out, Merge: o.Merge, Type: t, ModelPath: o.ModelPath})
	// export loads the adapter into the model: the base again for later calls
	if berr := c.reopen(); err == nil && berr != nil {
		err = berr
	}
	if err != nil {
		return status(err)
	}
	return status(give(out, struct {
		Out      string `json:"out"`
		Matrices int    `json:"matrices"`
		Merged   bool   `json:"merged"`
		Tensors  int    `json:"tensors,omitempty"`
		Bytes    int64  `json:"bytes,omitempty"`
	}{ex.Out, ex.Matrices, ex.Merged, ex.Report.Tensors, ex.Report.Bytes}))
}

// finite is v, or nil (JSON null) when it is not a number.
func finite(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}

func seedFromClock() uint64 { return uint64(time.Now().UnixNano()) }
