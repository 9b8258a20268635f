package dataset

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keep stores samples in a real embedded store, as ingest does.
func keep(t *testing.T, r *registry.Registry, device string, recs ...protocol.Record) {
	t.Helper()
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}}
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		require.NoError(t, err)
		b.Entries = append(b.Entries, protocol.Entry{Seq: uint64(i + 1), Body: body})
	}
	n, err := r.RecordBatch(device, b, time.Now())
	require.NoError(t, err)
	require.Equal(t, len(recs), n)
}

func f32s(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func TestWrite(t *testing.T) {
	r, err := registry.Open(t.TempDir(), registry.Options{})
	require.NoError(t, err)
	defer r.Close()
	t0 := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	sample := func(version string, at time.Time, s protocol.Sample) protocol.Record {
		return protocol.Record{Kind: protocol.KindSample, Time: at, Model: protocol.ModelRef{Name: "face", Version: version}, Sample: &s}
	}
	keep(t, r, "gw-1",
		sample("3", t0, protocol.Sample{RequestID: "a", Latency: 1500 * time.Microsecond,
			Inputs:  []protocol.TensorSample{{Name: "image", Datatype: "UINT8", Shape: []int64{1, 2, 2}, Data: []byte{1, 2, 3, 4}}},
			Outputs: []protocol.TensorSample{{Name: "scores", Datatype: "FP32", Shape: []int64{1, 2}, Data: f32s(0.25, 0.75)}}}),
		sample("3", t0.Add(time.Minute), protocol.Sample{RequestID: "b", Error: "bad input",
			Inputs: []protocol.TensorSample{{Name: "image", Datatype: "FP32", Shape: []int64{1, 1000}, Data: f32s(1, 2, 3)[:10], Truncated: true},
				{Name: "text", Datatype: "BYTES", Shape: []int64{1}, Data: []byte("hi")}}}),
		sample("4", t0.Add(2*time.Minute), protocol.Sample{RequestID: "c"}),
	)
	dir := filepath.Join(t.TempDir(), "out")
	n, err := Write(r, registry.SampleFilter{Model: "face", Version: "3"}, dir)
	require.NoError(t, err)
	require.Equal(t, 2, n)

	f, err := os.Open(filepath.Join(dir, "index.jsonl"))
	require.NoError(t, err)
	defer f.Close()
	var ents []Entry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Entry
		require.NoError(t, json.Unmarshal(sc.Bytes(), &e))
		ents = append(ents, e)
	}
	require.Len(t, ents, 2)
	a, b := ents[0], ents[1]
	assert.Equal(t, "a", a.RequestID)
	assert.Equal(t, "gw-1", a.Device)
	assert.Equal(t, 1.5, a.LatencyMS)
	assert.True(t, a.Time.Equal(t0))
	npyData := func(file string) (string, []byte) {
		b, err := os.ReadFile(filepath.Join(dir, file))
		require.NoError(t, err)
		hl := int(binary.LittleEndian.Uint16(b[8:]))
		return string(bytes.TrimSpace(b[10 : 10+hl])), b[10+hl:]
	}
	h, d := npyData(a.Inputs[0].File)
	assert.Equal(t, "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 2, 2), }", h)
	assert.Equal(t, []byte{1, 2, 3, 4}, d)
	h, d = npyData(a.Outputs[0].File)
	assert.Contains(t, h, "'<f4'")
	assert.Equal(t, f32s(0.25, 0.75), d)
	// Cut short: the two whole float32s, flat; BYTES: listed, no file.
	assert.Equal(t, "bad input", b.Error)
	assert.True(t, b.Inputs[0].Truncated)
	assert.Equal(t, []int64{1, 1000}, b.Inputs[0].Shape)
	h, d = npyData(b.Inputs[0].File)
	assert.Contains(t, h, "'shape': (2,)")
	assert.Equal(t, f32s(1, 2), d)
	assert.Empty(t, b.Inputs[1].File)
	assert.Equal(t, "BYTES", b.Inputs[1].Datatype)

	// Not over an existing export; since filters by the device's time.
	_, err = Write(r, registry.SampleFilter{Model: "face"}, dir)
	require.Error(t, err)
	n, err = Write(r, registry.SampleFilter{Model: "face", Since: t0.Add(30 * time.Second)}, filepath.Join(t.TempDir(), "later"))
	require.NoError(t, err)
	assert.Equal(t, 2, n)
}
