package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"

	"github.com/qtune/qtune/budget"
	"github.com/qtune/qtune/kernels/cuda"
)

// devices reports what --device auto would find: the CUDA libraries (and
// where), the GPUs, and whether their kernels are compiled already.
func (a *app) devices(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("devices", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the inventory as JSON")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("devices takes no arguments")
	}
	inv := cuda.Survey()
	if *asJSON {
		return json.NewEncoder(a.stdout).Encode(devicesJSON(inv))
	}
	printDevices(a.stdout, inv)
	return nil
}

func printDevices(w io.Writer, inv cuda.Inventory) {
	if inv.DriverErr != nil {
		fmt.Fprintf(w, "CUDA driver: %v\n", inv.DriverErr)
	} else {
		fmt.Fprintf(w, "CUDA driver: %s (CUDA %d.%d)\n", inv.Driver, inv.DriverVersion/1000, inv.DriverVersion%1000/10)
	}
	for _, g := range inv.GPUs {
		note := "kernels compiled at first use (a few seconds)"
		if g.KernelsCached {
			note = "kernels cached"
		}
		if g.Integrated {
			note += "; integrated: its memory is the host's"
		}
		fmt.Fprintf(w, "  cuda:%d  %s  compute %d.%d, %d SMs, %s; %s\n", g.Ordinal, g.Name, g.Major, g.Minor, g.SMs, budget.FormatSize(g.TotalMem), note)
	}
	lib := func(name, path, version string, err error) {
		switch {
		case err != nil:
			fmt.Fprintf(w, "%s: %v\n", name, err)
		case version != "":
			fmt.Fprintf(w, "%s: %s (%s)\n", name, path, version)
		default:
			fmt.Fprintf(w, "%s: %s\n", name, path)
		}
	}
	lib("cuBLAS", inv.BLAS, "", inv.BLASErr)
	lib("NVRTC", inv.NVRTC, inv.NVRTCVersion, inv.NVRTCErr)
	fmt.Fprintf(w, "kernel cache: %s (%d compiled)\n", inv.CacheDir, inv.Cached)
	switch {
	case len(inv.GPUs) > 0 && inv.BLASErr == nil && inv.NVRTCErr == nil:
		fmt.Fprintln(w, "--device auto: cuda:0 for a model and adapters the GPU path takes, else the CPU")
	default:
		fmt.Fprintln(w, "--device auto: the CPU (what is missing is above)")
	}
}

// devicesJSON is the inventory with its errors as text.
func devicesJSON(inv cuda.Inventory) map[string]any {
	str := func(err error) string {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	return map[string]any{
		"driver": inv.Driver, "driver_version": inv.DriverVersion, "driver_error": str(inv.DriverErr),
		"gpus": inv.GPUs, "cublas": inv.BLAS, "cublas_error": str(inv.BLASErr),
		"nvrtc": inv.NVRTC, "nvrtc_version": inv.NVRTCVersion, "nvrtc_error": str(inv.NVRTCErr),
		"kernel_cache": inv.CacheDir, "cached_modules": inv.Cached,
	}
}
