//go:build cgo

package batch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// face is the face detection model's name in the test registries; its input
// is FP32 [1 128 128 3].
const face = testmodel.FaceShort

// newRegistry serves the real face detection model with two interpreters.
func newRegistry(t testing.TB) *serving.Registry {
	t.Helper()
	reg := serving.New(serving.Options{Runtime: runtime.Options{Workers: 2}})
	t.Cleanup(func() { reg.Close() })
	_, err := reg.LoadFile(context.Background(), face, 1, testmodel.Path(t, face))
	require.NoError(t, err)
	return reg
}

// image is a deterministic FP32 image of the face model's input size.
func image(seed int) []byte {
	const n = 128 * 128 * 3
	b := make([]byte, 0, 4*n)
	for i := range n {
		v := float32(math.Sin(float64(i*(seed+1)) * 0.001))
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// writeRows writes an .npy file of n images [n 128 128 3].
func writeRows(t testing.TB, path string, n int) {
	t.Helper()
	var data []byte
	for i := range n {
		data = append(data, image(i%7)...)
	}
	require.NoError(t, os.WriteFile(path, appendNpy(nil, tensor.FP32, []int{n, 128, 128, 3}, data), 0o644))
}

// v2Request is a .json/.jsonl item for the face model.
func v2Request(id string, dt tensor.DataType, shape []int, img []byte) []byte {
	var vals []string
	for i := 0; i+4 <= len(img); i += 4 {
		vals = append(vals, strconv.FormatFloat(float64(math.Float32frombits(binary.LittleEndian.Uint32(img[i:]))), 'g', -1, 32))
	}
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = strconv.Itoa(d)
	}
	return []byte(`{"id":"` + id + `","inputs":[{"name":"input","datatype":"` + string(dt) + `","shape":[` +
		strings.Join(dims, ",") + `],"data":[` + strings.Join(vals, ",") + `]}]}`)
}

// record is an output line, decoded.
type record struct {
	Index  int    `json:"index"`
	Key    string `json:"key"`
	Error  string `json:"error"`
	Result *struct {
		ModelName    string `json:"model_name"`
		ModelVersion string `json:"model_version"`
		ID           string `json:"id"`
		Parameters   struct {
			Digest string `json:"model_digest"`
		} `json:"parameters"`
		Outputs []struct {
			Name  string    `json:"name"`
			Shape []int     `json:"shape"`
			Data  []float32 `json:"data"`
			B64   []byte    `json:"b64"` // readRecords moves it to Data
		} `json:"outputs"`
	} `json:"result"`
}

// readRecords decodes every line of an output file and checks that line i
// has index i (every item exactly once, in order).
func readRecords(t testing.TB, path string) []record {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, len(b) == 0 || b[len(b)-1] == '\n', "output does not end in a newline")
	var out []record
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<26)
	for sc.Scan() {
		var r record
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "line %d", len(out))
		require.Equal(t, len(out), r.Index, "line %d has index %d", len(out), r.Index)
		if r.Result != nil {
			for k := range r.Result.Outputs {
				o := &r.Result.Outputs[k]
				if o.B64 == nil {
					continue
				}
				require.Nil(t, o.Data, "line %d output %s has data and b64", len(out), o.Name)
				for j := 0; j+4 <= len(o.B64); j += 4 {
					o.Data = append(o.Data, math.Float32frombits(binary.LittleEndian.Uint32(o.B64[j:])))
				}
			}
		}
		out = append(out, r)
	}
	require.NoError(t, sc.Err())
	return out
}

func runBatch(t testing.TB, reg Backend, in, out string, resume bool) (Stats, error) {
	t.Helper()
	r, err := New(Options{Backend: reg, Model: face, Input: in, Output: out, Resume: resume})
	require.NoError(t, err)
	err = r.Run(context.Background())
	return r.Stats(), err
}

