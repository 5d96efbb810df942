package train

import (
	"errors"
	"fmt"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/loreml"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
)

// Generation on the GPU (generate --device cuda|auto): the weights go to
// the device as for training (every block resident, or the first ones and
// the rest streamed through two slots), the adapters beside them, and a
// model.Session whose KV cache lives there; sampling stays on the host.

// deviceAdapter is the device form of one of m's adapters: its bytes on
// the device and a maker, or why it runs on the CPU only. Block scales
// share ws (its bytes are the caller's to count, once).
func deviceAdapter(a model.Adapter, ws *sharedWS) (bytes int64, rank int, mk func(*cuda.Device) (model.GPUAdapter, []func() error, error), err error) {
	switch x := a.(type) {
	case *mezo.Scales:
		ws.fit(x)
		return 4 * int64(len(x.R)), 0, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			buf, frees, err := ws.get(d)
			if err != nil {
				return nil, frees, err
			}
			gs, err := model.NewGPUScales(d, x.W.Rows, x.W.Cols, x.Block, x.R, buf)
			if err != nil {
				return nil, frees, err
			}
			return gs, append(frees, gs.Free), nil
		}, nil
	case *lora.Layer:
		return 2 * 4 * int64(len(x.A)+len(x.B)), x.R, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			ga, err := model.NewGPULoRA(d, x.In, x.Out, x.R, x.Scale, x.A, x.B)
			if err != nil {
				return nil, nil, err
			}
			ga.NoGrad = true
			return ga, []func() error{ga.Free}, nil
		}, nil
	case *loho.Sparse:
		return sparseDeviceBytes(x.Out, x.In, len(x.Val)), 0, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			sp, err := model.NewGPUSparse(d, x.Out, x.In, x.RowPtr, x.Cols, x.Val, false)
			if err != nil {
				return nil, nil, err
			}
			return sp, []func() error{sp.Free}, nil
		}, nil
	case *loho.Dense:
		return x.Bytes(), 0, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			dd, err := model.NewGPUDense(d, x.Out, x.In, x.Val)
			if err != nil {
				return nil, nil, err
			}
			return dd, []func() error{dd.Free}, nil
		}, nil
	case *loreml.Matrix:
		n := sparseDeviceBytes(x.Out, x.In, len(x.Delta.Val))
		r := 0
		if w := x.Warm; w != nil {
			n += 2 * 4 * int64(len(w.U)+len(w.V))
			r = w.R
		}
		return n, r, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			sp, err := model.NewGPUSparse(d, x.Out, x.In, x.Delta.RowPtr, x.Delta.Col, x.Delta.Val, false)
			if err != nil {
				return nil, nil, err
			}
			st, frees := model.GPUStack{sp}, []func() error{sp.Free}
			if w := x.Warm; w != nil {
				wl, err := model.NewGPULoRA(d, w.In, w.Out, w.R, w.Scale, w.V, w.U)
				if err != nil {
					return nil, frees, err
				}
				wl.NoGrad = true
				st, frees = append(st, wl), append(frees, wl.Free)
			}
			return st, frees, nil
		}, nil
	case loho.Stack:
		var makers []func(*cuda.Device) (model.GPUAdapter, []func() error, error)
		for _, e := range x {
			b, r, mk, err := deviceAdapter(e, ws)
			if err != nil {
				return 0, 0, nil, err
			}
			bytes, rank = bytes+b, max(rank, r)
			makers = append(makers, mk)
		}
		return bytes, rank, func(d *cuda.Device) (model.GPUAdapter, []func() error, error) {
			var st model.GPUStack
			var frees []func() error
			for _, mk := range makers {
				a, f, err := mk(d)
				frees = append(frees, f...)
				if err != nil {
					return nil, frees, err
				}
				st = append(st, a)
			}
			return st, frees, nil
		}, nil
	}
	return 0, 0, nil, fmt.Errorf("an adapter of type %T runs on the CPU only", a)
}

// sharedWS is the float32 workspace the block-scale adapters of a model
// share on the device (they run one layer at a time): need is the largest
// weight's, the buffer made at the first adapter that takes it.
type sharedWS struct {
	need int64
	buf  *cuda.Buffer
}

