package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

// trialFleet is the fleet side of trials as a test plays it, without
// outpost-fleet: the embedded broker on loopback, a signing root, signed
// install and abort commands for one device, the chunks of the artifacts it
// asks for, and what the device sends back (acks, status, aggregates).
type trialFleet struct {
	tb                  testing.TB
	url                 string
	srv                 *mochi.Server
	topics              protocol.Topics
	rootKey, targetsKey ed25519.PrivateKey
	root                []byte
	rootPath            string
	serial              int64

	mu     sync.Mutex // guards the fields below
	arts   map[string][]byte
	acks   []protocol.Ack
	status *protocol.Status
	aggs   []protocol.Record
}

const trialChunk = 64 << 10

func newTrialFleet(tb testing.TB, fleet, device string) *trialFleet {
	tb.Helper()
	f := &trialFleet{tb: tb, arts: map[string][]byte{}}
	_, f.rootKey, _ = ed25519.GenerateKey(nil)
	_, f.targetsKey, _ = ed25519.GenerateKey(nil)
	rid, rk := trust.NewKey(f.rootKey.Public().(ed25519.PublicKey))
	tid, tk := trust.NewKey(f.targetsKey.Public().(ed25519.PublicKey))
	var err error
	f.root, err = trust.SignRoot(trust.RootDoc{Version: 1, Expires: time.Now().Add(24 * time.Hour),
		Keys:  map[string]trust.Key{rid: rk, tid: tk},
		Roles: map[string]trust.Role{trust.RoleRoot: {KeyIDs: []string{rid}, Threshold: 1}, trust.RoleTargets: {KeyIDs: []string{tid}, Threshold: 1}}}, f.rootKey)
	require.NoError(tb, err)
	f.rootPath = filepath.Join(tb.TempDir(), "root.json")
	require.NoError(tb, os.WriteFile(f.rootPath, f.root, 0o644))
	f.topics, err = protocol.DeviceTopics(fleet, device)
	require.NoError(tb, err)
	addr := testbroker.FreeAddr(tb)
	f.url = "tcp://" + addr
	f.srv, _ = testbroker.Start(tb, addr)
	require.NoError(tb, f.srv.Subscribe(f.topics.ArtifactsReq, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		r, err := protocol.ParseChunkRequest(pk.Payload)
		if err != nil {
			tb.Errorf("bad chunk request: %v", err)
			return
		}
		f.serveChunks(*r) // small artifacts: on the broker's goroutine
	}))
	require.NoError(tb, f.srv.Subscribe(f.topics.Ack, 2, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		a, err := protocol.ParseAck(pk.Payload)
		if err != nil {
			tb.Errorf("bad ack: %v", err)
			return
		}
		f.mu.Lock()
		f.acks = append(f.acks, *a)
		f.mu.Unlock()
	}))
	require.NoError(tb, f.srv.Subscribe(f.topics.Status, 3, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		st, err := protocol.ParseStatus(pk.Payload)
		if err != nil {
			tb.Errorf("bad status: %v", err)
			return
		}
		f.mu.Lock()
		f.status = st
		f.mu.Unlock()
	}))
	require.NoError(tb, f.srv.Subscribe(f.topics.Events, 4, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		b, err := protocol.DecodeBatch(pk.Payload)
		if err != nil {
			tb.Errorf("bad batch: %v", err)
			return
		}
		for _, e := range b.Entries {
			if r, err := protocol.DecodeRecord(e.Body); err == nil && r.Kind == protocol.KindAggregate {
				f.mu.Lock()
				f.aggs = append(f.aggs, r)
				f.mu.Unlock()
			}
		}
	}))
	return f
}

func (f *trialFleet) serveChunks(r protocol.ChunkRequest) {
	f.mu.Lock()
	a := f.arts[r.SHA256]
	f.mu.Unlock()
	var art [32]byte
	hex.Decode(art[:], []byte(r.SHA256))
	total := protocol.ChunkCount(int64(len(a)), trialChunk)
	for i := r.First; i < r.First+int64(r.Count) && i < total; i++ {
		b, err := protocol.AppendChunk(nil, &protocol.Chunk{Kind: protocol.ChunkData, Artifact: art, Index: i, Total: total,
			Data: a[i*trialChunk : min((i+1)*trialChunk, int64(len(a)))]})
		if err != nil {
			f.tb.Errorf("chunk: %v", err)
			return
		}
		if f.srv.Publish(f.topics.Chunk, b, false, 1) != nil {
			return
		}
	}
}

// install sends a signed install of model bytes as name at version, with
// trial (nil: a plain install).
func (f *trialFleet) install(id, rollout, name string, version int64, model []byte, trial *protocol.Trial) {
	f.tb.Helper()
	sig, err := tflite.Read(model)
	require.NoError(f.tb, err)
	sum := sha256.Sum256(model)
	m := manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)),
		Runtime: manifest.RuntimeTFLite, Inputs: sig.Inputs, Outputs: sig.Outputs}
	f.mu.Lock()
	f.arts[m.SHA256] = model
	f.serial++
	serial := f.serial
	f.mu.Unlock()
	rel, err := trust.SignRelease(trust.Release{Serial: serial, Expires: time.Now().Add(time.Hour), Model: m}, f.targetsKey)
	require.NoError(f.tb, err)
	f.send(protocol.Command{ID: id, Kind: protocol.CommandInstall, RolloutID: rollout, Install: &protocol.Install{
		Model: name, Version: version, Release: rel, Trial: trial,
		Artifact: protocol.Artifact{SHA256: m.SHA256, Length: m.Length, ChunkSize: trialChunk, Chunks: protocol.ChunkCount(m.Length, trialChunk)}}})
}

