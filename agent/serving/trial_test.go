//go:build cgo

package serving

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/routing"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/models/testmodel"
)

func modelBytes(t testing.TB, name string) []byte {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("test model missing (run `make setup`): %v", err)
	}
	return b
}

const (
	face     = "face_detection_short_range.tflite"
	handLite = "hand_landmark_lite.tflite"
	handFull = "hand_landmark_full.tflite"
)

// shadowLog collects what a registry's shadow observer hears.
type shadowLog struct {
	mu      sync.Mutex
	results []ShadowResult // tensors dropped: they are valid only in the call
	dropped int
	seen    chan struct{}
}

func newShadowLog() *shadowLog { return &shadowLog{seen: make(chan struct{}, 1<<16)} }

func (l *shadowLog) ObserveShadow(r *ShadowResult) {
	l.mu.Lock()
	if r.Dropped {
		l.dropped++
	} else {
		c := *r
		c.Inputs, c.Outputs = nil, nil
		c.Agreement = append([]OutputAgreement(nil), r.Agreement...)
		l.results = append(l.results, c)
	}
	l.mu.Unlock()
	l.seen <- struct{}{}
}

// wait blocks until n copies were heard of (answered, failed or dropped).
func (l *shadowLog) wait(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for range n {
		select {
		case <-l.seen:
		case <-deadline:
			t.Fatalf("heard of fewer than %d shadow copies", n)
		}
	}
}

func (l *shadowLog) snapshot() ([]ShadowResult, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ShadowResult(nil), l.results...), l.dropped
}

// request runs one inference of name with every input element set from
// seed, and returns the version that answered.
func request(ctx context.Context, r *Registry, name string, seed float64) (int64, error) {
	e, _, err := r.Infer(ctx, name, 0, func(e catalog.Entry) ([][]byte, error) {
		ins := make([][]byte, len(e.Inputs))
		for i, in := range e.Inputs {
			n, err := in.ByteSize()
			if err != nil {
				return nil, err
			}
			b := make([]byte, n)
			for k := 0; k < n/4; k++ {
				binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(float32(math.Sin(float64(k)*0.37+seed))))
			}
			ins[i] = b
		}
		return ins, nil
	}, func(int, []byte) error { return nil })
	return e.Version, err
}

func newRegistry(t *testing.T, opts Options, name, model string) *Registry {
	t.Helper()
	opts.Runtime = runtime.Options{Workers: 1, Threads: 1}
	r := New(opts)
	t.Cleanup(func() { r.Close() })
	_, err := r.Load(context.Background(), name, 1, modelBytes(t, model), "test")
	require.NoError(t, err)
	return r
}

// TestShadowSameModel: a candidate with the same bytes as the serving
// version agrees exactly on every copy, and the client only ever sees the
// serving version.
func TestShadowSameModel(t *testing.T) {
	log := newShadowLog()
	r := newRegistry(t, Options{ShadowObserver: log, ShadowQueue: 256}, "face", face)
	_, err := r.StartTrial(context.Background(), "face", 2, modelBytes(t, face), Trial{Mode: Shadow, Percent: 100})
	require.NoError(t, err)
	const n = 40
	for i := range n {
		v, err := request(context.Background(), r, "face", float64(i))
		require.NoError(t, err)
		require.EqualValues(t, 1, v, "a shadow never answers a client")
	}
	log.wait(t, n)
	res, dropped := log.snapshot()
	assert.Zero(t, dropped, "a queue of 256 drops none of %d sequential copies", n)
	require.Len(t, res, n)
	for _, s := range res {
		require.NoError(t, s.Err)
		assert.EqualValues(t, 1, s.Baseline.Version)
		assert.EqualValues(t, 2, s.Candidate.Version)
		assert.Positive(t, s.BaselineInvoke)
		assert.Positive(t, s.CandidateInvoke)
		require.Len(t, s.Agreement, 2)
		for _, a := range s.Agreement {
			assert.True(t, a.Compared, a.Name)
			assert.Zero(t, a.MaxAbsDiff, a.Name)
			assert.Zero(t, a.MeanAbsDiff, a.Name)
			assert.Equal(t, a.Top1Rows, a.Top1Agree, a.Name)
		}
		assert.Equal(t, 896, s.Agreement[0].Top1Rows, "regressors [1 896 16] has 896 score rows")
		assert.Zero(t, s.Agreement[1].Top1Rows, "classificators [1 896 1] is no score vector")
	}
	assert.Len(t, r.Trials(), 1)
	r.EndTrial("face")
	assert.Empty(t, r.Trials())
	v, err := request(context.Background(), r, "face", 0)
	require.NoError(t, err)
	assert.EqualValues(t, 1, v)
}

