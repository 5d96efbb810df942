package train

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/data"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
	"github.com/qtune/qtune/offload/comm"
	"github.com/qtune/qtune/optim"
)

// The GPU side of a LoRA run (--device cuda): the model's weights stay
// quantized on the device, every micro-batch's forward and backward run
// there (model.GPU), and the adapters' gradients come back to the host,
// where the optimizer, clipping, checkpoints and saving are the CPU
// run's own (the optimizer state lives in host memory, as the design
// allows). The device's memory is planned before the run and capped by
// --max-vram: an allocation past it is refused, never made.

// parseDevice reads --device: cpu, cuda, cuda:N or auto.
func parseDevice(s string) (kind string, ordinal int, err error) {
	switch s {
	case "", "cpu":
		return "cpu", 0, nil
	case "auto":
		return "auto", 0, nil
	case "cuda", "gpu":
		return "cuda", 0, nil
	}
	if n, ok := strings.CutPrefix(s, "cuda:"); ok {
		if o, err := strconv.Atoi(n); err == nil && o >= 0 && o < 64 {
			return "cuda", o, nil
		}
	}
	return "", 0, fmt.Errorf("--device %q: cpu, cuda, cuda:N or auto", s)
}

func parsePrecision(s string) (cuda.Precision, error) {
	switch s {
	case "", "bf16":
		return cuda.BF16, nil
	case "f32", "fp32":
		return cuda.F32, nil
	}
	return 0, fmt.Errorf("--gpu-precision %q: bf16 or f32", s)
}

// checkGPUConfig refuses, before any work, what the GPU path does not run.
func (c *Config) checkGPUConfig() error {
	kind, _, err := parseDevice(c.Device)
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if _, err := parsePrecision(c.GPUPrecision); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if c.MaxVRAM != "" {
		if _, err := budget.ParseSize(c.MaxVRAM); err != nil {
			return fmt.Errorf("train: --max-vram: %w", err)
		}
		if kind == "cpu" {
			return errors.New("train: --max-vram without --device cuda or auto")
		}
	}
	return nil
}

// gpuRun is a training run's device side.
type gpuRun struct {
	d      *cuda.Device
	g      *model.GPU
	ad     model.GPUAdapters
	pairs  []gpuPair
	sparse []sparsePair
	norms  []normPair
	floats []floatPair // mezo --zo-target float or scales: the trained tensors and their device copies
	// mezo --zo-target scales: the adapters (their multipliers are in
	// floats) and the workspace they share.
	scales  []*model.GPUScales
	scaleWS sharedWS
	// LoHO-intra --zo-target complement: the dense deltas, trained in
	// place on the device. denseHost: the host's values are newer (a
	// resumed run's), copied over at the next push; denseDev: the
	// device's are (updated there), copied back before the host reads
	// them (a save).
	dense               []floatPair
	denseHost, denseDev bool
	dev                 map[*lora.Layer]*model.GPULoRA
	opt                 *devOptim // LoRA's AdamW on the device (nil: the host's)
	limit               int64
	fromFree            bool // limit is the GPU's free memory (no --max-vram)
	// The driver's own count, sampled: the most memory in use on the GPU
	// beyond what was in use when the device was opened.
	stop    chan struct{}
	sampled sync.WaitGroup
	drvPeak atomic.Int64
}

// sample reads cuMemGetInfo every 10 ms until close.
func (r *gpuRun) sample() {
	r.stop = make(chan struct{})
	base := r.d.ContextBytes()
	r.sampled.Go(func() {
		// From a thread of its own with the context current there: the
		// device's thread is busy for a whole step (a Batch).
		mem := r.d.MemInfo
		if r.d.BindThread() == nil {
			mem = r.d.MemInfoHere
		}
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if free, total, err := mem(); err == nil {
				if used := total - free - base; used > r.drvPeak.Load() {
					r.drvPeak.Store(used)
				}
			}
			select {
			case <-r.stop:
				return
			case <-tick.C:
			}
		}
	})
}

// floatPair is a tensor MeZO trains (index i of its SPSA tensors) and the
// device's copy of it: nil for the embedding, which the host looks rows up
// in and so is perturbed there too (onHost; a tied output is its device
// copy).
type floatPair struct {
	i      int
	host   []float32
	dev    *cuda.Buffer
	onHost bool
	mask   cuda.MezoMask // entries z leaves alone (LoHO-intra's first-order mask)
	decay  bool          // weight decay applies (updates made on the device)
}

// floatMeZO is the SPSA of a MeZO run over float tensors, or nil.
func floatMeZO(meth Method) *mezo.SPSA {
	if z, ok := meth.(*mezoMethod); ok && z.cfg.ZOTarget == "float" {
		return z.spsa
	}
	return nil
}

// adaptFloats pairs the float tensors s trains with their device copies.
func (r *gpuRun) adaptFloats(s *mezo.SPSA) error {
	for i, t := range s.Tensors {
		p := floatPair{i: i, host: t.Data, onHost: t.Name == "token_embd.weight"}
		dev, err := r.g.FloatBuffer(t.Name)
		if err != nil && t.Name != "token_embd.weight" {
			return fmt.Errorf("train: mezo on the GPU: %w", err)
		}
		if err == nil {
			if dev.Bytes < 4*int64(len(t.Data)) {
				return fmt.Errorf("train: mezo on the GPU: the device's %s holds %d bytes for %d values", t.Name, dev.Bytes, len(t.Data))
			}
			p.dev = dev
		}
		r.floats = append(r.floats, p)
	}
	return nil
}