func (f *trialFleet) abort(id, rollout string) {
	f.send(protocol.Command{ID: id, Kind: protocol.CommandAbort, RolloutID: rollout, Abort: &protocol.Abort{Reason: "test"}})
}

func (f *trialFleet) send(c protocol.Command) {
	f.tb.Helper()
	device := strings.Split(f.topics.Cmd, "/")
	c.Fleet, c.Device = device[2], device[3]
	c.Issued, c.Expires = time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	b, err := protocol.SignCommand(&c, [][]byte{f.root}, f.targetsKey)
	require.NoError(f.tb, err)
	require.NoError(f.tb, f.srv.Publish(f.topics.Cmd, b, false, 1))
}

// waitAck waits (at most a minute) for an ack of command id in state.
func (f *trialFleet) waitAck(id string, state protocol.UpdateState) protocol.Ack {
	f.tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for _, a := range f.acks {
			if a.CommandID == id && a.State == state {
				f.mu.Unlock()
				return a
			}
		}
		f.mu.Unlock()
		time.Sleep(10 * time.Millisecond) // acks come from another process
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tb.Fatalf("no %s ack of %s; acks: %+v", state, id, f.acks)
	return protocol.Ack{}
}

// trialAgent is outpost-agent serve in its own process, a device of fleet f
// serving face_detection_short_range as face v1 from a file.
type trialAgent struct {
	url  string
	cmd  *exec.Cmd
	done chan struct{}
}

