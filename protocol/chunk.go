package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Chunk errors; callers test with errors.Is. Parsers also wrap ErrMalformed.
var (
	// ErrChunkDigest: a chunk's data does not hash to the digest it carries
	// (corruption on the way); ask for it again.
	ErrChunkDigest = errors.New("protocol: chunk digest mismatch")
)

// MaxChunkWindow bounds ChunkRequest.Count.
const MaxChunkWindow = 256

// ChunkRequest is the JSON payload of outpost/v1/<fleet>/artifacts/req: the
// device asks for Count chunks of an artifact starting at First. The
// controller answers on the device's chunk topic, in order, paced.
type ChunkRequest struct {
	Device string `json:"device"`
	SHA256 string `json:"sha256"`
	First  int64  `json:"first"`
	Count  int    `json:"count"`
}

// Validate checks the request's fields.
func (r *ChunkRequest) Validate() error {
	switch {
	case checkSegment(r.Device) != nil || r.Device == "artifacts":
		return fmt.Errorf("protocol: chunk request: device %q: %w", r.Device, ErrMalformed)
	case !validHex(r.SHA256):
		return fmt.Errorf("protocol: chunk request: sha256 %q: %w", r.SHA256, ErrMalformed)
	case r.First < 0 || r.Count < 1 || r.Count > MaxChunkWindow:
		return fmt.Errorf("protocol: chunk request: first %d count %d: %w", r.First, r.Count, ErrMalformed)
	}
	return nil
}

// ParseChunkRequest decodes and validates a chunk request.
func ParseChunkRequest(b []byte) (*ChunkRequest, error) {
	if len(b) > 4096 {
		return nil, fmt.Errorf("protocol: chunk request: %d bytes: %w", len(b), ErrMalformed)
	}
	var r ChunkRequest
	if err := decodeLenient(b, &r); err != nil {
		return nil, fmt.Errorf("protocol: chunk request: %v: %w", err, ErrMalformed)
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// ChunkKind says whether a chunk message carries data or a refusal.
type ChunkKind uint8

// Chunk kinds.
const (
	// ChunkData carries bytes [Index*ChunkSize, ...) of the artifact.
	ChunkData ChunkKind = 1
	// ChunkError says the controller cannot serve the request (unknown
	// artifact, index out of range); Data is a UTF-8 message and Index the
	// first index requested. The device fails the install.
	ChunkError ChunkKind = 2
)

// chunkMagic starts every chunk: "OC" for Outpost chunk.
var chunkMagic = [2]byte{'O', 'C'}

// Chunk is one message on a device's chunk topic.
type Chunk struct {
	Kind ChunkKind
	// Artifact is the SHA-256 of the whole artifact.
	Artifact [32]byte
	Index    int64
	Total    int64
	// Digest is the SHA-256 of Data, set by AppendChunk.
	Digest [32]byte
	// Data aliases the parsed payload.
	Data []byte
}

// ArtifactHex returns the artifact digest as 64 lowercase hex digits.
func (c *Chunk) ArtifactHex() string { return hex.EncodeToString(c.Artifact[:]) }

// AppendChunk appends the binary form of c to dst, with Digest computed from
// Data (whatever c.Digest held):
//
//	'O' 'C' | version u8 | kind u8 | artifact [32] | index uvarint |
//	total uvarint | digest [32] | data bytes (uvarint length, then data)
func AppendChunk(dst []byte, c *Chunk) ([]byte, error) {
	if c.Kind != ChunkData && c.Kind != ChunkError || len(c.Data) > MaxChunkSize ||
		c.Index < 0 || c.Total < 0 || (c.Kind == ChunkData && c.Index >= c.Total) {
		return dst, fmt.Errorf("protocol: chunk kind %d index %d of %d, %d bytes: %w", c.Kind, c.Index, c.Total, len(c.Data), ErrInvalidRecord)
	}
	c.Digest = sha256.Sum256(c.Data)
	e := encoder{b: dst}
	e.b = append(e.b, chunkMagic[0], chunkMagic[1], Version, byte(c.Kind))
	e.b = append(e.b, c.Artifact[:]...)
	e.uv(uint64(c.Index))
	e.uv(uint64(c.Total))
	e.b = append(e.b, c.Digest[:]...)
	e.uv(uint64(len(c.Data)))
	e.b = append(e.b, c.Data...)
	return e.b, nil
}

// ParseChunk decodes a chunk message and checks its data against its digest
// (ErrChunkDigest). Data aliases p.
func ParseChunk(p []byte) (Chunk, error) {
	if len(p) < 4 || p[0] != chunkMagic[0] || p[1] != chunkMagic[1] {
		return Chunk{}, fmt.Errorf("protocol: chunk: bad magic: %w", ErrMalformed)
	}
	if p[2] != Version {
		return Chunk{}, fmt.Errorf("protocol: chunk version %d: %w", p[2], ErrUnsupportedVersion)
	}
	c := Chunk{Kind: ChunkKind(p[3])}
	d := decoder{b: p[4:]}
	if len(d.b) < 32 {
		return Chunk{}, fmt.Errorf("protocol: chunk: short: %w", ErrMalformed)
	}
	copy(c.Artifact[:], d.b)
	d.b = d.b[32:]
	idx, total := d.uv(), d.uv()
	if d.err == nil && len(d.b) < 32 {
		d.fail("short digest")
	}
	if d.err == nil {
		copy(c.Digest[:], d.b)
		d.b = d.b[32:]
	}
	c.Data = d.bytes(MaxChunkSize)
	switch {
	case d.err != nil:
	case len(d.b) != 0:
		d.fail("trailing bytes")
	case c.Kind != ChunkData && c.Kind != ChunkError:
		d.fail("unknown kind")
	case idx > 1<<62 || total > 1<<62 || (c.Kind == ChunkData && idx >= total):
		d.fail("index out of range")
	}
	if d.err != nil {
		return Chunk{}, fmt.Errorf("protocol: chunk: %w", d.err)
	}
	c.Index, c.Total = int64(idx), int64(total)
	if sha256.Sum256(c.Data) != c.Digest {
		return Chunk{}, fmt.Errorf("protocol: chunk %d of %s: %w", c.Index, c.ArtifactHex()[:12], ErrChunkDigest)
	}
	return c, nil
}
