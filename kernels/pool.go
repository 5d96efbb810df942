package kernels

import (
	"runtime"
	"sync"
)

// Pool is a persistent set of worker goroutines. Parallel splits a range into
// contiguous chunks, one per worker, so no goroutine is started per call.
type Pool struct {
	n    int
	jobs chan job
}

type job struct {
	fn     func(lo, hi int)
	r      runner
	lo, hi int
	wg     *sync.WaitGroup
}

// runner is work for parallelRunner: a value the caller keeps (a pointer),
// so that handing it to the workers allocates nothing, where a closure
// passed to Parallel escapes to the heap with what it captures.
type runner interface{ Run(lo, hi int) }

func (j *job) run() {
	if j.r != nil {
		j.r.Run(j.lo, j.hi)
	} else {
		j.fn(j.lo, j.hi)
	}
	j.wg.Done()
}

// NewPool starts n workers (n <= 0 means GOMAXPROCS).
func NewPool(n int) *Pool {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	p := &Pool{n: n, jobs: make(chan job, n)}
	for i := 0; i < n-1; i++ { // the caller is the n-th worker
		go func() {
			for j := range p.jobs {
				j.run()
			}
		}()
	}
	return p
}

// Workers is the degree of parallelism.
func (p *Pool) Workers() int { return p.n }

// Close stops the workers. The pool must not be used afterwards.
func (p *Pool) Close() { close(p.jobs) }

// Parallel runs fn over [0, n) split into at most Workers() contiguous chunks
// whose bounds are multiples of grain (except the last). It returns when every
// chunk is done. fn must be safe to run concurrently on disjoint ranges.
func (p *Pool) Parallel(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if grain < 1 {
		grain = 1
	}
	units := (n + grain - 1) / grain
	w := p.n
	if units < w {
		w = units
	}
	if w <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	per := units / w
	extra := units % w
	lo := 0
	for i := 0; i < w; i++ {
		u := per
		if i < extra {
			u++
		}
		hi := lo + u*grain
		if hi > n {
			hi = n
		}
		if i == w-1 {
			fn(lo, hi) // run the last chunk on the calling goroutine
		} else {
			wg.Add(1)
			p.jobs <- job{fn: fn, lo: lo, hi: hi, wg: &wg}
		}
		lo = hi
	}
	wg.Wait()
}

// parallelRunner runs r.Run(i, i+1) for each i < n (n at most Workers()),
// one per worker, the last on the calling goroutine, and returns when all
// are done; wg is the caller's (kept with r, so nothing is allocated).
func (p *Pool) parallelRunner(n int, r runner, wg *sync.WaitGroup) {
	n = min(n, p.n)
	for i := 0; i < n-1; i++ {
		wg.Add(1)
		p.jobs <- job{r: r, lo: i, hi: i + 1, wg: wg}
	}
	if n > 0 {
		r.Run(n-1, n)
	}
	wg.Wait()
}

var (
	defaultOnce sync.Once
	defaultPool *Pool
)

// Default is the process-wide pool over GOMAXPROCS.
func Default() *Pool {
	defaultOnce.Do(func() { defaultPool = NewPool(0) })
	return defaultPool
}