// fit makes the workspace large enough for s's weight decoded in float32.
func (w *sharedWS) fit(s *mezo.Scales) { w.need = max(w.need, 4*int64(s.W.Rows)*int64(s.W.Cols)) }

// get returns the workspace, and its release when this call made it.
func (w *sharedWS) get(d *cuda.Device) (*cuda.Buffer, []func() error, error) {
	if w.buf != nil {
		return w.buf, nil, nil
	}
	b, err := d.Alloc(w.need)
	if err != nil {
		return nil, nil, err
	}
	w.buf = b
	return b, []func() error{func() error { w.buf = nil; return b.Free() }}, nil
}

// sparseDeviceBytes is a device sparse delta's size (row and column
// offsets, columns, rows, values and their order), as training books it.
func sparseDeviceBytes(out, in, nnz int) int64 { return 4 * int64(out+1+in+1+5*nnz) }

// DeviceOptions say where inference (generate, chat) runs.
type DeviceOptions struct {
	// Device: "" or cpu, cuda, cuda:N, or auto (the GPU when there is one
	// and it takes the model and its adapters, else the CPU).
	Device string
	// MaxVRAM is the device's budget in bytes (0: none).
	MaxVRAM int64
	// GPUPrecision is the input type of a prompt's products on the device:
	// bf16 (the default) or f32. One token's products are float32
	// matrix-vector kernels either way.
	GPUPrecision string
	// Log, when set, is given lines about the device: which, its memory
	// plan, a fall back to the CPU, the peak when the session ends.
	Log func(line string)
	// PlanOnly: the caller only plans (qtune plan): the device's plan is
	// made from the shapes alone and put in the host plan (Plan.Device).
	PlanOnly bool
}

// Check refuses options out of range (a usage error, ErrBadOptions).
func (o DeviceOptions) Check() error {
	kind, _, err := parseDevice(o.Device)
	if err == nil {
		_, err = parsePrecision(o.GPUPrecision)
	}
	if err == nil && o.MaxVRAM < 0 {
		err = fmt.Errorf("GPU budget of %d bytes", o.MaxVRAM)
	}
	if err == nil && o.MaxVRAM > 0 && kind == "cpu" {
		err = errors.New("--max-vram without --device cuda or auto")
	}
	if err != nil {
		return fmt.Errorf("%w: %w", err, ErrBadOptions)
	}
	return nil
}

func (o DeviceOptions) log(s string) {
	if o.Log != nil {
		o.Log(s)
	}
}

// Session makes m's inference session of up to maxLen positions where o
// says: on the GPU (the weights, m's adapters and the KV cache there; plan's
// placement marked as the device's plan places the blocks) or the CPU.
// done frees it, and the device, logging the device's peak.
func Session(m *model.Model, o DeviceOptions, maxLen int, plan *budget.Plan) (se *model.Session, done func(), err error) {
	if err := o.Check(); err != nil {
		return nil, nil, err
	}
	gg, err := openSessionGPU(m, o, model.GPUSessionOptions{MaxLen: maxLen}, plan)
	if err != nil {
		return nil, nil, err
	}
	if gg == nil && plan != nil && gpuLikely(m, o.Device) {
		return nil, nil, fmt.Errorf("gpu: %w", errPlannedForGPU)
	}
	if gg == nil {
		se := m.NewSession(maxLen)
		return se, se.Free, nil
	}
	if plan != nil {
		devicePlacement(plan, gg.resident)
		o.log("placement: " + plan.PlacementString())
	}
	se = gg.dev.Session()
	return se, func() {
		o.log(gg.run.peakLine())
		gg.close() // se's device session with it
	}, nil
}

// gpuSession is an inference session's device side.
type gpuSession struct {
	run      *gpuRun
	dev      *model.GPUSession
	frees    []func() error
	resident int // blocks on the device; the others streamed
}

func (gg *gpuSession) close() {
	if gg.dev != nil {
		gg.dev.Free()
	}
	for _, f := range gg.frees {
		f()
	}
	gg.run.close()
}

