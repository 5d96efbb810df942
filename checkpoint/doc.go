// Package checkpoint keeps training state on disk: adapters, optimizer
// moments and whatever the caller needs to resume (step, data position, RNG
// state, hyper-parameters) in one versioned, checksummed, zstd-compressed
// file that is replaced atomically.
//
// What it is not: it does not know what the tensors mean, which optimizer
// wrote them or how to resume a run; the caller names its tensors and puts
// its own JSON in State.Meta (and its own schema number in State.Version).
// It is not a model format either: exported adapters are PEFT safetensors
// and GGUF files written by format/.
//
// The trade-off: the file is streamed through zstd in one pass, so saving
// and loading never hold a second copy of the state in memory and a 50 MB
// state takes well under a second, but a single tensor cannot be read
// without decompressing everything before it, and the file cannot be
// memory-mapped. Training state is small next to the frozen model and is
// always read whole, so that is the right way round here. Every count read
// from a file is checked against the bytes that are actually left before
// anything is allocated, and the body size is capped by a limit, so a
// damaged or hostile file gets a one-line error wrapping ErrCorrupt, never a
// panic or an unbounded allocation.
//
// # Atomic save
//
// Save writes path+".tmp" in the same folder, fsyncs it, renames it over
// path and fsyncs the folder. A crash at any point leaves either the old
// file or the new one at path, never a mixture; a stale .tmp left by a crash
// is ignored by Load and overwritten by the next Save. Two processes must
// not Save to the same path at the same time.
//
// # File layout, format version 1
//
// All integers are little-endian. The file is a 24-byte header followed by
// one zstd stream whose decompressed content is the body. The first 8 bytes
// (magic and format version) keep their meaning in every future version, so
// an old build can tell a newer file from a damaged one.
//
//	header
//	  0  4  magic "QTCK"
//	  4  4  u32 format version (1); a newer version is refused with ErrVersion
//	  8  4  u32 flags: bit 0 = body is zstd-compressed (required); other bits 0
//	 12  8  u64 body length in bytes, after decompression, including its CRC
//	 20  4  u32 CRC-32C (Castagnoli) of header bytes 0..19
//	 24  …  zstd stream holding the body
//
//	body
//	     4  u32 State.Version (the caller's schema number)
//	     4  u32 meta length M
//	     M  State.Meta, JSON (empty when M = 0)
//	     4  u32 tensor count N
//	     N times:
//	       2  u16 name length K (>= 1)
//	       K  name, UTF-8, unique in the file
//	       1  u8 element type (1 = float32; the only one in version 1)
//	       1  u8 rank R (0..8; 0 is a scalar of one value)
//	     8*R  u64 dims, Shape[0] first (each < 2^48)
//	     4*n  data, n = product of dims, float32 values
//	     4  u32 CRC-32C of every body byte before it
//
// The body length in the header bounds every count inside the body: a
// tensor, name or meta that claims more bytes than are left is refused
// before any buffer is allocated for it, and Decode refuses a body length
// above its limit. The default limit follows the file's size (MaxRatio times
// it plus MinLimit; for a stream, times the compressed bytes read so far), so
// a small file cannot make a reader inflate gigabytes. The zstd frame
// carries its own content checksum as well, so corruption is caught twice.
package checkpoint
