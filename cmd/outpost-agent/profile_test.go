package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// brightInput is one 1×128×128×3 FP32 input of the face model: every value
// around level (a brightness), with a deterministic texture.
func brightInput(level float32, seed int) []byte {
	b := make([]byte, 128*128*3*4)
	for i := range 128 * 128 * 3 {
		v := level + 0.2*float32(math.Sin(float64(i*(seed+3))*0.001))
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// referenceDir writes n raw inputs of brightness between -0.2 and 0.2.
func referenceDir(t *testing.T, n int) string {
	dir := t.TempDir()
	for i := range n {
		level := -0.2 + 0.4*float32(i)/float32(n-1)
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("%03d.bin", i)), brightInput(level, i), 0o644))
	}
	return dir
}

func readProfile(t *testing.T, path string) *profile.Profile {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	p, err := profile.Parse(b)
	require.NoError(t, err)
	return p
}

var faceFeatures = []string{
	"in:input:c0:mean", "in:input:c0:std", "in:input:c1:mean", "in:input:c1:std", "in:input:c2:mean", "in:input:c2:std",
	"out:regressors:max", "out:regressors:mean", "out:classificators:max", "out:classificators:mean",
}

// The real agent profiles the face model over a directory of raw inputs, a
// JSONL of v2 requests and a directory of .npy files; a bad item is named;
// the fleet signs the profile into the bundle, inspect shows it, verify
// accepts it, and a reference changed after signing is refused.
func TestProfileSignInspect(t *testing.T) {
	b := build(t)
	face := testModel(t, "face_detection_short_range.tflite")
	refDir := referenceDir(t, 30)
	out := filepath.Join(t.TempDir(), "profile.json")
	r := run(t, nil, b.agent, "profile", "--model", face, "--reference", refDir, "--out", out, "--progress-every", "1ns")
	require.Zero(t, r.code, r.stderr)
	assert.Contains(t, r.stderr, "30 requests", "progress lines")
	p := readProfile(t, out)
	assert.Equal(t, uint64(30), p.Requests)
	names := make([]string, len(p.Features))
	for i, f := range p.Features {
		names[i] = f.Name
		assert.Equal(t, uint64(30), f.Count+f.NaNs, f.Name)
		assert.GreaterOrEqual(t, len(f.Counts), 2, f.Name)
	}
	assert.Equal(t, faceFeatures, names)
	c0 := p.Feature("in:input:c0:mean")
	assert.Len(t, c0.Counts, 20, "30 distinct brightnesses give the 20 bins asked for")
	assert.InDelta(t, -0.2, c0.Min, 0.02)
	assert.InDelta(t, 0.2, c0.Max, 0.02)

	// Fewer bins than 20 make erratic scores: a flag error. Fewer requests
	// than bins cannot place the edges: the run fails, saying why.
	r = run(t, nil, b.agent, "profile", "--model", face, "--reference", refDir, "--bins", "10", "--out", filepath.Join(t.TempDir(), "p.json"))
	assert.Equal(t, 2, r.code, r.stderr)
	assert.Contains(t, r.stderr, "--bins")
	r = run(t, nil, b.agent, "profile", "--model", face, "--reference", referenceDir(t, 10), "--out", filepath.Join(t.TempDir(), "p.json"))
	assert.Equal(t, 1, r.code, r.stderr)
	assert.Contains(t, r.stderr, "10 requests")

	// The same requests as JSONL (v2 bodies) and as .npy files give the same
	// profile.
	jsonl := filepath.Join(t.TempDir(), "ref.jsonl")
	npyDir := t.TempDir()
	var lines bytes.Buffer
	ents, err := os.ReadDir(refDir)
	require.NoError(t, err)
	for i, e := range ents {
		raw, err := os.ReadFile(filepath.Join(refDir, e.Name()))
		require.NoError(t, err)
		fmt.Fprintf(&lines, `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":0},"data":%s}]}`+"\n", floatsJSON(raw))
		require.NoError(t, os.WriteFile(filepath.Join(npyDir, fmt.Sprintf("%03d.npy", i)), npy(raw), 0o644))
	}
	require.NoError(t, os.WriteFile(jsonl, bytes.ReplaceAll(lines.Bytes(), []byte(`"parameters":{"binary_data_size":0},`), nil), 0o644))
	for _, src := range []string{jsonl, npyDir} {
		o := filepath.Join(t.TempDir(), "p.json")
		r := run(t, nil, b.agent, "profile", "--model", face, "--reference", src, "--out", o)
		require.Zero(t, r.code, "%s: %s", src, r.stderr)
		q := readProfile(t, o)
		assert.Equal(t, c0.Counts, q.Feature("in:input:c0:mean").Counts, src)
		assert.InDelta(t, c0.Mean, q.Feature("in:input:c0:mean").Mean, 1e-6, src)
	}

	// A bad item is named, and fails the run unless --skip-bad.
	bad := t.TempDir()
	require.NoError(t, os.CopyFS(bad, os.DirFS(refDir)))
	require.NoError(t, os.WriteFile(filepath.Join(bad, "short.bin"), make([]byte, 100), 0o644))
	r = run(t, nil, b.agent, "profile", "--model", face, "--reference", bad, "--out", filepath.Join(t.TempDir(), "x.json"))
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `short.bin: 100 bytes, input "input" (FP32 [1 128 128 3]) needs 196608`)
	r = run(t, nil, b.agent, "profile", "--model", face, "--reference", bad, "--skip-bad")
	assert.Zero(t, r.code, r.stderr)
	assert.Contains(t, r.stderr, "skipped short.bin")
	assert.Contains(t, r.stdout, `"in:input:c0:mean"`, "without --out the profile goes to stdout")
	r = run(t, nil, b.agent, "profile", "--model", face, "--reference", filepath.Join(refDir, "000.bin"))
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "want a directory, a .jsonl file or an .npy file")

	// Signed into the bundle, shown by inspect, accepted by verify.
	keys, export := fleetDir(t, b)
	root := filepath.Join(keys, "root.json")
	bun := export("face", 1, testmodel.FaceShort, "--reference", out)
	r = run(t, nil, b.agent, "verify", "--root", root, bun)
	require.Zero(t, r.code, r.stderr)
	r = run(t, nil, b.agent, "inspect", bun)
	require.Zero(t, r.code, r.stderr)
	assert.Contains(t, r.stdout, "reference: 10 features from 30 requests")
	assert.Regexp(t, `in:input:c0:mean\s+30\s+0\s+`, r.stdout)
	assert.Contains(t, r.stdout, "counts "+strings.Trim(fmt.Sprint(c0.Counts), "[]"))
	assert.Contains(t, r.stdout, "SERVED", "the model itself is described too")
	r = run(t, nil, b.agent, "inspect", "-o", "json", filepath.Join(bun, bundle.ReleaseFile))
	require.Zero(t, r.code, r.stderr)
	var rep struct {
		Manifest struct {
			Reference *profile.Profile `json:"reference"`
		} `json:"manifest"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.NotNil(t, rep.Manifest.Reference)
	assert.Equal(t, p.Features, rep.Manifest.Reference.Features, "the signed reference is the profile, unchanged")
	plain := export("face", 2, testmodel.FaceShort)
	r = run(t, nil, b.agent, "inspect", plain)
	require.Zero(t, r.code, r.stderr)
	assert.Contains(t, r.stdout, "reference: none")

	// A reference changed after signing: the signature no longer holds.
	rel, err := os.ReadFile(filepath.Join(bun, bundle.ReleaseFile))
	require.NoError(t, err)
	env, err := dsse.Parse(rel)
	require.NoError(t, err)
	edge := fmt.Sprint(c0.Edges[3])
	require.Contains(t, string(env.Payload), edge)
	env.Payload = bytes.Replace(env.Payload, []byte(edge), []byte(fmt.Sprint(c0.Edges[3]+0.001)), 1)
	require.NoError(t, os.WriteFile(filepath.Join(bun, bundle.ReleaseFile), env.Marshal(), 0o644))
	r = run(t, nil, b.agent, "verify", "--root", root, bun)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "refused: not signed by enough trusted keys")
}

func floatsJSON(raw []byte) string {
	var sb strings.Builder
	sb.WriteByte('[')
	for i := 0; i < len(raw); i += 4 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprint(&sb, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
	}
	sb.WriteByte(']')
	return sb.String()
}

// npy wraps a face input as an .npy file of shape (1, 128, 128, 3).
func npy(raw []byte) []byte {
	hdr := "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 128, 128, 3), }"
	for (10+len(hdr)+1)%64 != 0 {
		hdr += " "
	}
	hdr += "\n"
	b := append([]byte("\x93NUMPY\x01\x00"), byte(len(hdr)), byte(len(hdr)>>8))
	return append(append(b, hdr...), raw...)
}

// The fleet CLI pushes a model with --reference DIR (running the real
// outpost-agent found next to it), rolls it out, and the device that serves
// it counts every answered request in its aggregates' feature histograms,
// as a subscriber on the broker sees them.
func TestPushReferenceFeaturesCounted(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: controller, agent and broker for half a minute")
	}
	b := build(t)
	fb := startBroker(t, "acme")
	f := startFleet(t, b, fb.url, "")
	out := f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "1", "--reference", referenceDir(t, 25),
		testModel(t, "face_detection_short_range.tflite"))
	require.Contains(t, out, "reference: 10 features from 25 requests")

	d := newDevice(t, f, "gw-1")
	cfg, err := os.ReadFile(d.config)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(d.config, append(cfg, "telemetry: {sample_rate: 0, aggregate_interval: 200ms}\n"...), 0o644))
	s := startServe(t, b.agent, "--config", d.config)
	pollEvery(t, 200*time.Millisecond, func() bool {
		return strings.Contains(f.cli(t, "devices", "list"), "gw-1")
	}, 60*time.Second, "the device never registered")
	id, status := f.rollout(t, "--model", "face", "--version", "1", "--waves", "100")
	require.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	_, digest := served(t, s, "face")

	// good answered requests, half of them bright (out of the reference's
	// range), and bad refused ones.
	const good, bad = 8, 3
	for i := range good {
		level := float32(0)
		if i%2 == 1 {
			level = 0.9
		}
		body := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":` + floatsJSON(brightInput(level, i)) + `}]}`
		resp, err := http.Post(s.url+"/v2/models/face/infer", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	for range bad {
		resp, err := http.Post(s.url+"/v2/models/face/infer", "application/json", strings.NewReader(`{"inputs":[]}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 400, resp.StatusCode)
	}

	var requests, errs uint64
	var feats map[string]protocol.FeatureCounts
	require.Eventually(t, func() bool {
		requests, errs, feats = 0, 0, map[string]protocol.FeatureCounts{}
		for _, r := range fb.records() {
			if r.Kind != protocol.KindAggregate || r.Model.Digest != digest {
				continue
			}
			requests += r.Aggregate.Requests
			errs += r.Aggregate.Errors
			for _, fc := range r.Aggregate.Features {
				m := feats[fc.Name]
				m.Name = fc.Name
				if m.Counts == nil {
					m.Counts = make([]uint64, len(fc.Counts))
				}
				for i := range fc.Counts {
					m.Counts[i] += fc.Counts[i]
				}
				m.NaNs += fc.NaNs
				m.Sum += fc.Sum
				feats[fc.Name] = m
			}
		}
		return requests == good+bad
	}, 30*time.Second, 100*time.Millisecond, "aggregates counted %d requests, want %d", requests, good+bad)
	assert.Equal(t, uint64(bad), errs)
	require.Len(t, feats, len(faceFeatures))
	for _, name := range faceFeatures {
		fc := feats[name]
		n := fc.NaNs
		for _, c := range fc.Counts {
			n += c
		}
		assert.Equal(t, uint64(good), n, "%s counts every answered request once", name)
	}
	c0 := feats["in:input:c0:mean"]
	assert.Equal(t, uint64(good/2), c0.Counts[len(c0.Counts)-1], "the bright requests fall in the top bin: %v", c0.Counts)
	assert.InDelta(t, 0.9*good/2, c0.Sum, 0.1)
}

// Without outpost-agent next to it, on PATH or named by --agent-bin, the
// fleet CLI says it needs one to profile reference inputs; given one, it
// signs what it computed.
func TestExportReferenceNeedsAgent(t *testing.T) {
	b := build(t)
	keys, _ := fleetDir(t, b)
	alone := filepath.Join(t.TempDir(), "outpost-fleet")
	copyFile(t, b.fleet, alone)
	require.NoError(t, os.Chmod(alone, 0o755))
	refs := referenceDir(t, 20)
	args := []string{"models", "export", "--keys", keys, "--name", "face", "--version", "1", "--out", filepath.Join(t.TempDir(), "bundle"),
		"--reference", refs}
	face := testmodel.Path(t, testmodel.FaceShort)
	r := run(t, []string{"PATH=" + t.TempDir()}, alone, append(args, face)...)
	assert.Equal(t, 1, r.code, r.stdout)
	assert.Contains(t, r.stderr, "outpost-agent, which runs the model over them (this binary has no model runtime), is not next to")
	assert.Contains(t, r.stderr, "--agent-bin")

	r = run(t, []string{"PATH=" + t.TempDir()}, alone, append(args, "--agent-bin", b.agent, face)...)
	require.Zero(t, r.code, r.stderr)
	assert.Contains(t, r.stdout, "reference: 10 features from 20 requests")
}