// openSessionGPU resolves o.Device for a session shaped so: nil for the
// CPU (with a line saying why when auto fell back), or a session on the
// device with m's adapters, within o.MaxVRAM and the host plan (nil: none).
func openSessionGPU(m *model.Model, o DeviceOptions, so model.GPUSessionOptions, hostPlan *budget.Plan) (gg *gpuSession, err error) {
	kind, ordinal, _ := parseDevice(o.Device)
	if kind == "cpu" {
		return nil, nil
	}
	prec, _ := parsePrecision(o.GPUPrecision)
	log := o.log
	fallback := func(err error) (*gpuSession, error) {
		if kind == "auto" {
			log("device: the CPU (" + err.Error() + ")")
			return nil, nil
		}
		return nil, fmt.Errorf("gpu: %w", err)
	}
	sp, err := planSession(m, o, so)
	if err != nil {
		return fallback(err)
	}
	limit, fromFree := o.MaxVRAM, false
	plan := func(driver int64) GPUPlan { return sp.plan(m, limit, driver, fromFree) }
	gplan := plan(0)
	if limit > 0 && gplan.Total > limit {
		return nil, sessionOver(gplan)
	}
	host := startHostShare(m)
	d, err := cuda.Open(ordinal, cuda.Options{MaxVRAM: limit})
	if err != nil {
		return fallback(err)
	}
	gg = &gpuSession{run: &gpuRun{d: d, limit: limit}}
	opened := gg // an error return sets gg to nil before this runs
	defer func() {
		if err != nil {
			opened.close()
			gg = nil
		}
	}()
	if limit == 0 {
		// Without --max-vram, the GPU's free memory is the budget (a model
		// that does not fit streams; a cache that does not is refused).
		if limit = d.BudgetFromFree(); limit > 0 {
			fromFree = true
			gg.run.limit, gg.run.fromFree = limit, true
			if gplan = plan(0); gplan.Total > limit {
				return nil, sessionOver(gplan)
			}
		}
	}
	if err := d.Compile(); err != nil {
		return nil, err
	}
	ad := make(model.GPUAdapters, m.Config.Layers)
	for _, x := range sp.makers {
		a, frees, err := x.mk(d)
		gg.frees = append(gg.frees, frees...)
		if err != nil {
			return nil, fmt.Errorf("gpu: an adapter on the GPU: %w", err)
		}
		ad[x.l][x.mod] = a
	}
	// Under a budget, a warm-up (a prompt chunk, then one token) has the
	// driver load what cuBLAS picks for these shapes; what the GPU then
	// holds is checked against the budget, and the blocks placed again
	// with it once, as training does.
	for attempt := 0; ; attempt++ {
		if gg.dev != nil {
			gg.dev.Free()
			gg.dev = nil
		}
		if gg.run.g != nil {
			gg.run.g.Close()
		}
		if gg.run.g, err = m.ToGPUWith(d, prec, model.GPUOptions{Resident: gplan.Resident}); err != nil {
			return nil, fmt.Errorf("gpu: %w", err)
		}
		if gg.dev, err = gg.run.g.NewSession(so, ad); err != nil {
			return nil, fmt.Errorf("gpu: %w", err)
		}
		// (a host budget wants the warm-up too: the driver's share of host
		// memory is measured after it)
		if limit <= 0 && (hostPlan == nil || hostPlan.Budget <= 0) {
			break
		}
		if err := gg.dev.WarmUp(); err != nil {
			return nil, fmt.Errorf("gpu: a warm-up on the GPU: %w", err)
		}
		free, total, err := d.MemInfo()
		if err != nil {
			return nil, err
		}
		used := total - free - d.ContextBytes()
		if limit <= 0 || used <= limit {
			break
		}
		next := plan(used - d.Used() + (used-d.Used())/16)
		if attempt == 1 || next.Total > limit || next.Resident >= gplan.Resident {
			return nil, fmt.Errorf("gpu: after a warm-up the GPU holds %s for this session (%s its own allocations), over %s: give %s: %w",
				fmtMiB(used), fmtMiB(d.Used()), budgetName(limit, fromFree), budgetFix(used+used/16, fromFree), cuda.ErrVRAM)
		}
		log(fmt.Sprintf("a warm-up with %d of %d blocks resident: the driver holds %s besides qtune's own allocations; placed again with it", gplan.Resident, gplan.Blocks, fmtMiB(used-d.Used())))
		gplan = next
	}
	if err := fitHostShare("gpu", host.measure(m, d), hostPlan, log); err != nil {
		return nil, err
	}
	gg.resident = gplan.Resident
	log(fmt.Sprintf("device: %s, prompt products in %s", d, prec))
	log(gplan.String())
	gg.run.sample()
	return gg, nil
}

