package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// Codec errors. Decoders wrap ErrMalformed; AppendRecord wraps ErrInvalidRecord.
var (
	// ErrMalformed means bytes from the wire are not a valid batch or record.
	ErrMalformed = errors.New("protocol: malformed")
	// ErrInvalidRecord means a record cannot be encoded: its payload does not
	// match its kind, or a field is over its limit.
	ErrInvalidRecord = errors.New("protocol: invalid record")
	// ErrUnsupportedVersion means a batch carries a protocol version this
	// package does not know.
	ErrUnsupportedVersion = errors.New("protocol: unsupported version")
)

// Limits of the encoding.
const (
	// MaxRecordSize bounds an encoded record body.
	MaxRecordSize = 1 << 20
	// MaxStringLen bounds every string field.
	MaxStringLen = 4096
)

// batchMagic starts every batch: "OT" for Outpost telemetry.
var batchMagic = [2]byte{'O', 'T'}

// AppendRecord appends the encoded body of r to dst. The layout is in
// docs/PROTOCOL.md: kind byte, time, model, then the kind's payload. Fields
// are only ever added at the end of a payload, and decoders ignore bytes they
// do not know, so old receivers read new records.
func AppendRecord(dst []byte, r *Record) ([]byte, error) {
	e := encoder{b: dst}
	start := len(dst)
	e.u8(uint8(r.Kind))
	e.time(r.Time)
	e.str(r.Model.Name)
	e.str(r.Model.Version)
	e.str(r.Model.Digest)
	set := 0
	for _, p := range []bool{r.Aggregate != nil, r.Sample != nil, r.Health != nil, r.Update != nil, r.Audit != nil} {
		if p {
			set++
		}
	}
	if set != 1 {
		return dst, fmt.Errorf("protocol: record of kind %s has %d payloads, want 1: %w", r.Kind, set, ErrInvalidRecord)
	}
	switch {
	case r.Kind == KindAggregate && r.Aggregate != nil:
		a := r.Aggregate
		e.time(a.Start)
		e.time(a.End)
		e.uv(a.Requests)
		e.uv(a.Errors)
		e.uv(uint64(len(a.ErrorsByCode)))
		for _, c := range a.ErrorsByCode {
			e.str(c.Code)
			e.uv(c.Count)
		}
		e.uvs(a.Latency.BoundsMicros)
		e.uvs(a.Latency.Counts)
		e.uv(a.Latency.SumMicros)
		e.uv(uint64(len(a.Inputs)))
		for _, in := range a.Inputs {
			e.str(in.Name)
			e.uv(in.Count)
			e.uv(in.NaNs)
			e.f64(in.Min)
			e.f64(in.Max)
			e.f64(in.Mean)
			e.f64(in.Variance)
		}
		e.uv(a.StreamDropped)
		if len(a.Features) > 0 || a.Shadow != nil {
			// Written only when present (or a shadow section follows): a
			// record without either keeps the byte layout of the agents
			// before them.
			e.uv(uint64(len(a.Features)))
			for _, f := range a.Features {
				e.str(f.Name)
				e.uvs(f.Counts)
				e.uv(f.NaNs)
				e.f64(f.Sum)
				e.f64(f.SumSq)
			}
		}
		switch sh := a.Shadow; {
		case sh == nil && len(a.Features) > 0:
			e.uv(0) // no shadow section: what a newer field would follow
		case sh != nil:
			e.uv(1)
			e.str(sh.Baseline)
			e.uv(sh.Dropped)
			e.uvs(sh.BaselineLatency.BoundsMicros)
			e.uvs(sh.BaselineLatency.Counts)
			e.uv(sh.BaselineLatency.SumMicros)
			e.uv(uint64(len(sh.Outputs)))
			for _, o := range sh.Outputs {
				e.str(o.Name)
				e.uv(o.Compared)
				e.f64(o.MaxAbsDiff)
				e.f64(o.SumMeanAbsDiff)
				e.uv(o.Top1Compared)
				e.uv(o.Top1Agree)
			}
		}
	case r.Kind == KindSample && r.Sample != nil:
		s := r.Sample
		e.str(s.RequestID)
		e.v(int64(s.Latency))
		e.str(s.Error)
		e.tensors(s.Inputs)
		e.tensors(s.Outputs)
	case r.Kind == KindHealth && r.Health != nil:
		h := r.Health
		e.f64(h.CPUPercent)
		e.f64(h.Load1)
		e.uv(h.MemUsedBytes)
		e.uv(h.MemTotalBytes)
		e.uv(h.DiskUsedBytes)
		e.uv(h.DiskTotalBytes)
		e.f64(h.TemperatureC)
		e.v(int64(h.Uptime))
	case r.Kind == KindUpdate && r.Update != nil:
		u := r.Update
		e.str(u.RolloutID)
		e.str(u.State)
		e.uv(u.BytesDone)
		e.uv(u.BytesTotal)
		e.str(u.Error)
		e.str(u.Detail)
	case r.Kind == KindAudit && r.Audit != nil:
		a := r.Audit
		e.str(a.Actor)
		e.str(a.Action)
		e.str(a.Outcome)
		e.str(a.Detail)
		e.uv(a.Seq)
		e.str(a.Prev)
		e.str(a.Hash)
	default:
		return dst, fmt.Errorf("protocol: record of kind %s has the wrong payload: %w", r.Kind, ErrInvalidRecord)
	}
	if e.err != nil {
		return dst, e.err
	}
	if len(e.b)-start > MaxRecordSize {
		return dst, fmt.Errorf("protocol: record of %d bytes over %d: %w", len(e.b)-start, MaxRecordSize, ErrInvalidRecord)
	}
	return e.b, nil
}

