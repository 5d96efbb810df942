package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime/metrics"
	"strconv"
	"time"

	"github.com/qtune/qtune/budget"
)

// memTrace samples the resident set every millisecond and, at stop, writes
// what it was made of at its highest (QTUNE_MEMTRACE=1): anonymous and
// file pages as the kernel counts them, and the Go runtime's own view (heap
// objects, heap spans, everything the runtime mapped). It is how a run over
// its plan is taken apart.
type memTrace struct {
	stop chan struct{}
	done chan struct{}
	best memSample
}

type memSample struct {
	anon, file, goTotal, goHeap, slabs int64
	at                                 time.Duration
}

func startMemTrace() *memTrace {
	t := &memTrace{stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	ms := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/released:bytes"}}
	timeline := os.Getenv("QTUNE_MEMTRACE") == "timeline"
	n := 0
	buf := make([]byte, 4096)
	go func() {
		defer close(t.done)
		tk := time.NewTicker(time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-t.stop:
				return
			case <-tk.C:
			}
			anon, file := readRss(buf)
			n++
			if timeline && n%50 == 0 {
				metrics.Read(ms)
				fmt.Fprintf(os.Stderr, "memtrace %6dms anon %.1f file %.1f slabs %.1f go %.1f heap %.1f MiB\n", time.Since(start).Milliseconds(),
					float64(anon)/(1<<20), float64(file)/(1<<20), float64(budget.SlabBytes())/(1<<20),
					float64(int64(ms[0].Value.Uint64())-int64(ms[2].Value.Uint64()))/(1<<20), float64(ms[1].Value.Uint64())/(1<<20))
			}
			if anon+file <= t.best.anon+t.best.file {
				continue
			}
			metrics.Read(ms)
			t.best = memSample{anon: anon, file: file, goTotal: int64(ms[0].Value.Uint64()) - int64(ms[2].Value.Uint64()),
				goHeap: int64(ms[1].Value.Uint64()), slabs: budget.SlabBytes(), at: time.Since(start)}
		}
	}()
	return t
}

func (t *memTrace) report(w io.Writer) {
	close(t.stop)
	<-t.done
	b := t.best
	mib := func(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
	fmt.Fprintf(w, "memtrace: highest resident set %s at %v: anonymous %s (slabs mapped %s, Go runtime %s mapped, heap objects %s), file %s (weights, binary, scratch files)\n",
		mib(b.anon+b.file), b.at.Round(time.Millisecond), mib(b.anon), mib(b.slabs), mib(b.goTotal), mib(b.goHeap), mib(b.file))
}

// readRss reads RssAnon and RssFile+RssShmem from /proc/self/status.
func readRss(buf []byte) (anon, file int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	n, _ := io.ReadFull(f, buf)
	f.Close()
	for _, line := range bytes.Split(buf[:n], []byte{'\n'}) {
		fs := bytes.Fields(line)
		if len(fs) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(string(fs[1]), 10, 64)
		switch string(fs[0]) {
		case "RssAnon:":
			anon = kb << 10
		case "RssFile:", "RssShmem:":
			file += kb << 10
		}
	}
	return anon, file
}
