package cuda

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GPU is one device as the driver describes it, without a context.
type GPU struct {
	Ordinal    int    `json:"ordinal"`
	Name       string `json:"name"`
	Major      int    `json:"major"` // compute capability
	Minor      int    `json:"minor"`
	SMs        int    `json:"sms"`         // multiprocessors
	TotalMem   int64  `json:"total_bytes"` // its memory
	Integrated bool   `json:"integrated"`  // its memory is the host's (a Jetson, or qtune's emulator): its allocations are host memory the process holds
}

// SurveyedGPU is a GPU in an Inventory.
type SurveyedGPU struct {
	GPU
	KernelsCached bool `json:"kernels_cached"` // qtune's kernels for it are compiled already (no compile at first use)
}

// Inventory is what this machine offers qtune's GPU path: the libraries
// found (and where), the GPUs, and the kernel cache; the Err fields say
// why a part is missing. Nothing is allocated on a GPU.
type Inventory struct {
	Driver        string // the driver library's path
	DriverVersion int    // the CUDA version it supports (12080 = 12.8)
	DriverErr     error
	GPUs          []SurveyedGPU
	BLAS          string // cuBLAS's path
	BLASErr       error
	NVRTC         string // NVRTC's path
	NVRTCVersion  string // "12.4"
	NVRTCErr      error
	CacheDir      string // where compiled kernels are kept
	Cached        int    // compiled modules there
}

// Survey takes the inventory: it loads the driver (and initialises it),
// cuBLAS, and asks NVRTC's version (in a child process when
// CompileInChild is set).
func Survey() Inventory {
	var inv Inventory
	inv.CacheDir = DefaultCacheDir()
	if es, err := os.ReadDir(inv.CacheDir); err == nil {
		for _, e := range es {
			if strings.HasSuffix(e.Name(), ".cubin") {
				inv.Cached++
			}
		}
	}
	d, err := loadDriver()
	if err != nil {
		inv.DriverErr = err
	} else {
		inv.Driver = d.path
		var v int32
		if d.cuDriverGetVersion(&v) == 0 {
			inv.DriverVersion = int(v)
		}
		n, err := Count()
		if err != nil {
			inv.DriverErr = err
		}
		for i := 0; i < n; i++ {
			g, _, err := describe(d, i)
			if err != nil {
				inv.DriverErr = err
				break
			}
			inv.GPUs = append(inv.GPUs, SurveyedGPU{GPU: g})
		}
	}
	if b, err := loadBLAS(); err != nil {
		inv.BLASErr = err
	} else {
		inv.BLAS = b.path
	}
	id, _, err := currentNVRTC()
	if inv.NVRTCErr = err; err == nil {
		inv.NVRTC, inv.NVRTCVersion = id.Path, fmt.Sprintf("%d.%d", id.Major, id.Minor)
		for i := range inv.GPUs {
			g := &inv.GPUs[i]
			_, err := os.Stat(filepath.Join(inv.CacheDir, moduleKey(source, g.Major, g.Minor, id)))
			g.KernelsCached = err == nil
		}
	}
	return inv
}

// describe reads device i's name and attributes (no context needed), and
// returns its handle.
func describe(c *driverAPI, i int) (GPU, int32, error) {
	g := GPU{Ordinal: i}
	var dev, maj, mnr, sms, integ int32
	if err := c.err("cuDeviceGet", c.cuDeviceGet(&dev, int32(i))); err != nil {
		return g, dev, err
	}
	name := make([]byte, 256)
	if err := c.err("cuDeviceGetName", c.cuDeviceGetName(&name[0], int32(len(name)), dev)); err != nil {
		return g, dev, err
	}
	g.Name = cstring(&name[0])
	for _, a := range []struct {
		attr int32
		v    *int32
	}{{attrCCMajor, &maj}, {attrCCMinor, &mnr}, {attrMultiprocessors, &sms}, {attrIntegrated, &integ}} {
		if err := c.err("cuDeviceGetAttribute", c.cuDeviceGetAttribute(a.v, a.attr, dev)); err != nil {
			return g, dev, err
		}
	}
	var total uint64
	if err := c.err("cuDeviceTotalMem", c.cuDeviceTotalMem(&total, dev)); err != nil {
		return g, dev, err
	}
	g.Major, g.Minor, g.SMs, g.Integrated, g.TotalMem = int(maj), int(mnr), int(sms), integ != 0, int64(total)
	return g, dev, nil
}