// direct runs img through the registry, for comparison with batch results.
func direct(t testing.TB, reg *serving.Registry, img []byte) [][]float32 {
	t.Helper()
	var outs [][]float32
	_, _, err := reg.Infer(context.Background(), face, 0,
		func(catalog.Entry) ([][]byte, error) { return [][]byte{img}, nil },
		func(_ int, data []byte) error {
			f := make([]float32, len(data)/4)
			for i := range f {
				f[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
			}
			outs = append(outs, f)
			return nil
		})
	require.NoError(t, err)
	return outs
}

func TestNpyRows(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.npy"), filepath.Join(dir, "out.jsonl")
	writeRows(t, in, 24)
	st, err := runBatch(t, reg, in, out, false)
	require.NoError(t, err)
	require.Equal(t, Stats{Total: 24, Done: 24}, Stats{Total: st.Total, Done: st.Done, Errors: st.Errors, Skipped: st.Skipped})
	recs := readRecords(t, out)
	require.Len(t, recs, 24)
	for i, r := range recs {
		require.Equal(t, "row "+strconv.Itoa(i), r.Key)
		require.Empty(t, r.Error)
		require.NotNil(t, r.Result)
		require.Equal(t, face, r.Result.ModelName)
		require.Equal(t, "1", r.Result.ModelVersion)
		require.True(t, strings.HasPrefix(r.Result.Parameters.Digest, "sha256:"))
		require.Len(t, r.Result.Outputs, 2)
		require.Equal(t, []int{1, 896, 16}, r.Result.Outputs[0].Shape)
		// Each row's results are the model's own results on that row.
		want := direct(t, reg, image(i%7))
		require.Equal(t, want[0], r.Result.Outputs[0].Data, "row %d", i)
		require.Equal(t, want[1], r.Result.Outputs[1].Data, "row %d", i)
	}
}

func TestDirectoryItemsAndBadItems(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	require.NoError(t, os.Mkdir(in, 0o755))
	img := image(3)
	files := map[string][]byte{
		"a-hwc.npy":        appendNpy(nil, tensor.FP32, []int{128, 128, 3}, img),
		"b-nhwc.npy":       appendNpy(nil, tensor.FP32, []int{1, 128, 128, 3}, img),
		"c-request.json":   v2Request("req-c", tensor.FP32, []int{1, 128, 128, 3}, img),
		"d-raw.bin":        img,
		"e-bad-json.json":  []byte(`{"inputs": [`),
		"f-dtype.json":     v2Request("req-f", tensor.FP64, []int{1, 128, 128, 3}, img),
		"g-shape.npy":      appendNpy(nil, tensor.FP32, []int{64, 128, 3}, img[:64*128*3*4]),
		"h-header.npy":     []byte("\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'"),
		"i-short.bin":      img[:100],
		"j-notes.txt":      []byte("not an item"),
		"k-uint8.npy":      appendNpy(nil, tensor.Uint8, []int{128, 128, 3}, make([]byte, 128*128*3)),
		".hidden.npy":      []byte("skipped"),
		"l-last-good.json": v2Request("", tensor.FP32, []int{1, 128, 128, 3}, img),
	}
	for name, b := range files {
		require.NoError(t, os.WriteFile(filepath.Join(in, name), b, 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(in, "subdir"), 0o755))
	out := filepath.Join(dir, "out.jsonl")
	st, err := runBatch(t, reg, in, out, false)
	require.NoError(t, err)
	require.Equal(t, 12, st.Total)
	require.Equal(t, 12, st.Done)
	require.Equal(t, 7, st.Errors)
	recs := readRecords(t, out)
	require.Len(t, recs, 12)
	want := direct(t, reg, img)
	errs := map[string]string{
		"e-bad-json.json": "oip:",
		"f-dtype.json":    "FP64 [1 128 128 3], model takes FP32",
		"g-shape.npy":     "shape [64 128 3]",
		"h-header.npy":    "npy:",
		"i-short.bin":     "100 bytes",
		"j-notes.txt":     "unsupported file type",
		"k-uint8.npy":     "datatype UINT8",
	}
	nerr := 0
	for _, r := range recs {
		if sub, ok := errs[r.Key]; ok {
			nerr++
			require.Nil(t, r.Result, r.Key)
			require.Contains(t, r.Error, sub, r.Key)
			continue
		}
		require.Empty(t, r.Error, r.Key)
		require.NotNil(t, r.Result, r.Key)
		require.Equal(t, want[0], r.Result.Outputs[0].Data, r.Key)
		require.Equal(t, want[1], r.Result.Outputs[1].Data, r.Key)
		if r.Key == "c-request.json" {
			require.Equal(t, "req-c", r.Result.ID)
		}
	}
	require.Equal(t, 7, nerr, "error records")
}

// Records come out in input order when items finish out of order: the
// first item runs the model (about a millisecond) while the other worker
// races through 40 items that fail as they are read, more than the queue
// lets wait for an earlier record (4 per worker), so that worker must also
// wait for room. Every record is there once, at its index.
func TestRecordsInOrderBehindASlowItem(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	require.NoError(t, os.Mkdir(in, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(in, "a-good.npy"), appendNpy(nil, tensor.FP32, []int{128, 128, 3}, image(1)), 0o644))
	const bad = 40
	for i := range bad {
		require.NoError(t, os.WriteFile(filepath.Join(in, fmt.Sprintf("b-%02d.txt", i)), []byte("not an item"), 0o644))
	}
	out := filepath.Join(dir, "out.jsonl")
	st, err := runBatch(t, reg, in, out, false)
	require.NoError(t, err)
	require.Equal(t, bad+1, st.Done)
	require.Equal(t, bad, st.Errors)
	recs := readRecords(t, out) // checks index i on line i
	require.Len(t, recs, bad+1)
	require.Equal(t, "a-good.npy", recs[0].Key)
	require.NotNil(t, recs[0].Result)
	for i, r := range recs[1:] {
		require.Equal(t, fmt.Sprintf("b-%02d.txt", i), r.Key)
		require.Contains(t, r.Error, "unsupported file type")
	}
}

func TestJSONL(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	img := image(5)
	var b bytes.Buffer
	b.Write(v2Request("first", tensor.FP32, []int{1, 128, 128, 3}, img)) // line 1
	b.WriteString("\n\n   \n")                                           // lines 2-3 blank
	b.WriteString("{not json\n")                                         // line 4
	b.Write(v2Request("", tensor.FP32, []int{1, 128, 128, 4}, img))      // line 5: data fits no shape
	b.WriteString("\r\n")
	b.WriteString(`{"inputs":[{"name":"other","datatype":"FP32","shape":[1],"data":[1]}]}` + "\n") // line 6
	b.Write(v2Request("last", tensor.FP32, []int{1, 128, 128, 3}, img))                            // line 7, no newline
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	require.NoError(t, os.WriteFile(in, b.Bytes(), 0o644))
	st, err := runBatch(t, reg, in, out, false)
	require.NoError(t, err)
	recs := readRecords(t, out)
	require.Len(t, recs, 5)
	require.Equal(t, 3, st.Errors)
	keys := []string{"line 1", "line 4", "line 5", "line 6", "line 7"}
	for i, r := range recs {
		require.Equal(t, keys[i], r.Key)
	}
	want := direct(t, reg, img)
	require.Equal(t, "first", recs[0].Result.ID)
	require.Equal(t, want[0], recs[0].Result.Outputs[0].Data)
	require.Contains(t, recs[1].Error, "oip")
	require.NotEmpty(t, recs[2].Error)
	require.Contains(t, recs[3].Error, `input "input" is missing`)
	require.Equal(t, "last", recs[4].Result.ID)
	require.Equal(t, want[1], recs[4].Result.Outputs[1].Data)
}

func TestJSONLLineLimit(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	long := `{"inputs":[],"pad":"` + strings.Repeat("x", 5000) + `"}`
	require.NoError(t, os.WriteFile(in, []byte(long+"\n{}\n"+long), 0o644))
	r, err := New(Options{Backend: reg, Model: face, Input: in, Output: out, MaxItemBytes: 1000})
	require.NoError(t, err)
	require.NoError(t, r.Run(context.Background()))
	recs := readRecords(t, out)
	require.Len(t, recs, 3)
	require.Contains(t, recs[0].Error, "item limit")
	require.Contains(t, recs[1].Error, "no inputs")
	require.Contains(t, recs[2].Error, "item limit")
	require.Equal(t, "line 3", recs[2].Key)
}

func TestNpyRowsThatDoNotFit(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.npy"), filepath.Join(dir, "out.jsonl")
	require.NoError(t, os.WriteFile(in, appendNpy(nil, tensor.FP32, []int{2, 64, 64, 3}, make([]byte, 2*64*64*3*4)), 0o644))
	_, err := runBatch(t, reg, in, out, false)
	require.ErrorIs(t, err, ErrInput)
	// Truncated data: the header promises more rows than the file holds.
	require.NoError(t, os.WriteFile(in, appendNpy(nil, tensor.FP32, []int{3, 128, 128, 3}, image(0)), 0o644))
	_, err = runBatch(t, reg, in, out, false)
	require.ErrorIs(t, err, ErrInput)
	require.NoError(t, os.WriteFile(in, []byte("\x93NUMPY\x09\x00"), 0o644))
	_, err = runBatch(t, reg, in, out, false)
	require.ErrorIs(t, err, ErrInput)
}

func TestOutputExists(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.npy"), filepath.Join(dir, "out.jsonl")
	writeRows(t, in, 2)
	require.NoError(t, os.WriteFile(out, []byte("something\n"), 0o644))
	_, err := runBatch(t, reg, in, out, false)
	require.ErrorIs(t, err, ErrOutputExists)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "something\n", string(b), "a refused run must not touch the output")
}

// TestResumeTornTail damages a finished output the ways a crash can (a torn
// last line, a tail of zeros from a lost page, a record out of place, a
// record missing its newline) and checks that resume keeps the valid
// prefix, redoes the rest, and ends byte-identical to an undisturbed run.
func TestResumeTornTail(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.npy")
	const n = 12
	writeRows(t, in, n)
	ref := filepath.Join(dir, "ref.jsonl")
	_, err := runBatch(t, reg, in, ref, false)
	require.NoError(t, err)
	full, err := os.ReadFile(ref)
	require.NoError(t, err)
	lines := bytes.SplitAfter(full, []byte("\n"))[:n]
	prefix := func(k int) []byte { return bytes.Join(lines[:k], nil) }

	cases := []struct {
		name string
		file []byte
		kept int
	}{
		{"empty", nil, 0},
		{"torn mid-line", append(prefix(5), lines[5][:len(lines[5])/2]...), 5},
		{"torn one byte in", append(prefix(7), '{'), 7},
		{"missing newline", append(prefix(3), bytes.TrimSuffix(lines[3], []byte("\n"))...), 3},
		{"zeros after a lost page", append(prefix(4), make([]byte, 4096)...), 4},
		{"zeros then more records", append(append(prefix(2), append(make([]byte, 100), '\n')...), lines[3]...), 2},
		{"record out of place", append(prefix(6), lines[8]...), 6},
		{"valid JSON without an index", append(prefix(1), []byte(`{"key":"row 1"}`+"\n")...), 1},
		{"complete", full, n},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.jsonl")
			require.NoError(t, os.WriteFile(out, tc.file, 0o644))
			st, err := runBatch(t, reg, in, out, true)
			require.NoError(t, err)
			require.Equal(t, tc.kept, st.Skipped, "records kept")
			require.Equal(t, n-tc.kept, st.Done, "records redone")
			got, err := os.ReadFile(out)
			require.NoError(t, err)
			require.Equal(t, string(full), string(got))
		})
	}
}