func startTrialAgent(tb testing.TB, bin string, f *trialFleet, model string) *trialAgent {
	tb.Helper()
	dir := tb.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	device := strings.Split(f.topics.Cmd, "/")
	require.NoError(tb, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
models:
  - {name: face, path: %s, version: 1}
fleet: {broker: %q, name: %s, device: %s, root: %s, status_interval: 1s}
telemetry: {aggregate_interval: 500ms}
`, filepath.Join(dir, "data"), model, f.url, device[2], device[3], f.rootPath), 0o644))
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--config", cfg)
	stderr, err := cmd.StderrPipe()
	require.NoError(tb, err)
	require.NoError(tb, cmd.Start())
	a := &trialAgent{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	var logMu sync.Mutex
	var log strings.Builder
	go func() {
		defer close(a.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if s, ok := strings.CutPrefix(line, "outpost-agent: listening on "); ok {
				select {
				case addr <- s:
				default:
				}
			}
			logMu.Lock()
			if log.Len() < 64<<10 {
				log.WriteString(line + "\n")
			}
			logMu.Unlock()
		}
		cmd.Wait()
	}()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-a.done
		if tb.Failed() {
			logMu.Lock()
			tb.Logf("agent log:\n%s", log.String())
			logMu.Unlock()
		}
	})
	select {
	case s := <-addr:
		a.url = "http://" + s
	case <-a.done:
		tb.Fatal("the agent exited")
	case <-time.After(60 * time.Second):
		tb.Fatal("the agent did not report its address")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(a.url + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the agent is not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // another process: nothing to wait on
	}
}

// faceBody is a binary-tensor OIP v2 request for the face model, asking for
// binary outputs, and its Inference-Header-Content-Length.
func faceBody(seed float64) ([]byte, string) {
	const n = 128 * 128 * 3
	hdr := fmt.Sprintf(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, 4*n)
	b := make([]byte, len(hdr)+4*n)
	copy(b, hdr)
	for i := range n {
		binary.LittleEndian.PutUint32(b[len(hdr)+4*i:], math.Float32bits(float32(math.Sin(float64(i)*0.37+seed))))
	}
	return b, strconv.Itoa(len(hdr))
}

// infer posts one face request and returns the version that answered and
// the wall time.
func (a *trialAgent) infer(client *http.Client, body []byte, hdrLen, routingKey string) (string, time.Duration, error) {
	req, err := http.NewRequest("POST", a.url+"/v2/models/face/infer", bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Inference-Header-Content-Length", hdrLen)
	req.Header.Set("Content-Type", "application/octet-stream")
	if routingKey != "" {
		req.Header.Set("Outpost-Routing-Key", routingKey)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		return "", took, err
	}
	if resp.StatusCode != http.StatusOK {
		return "", took, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	n, _ := strconv.Atoi(resp.Header.Get("Inference-Header-Content-Length"))
	var v struct {
		ModelVersion string `json:"model_version"`
	}
	if n <= 0 || n > len(b) {
		n = len(b)
	}
	if err := json.Unmarshal(b[:n], &v); err != nil {
		return "", took, err
	}
	return v.ModelVersion, took, nil
}

// metric sums the samples of a Prometheus series whose line starts with
// prefix (name and the labels given).
func metric(tb testing.TB, url, prefix string) float64 {
	tb.Helper()
	resp, err := http.Get(url + "/metrics")
	require.NoError(tb, err)
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			require.NoError(tb, err, line)
			sum += v
		}
	}
	return sum
}

// TestTrialBinary: the real agent as a device holds a candidate the fleet
// installs with a trial: its status lists the trial feature; in shadow the
// clients only see v1 and the candidate's shadow aggregates reach the
// fleet; in canary at 100% the candidate answers; an abort discards it and
// v1 answers everything again. No client request fails throughout.
func TestTrialBinary(t *testing.T) {
	b := build(t)
	f := newTrialFleet(t, "acme", "gw-1")
	face := testModel(t, "face_detection_short_range.tflite")
	a := startTrialAgent(t, b.agent, f, face)
	data, err := os.ReadFile(face)
	require.NoError(t, err)
	client := &http.Client{}
	body, hl := faceBody(0)

	f.install("c1", "r1", "face", 2, data, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 50})
	f.waitAck("c1", protocol.UpdateShadow)
	f.mu.Lock()
	st := f.status
	f.mu.Unlock()
	require.NotNil(t, st)
	assert.True(t, st.Supports(protocol.FeatureTrial), "status features %v", st.Features)
	const n = 40
	for i := range n {
		v, _, err := a.infer(client, body, hl, "")
		require.NoError(t, err)
		require.Equal(t, "1", v, "request %d: a shadow answered a client", i)
	}
	// The copies reach the fleet as the candidate's shadow aggregates.
	var copies uint64
	deadline := time.Now().Add(time.Minute)
	for ; time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		copies = 0
		f.mu.Lock()
		for _, r := range f.aggs {
			if sh := r.Aggregate.Shadow; sh != nil && r.Model.Version == "2" {
				assert.Equal(t, "1", sh.Baseline)
				copies += r.Aggregate.Requests + sh.Dropped
				for _, o := range sh.Outputs {
					assert.Zero(t, o.MaxAbsDiff, "the same model disagrees with itself on %s", o.Name)
				}
			}
		}
		f.mu.Unlock()
		if copies > 0 && float64(copies) == metric(t, a.url, `outpost_shadow_copies_total{model="face",version="2"`) {
			break
		}
	}
	// 50% of 40: mean 20, sd 3.2; 6 sd either side.
	assert.InDelta(t, 20, float64(copies), 19, "copies of %d requests at 50%%", n)
	// The trial as /metrics shows it; the copies are never served
	// traffic: no request of v2 in the agent's metrics or aggregates.
	assert.Equal(t, 50.0, metric(t, a.url, `outpost_trial_percent{mode="shadow",model="face",version="2"}`))
	assert.Zero(t, metric(t, a.url, `outpost_requests_total{code="200",model="face",protocol="v2",version="2"}`))
	assert.Equal(t, float64(n), metric(t, a.url, `outpost_requests_total{code="200",model="face",protocol="v2",version="1"}`))
	f.mu.Lock()
	for _, r := range f.aggs {
		if r.Model.Version == "2" && r.Aggregate.Shadow == nil && r.Aggregate.Requests > 0 {
			t.Errorf("a served aggregate of the shadow: %+v", r.Aggregate)
		}
	}
	f.mu.Unlock()

	f.install("c2", "r1", "face", 2, data, &protocol.Trial{Mode: protocol.TrialCanary, Percent: 100})
	f.waitAck("c2", protocol.UpdateCanary)
	for i := range 5 {
		v, _, err := a.infer(client, body, hl, "client-"+strconv.Itoa(i))
		require.NoError(t, err)
		assert.Equal(t, "2", v, "a canary at 100%% answers every request")
	}
	// The canary's answers are served traffic of v2, in its own
	// aggregates: together they count the 5 requests.
	var served uint64
	deadline = time.Now().Add(time.Minute)
	for ; time.Now().Before(deadline) && served < 5; time.Sleep(50 * time.Millisecond) {
		served = 0
		f.mu.Lock()
		for _, r := range f.aggs {
			if r.Model.Version == "2" && r.Aggregate.Shadow == nil {
				served += r.Aggregate.Requests
			}
		}
		f.mu.Unlock()
	}
	assert.EqualValues(t, 5, served, "v2's served aggregates")
	assert.Equal(t, 5.0, metric(t, a.url, `outpost_requests_total{code="200",model="face",protocol="v2",version="2"}`))
	f.abort("c3", "r1")
	a2 := f.waitAck("c2", protocol.UpdateFailed)
	assert.Equal(t, "aborted", a2.Error)
	for i := range 5 {
		v, _, err := a.infer(client, body, hl, "client-"+strconv.Itoa(i))
		require.NoError(t, err)
		assert.Equal(t, "1", v, "the candidate is gone")
	}
	assert.Zero(t, metric(t, a.url, `outpost_trial_percent{`), "a trial is still reported")
}