// DecodeRecord decodes a record body written by AppendRecord. Bytes after the
// fields it knows are ignored. A record of an unknown kind decodes with only
// Kind, Time and Model set, so a receiver can count it and move on.
func DecodeRecord(body []byte) (Record, error) {
	d := decoder{b: body}
	var r Record
	r.Kind = Kind(d.u8())
	r.Time = d.time()
	r.Model.Name = d.str()
	r.Model.Version = d.str()
	r.Model.Digest = d.str()
	switch r.Kind {
	case KindAggregate:
		a := &Aggregate{}
		a.Start = d.time()
		a.End = d.time()
		a.Requests = d.uv()
		a.Errors = d.uv()
		n := d.count(2)
		for i := 0; i < n; i++ {
			a.ErrorsByCode = append(a.ErrorsByCode, CodeCount{Code: d.str(), Count: d.uv()})
		}
		a.Latency.BoundsMicros = d.uvs()
		a.Latency.Counts = d.uvs()
		a.Latency.SumMicros = d.uv()
		n = d.count(35)
		for i := 0; i < n; i++ {
			a.Inputs = append(a.Inputs, InputStats{
				Name: d.str(), Count: d.uv(), NaNs: d.uv(),
				Min: d.f64(), Max: d.f64(), Mean: d.f64(), Variance: d.f64(),
			})
		}
		if d.more() {
			a.StreamDropped = d.uv() // added later: absent from older agents' records
		}
		if d.more() {
			n = d.count(19) // name length, counts length, nans, two float64s
			for i := 0; i < n; i++ {
				a.Features = append(a.Features, FeatureCounts{
					Name: d.str(), Counts: d.uvs(), NaNs: d.uv(), Sum: d.f64(), SumSq: d.f64(),
				})
			}
		}
		if d.more() && d.presence() {
			sh := &Shadow{Baseline: d.str(), Dropped: d.uv()}
			sh.BaselineLatency.BoundsMicros = d.uvs()
			sh.BaselineLatency.Counts = d.uvs()
			sh.BaselineLatency.SumMicros = d.uv()
			n = d.count(21) // name length, three uvarints, two float64s
			for i := 0; i < n; i++ {
				sh.Outputs = append(sh.Outputs, OutputAgreement{
					Name: d.str(), Compared: d.uv(), MaxAbsDiff: d.f64(), SumMeanAbsDiff: d.f64(),
					Top1Compared: d.uv(), Top1Agree: d.uv(),
				})
			}
			a.Shadow = sh
		}
		r.Aggregate = a
	case KindSample:
		s := &Sample{}
		s.RequestID = d.str()
		s.Latency = time.Duration(d.v())
		s.Error = d.str()
		s.Inputs = d.tensors()
		s.Outputs = d.tensors()
		r.Sample = s
	case KindHealth:
		r.Health = &Health{
			CPUPercent: d.f64(), Load1: d.f64(),
			MemUsedBytes: d.uv(), MemTotalBytes: d.uv(),
			DiskUsedBytes: d.uv(), DiskTotalBytes: d.uv(),
			TemperatureC: d.f64(), Uptime: time.Duration(d.v()),
		}
	case KindUpdate:
		r.Update = &Update{
			RolloutID: d.str(), State: d.str(),
			BytesDone: d.uv(), BytesTotal: d.uv(),
			Error: d.str(), Detail: d.str(),
		}
	case KindAudit:
		a := &Audit{Actor: d.str(), Action: d.str(), Outcome: d.str(), Detail: d.str()}
		if d.more() {
			a.Seq, a.Prev, a.Hash = d.uv(), d.str(), d.str() // added later
		}
		r.Audit = a
	}
	if d.err != nil {
		return Record{}, d.err
	}
	return r, nil
}

