// Package tensor holds qtune's one tensor type: an element type, a shape and a
// view of bytes. It does no math and owns no memory policy: a Tensor's Data is
// usually a sub-slice of a memory-mapped model file, and copying it would
// defeat the point of keeping weights quantized on disk.
//
// Dimension legend used across qtune (shape comments name these):
//
//	B batch, T time (sequence), C channels (embedding), H heads, D head size,
//	V vocabulary, L layers, R adapter rank, F feed-forward width.
//
// Shapes are stored in ggml's order: Shape[0] is the innermost, contiguous
// dimension. A linear layer's weight with Shape = [in, out] is therefore a
// row-major (out, in) matrix: out rows of in elements each.
package tensor