// devicePlacement marks a host plan's blocks as the device plan placed
// them: the first resident ones on the device, the others in host memory
// (streamed through the device's slots).
func devicePlacement(plan *budget.Plan, resident int) {
	for i := range plan.Placement {
		if i < resident {
			plan.Placement[i] = budget.Device
		} else {
			plan.Placement[i] = budget.Host
		}
	}
}

// sessionPart is an inference session's device side as planned before a
// device is open: its adapters' makers and bytes, its products' precision.
type sessionPart struct {
	makers  []adapterMaker
	adBytes int64
	R       int
	prec    cuda.Precision
	so      model.GPUSessionOptions
}

// adapterMaker puts the adapter of block l's module mod on a device.
type adapterMaker struct {
	l, mod int
	mk     func(*cuda.Device) (model.GPUAdapter, []func() error, error)
}

// planSession plans a session shaped so with m's adapters on the GPU; an
// error says why the model or an adapter does not run there.
func planSession(m *model.Model, o DeviceOptions, so model.GPUSessionOptions) (sp sessionPart, err error) {
	if err := m.GPUSupported(); err != nil {
		return sp, err
	}
	sp.prec, _ = parsePrecision(o.GPUPrecision)
	sp.so, sp.R = so, 1
	var ws sharedWS
	for l := range m.Adapters {
		for mod, a := range m.Adapters[l] {
			if a == nil {
				continue
			}
			b, r, mk, err := deviceAdapter(a, &ws)
			if err != nil {
				return sp, err
			}
			sp.adBytes, sp.R = sp.adBytes+b, max(sp.R, r)
			sp.makers = append(sp.makers, adapterMaker{l, mod, mk})
		}
	}
	sp.adBytes += ws.need
	return sp, nil
}

// sessionOver refuses a session's device plan over its budget, naming one
// that holds it.
func sessionOver(gplan GPUPlan) error {
	return fmt.Errorf("gpu: %s: over the budget; give a shorter session (generate -n, chat --ctx) or %s", gplan, budgetFix(gplan.Total+1<<20, gplan.FromFree))
}

// plan places the session's blocks within limit (0: none), the driver's
// measured share besides.
func (sp *sessionPart) plan(m *model.Model, limit, driver int64, fromFree bool) GPUPlan {
	return placeBlocks(m, GPUPlan{Adapters: sp.adBytes, Step: model.GPUSessionBytes(m, sp.so, sp.R, sp.prec),
		BLAS: cuda.WorkspaceBytes(limit), Driver: driver, Limit: limit, FromFree: fromFree})
}

// PlanSessionDevice puts the device plan of a session of up to maxLen
// positions (chat's) in its host plan, from the shapes alone, when o's
// device is a GPU; a plan over --max-vram is the session's refusal.
func PlanSessionDevice(m *model.Model, o DeviceOptions, maxLen int, hostPlan *budget.Plan) error {
	return planSessionDry(m, o, model.GPUSessionOptions{MaxLen: maxLen}, hostPlan)
}

// planSessionDry puts a plan-only session's device plan in its host plan
// (qtune plan generate|chat|eval --device cuda), from the shapes alone;
// a plan over --max-vram is the error the session would stop with.
func planSessionDry(m *model.Model, o DeviceOptions, so model.GPUSessionOptions, hostPlan *budget.Plan) error {
	if hostPlan == nil || !gpuLikely(m, o.Device) {
		return nil
	}
	sp, err := planSession(m, o, so)
	if err != nil {
		hostPlan.Device = "device: " + err.Error()
		return nil
	}
	gplan := sp.plan(m, o.MaxVRAM, 0, false)
	if o.MaxVRAM > 0 && gplan.Total > o.MaxVRAM {
		return sessionOver(gplan)
	}
	dryDevice(hostPlan, gplan, "session")
	return nil
}