func TestResumeRefusesChangedInput(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	require.NoError(t, os.Mkdir(in, 0o755))
	for _, name := range []string{"a.npy", "c.npy"} {
		require.NoError(t, os.WriteFile(filepath.Join(in, name), appendNpy(nil, tensor.FP32, []int{128, 128, 3}, image(1)), 0o644))
	}
	out := filepath.Join(dir, "out.jsonl")
	_, err := runBatch(t, reg, in, out, false)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(in, "b.npy"), appendNpy(nil, tensor.FP32, []int{128, 128, 3}, image(1)), 0o644))
	_, err = runBatch(t, reg, in, out, true)
	require.ErrorIs(t, err, ErrInputChanged)
	require.NoError(t, os.Remove(filepath.Join(in, "b.npy")))
	require.NoError(t, os.Remove(filepath.Join(in, "c.npy")))
	_, err = runBatch(t, reg, in, out, true)
	require.ErrorIs(t, err, ErrInputChanged, "fewer items than records")
}

// cancelAfter is the real registry, with the run's context cancelled when
// the nth inference starts: a stop at a chosen point without a timer.
type cancelAfter struct {
	*serving.Registry
	n      atomic.Int64
	after  int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Infer(ctx context.Context, name string, version int64,
	prepare func(catalog.Entry) ([][]byte, error), emit func(int, []byte) error,
) (catalog.Entry, catalog.Timing, error) {
	if c.n.Add(1) == c.after {
		c.cancel()
	}
	return c.Registry.Infer(ctx, name, version, prepare, emit)
}

// TestCancelThenResume stops a run by cancelling its context half way, then
// resumes it to the end.
func TestCancelThenResume(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.npy"), filepath.Join(dir, "out.jsonl")
	const n = 40
	writeRows(t, in, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := New(Options{Backend: &cancelAfter{Registry: reg, after: n / 4, cancel: cancel}, Model: face, Input: in, Output: out})
	require.NoError(t, err)
	err = r.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	first := r.Stats()
	// At most the calls already in the pool finish after the cancel.
	require.Less(t, first.Done, n/4+r.opts.Workers, "records written after the cancel")
	require.Len(t, readRecords(t, out), first.Done, "records synced at the stop")
	st, err := runBatch(t, reg, in, out, true)
	require.NoError(t, err)
	require.Equal(t, first.Done, st.Skipped)
	require.Equal(t, n, st.Skipped+st.Done)
	recs := readRecords(t, out)
	require.Len(t, recs, n)
	for i, r := range recs {
		require.Equal(t, "row "+strconv.Itoa(i), r.Key)
		require.NotNil(t, r.Result)
	}
}

func TestProgressLine(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{total: 1000, skipped: 100, start: start}
	got := p.line(Stats{Skipped: 100, Done: 200, Errors: 3}, start.Add(10*time.Second))
	require.Equal(t, "300/1000 items (30.0%) 20.0 items/s ETA 35s, 3 errors", got)
	require.Equal(t, "100/1000 items (10.0%) 0.0 items/s ETA ?", p.line(Stats{Skipped: 100}, start))
}

func TestProgressOutput(t *testing.T) {
	reg := newRegistry(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.npy")
	writeRows(t, in, 4)
	for _, terminal := range []bool{false, true} {
		var buf bytes.Buffer
		r, err := New(Options{Backend: reg, Model: face, Input: in, Output: filepath.Join(t.TempDir(), "out.jsonl"),
			Progress: &buf, Terminal: terminal})
		require.NoError(t, err)
		require.NoError(t, r.Run(context.Background()))
		got := buf.String()
		if terminal {
			require.True(t, strings.HasPrefix(got, "\r["), "%q", got)
			require.Contains(t, got, "[==============================] 4/4 items (100.0%)")
			require.True(t, strings.HasSuffix(got, "\n"))
		} else {
			require.True(t, strings.HasPrefix(got, "batch: 4/4 items (100.0%) "), "%q", got)
			require.NotContains(t, got, "\r")
		}
	}
}

// TestOutputEncodings: each --outputs choice writes the same numbers, as
// base64 or as JSON arrays: auto picks base64 only for the output above
// Base64Above elements (face detection's 896x16 regressors, not its 896
// scores).
func TestOutputEncodings(t *testing.T) {
	reg := newRegistry(t)
	for _, tc := range []struct {
		enc  OutputEncoding
		want []bool // per output: base64
	}{
		{"", []bool{true, false}}, // the default is auto
		{OutputsAuto, []bool{true, false}},
		{OutputsJSON, []bool{false, false}},
		{OutputsBase64, []bool{true, true}},
	} {
		t.Run(string(tc.enc), func(t *testing.T) {
			dir := t.TempDir()
			in, out := filepath.Join(dir, "in.npy"), filepath.Join(dir, "out.jsonl")
			writeRows(t, in, 3)
			r, err := New(Options{Backend: reg, Model: face, Input: in, Output: out, Outputs: tc.enc})
			require.NoError(t, err)
			require.NoError(t, r.Run(context.Background()))
			b, err := os.ReadFile(out)
			require.NoError(t, err)
			lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
			require.Len(t, lines, 3)
			for i, l := range lines {
				var rec struct {
					Index  int `json:"index"`
					Result struct {
						ModelName string `json:"model_name"`
						Outputs   []struct {
							Name     string    `json:"name"`
							DataType string    `json:"datatype"`
							Shape    []int     `json:"shape"`
							B64      []byte    `json:"b64"` // encoding/json decodes base64
							Data     []float32 `json:"data"`
						} `json:"outputs"`
					} `json:"result"`
				}
				require.NoError(t, json.Unmarshal(l, &rec))
				require.Equal(t, i, rec.Index)
				require.Equal(t, face, rec.Result.ModelName)
				want := direct(t, reg, image(i%7))
				require.Len(t, rec.Result.Outputs, 2)
				for k, o := range rec.Result.Outputs {
					require.Equal(t, "FP32", o.DataType)
					got := o.Data
					if tc.want[k] {
						require.Nil(t, o.Data, "output %s has data and b64", o.Name)
						got = make([]float32, len(o.B64)/4)
						for j := range got {
							got[j] = math.Float32frombits(binary.LittleEndian.Uint32(o.B64[4*j:]))
						}
					} else {
						require.Nil(t, o.B64, "output %s as b64, want data", o.Name)
					}
					require.Equal(t, want[k], got, "record %d output %s", i, o.Name)
				}
			}
		})
	}
	_, err := New(Options{Backend: reg, Model: face, Input: "x", Output: "y", Outputs: "hex"})
	require.ErrorContains(t, err, `unknown output encoding "hex" (auto, json or b64)`)
}