// PeekRecord returns the kind and time of an encoded record without decoding
// the rest; the queue uses it to find old records cheaply.
func PeekRecord(body []byte) (Kind, time.Time, error) {
	d := decoder{b: body}
	k := Kind(d.u8())
	t := d.time()
	return k, t, d.err
}

// BatchHeader is what a batch says besides its records.
type BatchHeader struct {
	// Epoch identifies the device's queue file. Sequence numbers rise within an
	// epoch; a new epoch starts only when the queue file had to be replaced
	// (it was corrupt), and drop counters start again from zero with it.
	Epoch uint64
	// Drops are the device's cumulative drop counters for this epoch as of
	// when the batch was built. Counters only grow, so duplicated or
	// reordered batches cannot inflate them: a receiver keeps the maximum.
	Drops DropCounts
	// Count is the number of records that follow.
	Count int
}

// AppendBatchHeader appends a batch header to dst. Exactly h.Count entries
// must follow, appended with AppendBatchEntry in rising sequence order.
func AppendBatchHeader(dst []byte, h BatchHeader) []byte {
	e := encoder{b: dst}
	e.b = append(e.b, batchMagic[0], batchMagic[1], Version)
	e.uv(h.Epoch)
	n := 0
	for _, c := range h.Drops {
		if c != 0 {
			n++
		}
	}
	e.uv(uint64(n))
	for r, c := range h.Drops {
		if c != 0 {
			e.u8(uint8(r))
			e.uv(c)
		}
	}
	e.uv(uint64(h.Count))
	return e.b
}

// AppendBatchEntry appends one record of a batch: its sequence number and its
// encoded body (from AppendRecord).
func AppendBatchEntry(dst []byte, seq uint64, body []byte) []byte {
	dst = binary.AppendUvarint(dst, seq)
	dst = binary.AppendUvarint(dst, uint64(len(body)))
	return append(dst, body...)
}

// Entry is one record of a batch, still encoded.
type Entry struct {
	Seq  uint64
	Body []byte // aliases the batch payload
}

// Batch is a decoded batch.
type Batch struct {
	Version uint8
	BatchHeader
	Entries []Entry
}

// DecodeBatch parses a batch payload from the events topic. Record bodies are
// left encoded (DecodeRecord them one by one), so a receiver that only needs
// sequence numbers pays nothing for the rest, and one bad record does not spoil
// its batch.
func DecodeBatch(p []byte) (Batch, error) {
	if len(p) < 3 || p[0] != batchMagic[0] || p[1] != batchMagic[1] {
		return Batch{}, fmt.Errorf("protocol: batch: bad magic: %w", ErrMalformed)
	}
	if p[2] != Version {
		return Batch{}, fmt.Errorf("protocol: batch version %d: %w", p[2], ErrUnsupportedVersion)
	}
	b := Batch{Version: p[2]}
	d := decoder{b: p[3:]}
	b.Epoch = d.uv()
	n := d.count(2)
	for i := 0; i < n && d.err == nil; i++ {
		r := DropReason(d.u8())
		c := d.uv()
		if int(r) < len(b.Drops) {
			b.Drops[r] = c
		} // unknown reasons from newer agents are skipped
	}
	b.Count = d.count(2)
	if d.err == nil {
		b.Entries = make([]Entry, 0, b.Count)
	}
	var prev uint64
	for i := 0; i < b.Count && d.err == nil; i++ {
		seq := d.uv()
		body := d.bytes(MaxRecordSize)
		if d.err == nil && (seq == 0 || (i > 0 && seq <= prev)) {
			d.fail("sequence numbers not rising")
		}
		prev = seq
		b.Entries = append(b.Entries, Entry{Seq: seq, Body: body})
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Batch{}, fmt.Errorf("protocol: batch: %w", d.err)
	}
	return b, nil
}