// perturbPairs perturbs each pair's tensor where the forward reads it: the
// device's copy (z regenerated there, keyed as the CPU keys tensor i), and
// the host's for those the host reads (s's z).
func (r *gpuRun) perturbPairs(pairs []floatPair, s *mezo.SPSA) mezo.Perturber {
	return func(seed uint64, c float64) error {
		return r.d.Batch(func() error {
			for _, p := range pairs {
				if p.dev != nil {
					if err := r.d.MezoApply(p.dev, mezo.TensorKey(seed, p.i), 0, int64(len(p.host)), float32(c), 1, p.mask); err != nil {
						return err
					}
				}
				if p.onHost {
					s.PerturbTensor(p.i, seed, c)
				}
			}
			return nil
		})
	}
}

// updateDense is MeZO's update of the dense deltas on the device (z
// regenerated there, masked as the CPU masks it); the host's copies are
// stale until pullDense.
func (r *gpuRun) updateDense(s *mezo.SPSA, ds []mezo.Draw) error {
	r.denseDev = true
	return r.d.Batch(func() error {
		return s.UpdateWith(ds, func(seed uint64, c, a float64) error {
			for _, p := range r.dense {
				pa := float32(1)
				if p.decay {
					pa = float32(a)
				}
				if err := r.d.MezoApply(p.dev, mezo.TensorKey(seed, p.i), 0, int64(len(p.host)), float32(c), pa, p.mask); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// pullDense copies the dense deltas back to the host when the device's are
// newer.
func (r *gpuRun) pullDense() error {
	if r == nil || !r.denseDev {
		return nil
	}
	if err := copyBack(r.d, "the dense deltas", r.dense); err != nil {
		return err
	}
	r.denseDev = false
	return nil
}

type gpuPair struct {
	cpu *lora.Layer
	dev *model.GPULoRA
}

// sparsePair is a sparse delta's values and gradient on the host and its
// copy on the device.
type sparsePair struct {
	val, grad []float32
	dev       *model.GPUSparse
}

// normPair is a trained norm weight: its values and gradient on the host,
// the model's device copy and the device gradient.
type normPair struct {
	w, g    []float32
	dev, dw *cuda.Buffer
}

// denseOf lists LoHO-intra's dense zeroth-order deltas (--zo-target
// complement), in its sparse deltas' order.
func denseOf(meth Method) []*loho.Dense {
	if h, ok := meth.(*lohoMethod); ok && h.intra {
		return h.dense
	}
	return nil
}

// scalesOf lists MeZO's block-scale adapters (--zo-target scales), in its
// estimator's order.
func scalesOf(meth Method) []*mezo.Scales {
	if z, ok := meth.(*mezoMethod); ok {
		return z.scales
	}
	return nil
}

// modulePos is the block and module of m's matrix named target.
func modulePos(m *model.Model, target string) (int, model.Module, error) {
	for l := range m.Layers {
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			if model.TensorName(l, mod) == target {
				return l, mod, nil
			}
		}
	}
	return 0, 0, fmt.Errorf("the model has no matrix %q", target)
}

// sparseOf lists the method's sparse deltas that go to the device with
// its LoRA factors (LoHO-intra's first-order part), in its set's order.
func sparseOf(meth Method) []*loho.Sparse {
	if h, ok := meth.(*lohoMethod); ok && h.intra {
		return h.sp
	}
	return nil
}

// GPUPlan is what a run will hold on the device.
type GPUPlan struct {
	Weights  int64 // the resident blocks and the rest of the weights
	Slots    int64 // two streaming slots when blocks are streamed
	Adapters int64
	Step     int64
	BLAS     int64
	// Driver is what the driver and cuBLAS were measured to hold besides
	// (kernels loaded lazily), once a warm-up step has run; 0 before.
	Driver           int64
	Total, Limit     int64
	FromFree         bool // Limit is the GPU's free memory (no --max-vram)
	Resident, Blocks int
	// Checkpoint: only each block's input is kept through the forward
	// and its activations are recomputed before its backward.
	Checkpoint bool
}

func (p GPUPlan) String() string {
	s := fmt.Sprintf("GPU memory: %s planned (weights %s, adapters and their state %s, step %s, cuBLAS %s",
		fmtMiB(p.Total), fmtMiB(p.Weights), fmtMiB(p.Adapters), fmtMiB(p.Step), fmtMiB(p.BLAS))
	if p.Slots > 0 {
		s += ", streaming slots " + fmtMiB(p.Slots)
	}
	if p.Driver > 0 {
		s += ", the driver's and cuBLAS's own " + fmtMiB(p.Driver) + " as measured"
	}
	s += ")"
	if p.Limit > 0 {
		s += " of " + budgetName(p.Limit, p.FromFree)
	}
	s += fmt.Sprintf("; %d of %d blocks resident", p.Resident, p.Blocks)
	if p.Resident < p.Blocks {
		s += ", the others streamed from host memory through the two slots (pinned host buffers of the same size)"
	}
	if p.Checkpoint {
		s += "; activations checkpointed (each block's input kept, the rest recomputed before its backward)"
	}
	return s + "; the CUDA context takes its own besides"
}

func fmtMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// budgetName names a device budget in messages: --max-vram's, or the GPU's
// free memory when none was given (cuda.Device.BudgetFromFree).
func budgetName(limit int64, fromFree bool) string {
	if fromFree {
		return fmt.Sprintf("a budget of %s (no --max-vram: the GPU's free memory less a margin)", fmtMiB(limit))
	}
	return "--max-vram " + fmtMiB(limit)
}

// budgetFix is what to give for a device budget of want: --max-vram, or,
// when the budget was the GPU's free memory, more of it.
func budgetFix(want int64, fromFree bool) string {
	if fromFree {
		return fmt.Sprintf("more free GPU memory (a budget of %s)", fmtMiB(want))
	}
	return "--max-vram " + fmtMiB(want)
}

// planGPU sizes the device side of a LoRA run of micro-batches B×T within
// limit: with or without activation checkpointing (forced by ckpt), every
// block resident or as many of the first as fit beside two slots the
// others stream through, whichever fits and should run fastest. driver is
// the driver's measured share (0 until a warm-up step has run).
//
// The estimate of a plan's time, from the H200 runs of a 1B model:
// checkpointing adds a forward of every block (+30%); streaming costs
// about half a step's time per streamed fraction of the blocks (1.09×
// with 4 of 16 streamed, 1.56× with 14 of 16).
//
// extra is what the method's other device adapters hold (sparse deltas).
func planGPU(m *model.Model, set *lora.Set, extra int64, B, T int, p cuda.Precision, limit, driver int64, ckpt bool) GPUPlan {
	best := planGPUWith(m, set, extra, B, T, p, limit, driver, true)
	if ckpt {
		return best
	}
	cost := func(pl GPUPlan) float64 {
		c := 1 + 0.5*float64(pl.Blocks-pl.Resident)/float64(max(pl.Blocks, 1))
		if pl.Checkpoint {
			c += 0.3
		}
		return c
	}
	fits := func(pl GPUPlan) bool { return limit <= 0 || pl.Total <= limit }
	plain := planGPUWith(m, set, extra, B, T, p, limit, driver, false)
	if fits(plain) && (!fits(best) || cost(plain) <= cost(best)) || !fits(plain) && !fits(best) && plain.Total <= best.Total {
		return plain
	}
	return best
}

// planGPUWith is planGPU with checkpointing on or off.
func planGPUWith(m *model.Model, set *lora.Set, extra int64, B, T int, p cuda.Precision, limit, driver int64, ckpt bool) GPUPlan {
	ad := extra
	R, dropIn := 1, 0
	var layersOf []*lora.Layer
	if set != nil {
		layersOf = set.Layers
	}
	for _, l := range layersOf {
		ad += 2 * 4 * int64(len(l.A)+len(l.B))
		R = max(R, l.R)
		if set.Config.Dropout > 0 {
			dropIn = max(dropIn, l.In)
		}
	}
	pl := GPUPlan{Adapters: ad, Step: model.GPUStepBytes(m, B, T, R, dropIn, p, ckpt), BLAS: cuda.WorkspaceBytes(limit), Driver: driver,
		Limit: limit, Checkpoint: ckpt}
	return placeBlocks(m, pl)
}

// placeBlocks completes a device plan whose adapters, step, cuBLAS and
// driver shares are set: every block resident when the total fits
// pl.Limit, else as many of the first as fit beside two slots the others
// stream through.
func placeBlocks(m *model.Model, pl GPUPlan) GPUPlan {
	layers, other := model.GPUWeightBytes(m)
	pl.Blocks, pl.Resident, pl.Weights = len(layers), len(layers), other
	for _, n := range layers {
		pl.Weights += n
	}
	fixed := pl.Adapters + pl.Step + pl.BLAS + pl.Driver
	pl.Total = fixed + pl.Weights
	limit := pl.Limit
	if limit <= 0 || pl.Total <= limit {
		return pl
	}
	// Stream: resident blocks from the first while the rest fits.
	var slot int64
	for _, n := range layers {
		slot = max(slot, n)
	}
	pl.Slots = 2 * slot
	pl.Weights, pl.Resident = other, 0
	for _, n := range layers {
		if fixed+pl.Weights+pl.Slots+n > limit {
			break
		}
		pl.Weights += n
		pl.Resident++
	}
	pl.Total = fixed + pl.Weights + pl.Slots
	return pl
}

// openGPU resolves cfg.Device for a run: nil for the CPU (with a line
// saying why when auto fell back), or the device with the model and the
// adapters on it, within --max-vram.
func openGPU(m *model.Model, cfg Config, meth Method, plan *budget.Plan, log Logger) (*gpuRun, error) {
	kind, ordinal, err := parseDevice(cfg.Device)
	if err != nil || kind == "cpu" {
		return nil, err
	}
	if g := cfg.parallel(); g != nil && !strings.HasPrefix(cfg.Device, "cuda:") {
		if n, err := cuda.Count(); err == nil && n > 0 {
			var line string
			if ordinal, line, err = rankDevice(g, n); err != nil {
				return nil, err
			}
			if line != "" {
				log(line)
			}
		}
	}
	fallback := func(err error) (*gpuRun, error) {
		if kind == "auto" {
			log("device: the CPU (" + err.Error() + ")")
			return nil, nil
		}
		return nil, err
	}
	dp, err := planDevice(m, cfg, meth, plan.OptimizerOnDisk)
	if err != nil {
		return fallback(err)
	}
	set, floats, sparse, dense, scales := dp.set, dp.floats, dp.sparse, dp.dense, dp.scales
	prec, limit, B, T, gplan := dp.prec, dp.limit, dp.B, dp.T, dp.gplan
	if err := dp.fits(); err != nil {
		return nil, err
	}
	allResident := func(pl GPUPlan) error {
		if floats != nil && pl.Resident < pl.Blocks {
			return fmt.Errorf("train: mezo --zo-target float perturbs its float matrices on the GPU and keeps every block there; %s: give %s or more",
				pl, budgetFix(pl.Total-pl.Slots+int64(pl.Blocks-pl.Resident)*pl.Slots/2+1<<20, pl.FromFree))
		}
		return nil
	}
	if err := allResident(gplan); err != nil {
		return nil, err
	}
	host := startHostShare(m)
	d, err := cuda.Open(ordinal, cuda.Options{MaxVRAM: limit})
	if err != nil {
		return fallback(err)
	}
	r := &gpuRun{d: d, limit: limit, dev: map[*lora.Layer]*model.GPULoRA{}}
	ok := false
	defer func() {
		if !ok {
			r.close()
		}
	}()
	if limit == 0 {
		// Without --max-vram, the GPU's free memory is the budget: a model
		// that does not fit streams its blocks instead of failing at an
		// allocation.
		if limit = d.BudgetFromFree(); limit > 0 {
			r.limit, r.fromFree = limit, true
			gplan = dp.plan(m, limit, 0)
			gplan.FromFree = true
			if gplan.Total > limit {
				return nil, fmt.Errorf("train: %s: over the budget; give a smaller --batch-size or --max-seq-length", gplan)
			}
			if err := allResident(gplan); err != nil {
				return nil, err
			}
		}
	}
	if err := d.Compile(); err != nil {
		return nil, err
	}
	r.ad = make(model.GPUAdapters, m.Config.Layers)
	if set != nil {
		if err := r.adaptLoRA(set); err != nil {
			return nil, err
		}
	}
	if dp.devLoRA != nil {
		if r.opt, err = newDevOptim(r, dp.devLoRA, dp.adam); err != nil {
			return nil, err
		}
	}
	// LoHO-intra: each matrix's first-order sparse delta beside its
	// zeroth-order part, which only passes the input gradient on: the
	// same matrix's LoRA factors, or its dense delta.
	for i, sp := range sparse {
		ds, err := model.NewGPUSparse(d, sp.Out, sp.In, sp.RowPtr, sp.Cols, sp.Val, true)
		if err != nil {
			return nil, err
		}
		r.sparse = append(r.sparse, sparsePair{sp.Val, sp.Grad, ds})
		st := model.GPUStack{ds}
		switch {
		case set != nil:
			L := set.Layers[i]
			if L.Target != sp.Target {
				return nil, fmt.Errorf("train: the sparse delta of %s beside the factors of %s", sp.Target, L.Target)
			}
			r.dev[L].NoGrad = true
			st = append(st, r.dev[L])
		case len(dense) > 0:
			dh := dense[i]
			if dh.Target != sp.Target {
				return nil, fmt.Errorf("train: the sparse delta of %s beside the dense delta of %s", sp.Target, dh.Target)
			}
			dd, err := model.NewGPUDense(d, dh.Out, dh.In, dh.Val)
			if err != nil {
				return nil, err
			}
			st = append(st, dd)
			key, ratio := dh.Mask()
			r.dense = append(r.dense, floatPair{i: i, host: dh.Val, dev: dd.Val, mask: cuda.MezoMask{Key: key, Ratio: ratio}, decay: true})
		}
		li, mod, err := modulePos(m, sp.Target)
		if err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		r.ad[li][mod] = st
	}
	// MeZO over block scales: each quantized matrix's multipliers, tensor
	// i of the estimator, beside the weight they scale.
	r.scaleWS = dp.scaleWS
	for i, s := range scales {
		ws, _, err := r.scaleWS.get(d) // freed by freeAdapters
		if err != nil {
			return nil, err
		}
		gs, err := model.NewGPUScales(d, s.W.Rows, s.W.Cols, s.Block, s.R, ws)
		if err != nil {
			return nil, err
		}
		r.scales = append(r.scales, gs)
		r.floats = append(r.floats, floatPair{i: i, host: s.R, dev: gs.R})
		li, mod, err := modulePos(m, s.Target)
		if err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		r.ad[li][mod] = gs
	}
	// One warm-up step of the planned shape makes every buffer and has
	// the driver load the kernels cuBLAS picks for these shapes (CUDA
	// loads them lazily, into device memory the process's own count does
	// not see): what the driver holds afterwards is what the run holds,
	// and it is checked against --max-vram before the run starts. When it
	// does not fit, the run is planned again with the driver's share as
	// measured (fewer blocks resident), once.
	//
	// Under a budget the plan comes near (within 256 MiB: the driver's
	// share seen on an H200 was 70–225 MiB), the first warm-up streams
	// every block, the smallest footprint the run can have, so that
	// measuring the driver's share does not itself pass the budget when
	// the final plan fits it.
	// The adapters' values and dropout before the warm-up, so that it
	// makes the step's buffers at their full size (the dropout mask's too).
	if err := r.push(); err != nil {
		return nil, err
	}
	toks, tgts := make([]int, B*T), make([]int, B*T)
	var used int64
	first := gplan.Resident
	if limit > 0 && gplan.Total+256<<20 > limit {
		first = 0
	}
	for attempt := 0; ; attempt++ {
		if r.g != nil {
			r.g.Close()
		}
		res := gplan.Resident
		if attempt == 0 {
			res = first
		}
		if r.g, err = m.ToGPUWith(d, prec, model.GPUOptions{Resident: res, Checkpoint: gplan.Checkpoint}); err != nil {
			return nil, err
		}
		if _, _, err := r.g.LossGrad(toks, tgts, B, T, r.ad, true, 1); err != nil {
			return nil, fmt.Errorf("train: a warm-up step on the GPU: %w", err)
		}
		free, total, err := d.MemInfo()
		if err != nil {
			return nil, err
		}
		used = total - free - d.ContextBytes()
		if res == gplan.Resident && (limit <= 0 || used <= limit) {
			break
		}
		drvShare := used - d.Used()
		next := dp.plan(m, limit, drvShare+drvShare/16)
		if attempt == 1 || next.Total > limit || (used > limit && next.Resident >= res) {
			return nil, fmt.Errorf("train: after a warm-up step the GPU holds %s for this run (%s its own allocations, the rest the driver's and cuBLAS's), over %s: give %s, or a smaller --batch-size or --max-seq-length: %w",
				fmtMiB(used), fmtMiB(d.Used()), budgetName(limit, r.fromFree), budgetFix(used+used/16, r.fromFree), cuda.ErrVRAM)
		}
		log(fmt.Sprintf("a warm-up step with %d of %d blocks resident: the driver holds %s besides qtune's own allocations; planned again with it", res, gplan.Blocks, fmtMiB(drvShare)))
		gplan = next
		gplan.FromFree = r.fromFree
		if err := allResident(gplan); err != nil {
			return nil, err
		}
	}
	if floats != nil {
		if err := r.adaptFloats(floats); err != nil {
			return nil, err
		}
	}
	r.drvPeak.Store(used)
	if err := fitHostShare("train", host.measure(m, d), plan, log); err != nil {
		return nil, err
	}
	devicePlacement(plan, gplan.Resident)
	log(fmt.Sprintf("device: %s, products in %s; placement: %s", d, prec, plan.PlacementString()))
	log(gplan.String())
	log(fmt.Sprintf("GPU memory after a warm-up step: %s allocated, %s in use by the driver's count (kernels loaded, cuBLAS's own)", fmtMiB(d.Peak()), fmtMiB(used)))
	switch mt := meth.(type) {
	case *loraMethod:
		mt.gpu = r
	case *mezoMethod:
		mt.gpu = r
	case *lohoMethod:
		mt.gpu = r
		r.g.SetFirstLayer(mt.first) // the backward stops at the first first-order block
	case *loremlMethod:
		mt.gpu = r
		mt.gpuStage = 1
		if mt.set != nil {
			mt.gpuStage = 0 // stage 2's adapters at its first step
		}
	}
	ok = true
	r.sample()
	return r, nil
}

func (r *gpuRun) close() {
	if r == nil || r.d == nil {
		return
	}
	if r.stop != nil {
		close(r.stop)
		r.sampled.Wait()
	}
	r.freeAdapters()
	if r.g != nil {
		r.g.Close()
	}
	r.d.Close()
}

// peakLine reports the most device memory the run held: its own
// allocations, and the driver's sampled count beyond what the GPU held
// when the run opened it (which adds what the driver and cuBLAS keep for
// themselves once work starts).
func (r *gpuRun) peakLine() string {
	s := fmt.Sprintf("GPU memory: peak %s allocated, %s in use by the driver's count", fmtMiB(r.d.Peak()), fmtMiB(r.drvPeak.Load()))
	if r.limit > 0 {
		s += " (" + budgetName(r.limit, r.fromFree) + ")"
	}
	return s
}

// adaptLoRA puts set's LoRA layers on the device as the run's adapters.
func (r *gpuRun) adaptLoRA(set *lora.Set) error {
	for l := range set.ByPos {
		for mod, a := range set.ByPos[l] {
			L, isLoRA := a.(*lora.Layer)
			if !isLoRA {
				continue
			}
			ga, err := model.NewGPULoRA(r.d, L.In, L.Out, L.R, L.Scale, L.A, L.B)
			if err != nil {
				return err
			}
			r.ad[l][mod] = ga
			r.pairs = append(r.pairs, gpuPair{L, ga})
			r.dev[L] = ga
		}
	}
	return nil
}

// freeAdapters releases the device adapters and trained norms' gradients
// (a method that changes what it trains makes new ones).
func (r *gpuRun) freeAdapters() {
	for _, p := range r.pairs {
		p.dev.Free()
	}
	for _, p := range r.sparse {
		p.dev.Free()
	}
	for _, p := range r.norms {
		p.dw.Free()
	}
	for _, p := range r.dense {
		p.dev.Free()
	}
	if r.opt != nil {
		r.opt.free()
		r.opt = nil
	}
	for _, s := range r.scales {
		s.Free()
	}
	if r.scaleWS.buf != nil {
		r.scaleWS.buf.Free()
	}
	r.pairs, r.sparse, r.norms, r.dense, r.scales, r.scaleWS = nil, nil, nil, nil, nil, sharedWS{}
	r.dev = map[*lora.Layer]*model.GPULoRA{}
	r.ad = make(model.GPUAdapters, len(r.ad))
	if r.g != nil {
		r.g.SetNormGrads(nil)
	}
}

// push copies the adapters' current factors to the device and zeroes the
// device gradients; each takes its host layer's dropout (0 while a
// validation runs) and this step's mask stream.
func (r *gpuRun) push() error { return r.d.Batch(r.pushNow) }

func (r *gpuRun) pushNow() error {
	for _, p := range r.pairs {
		seed, id := p.cpu.DropoutStream()
		p.dev.SetDropout(p.cpu.Dropout, seed, id)
		if r.opt == nil || r.opt.hostNewer { // else the device's factors are the newer
			if err := errors.Join(p.dev.A.WriteF32(0, p.cpu.A), p.dev.B.WriteF32(0, p.cpu.B)); err != nil {
				return err
			}
		}
		if err := errors.Join(p.dev.GA.Zero(), p.dev.GB.Zero()); err != nil {
			return err
		}
	}
	for _, p := range r.sparse {
		if len(p.val) == 0 {
			continue
		}
		if err := errors.Join(p.dev.Val.WriteF32(0, p.val), p.dev.Grad.Zero()); err != nil {
			return err
		}
	}
	for _, p := range r.norms {
		if err := errors.Join(p.dev.WriteF32(0, p.w), p.dw.Zero()); err != nil {
			return err
		}
	}
	if err := copyOver(r.floats); err != nil {
		return err
	}
	if r.denseHost {
		if err := copyOver(r.dense); err != nil {
			return err
		}
		r.denseHost, r.denseDev = false, false
	}
	return nil
}

// copyOver writes each pair's host values to its device copy (those the
// device has no copy of are skipped), on the device's thread.
func copyOver(pairs []floatPair) error {
	for _, p := range pairs {
		if p.dev != nil {
			if err := p.dev.WriteF32(0, p.host); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyBack reads each pair's device values into its host slice, in one
// hand-over to the device's thread; what names them in an error.
func copyBack(d *cuda.Device, what string, pairs []floatPair) error {
	err := d.Batch(func() error {
		for _, p := range pairs {
			if err := p.dev.ReadF32(p.host, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("train: copying %s back from the GPU: %w", what, err)
	}
	return nil
}

// perturber is MeZO's perturbation of the device's copies of the LoRA
// factors: tensor i of the estimator (loraTensors' order: each layer's A,
// then its B) gets c·z(seed, i), z regenerated on the device.
func (r *gpuRun) perturber(layers []*lora.Layer) (mezo.Perturber, error) {
	pairs := make([]floatPair, 0, 2*len(layers))
	for _, L := range layers {
		dv := r.dev[L]
		if dv == nil {
			return nil, fmt.Errorf("train: %s has no copy on the GPU", L.Target)
		}
		pairs = append(pairs, floatPair{i: len(pairs), host: L.A, dev: dv.A}, floatPair{i: len(pairs) + 1, host: L.B, dev: dv.B})
	}
	return r.perturbPairs(pairs, nil), nil
}

// pull adds the device gradients into the host ones.
func (r *gpuRun) pull() error { return r.d.Batch(r.pullNow) }

func (r *gpuRun) pullNow() error {
	var buf []float32
	for _, p := range r.pairs {
		for _, g := range []struct {
			host []float32
			dev  interface{ ReadF32([]float32, int) error }
		}{{p.cpu.GA, p.dev.GA}, {p.cpu.GB, p.dev.GB}} {
			if cap(buf) < len(g.host) {
				buf = make([]float32, len(g.host))
			}
			b := buf[:len(g.host)]
			if err := g.dev.ReadF32(b, 0); err != nil {
				return err
			}
			for i, v := range b {
				g.host[i] += v
			}
		}
	}
	for _, p := range r.sparse {
		if len(p.grad) == 0 {
			continue
		}
		if cap(buf) < len(p.grad) {
			buf = make([]float32, len(p.grad))
		}
		b := buf[:len(p.grad)]
		if err := p.dev.Grad.ReadF32(b, 0); err != nil {
			return err
		}
		for i, v := range b {
			p.grad[i] += v
		}
	}
	for _, p := range r.norms {
		if cap(buf) < len(p.g) {
			buf = make([]float32, len(p.g))
		}
		b := buf[:len(p.g)]
		if err := p.dw.ReadF32(b, 0); err != nil {
			return err
		}
		for i, v := range b {
			p.g[i] += v
		}
	}
	return nil
}

// stepGPU is loraMethod.Step with the micro-batches on the device.
func (l *loraMethod) stepGPU(ctx context.Context, it int, batches []data.Batch, lr float64) (float64, int, error) {
	r := l.gpu
	optim.ZeroGrad(l.params)
	total, err := stepTargets(it, batches)
	if err != nil {
		return 0, 0, err
	}
	if err := r.push(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	if r.opt != nil {
		if err := r.d.Batch(r.opt.pushNow); err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
	}
	g := l.cfg.parallel()
	loss, n, err := r.gradSteps(ctx, it, myBatches(batches, g), total)
	if err != nil {
		return 0, 0, err
	}
	if r.opt != nil {
		return loss, n, r.opt.step(r.d, lr, l.cfg.MaxGradNorm)
	}
	if loss, n, err = l.reduce(g, it, nil, loss, n); err != nil {
		return 0, 0, err
	}
	if l.cfg.MaxGradNorm > 0 {
		optim.ClipGradNorm(l.params, l.cfg.MaxGradNorm)
	}
	return loss, n, l.opt.Step(l.params, lr)
}

// gradSteps runs the rank's micro-batches forward and backward on the
// device (ctx checked before each) and adds the gradients into the host's:
// the summed loss and target count.
func (r *gpuRun) gradSteps(ctx context.Context, it int, mine []data.Batch, total int) (float64, int, error) {
	var loss float64
	var n int
	for k, b := range mine {
		if err := stepCancelled(ctx, it, k, len(mine)); err != nil {
			return 0, 0, err
		}
		s, c, err := r.g.LossGrad(b.Tokens, b.Targets, b.B, b.T, r.ad, true, 1/float64(total))
		if err != nil {
			return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
		}
		passDone("step")
		loss += s
		n += c
	}
	if r.opt != nil {
		return loss, n, nil // the optimizer steps on the device, with the gradients there
	}
	if err := r.pull(); err != nil {
		return 0, 0, fmt.Errorf("train: iteration %d: %w", it, err)
	}
	return loss, n, nil
}

// evalLoss is a zeroth-order evaluation of the step on the device
// (meanLoss over the micro-batches, no gradients).
func (r *gpuRun) evalLoss(ctx context.Context, it int, batches []data.Batch, total int, g comm.Comm) func() (float64, error) {
	return meanLoss(ctx, it, batches, total, g, func(b data.Batch) (float64, error) {
		s, _, err := r.g.LossGrad(b.Tokens, b.Targets, b.B, b.T, r.ad, false, 0)
		return s, err
	})
}

// onGPU returns the method's device side when its passes run there.
func onGPU(meth Method) *gpuRun {
	switch mt := meth.(type) {
	case *loraMethod:
		return mt.gpu
	case *mezoMethod:
		return mt.gpu
	case *lohoMethod:
		return mt.gpu
	case *loremlMethod:
		return mt.gpu
	}
	return nil
}

// gpuLikely says whether work on m will run on the GPU, for the host plan
// made before the device is opened: --device cuda, or auto with a GPU the
// model's weights and adapters run on.
func gpuLikely(m *model.Model, device string) bool {
	kind, _, err := parseDevice(device)
	switch {
	case err != nil || kind == "cpu":
		return false
	case kind == "cuda":
		return true
	}
	if n, err := cuda.Count(); err != nil || n == 0 || m.GPUSupported() != nil {
		return false
	}
	var ws sharedWS
	for l := range m.Adapters {
		for _, a := range m.Adapters[l] {
			if a == nil {
				continue
			}
			if _, _, _, err := deviceAdapter(a, &ws); err != nil {
				return false
			}
		}
	}
	return true
}

// errPlannedForGPU is the refusal of work whose host plan was made for the
// GPU after --device auto fell back to the CPU (the log line before says
// why): the CPU's buffers were not planned.
var errPlannedForGPU = errors.New("--device auto: the GPU the host plan was made for could not take the work (the line above says why); give --device cpu for a plan of the CPU's buffers")

// devicePart is what a training run puts on the GPU, as planned before a
// device is open: the method's tensors there, their bytes beside the
// model's, and the device plan under --max-vram (or none).
type devicePart struct {
	set          *lora.Set
	floats       *mezo.SPSA
	sparse       []*loho.Sparse
	dense        []*loho.Dense
	scales       []*mezo.Scales
	scaleWS      sharedWS
	devLoRA      *loraMethod
	adam         *optim.AdamW
	extra, limit int64
	prec         cuda.Precision
	B, T         int
	ckpt         bool
	gplan        GPUPlan // within limit (none when 0)
}

// plan places the blocks within limit (0: none), the driver's measured
// share besides.
func (dp *devicePart) plan(m *model.Model, limit, driver int64) GPUPlan {
	return planGPU(m, dp.set, dp.extra, dp.B, dp.T, dp.prec, limit, driver, dp.ckpt)
}

// fits refuses a plan over --max-vram, naming a budget that holds it.
func (dp *devicePart) fits() error {
	if dp.limit > 0 && dp.gplan.Total > dp.limit {
		return fmt.Errorf("train: %s: over the budget; give a smaller --batch-size or --max-seq-length, or --max-vram %s", dp.gplan, fmtMiB(dp.gplan.Total+1<<20))
	}
	return nil
}

// planDevice plans meth's steps on the GPU; an error says why the method
// or the model does not run there.
func planDevice(m *model.Model, cfg Config, meth Method, optOnDisk bool) (dp devicePart, err error) {
	switch mt := meth.(type) {
	case *loraMethod:
		dp.set = mt.set
	case *mezoMethod:
		dp.set = mt.set
	case *lohoMethod:
		dp.set = mt.set // nil for intra with --zo-target complement: its deltas go below
	case *loremlMethod:
		dp.set = mt.scores // nil in stage 2 (resumed): its adapters are made at its first step
	}
	_, isLoReML := meth.(*loremlMethod)
	dp.floats = floatMeZO(meth)
	dp.sparse, dp.dense, dp.scales = sparseOf(meth), denseOf(meth), scalesOf(meth)
	if dp.set == nil && !isLoReML && dp.floats == nil && len(dp.sparse) == 0 && len(dp.scales) == 0 {
		return dp, fmt.Errorf("method %s runs on the CPU only", cfg.Method)
	}
	if err := m.GPUSupported(); err != nil {
		return dp, err
	}
	dp.prec, _ = parsePrecision(cfg.GPUPrecision)
	if cfg.MaxVRAM != "" {
		dp.limit, _ = budget.ParseSize(cfg.MaxVRAM)
	}
	dp.B, dp.T, dp.ckpt = cfg.BatchSize, cfg.MaxSeqLength, cfg.GradCheckpoint
	dp.devLoRA, dp.adam = deviceOptimizer(meth, cfg, optOnDisk)
	if dp.devLoRA != nil {
		dp.extra += devOptimBytes(dp.set.Params(), 2*len(dp.set.Layers))
	}
	for _, sp := range dp.sparse {
		dp.extra += sparseDeviceBytes(sp.Out, sp.In, len(sp.Val))
	}
	for _, dd := range dp.dense {
		dp.extra += dd.Bytes()
	}
	for _, s := range dp.scales {
		dp.extra += 4 * int64(len(s.R))
		dp.scaleWS.fit(s)
	}
	dp.extra += dp.scaleWS.need
	if lm, ok := meth.(*loremlMethod); ok {
		dp.extra = lm.stage2DeviceBytes()
	}
	dp.gplan = dp.plan(m, dp.limit, 0)
	return dp, nil
}

// planDeviceDry puts a dry run's device plan (qtune plan --device cuda)
// in its host plan, from the shapes alone, when the run is the GPU's. A
// plan over --max-vram is the error the run would stop with.
func planDeviceDry(m *model.Model, cfg Config, meth Method, plan *budget.Plan) error {
	if !cfg.onGPU {
		return nil
	}
	dp, err := planDevice(m, cfg, meth, plan.OptimizerOnDisk)
	if err != nil {
		plan.Device = "device: " + err.Error()
		return nil
	}
	if err := dp.fits(); err != nil {
		return err
	}
	dryDevice(plan, dp.gplan, "run")
	return nil
}

// dryDevice puts device plan gplan in host plan p (its placement, and the
// line printed after the host's): a plan made before any device is open.
func dryDevice(p *budget.Plan, gplan GPUPlan, who string) {
	devicePlacement(p, gplan.Resident)
	p.Device = gplan.String()
	if gplan.Limit == 0 {
		p.Device += fmt.Sprintf(" (no --max-vram: the %s's budget is the GPU's free memory when it starts)", who)
	}
	p.Device += fmt.Sprintf("; the %s measures what the driver holds besides after a warm-up", who)
}

// rankDevice spreads a data-parallel group's ranks on this machine over
// its n GPUs (--device cuda or auto, no ordinal given): local rank r takes
// cuda:r. More ranks here than GPUs is refused: each GPU's memory is one
// rank's budget (its free memory, or --max-vram checked against the
// driver's count of the whole device after the warm-up), which a second
// rank's allocations would pass. line says which GPU when there is more
// than one rank here.
func rankDevice(g comm.Comm, n int) (ordinal int, line string, err error) {
	local, r := g.LocalSize(), g.LocalRank()
	if local <= 1 || n <= 0 {
		return 0, "", nil
	}
	if local > n {
		return 0, "", fmt.Errorf("train: %d ranks on this machine and %d GPU(s): each GPU takes one rank (its memory is that rank's budget); launch at most %d ranks a machine, or give --device cpu", local, n, n)
	}
	return r, fmt.Sprintf("device: local rank %d of %d on this machine takes cuda:%d of its %d GPUs", r, local, r, n), nil
}
