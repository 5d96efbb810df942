package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/internal/shared"
	"github.com/qtune/qtune/kernels/cuda"
	"github.com/qtune/qtune/methods/loho"
	"github.com/qtune/qtune/methods/lora"
	"github.com/qtune/qtune/methods/mezo"
	"github.com/qtune/qtune/model"
)

// --device and its companions are checked before any work, on any machine.
func TestDeviceFlagsChecked(t *testing.T) {
	for _, c := range []struct {
		dev, vram, prec, method string
		dropout                 float64
		want                    string
	}{
		{"tpu", "", "", "lora", 0, `--device "tpu"`},
		{"cuda:x", "", "", "lora", 0, `--device "cuda:x"`},
		{"cuda", "lots", "", "lora", 0, "--max-vram"},
		{"cpu", "2GiB", "", "lora", 0, "--max-vram without --device"},
		{"cuda", "", "f8", "lora", 0, "--gpu-precision"},
	} {
		cfg := smallRun(t, t.TempDir())
		cfg.Device, cfg.MaxVRAM, cfg.GPUPrecision, cfg.Method, cfg.Dropout = c.dev, c.vram, c.prec, c.method, c.dropout
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %q", c, err, c.want)
		}
	}
	for _, dev := range []string{"", "cpu", "auto", "cuda", "cuda:0", "cuda:3"} {
		cfg := smallRun(t, t.TempDir())
		cfg.Device, cfg.Dropout = dev, 0
		if err := cfg.Validate(); err != nil {
			t.Errorf("--device %q: %v", dev, err)
		}
	}
	// Every method and zeroth-order target runs on the GPU.
	for _, c := range []struct{ method, zo string }{{"mezo", "lora"}, {"mezo", "float"}, {"mezo", "scales"}, {"loho", "lora"},
		{"loho-intra", "lora"}, {"loho-intra", "complement"}, {"loreml", ""}, {"qlora", ""}} {
		cfg := smallRun(t, t.TempDir())
		cfg.Device, cfg.Method, cfg.ZOTarget, cfg.Dropout = "cuda", c.method, c.zo, 0
		if err := cfg.Validate(); err != nil {
			t.Errorf("--device cuda --method %s --zo-target %q: %v", c.method, c.zo, err)
		}
	}
}

