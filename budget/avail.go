package budget

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// available reads the memory the kernel says a new process can use
// without swapping (MemAvailable, Linux); 0 when unknown.
var available = func() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemAvailable:" {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil || kb < 0 {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// Available is the memory this machine has free for a new run (0: unknown).
func Available() int64 { return available() }

// CheckAvailable refuses a plan made without a budget whose memory besides
// its mapped weights is more than the machine has available: such a run
// would grow until the kernel kills it (a long context's KV cache, say). A plan with a budget was
// checked against it instead.
func CheckAvailable(p *Plan) error {
	if p == nil || p.Budget > 0 {
		return nil
	}
	avail := available()
	// Mapped weights are file pages the kernel can drop and read again: a
	// model larger than memory runs (slowly) without a budget. The rest
	// (KV cache, activations, state) is not.
	need := p.Peak
	for _, it := range p.Items {
		if it.Category == WeightsResident || it.Category == WeightsStreamed {
			need -= it.Bytes
		}
	}
	if avail <= 0 || need <= avail {
		return nil
	}
	return fmt.Errorf("budget: %s needs %s besides its mapped weights and this machine has %s available: make the run smaller (tokens, context, batch), or give --max-mem to plan within a budget",
		p.Job, FormatSize(need), FormatSize(avail))
}