// TestShadowDifferentModel: the full hand landmark model as the candidate of
// the lite one has the same signature but answers differently, and is
// slower on the same requests.
func TestShadowDifferentModel(t *testing.T) {
	log := newShadowLog()
	r := newRegistry(t, Options{ShadowObserver: log, ShadowQueue: 256}, "hand", handLite)
	_, err := r.StartTrial(context.Background(), "hand", 2, modelBytes(t, handFull), Trial{Mode: Shadow, Percent: 100})
	require.NoError(t, err)
	const n = 30
	for i := range n {
		// One at a time, each after the last copy: the two versions'
		// runs never overlap, so their times compare the models.
		_, err := request(context.Background(), r, "hand", float64(i))
		require.NoError(t, err)
		log.wait(t, 1)
	}
	res, dropped := log.snapshot()
	assert.Zero(t, dropped)
	require.Len(t, res, n)
	var base, cand time.Duration
	var sumMean float64
	for _, s := range res {
		require.NoError(t, s.Err)
		base += s.BaselineInvoke
		cand += s.CandidateInvoke
		require.Len(t, s.Agreement, 4)
		for _, a := range s.Agreement {
			assert.True(t, a.Compared, a.Name)
		}
		sumMean += s.Agreement[0].MeanAbsDiff
	}
	assert.Positive(t, sumMean/n, "landmarks differ between lite and full")
	t.Logf("mean invoke: lite %s, full %s; mean landmark difference %.3f", base/n, cand/n, sumMean/n)
	assert.Greater(t, cand, base, "the full model is slower than the lite one on the same requests")
}

// TestShadowFullQueueDrops: with a slow candidate and a queue of one, copies
// are dropped and counted, and no client request fails.
func TestShadowFullQueueDrops(t *testing.T) {
	log := newShadowLog()
	r := newRegistry(t, Options{ShadowObserver: log, ShadowQueue: 1}, "hand", handLite)
	_, err := r.StartTrial(context.Background(), "hand", 2, modelBytes(t, handFull), Trial{Mode: Shadow, Percent: 100})
	require.NoError(t, err)
	const clients, each = 4, 15
	errs := make(chan error, clients*each)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range each {
				_, err := request(context.Background(), r, "hand", float64(c*each+i))
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, "a client request failed")
	}
	log.wait(t, clients*each) // every copy is answered or dropped
	res, dropped := log.snapshot()
	assert.Positive(t, dropped, "a queue of one behind a slower candidate drops copies")
	assert.Equal(t, clients*each, len(res)+dropped)
	t.Logf("%d copies compared, %d dropped", len(res), dropped)
}

// TestCanaryRouting: a key always lands on the same version; without keys
// the candidate's share is near the percent; a request for the candidate's
// version gets it.
func TestCanaryRouting(t *testing.T) {
	r := newRegistry(t, Options{}, "face", face)
	_, err := r.StartTrial(context.Background(), "face", 2, modelBytes(t, face), Trial{Mode: Canary, Percent: 30})
	require.NoError(t, err)
	ctx := context.Background()
	keys := map[int64]int{}
	for k := range 40 {
		key := routing.WithKey(ctx, "client-"+string(rune('a'+k%26))+string(rune('a'+k/26)))
		first, err := request(key, r, "face", 0)
		require.NoError(t, err)
		keys[first]++
		for i := range 4 {
			v, err := request(key, r, "face", float64(i))
			require.NoError(t, err)
			require.Equal(t, first, v, "key %d moved from v%d to v%d", k, first, v)
		}
	}
	assert.Positive(t, keys[1])
	assert.Positive(t, keys[2])
	const n = 300
	cand := 0
	for i := range n {
		v, err := request(ctx, r, "face", float64(i))
		require.NoError(t, err)
		if v == 2 {
			cand++
		}
	}
	// mean 90, sd sqrt(300*.3*.7) = 7.9: 6 sd either side.
	assert.InDelta(t, 90, cand, 48, "requests without a key the candidate answered")
	e, err := r.Lookup("face", 2)
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.Version)
	_, _, err = r.Infer(ctx, "face", 2, func(e catalog.Entry) ([][]byte, error) {
		return nil, errors.New("stop here: " + e.Digest)
	}, nil)
	assert.ErrorContains(t, err, "stop here", "a request for the candidate's version reaches it")
}

