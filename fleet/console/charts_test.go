package console_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
)

// chartsFleet is a real controller (embedded broker and store, drift
// windows of one second) holding model m at versions 3 and 4, v4 with a
// reference profile, and device gw-1 (a simulated agent serving v4). The
// test then sends gw-1's telemetry as an agent does, on its events topic.
type chartsFleet struct {
	c        *controller.Controller
	base     string // the admin API's URL
	manifest manifest.Manifest
	ref      *profile.Profile
	pub      mqtt.Client // publishes gw-1's telemetry batches
	seq      uint64
}

func startChartsFleet(t *testing.T) *chartsFleet {
	cf := startController(t, controller.Options{Drift: controller.DriftOptions{Window: time.Second}})
	c := cf.c
	f := &chartsFleet{c: c, base: "http://" + c.AdminAddr()}
	var v4 string
	for v := int64(3); v <= 4; v++ {
		b := make([]byte, 8<<10)
		_, _ = rand.Read(b)
		sum := sha256.Sum256(b)
		m := manifest.Manifest{Name: "m", Version: v, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(b)), Runtime: manifest.RuntimeTFLite,
			Inputs:  []manifest.Tensor{{Name: "in", DataType: "FP32", Shape: []int{1, 4}}},
			Outputs: []manifest.Tensor{{Name: "out", DataType: "FP32", Shape: []int{1, 2}}}}
		if v == 4 {
			// The reference: inputs and outputs uniform in [0, 1).
			x, err := m.Extractor()
			if err != nil {
				t.Fatal(err)
			}
			bld := profile.NewBuilder(x.Names())
			for range 2000 {
				if err := bld.Add(f.features(t, x, 0)); err != nil {
					t.Fatal(err)
				}
			}
			if m.Reference, err = bld.Build(0); err != nil {
				t.Fatal(err)
			}
			f.manifest, f.ref, v4 = m, m.Reference, "sha256:"+m.SHA256
		}
		cf.push(t, m, b)
	}
	cf.device(t, simdevice.Options{Device: "gw-1", Labels: map[string]string{"site": "north"}, RetryAfter: time.Second,
		Models: []protocol.ModelStatus{{Name: "m", Version: 4, Digest: v4}}})
	f.pub = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(c.BrokerURL()).SetClientID("gw-1-telemetry").SetAutoReconnect(false))
	if tok := f.pub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { f.pub.Disconnect(0) })
	waitFor(t, 30*time.Second, "gw-1 online", func() bool {
		s, err := c.Registry().Summary()
		return err == nil && s.Online == 1
	})
	return f
}