// Without a GPU, --device auto trains on the CPU and says why; --device
// cuda fails with one line.
func TestDeviceWithoutGPU(t *testing.T) {
	if _, err := cuda.Count(); err == nil {
		t.Skip("this machine has a GPU")
	}
	cfg := smallRun(t, t.TempDir())
	cfg.Iters, cfg.StepsPerEval, cfg.Dropout = 2, 0, 0
	cfg.Device = "auto"
	var lines []string
	res, err := Run(context.Background(), cfg, func(s string) { lines = append(lines, s) }, nil)
	if err != nil || len(res.Curve) != 2 {
		t.Fatalf("--device auto without a GPU: %v", err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "device: the CPU (cuda: CUDA driver not found") {
		t.Errorf("auto did not say it fell back:\n%s", strings.Join(lines, "\n"))
	}
	cfg.Device = "cuda"
	cfg.AdapterPath = t.TempDir()
	_, err = Run(context.Background(), cfg, nil, nil)
	if !errors.Is(err, cuda.ErrNoCUDA) || strings.Contains(err.Error(), "\n") {
		t.Errorf("--device cuda without a GPU: %v", err)
	}
}

// On a GPU: the same run on the CPU and on the device (products in f32)
// reports the same losses within 1e-3 relative, step after step; the
// device memory the run held, by its own count and by the driver's,
// stays under --max-vram; a budget the plan does not fit, or one the
// warm-up step's measured use passes, is refused before the run starts.
func TestGPUTrainMatchesCPU(t *testing.T) {
	needGPU(t)
	ctx := context.Background()
	cfg := smallRun(t, t.TempDir()) // LoRA dropout 0.1: the device draws the CPU's masks
	cpu, err := Run(ctx, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cpuDir := cfg.AdapterPath
	cfg.AdapterPath, cfg.Device, cfg.GPUPrecision, cfg.MaxVRAM = t.TempDir(), "cuda", "f32", "160MiB"
	var lines []string
	gpu, err := Run(ctx, cfg, func(s string) { lines = append(lines, s) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range cpu.Curve {
		if g := gpu.Curve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("iteration %d: loss %.6f on the GPU, %.6f on the CPU", p.Iter, g, p.Loss)
		}
	}
	for i, p := range cpu.ValCurve {
		if g := gpu.ValCurve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("validation at %d: %.6f on the GPU, %.6f on the CPU", p.Iter, g, p.Loss)
		}
	}
	log := strings.Join(lines, "\n")
	if !strings.Contains(log, "device: cuda:0") || !strings.Contains(log, "GPU memory: peak") {
		t.Errorf("the log does not say where the run went:\n%s", log)
	}
	var own, drv float64
	if i := strings.Index(log, "GPU memory: peak "); i >= 0 {
		fmt.Sscanf(log[i:], "GPU memory: peak %f MiB allocated, %f MiB", &own, &drv)
	}
	if !(own > 0 && own <= 160 && drv >= own && drv <= 160) {
		t.Errorf("peak %.1f MiB allocated, %.1f MiB by the driver's count, under --max-vram 160MiB", own, drv)
	}
	t.Logf("CPU final %.5f, GPU final %.5f; GPU peak %.1f MiB allocated, %.1f MiB by the driver's count\n%s", cpu.FinalTrain, gpu.FinalTrain, own, drv, log)
	// AdamW steps on the device (moments there, gradients clipped there):
	// the saved factors are the CPU run's, and a run stopped after
	// iteration 3 and resumed on the device gives the uninterrupted losses
	// (factors, moments and step counts copied back at the save and over
	// at the resume).
	sameAdapters(t, cpuDir, cfg.AdapterPath)
	resumedOnGPU(t, cfg, gpu, 3)

	// --grad-checkpoint on the device: the plan says so, and the run's
	// losses are the plain GPU run's to the bit (the same kernels, recomputed).
	ck := cfg
	ck.AdapterPath, ck.GradCheckpoint = t.TempDir(), true
	lines = nil
	ckr, err := Run(ctx, ck, func(s string) { lines = append(lines, s) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "activations checkpointed") {
		t.Errorf("the plan does not say the activations are checkpointed:\n%s", strings.Join(lines, "\n"))
	}
	for i, p := range gpu.Curve {
		if ckr.Curve[i].Loss != p.Loss {
			t.Errorf("iteration %d: loss %v checkpointed, %v not", p.Iter, ckr.Curve[i].Loss, p.Loss)
		}
	}

	cfg.AdapterPath, cfg.MaxVRAM = t.TempDir(), "1MiB"
	if _, err := Run(ctx, cfg, nil, nil); err == nil || !strings.Contains(err.Error(), "over the budget") {
		t.Errorf("a 1 MiB GPU budget: %v", err)
	}
	// 12 MiB holds the plan (own allocations ≈ 8 MiB) but not what the
	// driver loads besides: refused after the warm-up step, naming a
	// budget that holds.
	cfg.AdapterPath, cfg.MaxVRAM = t.TempDir(), "12MiB"
	_, err = Run(ctx, cfg, nil, nil)
	if !errors.Is(err, cuda.ErrVRAM) || !strings.Contains(err.Error(), "after a warm-up step") {
		t.Errorf("a 12 MiB GPU budget: %v", err)
	}
	t.Log(err)
}

// MeZO on the GPU (the forward passes and the ±εz perturbations of the
// LoRA factors there, z regenerated from the seed) reports the CPU run's
// losses within 1e-3 relative, step after step, validations included:
// each step's projected gradient (L+ − L−)/2ε divides the two devices'
// rounding differences by ε, so this also bounds how far the two
// forwards may drift apart.
func TestGPUMeZOMatchesCPU(t *testing.T) {
	needGPU(t)
	for _, target := range []string{"lora", "float", "scales"} {
		t.Run(target, func(t *testing.T) { testGPUMeZO(t, target) })
	}
}

// testGPUMeZO: MeZO over LoRA factors (perturbed on the device), over
// the float tensors of stories260K F32 (its norms and matrices perturbed
// on the device, its embedding on the host, the tied output's device copy
// with it), or over the block scales of its Q8_0 form (each adapted
// layer's weight decoded and scaled on the device), gives the CPU's losses.
func testGPUMeZO(t *testing.T, target string) {
	ctx := context.Background()
	cfg := smallRun(t, t.TempDir())
	cfg.Method, cfg.Dropout, cfg.Iters, cfg.Perturbations, cfg.StepsPerEval = "mezo", 0, 4, 1, 4
	cfg.ZOLearningRate, cfg.Epsilon, cfg.ZOTarget = 5e-3, 1e-3, target
	switch target {
	case "float":
		cfg.ZOLearningRate = 1e-3 // every weight moves: LoRA's step diverges here
	case "scales":
		cfg.Model = quantizedStories(t, t.TempDir()) // Q8_0: its blocks' multipliers
		cfg.ZOLearningRate = 5e-2
	}
	// A wrong z on the device gives other projected gradients, so other
	// updates: cpuAndFrozen checks that the updates move the losses.
	cpu, fr := cpuAndFrozen(t, ctx, cfg, func(f *Config) { f.ZOLearningRate = 1e-12 }) // 0 is refused
	last := len(cpu.Curve) - 1
	cfg.AdapterPath, cfg.Device, cfg.GPUPrecision = t.TempDir(), "cuda", "f32"
	var lines []string
	gpu, err := Run(ctx, cfg, func(s string) { lines = append(lines, s) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "device: cuda:0") {
		t.Errorf("the log does not say the run went to the GPU:\n%s", strings.Join(lines, "\n"))
	}
	if len(gpu.Curve) != len(cpu.Curve) {
		t.Fatalf("%d iterations on the GPU, %d on the CPU", len(gpu.Curve), len(cpu.Curve))
	}
	for i, p := range cpu.Curve {
		g := gpu.Curve[i].Loss
		if math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("iteration %d: loss %.6f on the GPU, %.6f on the CPU (%.6f without updates)", p.Iter, g, p.Loss, fr.Curve[i].Loss)
		}
	}
	for i, p := range cpu.ValCurve {
		if g := gpu.ValCurve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("validation at %d: %.6f on the GPU, %.6f on the CPU", p.Iter, g, p.Loss)
		}
	}
	t.Logf("last loss: CPU %.6f, GPU %.6f, without updates %.6f", cpu.Curve[last].Loss, gpu.Curve[last].Loss, fr.Curve[last].Loss)
}

// LoHO on the GPU reports the CPU run's losses within 1e-3 relative, and
// its updates move the losses well past that. Inter-layer: the two
// deepest blocks first order, their gradients from a backward stopped
// there; MeZO on the factors of the blocks below, perturbed on the device.
// Intra-layer: a sparse delta at half of each matrix's entries first
// order (its sampled gradient and input gradient on the device), MeZO on
// the same matrices' LoRA factors (--zo-target lora) or on the other half
// of their entries (complement: a dense delta per matrix, perturbed and
// updated in place on the device, z cleared at the first-order mask; the
// saved deltas are the CPU's, and a run stopped and resumed gives the
// uninterrupted run's losses).
func TestGPULoHOMatchesCPU(t *testing.T) {
	needGPU(t)
	for _, c := range []struct{ method, zo string }{{"loho", "lora"}, {"loho-intra", "lora"}, {"loho-intra", "complement"}} {
		t.Run(c.method+"/"+c.zo, func(t *testing.T) { testGPULoHO(t, c.method, c.zo) })
	}
}

func testGPULoHO(t *testing.T, method, zo string) {
	ctx := context.Background()
	cfg := smallRun(t, t.TempDir())
	cfg.Method, cfg.FOLayers, cfg.Dropout, cfg.Iters, cfg.StepsPerEval = method, "2", 0, 4, 4
	cfg.LearningRate, cfg.ZOLearningRate, cfg.ZOTarget = 2e-2, 1e-3, zo
	if method == "loho-intra" {
		cfg.FORatio, cfg.LearningRate = 0.5, 5e-3
	}
	cpu, fr := cpuAndFrozen(t, ctx, cfg, func(f *Config) { f.LearningRate, f.ZOLearningRate = 1e-12, 1e-12 })
	last := len(cpu.Curve) - 1
	cpuDir := cfg.AdapterPath
	cfg.AdapterPath, cfg.Device, cfg.GPUPrecision = t.TempDir(), "cuda", "f32"
	var lines []string
	gpu, err := Run(ctx, cfg, func(s string) { lines = append(lines, s) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "device: cuda:0") {
		t.Errorf("the log does not say the run went to the GPU:\n%s", strings.Join(lines, "\n"))
	}
	for i, p := range cpu.Curve {
		if g := gpu.Curve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("iteration %d: loss %.6f on the GPU, %.6f on the CPU (%.6f without updates)", p.Iter, g, p.Loss, fr.Curve[i].Loss)
		}
	}
	for i, p := range cpu.ValCurve {
		if g := gpu.ValCurve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("validation at %d: %.6f on the GPU, %.6f on the CPU", p.Iter, g, p.Loss)
		}
	}
	t.Logf("last loss: CPU %.6f, GPU %.6f, without updates %.6f", cpu.Curve[last].Loss, gpu.Curve[last].Loss, fr.Curve[last].Loss)
	if zo == "complement" {
		sameDenseDeltas(t, cpuDir, cfg.AdapterPath)
		resumedOnGPU(t, cfg, gpu, 3)
	}
}

// sameDenseDeltas: the dense deltas a GPU run saved are the CPU run's
// within 1% of each one's norm (the projected gradients differ by the
// devices' rounding over ε), and zero where the CPU's are.
func sameDenseDeltas(t *testing.T, cpu, gpu string) {
	t.Helper()
	read := func(dir string) []mezo.Tensor {
		ts, _, err := mezo.ReadTensors(filepath.Join(dir, loho.DenseFile))
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	want, got := read(cpu), read(gpu)
	if len(want) == 0 || len(got) != len(want) {
		t.Fatalf("%d dense deltas saved on the GPU, %d on the CPU", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Name != w.Name || len(g.Data) != len(w.Data) {
			t.Fatalf("delta %d: %s (%d values) on the GPU, %s (%d) on the CPU", i, g.Name, len(g.Data), w.Name, len(w.Data))
		}
		var diff, norm float64
		for j, x := range w.Data {
			if (x == 0) != (g.Data[j] == 0) {
				t.Fatalf("%s[%d]: %g on the GPU, %g on the CPU", w.Name, j, g.Data[j], x)
			}
			d := float64(g.Data[j] - x)
			diff, norm = diff+d*d, norm+float64(x)*float64(x)
		}
		if !(norm > 0) || math.Sqrt(diff) > 1e-2*math.Sqrt(norm) {
			t.Errorf("%s: ‖GPU − CPU‖ = %.3g, ‖CPU‖ = %.3g", w.Name, math.Sqrt(diff), math.Sqrt(norm))
		}
	}
}

// sameAdapters: the LoRA factors a GPU run saved are the CPU run's within
// 1e-3 of each factor's norm.
func sameAdapters(t *testing.T, cpu, gpu string) {
	t.Helper()
	m := openStories(t)
	load := func(dir string) *lora.Set {
		set, err := lora.Load(m, dir)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	want, got := load(cpu), load(gpu)
	if len(want.Layers) == 0 || len(got.Layers) != len(want.Layers) {
		t.Fatalf("%d adapted matrices saved on the GPU, %d on the CPU", len(got.Layers), len(want.Layers))
	}
	for i, w := range want.Layers {
		g := got.Layers[i]
		for _, f := range []struct {
			name string
			w, g []float32
		}{{"A", w.A, g.A}, {"B", w.B, g.B}} {
			var diff, norm float64
			for j, x := range f.w {
				d := float64(f.g[j] - x)
				diff, norm = diff+d*d, norm+float64(x)*float64(x)
			}
			if !(norm > 0) || math.Sqrt(diff) > 1e-3*math.Sqrt(norm) {
				t.Errorf("%s.%s: ‖GPU − CPU‖ = %.3g, ‖CPU‖ = %.3g", w.Target, f.name, math.Sqrt(diff), math.Sqrt(norm))
			}
		}
	}
}

// resumedOnGPU stops cfg's run on the device after iteration stop (its
// state saved on the way out), resumes it there, and wants the losses of
// the uninterrupted run full.
func resumedOnGPU(t *testing.T, cfg Config, full *Result, stop int) {
	t.Helper()
	cfg.AdapterPath = t.TempDir()
	res := stopThenResume(t, cfg, stop, nil)
	if len(res.Curve) != len(full.Curve) || len(res.Curve) <= stop {
		t.Fatalf("%d iterations resumed, %d uninterrupted", len(res.Curve), len(full.Curve))
	}
	for _, p := range res.Curve[stop:] {
		if want := full.Curve[p.Iter-1].Loss; math.Abs(p.Loss-want) > 1e-6*math.Abs(want) {
			t.Errorf("resumed iteration %d: loss %.7f, %.7f uninterrupted", p.Iter, p.Loss, want)
		}
	}
}

// LoReML on the GPU reports the CPU run's losses within 1e-3 relative in
// both stages (stage 1: the scores as LoRA layers with their dropout;
// stage 2: each matrix's sparse delta beside its frozen warm start, and
// the norms trained with their gradients from the device), validations
// included; and a run stopped in stage 2 and resumed on the device gives
// the uninterrupted run's losses.
func TestGPULoReMLMatchesCPU(t *testing.T) {
	needGPU(t)
	ctx := context.Background()
	cfg := smallRun(t, t.TempDir())
	cfg.Method, cfg.Iters, cfg.Stage1Iters, cfg.KeepRatio, cfg.StepsPerEval, cfg.SaveEvery = "loreml", 6, 3, 0.05, 3, 4
	cfg.LearningRate = 1e-2
	cpu, fr := cpuAndFrozen(t, ctx, cfg, func(f *Config) { f.LearningRate = 1e-12 })
	last := len(cpu.Curve) - 1
	gcfg := cfg
	gcfg.AdapterPath, gcfg.Device, gcfg.GPUPrecision = t.TempDir(), "cuda", "f32"
	gpu, err := Run(ctx, gcfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range cpu.Curve {
		if g := gpu.Curve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("iteration %d: loss %.6f on the GPU, %.6f on the CPU (%.6f without updates)", p.Iter, g, p.Loss, fr.Curve[i].Loss)
		}
	}
	for i, p := range cpu.ValCurve {
		if g := gpu.ValCurve[i].Loss; math.Abs(g-p.Loss) > 1e-3*math.Abs(p.Loss) {
			t.Errorf("validation at %d: %.6f on the GPU, %.6f on the CPU", p.Iter, g, p.Loss)
		}
	}
	// Stopped in stage 2 (its state saved on the way out), resumed on the device.
	rcfg := gcfg
	rcfg.AdapterPath = t.TempDir()
	var rlog []string
	res := stopThenResume(t, rcfg, 5, func(s string) { rlog = append(rlog, s) })
	from := 0
	for _, l := range rlog {
		if i := strings.Index(l, " at iteration "); strings.HasPrefix(l, "resumed from") && i > 0 {
			fmt.Sscanf(l[i:], " at iteration %d", &from)
		}
	}
	if from <= cfg.Stage1Iters {
		t.Errorf("the run did not resume from a stage-2 state (iteration %d):\n%s", from, strings.Join(rlog, "\n"))
	}
	if len(res.Curve) != len(gpu.Curve) {
		t.Fatalf("%d iterations resumed, %d uninterrupted", len(res.Curve), len(gpu.Curve))
	}
	for _, p := range res.Curve {
		if want := gpu.Curve[p.Iter-1].Loss; math.Abs(p.Loss-want) > 1e-6*math.Abs(want) {
			t.Errorf("resumed iteration %d: loss %.7f, %.7f uninterrupted", p.Iter, p.Loss, want)
		}
	}
	t.Logf("last loss: CPU %.6f, GPU %.6f, without updates %.6f; resumed at iteration %d", cpu.Curve[last].Loss, gpu.Curve[last].Loss, fr.Curve[last].Loss, from)
}

// The device plan keeps every block resident when it fits, else as many
// of the first blocks as fit beside two streaming slots, and never plans
// past the limit when it can fit at all. No GPU needed.
func TestPlanGPUStreams(t *testing.T) {
	m, err := model.Open(shared.Path(t, "assets", "models", "stories260K.gguf"), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.New(m, lora.Config{Rank: 4, Alpha: 8})
	if err != nil {
		t.Fatal(err)
	}
	all := planGPUWith(m, set, 0, 2, 32, cuda.BF16, 0, 0, false)
	if all.Resident != 5 || all.Slots != 0 || all.Total != all.Weights+all.Adapters+all.Step+all.BLAS {
		t.Fatalf("no limit: %+v", all)
	}
	layers, other := model.GPUWeightBytes(m)
	limit := all.Total // exactly fits: all resident
	if p := planGPUWith(m, set, 0, 2, 32, cuda.BF16, limit, 0, false); p.Resident != 5 || p.Total > limit {
		t.Errorf("a limit of exactly the plan: %+v", p)
	}
	fixed := all.Adapters + all.Step + cuda.WorkspaceBytes(1)
	slot := slices.Max(layers)
	limit = fixed + other + 2*slot + layers[0] + layers[1] + 100
	p := planGPUWith(m, set, 0, 2, 32, cuda.BF16, limit, 0, false)
	if p.Resident != 2 || p.Slots != 2*slot || p.Total > limit {
		t.Errorf("room for two blocks beside the slots: %+v", p)
	}
	if !strings.Contains(p.String(), "2 of 5 blocks resident, the others streamed") {
		t.Errorf("%s", p)
	}
	// The driver's measured share takes room from the blocks.
	if q := planGPUWith(m, set, 0, 2, 32, cuda.BF16, limit, layers[0], false); q.Resident != 1 || q.Total > limit {
		t.Errorf("with the driver's share: %+v", q)
	}
	// Nothing fits: the plan says by how much.
	if q := planGPUWith(m, set, 0, 2, 32, cuda.BF16, fixed, 0, false); q.Total <= fixed || q.Resident != 0 {
		t.Errorf("too small a limit: %+v", q)
	}

	// Checkpointing: never without need, chosen when only it fits, forced
	// by --grad-checkpoint.
	if q := planGPU(m, set, 0, 2, 32, cuda.BF16, all.Total, 0, false); q.Checkpoint || q.Resident != 5 {
		t.Errorf("a limit the plain plan fits: %+v", q)
	}
	smallest := planGPUWith(m, set, 0, 2, 32, cuda.BF16, 1, 0, false) // every block streamed
	if q := planGPU(m, set, 0, 2, 32, cuda.BF16, smallest.Total-1, 0, false); !q.Checkpoint || q.Total > smallest.Total-1 {
		t.Errorf("below the smallest plain plan (%d): %+v", smallest.Total, q)
	} else if !strings.Contains(q.String(), "activations checkpointed") {
		t.Errorf("%s", q)
	}
	if q := planGPU(m, set, 0, 2, 32, cuda.BF16, 0, 0, true); !q.Checkpoint || q.Resident != 5 || q.Step >= all.Step {
		t.Errorf("--grad-checkpoint: %+v (step %d without)", q, all.Step)
	}
}

// needGPU skips a test without a GPU (QTUNE_REQUIRE_GPU=1 fails it).
func needGPU(t *testing.T) {
	t.Helper()
	if _, err := cuda.Count(); err != nil {
		if os.Getenv("QTUNE_REQUIRE_GPU") == "1" {
			t.Fatal(err)
		}
		t.Skipf("no GPU: %v", err)
	}
}

// cpuAndFrozen runs cfg on the CPU, and again with freeze setting its
// learning rates to nothing: the updates must move the last loss by more
// than 1% of the frozen run's, or a GPU run agreeing with the CPU's
// within 1e-3 would show nothing about the device's part in them.
func cpuAndFrozen(t *testing.T, ctx context.Context, cfg Config, freeze func(*Config)) (cpu, frozen *Result) {
	t.Helper()
	cpu, err := Run(ctx, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := cfg
	f.AdapterPath = t.TempDir()
	freeze(&f)
	if frozen, err = Run(ctx, f, nil, nil); err != nil {
		t.Fatal(err)
	}
	last := len(cpu.Curve) - 1
	if eff := math.Abs(cpu.Curve[last].Loss - frozen.Curve[last].Loss); !(eff > 1e-2*math.Abs(frozen.Curve[last].Loss)) {
		t.Fatalf("the updates moved the last loss by %.3g only: raise the learning rates", eff)
	}
	return cpu, frozen
}

// liveLoRA is m's rank-4 LoRA set with B[i] = 0.05·f(i) (B = 0 would
// leave the adapters' output 0).
func liveLoRA(t *testing.T, m *model.Model, f func(float64) float64) *lora.Set {
	t.Helper()
	set, err := lora.New(m, lora.Config{Rank: 4, Alpha: 8, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, L := range set.Layers {
		for i := range L.B {
			L.B[i] = float32(f(float64(i))) * 0.05
		}
	}
	return set
}

// cpuOnlyAdapter is an adapter the device has no form of.
type cpuOnlyAdapter struct{}

func (cpuOnlyAdapter) Forward(y, x []float32, M int)       {}
func (cpuOnlyAdapter) Backward(dx, dy, x []float32, M int) {}

// Generation on the GPU (the KV cache there, sampling on the host) gives
// the CPU's tokens on stories260K F32, greedy and sampled with one seed,
// without and with a LoRA adapter, and with LoHO's dense deltas besides; an adapter the device lacks falls back
// to the CPU under auto and is refused naming it under cuda; a budget the
// device's plan exceeds is refused before the model is placed.
func TestGPUGenerateMatchesCPU(t *testing.T) {
	needGPU(t)
	m := openStories(t)
	gen := func(o GenerateOptions) ([]int, []string) {
		t.Helper()
		var lines []string
		o.Prompt, o.MaxTokens, o.TopP, o.GPUPrecision = "Once upon a time", 40, 0.9, "f32"
		o.Log = func(s string) { lines = append(lines, s) }
		g, err := Generate(context.Background(), m, o)
		if err != nil {
			t.Fatalf("%s: %v", o.Device, err)
		}
		return g.Tokens, lines
	}
	check := func(what string, o GenerateOptions) {
		t.Helper()
		want, _ := gen(o)
		o.Device = "cuda"
		got, lines := gen(o)
		if !slices.Equal(got, want) {
			t.Errorf("%s: GPU %v\nCPU %v", what, got, want)
		}
		if !slices.ContainsFunc(lines, func(s string) bool { return strings.HasPrefix(s, "GPU memory: peak") }) {
			t.Errorf("%s: no peak line in %q", what, lines)
		}
		t.Logf("%s: %d tokens equal: %q", what, len(got), Continuation(m, got))
	}
	check("greedy", GenerateOptions{Temp: 0})
	check("sampled", GenerateOptions{Temp: 0.8, Seed: 7})
	set := liveLoRA(t, m, math.Sin)
	m.Adapters = set.ByPos
	check("greedy with LoRA", GenerateOptions{Temp: 0})
	// LoHO-intra's outputs: a dense zeroth-order delta stacked on a LoRA
	// layer, and on a matrix of its own.
	c := m.Config
	for _, p := range []struct {
		l   int
		mod model.Module
	}{{1, model.ModUp}, {0, model.ModGate}} {
		val := make([]float32, c.Hidden*c.Dim)
		for i := range val {
			val[i] = 0.05 * float32(math.Cos(float64(i)))
		}
		dd, err := loho.DenseFrom(model.TensorName(p.l, p.mod), c.Hidden, c.Dim, val, nil)
		if err != nil {
			t.Fatal(err)
		}
		if a := m.Adapters[p.l][p.mod]; a != nil {
			m.Adapters[p.l][p.mod] = loho.Stack{a, dd}
		} else {
			m.Adapters[p.l][p.mod] = dd
		}
	}
	check("greedy with LoRA and dense deltas", GenerateOptions{Temp: 0})

	m.Adapters[0][model.ModQ] = cpuOnlyAdapter{}
	_, lines := gen(GenerateOptions{Temp: 0, DeviceOptions: DeviceOptions{Device: "auto"}})
	if !slices.ContainsFunc(lines, func(s string) bool { return strings.Contains(s, "device: the CPU") && strings.Contains(s, "CPU only") }) {
		t.Errorf("auto with a CPU-only adapter: lines %q", lines)
	}
	if _, err := Generate(context.Background(), m, GenerateOptions{Prompt: "Once", MaxTokens: 4, DeviceOptions: DeviceOptions{Device: "cuda"}}); err == nil || !strings.Contains(err.Error(), "CPU only") {
		t.Errorf("cuda with a CPU-only adapter: %v", err)
	}
	m.Adapters = nil
	_, err := Generate(context.Background(), m, GenerateOptions{Prompt: "Once", MaxTokens: 4, DeviceOptions: DeviceOptions{Device: "cuda", MaxVRAM: 1 << 20}})
	if err == nil || !strings.Contains(err.Error(), "--max-vram") {
		t.Errorf("generation under --max-vram 1MiB: %v", err)
	}
}

// eval on the GPU (a scoring session: windows through the device's KV
// cache, each position's loss computed there) gives the CPU's loss and
// token count on text, with the model's 512-token window (four chunks of
// 128 rows) and a 40-token one (windows overlapping by one), with a LoRA
// adapter; and the CPU's choice scores and accuracy on classification.
func TestGPUEvaluateMatchesCPU(t *testing.T) {
	needGPU(t)
	m := openStories(t)
	set := liveLoRA(t, m, math.Cos)
	eval := func(path string, o EvaluateOptions) *Evaluated {
		t.Helper()
		o.Data, o.GPUPrecision = path, "f32"
		ev, err := Evaluate(context.Background(), m, o)
		if err != nil {
			t.Fatalf("%s on %q: %v", path, o.Device, err)
		}
		return ev
	}
	story, err := os.ReadFile(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(t.TempDir(), "part.txt") // about 600 tokens: two 512-token windows
	if err := os.WriteFile(text, story[:1200], 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		win  int
		lora bool
	}{{0, false}, {40, false}, {40, true}} {
		m.Adapters = nil
		if c.lora {
			m.Adapters = set.ByPos
		}
		o := EvaluateOptions{MaxSeqLen: c.win}
		cpu := eval(text, o)
		o.Device = "cuda"
		gpu := eval(text, o)
		if gpu.LM.Tokens != cpu.LM.Tokens || math.Abs(gpu.LM.Loss-cpu.LM.Loss) > 1e-5*cpu.LM.Loss {
			t.Errorf("window %d, LoRA %v: GPU loss %.7f over %d tokens, CPU %.7f over %d", c.win, c.lora, gpu.LM.Loss, gpu.LM.Tokens, cpu.LM.Loss, cpu.LM.Tokens)
		}
		t.Logf("window %d, LoRA %v: loss CPU %.7f, GPU %.7f (%d tokens)", c.win, c.lora, cpu.LM.Loss, gpu.LM.Loss, gpu.LM.Tokens)
	}
	m.Adapters = set.ByPos
	sst := shared.Path(t, "assets", "data", "sst2", "valid.jsonl")
	cpu, gpu := eval(sst, EvaluateOptions{Limit: 16}), eval(sst, EvaluateOptions{Limit: 16, DeviceOptions: DeviceOptions{Device: "cuda"}})
	if *gpu.Class != *cpu.Class {
		t.Errorf("classification: GPU %+v, CPU %+v", *gpu.Class, *cpu.Class)
	}
	d, err := LoadEvalData(sst, 0)
	if err != nil {
		t.Fatal(err)
	}
	gg, err := openSessionGPU(m, DeviceOptions{Device: "cuda", GPUPrecision: "f32"}, model.GPUSessionOptions{MaxLen: 128, Chunk: 16, Scoring: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gg.close()
	st := m.NewState(128)
	defer st.Free()
	worst := 0.0
	for _, r := range d.Records[:16] {
		want, err1 := ChoiceScores(m, st, r)
		got, err2 := gpuChoiceScores(m, gg.dev, r)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		for i := range want {
			worst = max(worst, math.Abs(got[i]-want[i]))
		}
	}
	if worst > 1e-4 {
		t.Errorf("choice scores within %.2g of the CPU's (want ≤ 1e-4)", worst)
	}
	t.Logf("accuracy %.3f on both; choice scores within %.2g", cpu.Class.Accuracy, worst)
}

// MeZO's block scales as an inference adapter (what a --zo-target scales
// run saves) on the GPU: eval gives the CPU's loss on stories260K Q8_0
// with every quantized matrix's blocks rescaled (each layer's weight
// decoded and scaled on the device, one workspace shared by all).
func TestGPUEvaluateBlockScales(t *testing.T) {
	needGPU(t)
	dir := t.TempDir()
	m, err := model.Open(quantizedStories(t, dir), model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	story, err := os.ReadFile(shared.Path(t, "assets", "data", "tinystories", "sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "part.txt")
	if err := os.WriteFile(text, story[:600], 0o644); err != nil {
		t.Fatal(err)
	}
	eval := func(device string) float64 {
		t.Helper()
		ev, err := Evaluate(context.Background(), m, EvaluateOptions{Data: text, MaxSeqLen: 64,
			DeviceOptions: DeviceOptions{Device: device, GPUPrecision: "f32"}})
		if err != nil {
			t.Fatalf("%s: %v", device, err)
		}
		return ev.LM.Loss
	}
	plain := eval("cpu")
	ss, ad, err := mezo.NewScaleSet(m, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, s := range ss {
		for i := range s.R {
			s.R[i] = 0.2 * float32(math.Sin(float64(7*k+i)))
		}
	}
	m.Adapters = ad
	cpu, gpu := eval("cpu"), eval("cuda")
	if math.Abs(gpu-cpu) > 1e-5*cpu || !(math.Abs(cpu-plain) > 1e-3) {
		t.Errorf("loss with block scales: GPU %.7f, CPU %.7f (%.7f without)", gpu, cpu, plain)
	}
	t.Logf("loss with block scales of %d matrices: GPU %.7f, CPU %.7f (%.7f without)", len(ss), gpu, cpu, plain)
}

// A GPU run's host plan books none of the step's activations or workspace
// (they are in --max-vram's plan): under a budget the CPU's steps need
// checkpointing for, a --device cuda plan keeps the micro-batch without
// it. --device auto plans as cuda where there is a GPU, as cpu elsewhere.
// Generation's and eval's plans leave their KV cache and activations to
// the GPU's too. No GPU needed.
func TestGPUHostPlan(t *testing.T) {
	plan := func(device string) *budget.Plan {
		t.Helper()
		cfg := smallRun(t, t.TempDir())
		cfg.BatchSize, cfg.MaxSeqLength, cfg.MaxMem, cfg.Device, cfg.DryRun = 8, 256, "40MiB", device, true
		res, err := Run(context.Background(), cfg, nil, nil)
		if err != nil {
			t.Fatalf("--device %s: %v", device, err)
		}
		return res.Plan
	}
	acts := func(p *budget.Plan) (n int64) {
		for _, it := range p.Items {
			if it.Category == budget.Activations || it.Category == budget.SavedInputs {
				n += it.Bytes
			}
		}
		return n
	}
	cpu, gpu := plan("cpu"), plan("cuda")
	if !cpu.Checkpoint || acts(cpu) == 0 {
		t.Fatalf("the CPU plan under 40 MiB: checkpointing %v, activations %d B (the budget no longer tests the difference)", cpu.Checkpoint, acts(cpu))
	}
	if gpu.Checkpoint || gpu.MicroBatch != 8 || acts(gpu) != 0 || !(gpu.Peak < cpu.Peak) {
		t.Errorf("the GPU run's host plan: checkpointing %v, micro-batch %d, activations %d B, peak %d (the CPU's %d)\n%s",
			gpu.Checkpoint, gpu.MicroBatch, acts(gpu), gpu.Peak, cpu.Peak, gpu)
	}
	want := cpu
	if n, err := cuda.Count(); err == nil && n > 0 {
		want = gpu
	}
	if auto := plan("auto"); auto.Peak != want.Peak {
		t.Errorf("--device auto planned a peak of %d, want %d", auto.Peak, want.Peak)
	}
	t.Logf("peak %.1f MiB on the CPU (activations %.1f MiB, checkpointed), %.1f MiB for the GPU's host side", float64(cpu.Peak)/(1<<20), float64(acts(cpu))/(1<<20), float64(gpu.Peak)/(1<<20))
	// The weights: on the device, the host booking the embedding rows it
	// looks up, a matrix's pages in transit and the pinned buffers of
	// streamed blocks (the CPU's plan, every block resident, books all).
	sm := openStories(t)
	weights := func(p *budget.Plan) (w, pinned int64) {
		for _, it := range p.Items {
			switch it.Category {
			case budget.WeightsResident, budget.WeightsStreamed:
				w += it.Bytes
			case budget.Pinned:
				pinned += it.Bytes
			}
		}
		return w, pinned
	}
	cw, cp := weights(cpu)
	gw, gp := weights(gpu)
	// From the model's tensors: stories260K's matrices are all under a
	// piece, so the one in transit is the largest whole; a streamed block
	// takes its matrices each from a 512-byte boundary.
	var blocks, largest, block int64
	for l := range sm.Layers {
		var b int64
		for mod := model.Module(0); mod < model.NumModules; mod++ {
			n := int64(len(sm.Layers[l].Matrix(mod).Data))
			blocks, largest, b = blocks+n, max(largest, n), b+(n+511)&^511
		}
		block = max(block, b)
	}
	largest = max(largest, int64(len(sm.Output.Data)))
	if cw < blocks+sm.EmbedBytes() || cp != 0 || gp != 2*block || gw != sm.EmbedBytes()+largest || gpu.Placement[0] != budget.Device {
		t.Errorf("weights %d and pinned %d B in the CPU's plan, %d and %d in the GPU's (placement %v); the model's blocks %d, embedding %d, largest matrix %d, largest block in a slot %d",
			cw, cp, gw, gp, gpu.Placement, blocks, sm.EmbedBytes(), largest, block)
	}

	// Generation and eval: the KV cache and the forward's buffers too.
	m := openStories(t)
	kv := func(p *budget.Plan) (n int64) {
		for _, it := range p.Items {
			if it.Category == budget.KVCache {
				n += it.Bytes
			}
		}
		return n
	}
	for _, job := range []string{"generate", "eval"} {
		var on [2]*budget.Plan
		for i, dev := range []string{"cpu", "cuda"} {
			var err error
			if job == "generate" {
				on[i], err = PlanGenerate(m, 256, 8, 0, dev)
			} else {
				on[i], err = PlanEval(m, 256, 1000, 0, dev)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if kv(on[0]) == 0 || acts(on[0]) == 0 || kv(on[1]) != 0 || acts(on[1]) != 0 || !(on[1].Peak < on[0].Peak) {
			t.Errorf("%s: KV cache %d and activations %d B on the CPU, %d and %d for the GPU's host side (peaks %d, %d)",
				job, kv(on[0]), acts(on[0]), kv(on[1]), acts(on[1]), on[0].Peak, on[1].Peak)
		}
	}
}

// The CUDA driver's and libraries' host memory, measured after the
// warm-up, must fit the room --max-mem leaves beside the host plan: at a
// budget with no room the run stops before training, naming one that
// holds it, and at that budget it trains. (On the emulator the share is
// its own code, its compiled kernels and its heap, about 9 MiB.)
func TestGPUHostShare(t *testing.T) {
	needGPU(t)
	if _, ok := residentBytes(); !ok {
		t.Skip("no resident set to read here")
	}
	cfg := smallRun(t, t.TempDir())
	cfg.Device, cfg.Iters, cfg.StepsPerEval, cfg.SaveEvery, cfg.Dropout, cfg.DryRun = "cuda", 1, 0, 0, 0, true
	res, err := Run(context.Background(), cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DryRun = false
	cfg.MaxMem = fmt.Sprintf("%dKiB", (res.Plan.Peak+res.Plan.Margin+1023)>>10)
	var lines []string
	_, err = Run(context.Background(), cfg, func(s string) { lines = append(lines, s) }, nil)
	var need int
	if err == nil || !errors.Is(err, budget.ErrOverBudget) || !strings.Contains(err.Error(), "CUDA driver and its libraries took") {
		t.Fatalf("at the plan's smallest budget %s: %v", cfg.MaxMem, err)
	}
	if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "give --max-mem "):], "give --max-mem %dMiB", &need); serr != nil {
		t.Fatalf("no budget named: %v", err)
	}
	t.Log(err)
	cfg.MaxMem, lines = fmt.Sprintf("%dMiB", need), nil
	if _, err := Run(context.Background(), cfg, func(s string) { lines = append(lines, s) }, nil); err != nil {
		t.Fatalf("at the named budget %s: %v", cfg.MaxMem, err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "within the") {
		t.Errorf("no line of the driver's share:\n%s", strings.Join(lines, "\n"))
	}
}

// fitHostShare: a share within the room is taken from the Go heap's
// limit; one past it is refused with a budget that holds plan and share.
func TestFitHostShare(t *testing.T) {
	plan := &budget.Plan{Job: "train", Budget: 100 << 20, Peak: 80 << 20, Margin: 2 << 20}
	prev := debug.SetMemoryLimit(60 << 20)
	defer debug.SetMemoryLimit(prev)
	if err := fitHostShare("train", 10<<20, plan, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 50<<20 {
		t.Errorf("the heap's limit after a 10 MiB share: %d, want %d", got, 50<<20)
	}
	err := fitHostShare("train", 30<<20, plan, func(string) {})
	if !errors.Is(err, budget.ErrOverBudget) || !strings.Contains(err.Error(), "give --max-mem 114MiB") {
		t.Errorf("a 30 MiB share beside an 80 MiB plan under 100 MiB: %v", err)
	}
	if err := fitHostShare("train", 30<<20, &budget.Plan{}, func(string) {}); err != nil {
		t.Errorf("without a budget: %v", err)
	}
}

// A dry run of GPU training (qtune plan --device cuda) plans the device
// too, from the shapes alone (no GPU needed): every block resident without
// --max-vram, some streamed under a tighter one (the host plan's placement
// says which), and a budget under the smallest plan is the run's own
// refusal, naming one that fits.
func TestGPUDryRunPlansDevice(t *testing.T) {
	dry := func(vram string) (*Result, error) {
		cfg := smallRun(t, t.TempDir())
		cfg.Device, cfg.MaxVRAM, cfg.DryRun, cfg.BatchSize, cfg.MaxSeqLength = "cuda", vram, true, 4, 128
		return Run(context.Background(), cfg, nil, nil)
	}
	res, err := dry("")
	if err != nil || !strings.Contains(res.Plan.Device, "5 of 5 blocks resident") || !strings.Contains(res.Plan.Device, "no --max-vram") {
		t.Fatalf("no --max-vram: %v\n%s", err, res.Plan.Device)
	}
	var total float64
	if _, err := fmt.Sscanf(res.Plan.Device, "GPU memory: %f MiB planned", &total); err != nil {
		t.Fatalf("%v: %s", err, res.Plan.Device)
	}
	// A budget a little under every block resident streams some (under
	// 1 GiB, cuBLAS's workspace is 4 MiB, not 32).
	res, err = dry(fmt.Sprintf("%dKiB", int((total-28)*1024)-64))
	if err != nil || !strings.Contains(res.Plan.Device, "the others streamed") || res.Plan.Placement[len(res.Plan.Placement)-1] != budget.Host || res.Plan.Placement[0] != budget.Device {
		t.Errorf("just under: %v\n%s\n%s", err, res.Plan.Device, res.Plan)
	}
	if _, err := dry("1MiB"); err == nil || !strings.Contains(err.Error(), "over the budget") || !strings.Contains(err.Error(), "--max-vram ") {
		t.Errorf("1 MiB: %v", err)
	}
	cfg := smallRun(t, t.TempDir())
	cfg.DryRun = true
	if res, err := Run(context.Background(), cfg, nil, nil); err != nil || res.Plan.Device != "" {
		t.Errorf("a CPU dry run: device plan %q, %v", res.Plan.Device, err)
	}
}

// Plan-only generation and evaluation on the GPU (qtune plan generate|eval
// --device cuda) put the device's plan in the host's, from the shapes
// alone (no GPU needed); a --max-vram under it is the session's refusal.
func TestGPUPlanOnlySessions(t *testing.T) {
	m := openStories(t)
	stop := func(*budget.Plan) bool { return false }
	for _, vram := range []int64{0, 1 << 20} {
		dev := DeviceOptions{Device: "cuda", MaxVRAM: vram, PlanOnly: true}
		g, gerr := Generate(context.Background(), m, GenerateOptions{Prompt: "Once", MaxTokens: 8, DeviceOptions: dev, OnPlan: stop})
		ev, eerr := Evaluate(context.Background(), m, EvaluateOptions{Data: shared.Path(t, "assets", "data", "tinyshakespeare", "valid.jsonl"), DeviceOptions: dev, OnPlan: stop})
		for _, c := range []struct {
			job  string
			plan *budget.Plan
			err  error
		}{{"generate", g.Plan, gerr}, {"eval", ev.Plan, eerr}} {
			switch {
			case vram == 0 && (c.err != nil || !strings.HasPrefix(c.plan.Device, "GPU memory: ") || !strings.Contains(c.plan.String(), "\nGPU memory: ")):
				t.Errorf("%s: %v\n%s", c.job, c.err, c.plan)
			case vram > 0 && (c.err == nil || !strings.Contains(c.err.Error(), "over the budget")):
				t.Errorf("%s under --max-vram 1MiB: %v", c.job, c.err)
			}
		}
	}
}
