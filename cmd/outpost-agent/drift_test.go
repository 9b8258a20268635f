package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// hookReceiver records the webhook deliveries it is sent.
type hookReceiver struct {
	mu     sync.Mutex
	events []hookEvent
}

type hookEvent struct {
	Key, Type string
	Data      struct {
		Model, Version, Device, State, Previous string
		Since                                   time.Time
	}
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	if err := alerts.Verify([]byte("drift-test-secret-0123"), r.Header.Get("Outpost-Signature"), b, time.Now(), time.Minute); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var e struct {
		Type string          `json:"event"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ev := hookEvent{Key: r.Header.Get("Outpost-Idempotency-Key"), Type: e.Type}
	_ = json.Unmarshal(e.Data, &ev.Data)
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// drifts returns the drift deliveries so far.
func (h *hookReceiver) drifts() []hookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hookEvent
	for _, e := range h.events {
		if e.Type == "drift" {
			out = append(out, e)
		}
	}
	return out
}

// TestDriftEndToEnd is issue #12's "done when", with the real binaries: a
// controller (embedded broker and store, 2 s drift windows, a webhook) and
// an agent serving the face model pushed with a reference profile.
// Reference-like inputs for several windows raise no drift; inputs whose
// brightness moved by half the input range raise it within 3 windows, with
// exactly one webhook delivery per scope; the metrics the API returns
// count exactly the requests sent.
func TestDriftEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: controller, agent and a minute of traffic")
	}
	const window = 2 * time.Second
	const refInputs = 200
	hooks := &hookReceiver{}
	recv := httptest.NewServer(hooks)
	t.Cleanup(recv.Close)

	b := build(t)
	f := startFleet(t, b, "", fmt.Sprintf(`
monitoring:
  drift: {window: %s, min_count: 30, windows: 2}
alerts:
  webhooks:
    - {url: %q, secret: drift-test-secret-0123, events: [drift]}
`, window, recv.URL))
	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "1", "--reference", referenceDir(t, refInputs),
		testModel(t, "face_detection_short_range.tflite"))
	d := newDevice(t, f, "gw-1")
	cfg, err := os.ReadFile(d.config)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(d.config, append(cfg, "telemetry: {sample_rate: 0, aggregate_interval: 500ms}\n"...), 0o644))
	s := startServe(t, b.agent, "--config", d.config)
	pollEvery(t, 200*time.Millisecond, func() bool {
		return strings.Contains(f.cli(t, "devices", "list"), "gw-1")
	}, 60*time.Second, "the device never registered")
	_, status := f.rollout(t, "--model", "face", "--version", "1", "--waves", "100")
	require.Contains(t, status, "completed")

	// Requests with binary tensors, as fast as the agent answers them.
	var sent atomic.Uint64
	r := rand.New(rand.NewPCG(7, 8))
	send := func(shift float32, until time.Time) {
		for time.Now().Before(until) {
			// referenceDir's population: brightness uniform in
			// [-0.2, 0.2], texture seeds 0 to refInputs-1.
			level := -0.2 + 0.4*r.Float32() + shift
			body := brightInput(level, r.IntN(refInputs))
			hdr := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":196608}}]}`
			req, err := http.NewRequest("POST", s.url+"/v2/models/face/infer", strings.NewReader(hdr+string(body)))
			require.NoError(t, err)
			req.Header.Set("Inference-Header-Content-Length", fmt.Sprint(len(hdr)))
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			require.Equal(t, 200, resp.StatusCode)
			sent.Add(1)
		}
	}
	// A stalled controller shows as an error (and, the test failing, as
	// its goroutines: dumpOnFailure), not as a report that stopped moving.
	api := &http.Client{Timeout: 10 * time.Second}
	report := func() (drift.Report, bool) {
		resp, err := api.Get(f.admin + "/v1/models/face/drift")
		if err != nil {
			t.Logf("drift report: %v", err)
			return drift.Report{}, false
		}
		defer resp.Body.Close()
		var rep drift.Report
		if resp.StatusCode != 200 {
			return rep, false
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&rep))
		return rep, true
	}

	// Stationary: six windows of reference-like inputs, every one of them
	// judged (enough requests) before the shift.
	stationary := time.Now()
	send(0, stationary.Add(6*window))
	var rep drift.Report
	require.Eventually(t, func() bool {
		var ok bool
		rep, ok = report()
		return ok && !rep.Window.Before(stationary.Add(4*window).Truncate(window))
	}, 30*time.Second, 200*time.Millisecond, "the stationary windows were not judged: %+v", rep)
	require.True(t, rep.Features[0].Judged, "too few requests a window to judge: %+v", rep.Features[0])
	require.Equal(t, drift.OK, rep.State, "drift on reference-like inputs: %+v", rep)
	require.Empty(t, hooks.drifts(), "a webhook on reference-like inputs")

	// Brightness moved by half the input range ([-1, 1]).
	shiftAt := time.Now()
	send(1.0, shiftAt.Add(4*window))
	require.Eventually(t, func() bool {
		rep, _ = report()
		return rep.State == drift.Drifting
	}, 30*time.Second, 200*time.Millisecond, "no drift after the shift: %+v", rep)
	// Raised within 3 windows of the shift: the change began at most one
	// window before the shift (the window it fell in) and was decided on
	// a window starting less than 3 windows after it.
	assert.False(t, rep.Since.Before(shiftAt.Truncate(window)), "drift since %v, before the shift at %v", rep.Since, shiftAt)
	assert.Less(t, rep.Window.Sub(shiftAt), 3*window, "drift decided on the window of %v, shift at %v", rep.Window, shiftAt)
	var meanDrift int
	for _, fs := range rep.Features {
		if strings.HasSuffix(fs.Name, ":mean") && strings.HasPrefix(fs.Name, "in:") && fs.Drifting {
			meanDrift++
		}
	}
	assert.Equal(t, 3, meanDrift, "every channel mean drifts: %+v", rep.Features)
	require.Len(t, rep.Devices, 1)
	assert.Equal(t, drift.Drifting, rep.Devices[0].State)

	// The same as an operator reads it: the CLI, and the Prometheus gauge.
	out := f.cli(t, "drift", "face")
	assert.Contains(t, out, "face v1: fleet drifting since")
	assert.Contains(t, out, "device gw-1: drifting")
	assert.Regexp(t, `in:input:c0:mean\s+[0-9.]+\s+[0-9.]+\s+[0-9]+\s+[0-9]+\s+yes`, out)
	resp, err := http.Get(f.admin + "/metrics")
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Regexp(t, `outpost_fleet_drift_psi\{feature="in:input:c0:mean",model="face",version="1"\} [0-9.e+]+`, string(metrics))

	// Exactly one delivery per event: the fleet's and the device's change,
	// each once, under its own key, and nothing more a few windows later.
	require.Eventually(t, func() bool { return len(hooks.drifts()) >= 2 }, 30*time.Second, 100*time.Millisecond)
	judged := rep.Window
	require.Eventually(t, func() bool {
		r, _ := report()
		return !r.Window.Before(judged.Add(3 * window))
	}, 30*time.Second, 200*time.Millisecond, "three more windows judged")
	evs := hooks.drifts()
	require.Len(t, evs, 2, "%+v", evs)
	scopes := map[string]bool{}
	for _, e := range evs {
		assert.Equal(t, "drifting", e.Data.State)
		assert.Equal(t, "face", e.Data.Model)
		scopes[e.Data.Device] = true
	}
	assert.Equal(t, map[string]bool{"": true, "gw-1": true}, scopes)
	assert.NotEqual(t, evs[0].Key, evs[1].Key)

	// The metrics API counts every request sent, once.
	var m registry.ModelMetrics
	pollEvery(t, 200*time.Millisecond, func() bool {
		resp, err := http.Get(f.admin + "/v1/models/face/metrics?since=1h")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&m))
		return m.Totals.Requests == sent.Load()
	}, 30*time.Second, fmt.Sprintf("metrics count %d requests, %d sent", m.Totals.Requests, sent.Load()))
	assert.Zero(t, m.Totals.Errors)
	t.Logf("%d requests; drift since %v, decided on the window of %v (shift at %v)", sent.Load(), rep.Since, rep.Window, shiftAt)
}
