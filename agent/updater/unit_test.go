package updater

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// These tests need no TFLite runtime: they run with CGO_ENABLED=0.

func TestTransitions(t *testing.T) {
	for _, tc := range []struct {
		from, to State
		ok       bool
	}{
		{Idle, Downloading, true},
		{Committed, Downloading, true},
		{Failed, RollingBack, true},
		{Downloading, Verifying, true},
		{Downloading, Activating, false},
		{Verifying, Validating, false},
		{Validating, Activating, true},
		{Validating, RollingBack, false}, // nothing was activated: fail instead
		{Activating, RollingBack, true},
		{Probation, Committed, true},
		{Probation, Failed, false}, // activated: it must roll back
		{RollingBack, RolledBack, true},
		{Committed, Probation, false},
	} {
		if got := allowed(tc.from, tc.to); got != tc.ok {
			t.Errorf("%s -> %s: got %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
}

func TestTrafficStats(t *testing.T) {
	c := NewTrafficCounter()
	c.Observe("face", 2, false, 2*time.Millisecond)
	base := c.Traffic("face", 2)
	c.Observe("face", 2, true, 4*time.Millisecond)
	c.Observe("face", 2, false, 6*time.Millisecond)
	c.Observe("face", 1, true, time.Second)
	d := c.Traffic("face", 2).Sub(base)
	require.Equal(t, TrafficStats{Requests: 2, Errors: 1, Latency: 10 * time.Millisecond}, d)
	require.Equal(t, 5*time.Millisecond, d.Mean())
	require.Equal(t, TrafficStats{}, c.Traffic("hand", 1))
	// Counters that started again (a new process) are taken as they are.
	require.Equal(t, uint64(1), TrafficStats{Requests: 1}.Sub(TrafficStats{Requests: 5}).Requests)

	u := &Updater{opts: Options{MaxErrorRatio: 0.1, MaxLatency: 50 * time.Millisecond}}
	require.NoError(t, u.judge(TrafficStats{Requests: 9, Errors: 9}, 10), "too few requests to judge")
	require.ErrorIs(t, u.judge(TrafficStats{Requests: 10, Errors: 2}, 10), ErrProbation)
	require.NoError(t, u.judge(TrafficStats{Requests: 10, Errors: 1, Latency: 100 * time.Millisecond}, 10))
	require.ErrorIs(t, u.judge(TrafficStats{Requests: 10, Latency: time.Second}, 10), ErrProbation)
	require.NoError(t, u.judge(TrafficStats{}, 0), "no traffic is nothing to judge")
	require.Equal(t, TrafficStats{Requests: 3, Errors: 1, Latency: 3}, TrafficStats{Requests: 1, Latency: 1}.Add(TrafficStats{Requests: 2, Errors: 1, Latency: 2}))
}

// TestProbationPolicy: an install's probation override replaces the
// device's settings field by field, and the longest probation is never
// shorter than the least.
func TestProbationPolicy(t *testing.T) {
	u := &Updater{opts: Options{Probation: time.Minute, ProbationMinRequests: 20, ProbationMax: 15 * time.Minute}}
	for _, tc := range []struct {
		name   string
		policy protocol.Probation
		minReq uint64
		most   time.Duration
	}{
		{"device settings", protocol.Probation{}, 20, 15 * time.Minute},
		{"requests only", protocol.Probation{MinRequests: 500}, 500, 15 * time.Minute},
		{"max only", protocol.Probation{MaxSeconds: 3600}, 20, time.Hour},
		{"both", protocol.Probation{MinRequests: 1, MaxSeconds: 120}, 1, 2 * time.Minute},
		{"max below the least time", protocol.Probation{MaxSeconds: 10}, 20, time.Minute},
	} {
		least, minReq, most := u.probationPolicy(&Job{Policy: tc.policy})
		if least != time.Minute || minReq != tc.minReq || most != tc.most {
			t.Errorf("%s: got %s, %d, %s; want 1m0s, %d, %s", tc.name, least, minReq, most, tc.minReq, tc.most)
		}
	}
}

func TestRealValues(t *testing.T) {
	le := binary.LittleEndian
	f32 := le.AppendUint32(nil, math.Float32bits(1.5))
	f16 := le.AppendUint16(nil, tensorjson.FloatToHalf(-2.25))
	for _, tc := range []struct {
		name string
		dt   tensor.DataType
		b    []byte
		q    *tensor.Quantization
		want []float64
		ok   bool
	}{
		{"fp32", tensor.FP32, f32, nil, []float64{1.5}, true},
		{"fp16", tensor.FP16, f16, nil, []float64{-2.25}, true},
		{"uint8 quantized", tensor.Uint8, []byte{130, 128}, &tensor.Quantization{Scale: 0.5, ZeroPoint: 128}, []float64{1, 0}, true},
		{"int8", tensor.Int8, []byte{0xff}, nil, []float64{-1}, true},
		{"int32", tensor.Int32, le.AppendUint32(nil, uint32(0xfffffffe)), nil, []float64{-2}, true},
		{"ragged", tensor.FP32, []byte{1, 2, 3}, nil, nil, false},
		{"strings", tensor.Bytes, []byte("ab"), nil, nil, false},
	} {
		got, err := realValues(tc.dt, tc.b, tc.q)
		if (err == nil) != tc.ok {
			t.Errorf("%s: got error %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if tc.ok {
			require.Equal(t, tc.want, got, tc.name)
		}
	}
	infos := []tensor.Info{{Name: "out", DataType: tensor.FP32}}
	g := manifest.Golden{Tolerance: 0.01, Outputs: []manifest.Data{{Name: "out", DataType: "FP32", Data: f32}}}
	require.NoError(t, compare(infos, [][]byte{le.AppendUint32(nil, math.Float32bits(1.505))}, g))
	require.Error(t, compare(infos, [][]byte{le.AppendUint32(nil, math.Float32bits(1.6))}, g))
	require.Error(t, compare(infos, [][]byte{le.AppendUint32(nil, math.Float32bits(float32(math.NaN())))}, g), "NaN is not within tolerance")
	g.Outputs[0].Name = "other"
	require.Error(t, compare(infos, [][]byte{f32}, g))
}

func TestCheckChunk(t *testing.T) {
	j := &Job{Length: 10, ChunkSize: 4}
	ok := func(i int, d []byte) Chunk { return Chunk{Index: i, Data: d, Hash: sha256.Sum256(d)} }
	require.NoError(t, checkChunk(ok(0, []byte("abcd")), j, 3))
	require.NoError(t, checkChunk(ok(2, []byte("ij")), j, 3))
	require.ErrorIs(t, checkChunk(ok(2, []byte("ijk")), j, 3), ErrChunk)
	require.ErrorIs(t, checkChunk(ok(1, []byte("efg")), j, 3), ErrChunk)
	bad := ok(1, []byte("efgh"))
	bad.Data = []byte("efgX")
	require.ErrorIs(t, checkChunk(bad, j, 3), ErrChunk)
}

// plainUpdater is an Updater for command handling only: Run is not started,
// so no model is ever loaded.
func plainUpdater(t testing.TB) (*Updater, *trust.Root, ed25519.PrivateKey) {
	t.Helper()
	_, rootKey, _ := ed25519.GenerateKey(nil)
	_, tk, _ := ed25519.GenerateKey(nil)
	rid, rk := trust.NewKey(rootKey.Public().(ed25519.PublicKey))
	tid, tkey := trust.NewKey(tk.Public().(ed25519.PublicKey))
	b, err := trust.SignRoot(trust.RootDoc{Version: 1, Expires: time.Now().Add(time.Hour), Keys: map[string]trust.Key{rid: rk, tid: tkey},
		Roles: map[string]trust.Role{trust.RoleRoot: {KeyIDs: []string{rid}, Threshold: 1}, trust.RoleTargets: {KeyIDs: []string{tid}, Threshold: 1}}}, rootKey)
	require.NoError(t, err)
	root, err := trust.LoadRoot(b)
	require.NoError(t, err)
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{})
	require.NoError(t, err)
	require.NoError(t, st.SaveRoot(root))
	u, err := New(Options{DataDir: dir, Store: st, Fleet: "test", Device: "dev1",
		Activator: ActivatorFunc(func(context.Context, string, int64, []byte) error { return errors.New("not here") }),
		Runtime:   RuntimeFunc(func([]byte) (Model, error) { return nil, errors.New("not here") })})
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	return u, root, tk
}

func abortCmd(t testing.TB, root *trust.Root, key ed25519.PrivateKey, id string) []byte {
	c := protocol.Command{ID: id, Kind: protocol.CommandAbort, Fleet: "test", Device: "dev1", RolloutID: "r1",
		Issued: time.Now().Add(-time.Minute), Expires: time.Now().Add(time.Hour), Abort: &protocol.Abort{}}
	b, err := protocol.SignCommand(&c, [][]byte{root.Raw}, key)
	require.NoError(t, err)
	return b
}

// TestReplayRefused: a command id is accepted once, even across a restart
// of the updater, and the replay is counted.
func TestReplayRefused(t *testing.T) {
	u, root, key := plainUpdater(t)
	b := abortCmd(t, root, key, "a1")
	require.NoError(t, u.HandleCommand(b))
	require.ErrorIs(t, u.HandleCommand(b), ErrReplay)
	require.Equal(t, 1.0, counterValue(t, u.metrics.commands.WithLabelValues(ResultReplayed)))
	dir, st := u.opts.DataDir, u.opts.Store
	require.NoError(t, u.Close())
	u, err := New(Options{DataDir: dir, Store: st, Fleet: "test", Device: "dev1", Activator: u.opts.Activator, Runtime: u.opts.Runtime})
	require.NoError(t, err)
	defer u.Close()
	require.ErrorIs(t, u.HandleCommand(b), ErrReplay, "replay after a restart")
	n, err := u.VerifyAudit()
	require.NoError(t, err)
	require.Equal(t, 1, n, "the accepted command is in the audit trail, the replays are not")
}

// FuzzHandleCommand feeds arbitrary cmd-topic payloads: nothing panics, and
// nothing but the genuine signed command is accepted.
func FuzzHandleCommand(f *testing.F) {
	u, root, key := plainUpdater(f)
	genuine := abortCmd(f, root, key, "genuine")
	f.Add(genuine)
	f.Add([]byte(`{"envelope":{}}`))
	f.Add([]byte(`{"roots":[1],"envelope":{"payloadType":"x","payload":"","signatures":[]}}`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		err := u.HandleCommand(b)
		if err == nil && string(b) != string(genuine) {
			t.Fatalf("accepted a forged command: %q", b)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Fatalf("refusal does not wrap ErrRefused: %v", err)
		}
	})
}
