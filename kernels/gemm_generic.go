package kernels

// The reference loops of the float32 GEMMs. They are what a build without
// assembly (-tags noasm, or not amd64) runs, and what the fast paths are
// tested against. Each output element is one worker's, summed in a fixed
// order, so they too are deterministic whatever the number of threads.

// gemmNTGeneric: C (M×N) = A (M×K) · Bᵀ, B (N×K); += when accum.
//
//	for m { for n { s := Dot(a[m*K:(m+1)*K], b[n*K:(n+1)*K]); c[m*N+n] (+)= s } }
func gemmNTGeneric(p *Pool, c, a, b []float32, M, N, K int, accum bool) {
	p.Parallel(N, 4, func(lo, hi int) {
		for m := 0; m < M; m++ {
			ar := a[m*K : (m+1)*K]
			cr := c[m*N : (m+1)*N]
			for n := lo; n < hi; n++ {
				s := Dot(ar, b[n*K:(n+1)*K])
				if accum {
					cr[n] += s
				} else {
					cr[n] = s
				}
			}
		}
	})
}

// gemmNNGeneric: C (M×N) += A (M×K) · B (K×N).
//
//	for m { for k { Axpy(c[m*N:(m+1)*N], a[m*K+k], b[k*N:(k+1)*N]) } }
func gemmNNGeneric(p *Pool, c, a, b []float32, M, N, K int) {
	p.Parallel(M, 1, func(lo, hi int) {
		for m := lo; m < hi; m++ {
			cr := c[m*N : (m+1)*N]
			for k := 0; k < K; k++ {
				if v := a[m*K+k]; v != 0 {
					Axpy(cr, v, b[k*N:(k+1)*N])
				}
			}
		}
	})
}

// gemmTNGeneric: C (M×N) += Aᵀ · B, A (K×M), B (K×N).
//
//	for m { for k { Axpy(c[m*N:(m+1)*N], a[k*M+m], b[k*N:(k+1)*N]) } }
func gemmTNGeneric(p *Pool, c, a, b []float32, M, N, K int) {
	p.Parallel(M, 1, func(lo, hi int) {
		for m := lo; m < hi; m++ {
			cr := c[m*N : (m+1)*N]
			for k := 0; k < K; k++ {
				if v := a[k*M+m]; v != 0 {
					Axpy(cr, v, b[k*N:(k+1)*N])
				}
			}
		}
	})
}