type encoder struct {
	b   []byte
	err error
}

func (e *encoder) u8(v uint8)    { e.b = append(e.b, v) }
func (e *encoder) uv(v uint64)   { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) v(v int64)     { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) f64(v float64) { e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(v)) }
func (e *encoder) time(t time.Time) {
	if t.IsZero() {
		e.v(0)
		return
	}
	e.v(t.UnixNano())
}

func (e *encoder) str(s string) {
	if len(s) > MaxStringLen && e.err == nil {
		e.err = fmt.Errorf("protocol: string of %d bytes over %d: %w", len(s), MaxStringLen, ErrInvalidRecord)
	}
	e.uv(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) uvs(vs []uint64) {
	e.uv(uint64(len(vs)))
	for _, v := range vs {
		e.uv(v)
	}
}

func (e *encoder) tensors(ts []TensorSample) {
	e.uv(uint64(len(ts)))
	for _, t := range ts {
		e.str(t.Name)
		e.str(t.Datatype)
		e.uv(uint64(len(t.Shape)))
		for _, d := range t.Shape {
			e.v(d)
		}
		e.uv(uint64(len(t.Data)))
		e.b = append(e.b, t.Data...)
		if t.Truncated {
			e.u8(1)
		} else {
			e.u8(0)
		}
	}
}

// decoder reads what encoder wrote. The first error sticks; after it every
// read returns a zero value, so decoding code needs no checks between fields.
type decoder struct {
	b   []byte
	err error
}

// more reports whether bytes remain: a field added later to a payload is
// read only when the sender wrote it.
func (d *decoder) more() bool { return d.err == nil && len(d.b) > 0 }

// presence reads a section's presence flag: 0 absent, 1 present.
func (d *decoder) presence() bool {
	switch v := d.uv(); v {
	case 0, 1:
		return v == 1
	default:
		d.fail(fmt.Sprintf("presence flag %d", v))
		return false
	}
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%s: %w", what, ErrMalformed)
	}
	d.b = nil
}

func (d *decoder) u8() uint8 {
	if len(d.b) < 1 {
		d.fail("short")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uv() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) v() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) f64() float64 {
	if len(d.b) < 8 {
		d.fail("short float")
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

func (d *decoder) time() time.Time {
	ns := d.v()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// count reads an element count and checks it against the bytes left, given
// that each element takes at least minSize bytes; so a lying count cannot make
// us allocate more than the input.
func (d *decoder) count(minSize int) int {
	n := d.uv()
	if d.err == nil && n > uint64(len(d.b)/minSize) {
		d.fail("count larger than input")
		return 0
	}
	return int(n)
}

func (d *decoder) bytes(limit int) []byte {
	n := d.uv()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) || n > uint64(limit) {
		d.fail("length beyond input")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes(MaxStringLen)) }

func (d *decoder) uvs() []uint64 {
	n := d.count(1)
	if n == 0 {
		return nil
	}
	vs := make([]uint64, n)
	for i := range vs {
		vs[i] = d.uv()
	}
	return vs
}

func (d *decoder) tensors() []TensorSample {
	n := d.count(5)
	var ts []TensorSample
	for i := 0; i < n && d.err == nil; i++ {
		t := TensorSample{Name: d.str(), Datatype: d.str()}
		dims := d.count(1)
		if dims > 0 {
			t.Shape = make([]int64, dims)
			for j := range t.Shape {
				t.Shape[j] = d.v()
			}
		}
		if data := d.bytes(MaxRecordSize); len(data) > 0 {
			t.Data = append([]byte(nil), data...)
		}
		t.Truncated = d.u8() == 1
		ts = append(ts, t)
	}
	return ts
}