// features extracts one request's features: inputs uniform in
// [shift, shift+1) for the first element and [0, 1) for the others,
// outputs uniform in [0, 1).
func (f *chartsFleet) features(t *testing.T, x *profile.Extractor, shift float32) []float64 {
	t.Helper()
	in := make([]byte, 16)
	for i := range 4 {
		v := mrand.Float32()
		if i == 0 {
			v += shift
		}
		binary.LittleEndian.PutUint32(in[4*i:], math.Float32bits(v))
	}
	out := make([]byte, 8)
	for i := range 2 {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(mrand.Float32()))
	}
	dst := make([]float64, x.Len())
	if err := x.Extract([][]byte{in}, [][]byte{out}, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// featureCounts bins n requests' features, as an agent does over an
// interval, against the reference's edges.
func (f *chartsFleet) featureCounts(t *testing.T, n int, shift float32) []protocol.FeatureCounts {
	t.Helper()
	x, err := f.manifest.Extractor()
	if err != nil {
		t.Fatal(err)
	}
	fc := make([]protocol.FeatureCounts, len(f.ref.Features))
	for i, rf := range f.ref.Features {
		fc[i] = protocol.FeatureCounts{Name: rf.Name, Counts: make([]uint64, len(rf.Edges)+1)}
	}
	for range n {
		for i, v := range f.features(t, x, shift) {
			fc[i].Counts[profile.Bin(f.ref.Features[i].Edges, v)]++
			fc[i].Sum += v
			fc[i].SumSq += v * v
		}
	}
	return fc
}

// publish sends recs as one telemetry batch of gw-1 and waits for the
// broker's PUBACK.
func (f *chartsFleet) publish(t *testing.T, recs ...protocol.Record) {
	t.Helper()
	b := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 1, Count: len(recs)})
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		if err != nil {
			t.Fatal(err)
		}
		f.seq++
		b = protocol.AppendBatchEntry(b, f.seq, body)
	}
	topics, err := protocol.DeviceTopics(fleetName, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.pub.Publish(topics.Events, 1, false, b); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// get decodes GET path of the admin API into out.
func (f *chartsFleet) get(t *testing.T, token, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest("GET", f.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return resp.StatusCode
}

// thousands formats n as the console does (en-US grouping).
func thousands(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// TestConsoleCharts renders the model page's metrics and drift charts and
// the device page's health charts and audit trail in headless Chromium,
// from a real controller that received a device's telemetry (aggregates
// of two versions, a drift of one input, health points, an audit trail
// with a break) on its broker, without a page error.
func TestConsoleCharts(t *testing.T) {
	chromium(t) // before the set-up: skips without a browser
	f := startChartsFleet(t)
	var root, viewer struct{ Token string }
	for _, tk := range []struct {
		auth, body string
		out        *struct{ Token string }
	}{{"", `{"role":"admin","name":"root"}`, &root}, {"", `{"role":"viewer","name":"victor"}`, &viewer}} {
		req, _ := http.NewRequest("POST", f.base+"/v1/tokens", strings.NewReader(tk.body))
		if root.Token != "" {
			req.Header.Set("Authorization", "Bearer "+root.Token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(tk.out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || err != nil {
			t.Fatalf("token %s: %d %v", tk.body, resp.StatusCode, err)
		}
	}

	// gw-1's telemetry: an hour of aggregates of v3 and v4, health every
	// 10 minutes, an audit trail whose third record names the wrong
	// predecessor (a break).
	now := time.Now().UTC()
	lat := protocol.Histogram{BoundsMicros: []uint64{1000, 5000, 20000, 100000}, Counts: []uint64{0, 0, 0, 0, 0}}
	var requests uint64
	var recs []protocol.Record
	for i := range 12 {
		end := now.Add(time.Duration(i-11)*5*time.Minute - time.Minute) // within the last hour
		for v, n := range map[string]uint64{"3": 500 + uint64(i), "4": 700} {
			h := lat
			h.Counts = []uint64{n / 2, n / 4, n / 8, n - n/2 - n/4 - n/8 - 1, 1}
			h.SumMicros = n * 3000
			errs := []protocol.CodeCount{{Code: "503", Count: uint64(i % 3)}}
			recs = append(recs, protocol.Record{Kind: protocol.KindAggregate, Time: end, Model: protocol.ModelRef{Name: "m", Version: v},
				Aggregate: &protocol.Aggregate{Start: end.Add(-time.Minute), End: end, Requests: n, Errors: uint64(i % 3), ErrorsByCode: errs, Latency: h}})
			requests += n
		}
	}
	for i := range 8 {
		recs = append(recs, protocol.Record{Kind: protocol.KindHealth, Time: now.Add(time.Duration(i-8) * 10 * time.Minute), Health: &protocol.Health{
			CPUPercent: float64(20 + 5*i), Load1: 0.4 + 0.1*float64(i), MemUsedBytes: 300e6 + 1e6*uint64(i), MemTotalBytes: 1e9,
			DiskUsedBytes: 5e9, DiskTotalBytes: 16e9, TemperatureC: float64(48 + i), Uptime: time.Duration(i+1) * time.Hour}})
	}
	h1, h2 := strings.Repeat("1a", 32), strings.Repeat("2b", 32)
	for _, a := range []protocol.Audit{
		{Actor: "updater", Action: "update.staged", Outcome: "ok", Seq: 1, Hash: h1},
		{Actor: "updater", Action: "update.committed", Outcome: "ok", Detail: "v4", Seq: 2, Prev: h1, Hash: h2},
		{Actor: "updater", Action: "update.staged", Outcome: "ok", Seq: 3, Prev: strings.Repeat("3c", 32), Hash: strings.Repeat("4d", 32)},
	} {
		recs = append(recs, protocol.Record{Kind: protocol.KindAudit, Time: now.Add(-time.Duration(4-a.Seq) * time.Minute), Model: protocol.ModelRef{Name: "m", Version: "4"}, Audit: &a})
	}
	f.publish(t, recs...)

	// Then live traffic of v4 whose first input moved by half its range,
	// until the drift monitor (one-second windows) finds it drifting.
	type driftRep struct {
		State    string `json:"state"`
		Features []struct {
			Name     string `json:"name"`
			Drifting bool   `json:"drifting"`
		} `json:"features"`
	}
	var drift driftRep
	deadline := time.Now().Add(60 * time.Second)
	for drift.State != "drifting" {
		if time.Now().After(deadline) {
			t.Fatalf("no drift raised in 60 s: %+v", drift)
		}
		end := time.Now().UTC()
		const n = 300
		f.publish(t, protocol.Record{Kind: protocol.KindAggregate, Time: end, Model: protocol.ModelRef{Name: "m", Version: "4", Digest: "sha256:" + f.manifest.SHA256},
			Aggregate: &protocol.Aggregate{Start: end.Add(-250 * time.Millisecond), End: end, Requests: n,
				Latency:  protocol.Histogram{BoundsMicros: lat.BoundsMicros, Counts: []uint64{n, 0, 0, 0, 0}, SumMicros: n * 800},
				Features: f.featureCounts(t, n, 0.5)}})
		requests += n
		time.Sleep(250 * time.Millisecond)
		f.get(t, viewer.Token, "/v1/models/m/drift?version=4", &drift)
	}
	var drifting []string
	for _, ft := range drift.Features {
		if ft.Drifting {
			drifting = append(drifting, ft.Name)
		}
	}
	if len(drifting) == 0 || len(drifting) == len(drift.Features) {
		t.Fatalf("drifting features %q of %d: want the first input's only", drifting, len(drift.Features))
	}
	var stored uint64
	defer func() {
		if stored != requests {
			t.Logf("the metrics count %d requests, %d were sent", stored, requests)
		}
	}()
	waitFor(t, 30*time.Second, "every request stored", func() bool {
		var m struct{ Totals struct{ Requests uint64 } }
		code := f.get(t, viewer.Token, "/v1/models/m/metrics", &m)
		stored = m.Totals.Requests
		return code == http.StatusOK && stored == requests
	})

	logged := &consoleLog{missing: regexp.MustCompile(`/v1/devices/gw-404$`)}
	b := openTab(t, 20*time.Second, logged)
	ctx, wait, shot := b.ctx, b.until, b.shot
	count := func(what, sel string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n
	}
	text := func() string { return b.eval(`document.querySelector('main').textContent`) }
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/console/#/models/m"), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), viewer.Token), chromedp.Click(chromedp.CSS("#login"))); err != nil {
		t.Fatal(err)
	}
	// The metrics and the drift sections fill from two requests, in
	// either order: wait for both.
	wait("the model's charts", fmt.Sprintf(`document.querySelectorAll('section[aria-labelledby="h-drift"] svg.chart rect').length === %d &&
		document.querySelectorAll('#main figure svg.chart polyline').length > 0`, len(drift.Features)))
	// Two line charts: requests and errors (2 series), latency (3).
	if n := count("lines", "#main figure svg.chart polyline"); n != 5 {
		t.Errorf("metrics: got %d lines, want 5", n)
	}
	if n := count("drifting bars", "#main svg.chart rect.bad"); n != len(drifting) {
		t.Errorf("drift: got %d drifting bars, want %d", n, len(drifting))
	}
	if n := count("start form", "#start-rollout-panel, #ro-start"); n != 0 {
		t.Errorf("viewer sees the start form (%d)", n)
	}
	for _, want := range []string{thousands(requests), "drifting", drifting[0], "v3, v4", "503", "the threshold, PSI 0.25"} {
		if s := text(); !strings.Contains(s, want) {
			t.Errorf("model page lacks %q", want)
		}
	}
	if bad, err := chromedp.Run(ctx, chromedp.Evaluate[string](unlabelled)); err != nil || bad != "" {
		t.Errorf("model page: %s %v", bad, err)
	}
	shot("model-metrics-1280", `section[aria-labelledby="h-metrics"]`)
	shot("model-drift-1280", `section[aria-labelledby="h-drift"]`)

	// Another range asks the API for it and keeps the focus on the field.
	if err := chromedp.Do(ctx, chromedp.Focus(chromedp.CSS("#m-since")), chromedp.Evaluate[chromedp.Void](
		`(() => { const s = document.getElementById('m-since'); s.dataset.old = 'yes'; s.value = '6h'; s.dispatchEvent(new Event('change')); })()`)); err != nil {
		t.Fatal(err)
	}
	// (The old field is marked: the page made anew has a new one.)
	wait("the 6-hour range", `location.hash.includes('since=6h') && document.activeElement.id === 'm-since' && !document.activeElement.dataset.old &&
		document.querySelectorAll('#main svg.chart polyline').length === 5`)

	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/console/#/devices/gw-1")); err != nil {
		t.Fatal(err)
	}
	wait("the device's charts", `document.querySelectorAll('#main figure svg.chart').length === 2 && document.querySelector('[aria-label="Audit trail"]') !== null`)
	if n := count("health lines", "#main figure svg.chart polyline"); n != 5 {
		t.Errorf("health: got %d lines, want 5", n)
	}
	if n := count("audit rows", `table[aria-label="Audit trail"] tbody tr`); n != 3 {
		t.Errorf("audit: got %d rows, want 3", n)
	}
	if s := text(); !strings.Contains(s, "broken") {
		t.Errorf("the broken chain is not shown")
	}
	if bad, err := chromedp.Run(ctx, chromedp.Evaluate[string](unlabelled)); err != nil || bad != "" {
		t.Errorf("device page: %s %v", bad, err)
	}
	shot("device-health-1280", `section[aria-labelledby="h-health"]`)
	shot("device-audit-1280", `section[aria-labelledby="h-audit"]`)
	// A device that does not exist: a page that says so.
	if err := chromedp.Do(ctx, chromedp.Navigate(f.base+"/console/#/devices/gw-404")); err != nil {
		t.Fatal(err)
	}
	wait("the not-found page", `document.querySelector('h1') && document.querySelector('h1').textContent === 'Not found' && document.activeElement.tagName === 'H1'`)

	if errs := logged.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}