// TestPromoteNoSecondLoad: loading the candidate's version and bytes swaps
// the loaded candidate in; a different version replaces the candidate.
func TestPromoteNoSecondLoad(t *testing.T) {
	r := New(Options{Runtime: runtime.Options{Workers: 2, Threads: 1}})
	t.Cleanup(func() { r.Close() })
	data := modelBytes(t, face)
	_, err := r.Load(context.Background(), "face", 1, data, "test")
	require.NoError(t, err)
	cand, err := r.StartTrial(context.Background(), "face", 2, data, Trial{Mode: Shadow, Percent: 10})
	require.NoError(t, err)
	assert.Equal(t, 2, cand.Workers)
	// The mode changes at once, without a load.
	again, err := r.StartTrial(context.Background(), "face", 2, data, Trial{Mode: Canary, Percent: 50})
	require.NoError(t, err)
	assert.Equal(t, cand.LoadedAt, again.LoadedAt)
	assert.Equal(t, Trial{Mode: Canary, Percent: 50}, r.Trials()[0].Trial)
	e, err := r.Load(context.Background(), "face", 2, data, "store")
	require.NoError(t, err)
	assert.Equal(t, cand.LoadedAt, e.LoadedAt, "promoted, not loaded again")
	assert.Equal(t, 2, e.Workers, "the candidate's own pool came along, as large as the serving version's")
	assert.Empty(t, r.Trials())
	v, err := request(context.Background(), r, "face", 0)
	require.NoError(t, err)
	assert.EqualValues(t, 2, v)

	_, err = New(Options{}).StartTrial(context.Background(), "face", 2, data, Trial{Mode: Shadow, Percent: 10})
	assert.ErrorIs(t, err, ErrNoServingVersion)
}

// canaryLog collects what a registry's canary observer hears.
type canaryLog struct {
	mu       sync.Mutex
	failures []CanaryFailure
}

func (l *canaryLog) ObserveCanaryFailure(f *CanaryFailure) {
	l.mu.Lock()
	l.failures = append(l.failures, *f)
	l.mu.Unlock()
}

// TestCanaryFallback: a candidate in canary that fails on a request it
// could read (testmodel.TrapONNX on inputs of 8 or more) does not fail the
// client: the serving version answers, and the observer hears the
// candidate's failure. A request that cannot be read fails as before, and
// one that asks for the candidate's version gets its error.
func TestCanaryFallback(t *testing.T) {
	heard := &canaryLog{}
	r := New(Options{Runtime: runtime.Options{Workers: 1, Threads: 1}, CanaryObserver: heard})
	t.Cleanup(func() { r.Close() })
	ctx := context.Background()
	_, err := r.Load(ctx, "tiny", 1, testmodel.TinyONNX(13), "test")
	require.NoError(t, err)
	_, err = r.StartTrial(ctx, "tiny", 2, testmodel.TrapONNX(), Trial{Mode: Canary, Percent: 100})
	require.NoError(t, err)
	infer := func(version int64, x float32, bad bool) (catalog.Entry, []byte, error) {
		var out []byte
		e, _, err := r.Infer(ctx, "tiny", version, func(catalog.Entry) ([][]byte, error) {
			if bad {
				return nil, fmt.Errorf("%w: not four floats", catalog.ErrBadInput)
			}
			b := make([]byte, 16)
			for i := range 4 {
				binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
			}
			return [][]byte{b}, nil
		}, func(_ int, data []byte) error { out = append(out[:0], data...); return nil })
		return e, out, err
	}
	e, out, err := infer(0, 3, false)
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.Version, "the candidate answers what it can")
	assert.Equal(t, float32(6), math.Float32frombits(binary.LittleEndian.Uint32(out)))
	e, out, err = infer(0, 9, false)
	require.NoError(t, err, "the candidate's failure reached the client")
	assert.EqualValues(t, 1, e.Version, "the serving version answers instead")
	assert.Equal(t, float32(18), math.Float32frombits(binary.LittleEndian.Uint32(out)))
	heard.mu.Lock()
	require.Len(t, heard.failures, 1)
	assert.EqualValues(t, 2, heard.failures[0].Candidate.Version)
	assert.Error(t, heard.failures[0].Err)
	heard.mu.Unlock()
	_, _, err = infer(0, 3, true)
	assert.ErrorIs(t, err, catalog.ErrBadInput, "a request that cannot be read is the client's")
	_, _, err = infer(2, 9, false)
	assert.Error(t, err, "a request for the candidate's version gets its error")
	heard.mu.Lock()
	assert.Len(t, heard.failures, 1, "only fallbacks are heard of")
	heard.mu.Unlock()
}
