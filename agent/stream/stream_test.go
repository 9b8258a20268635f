//go:build cgo

package stream

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	hand = "hand_landmark_lite.tflite"         // image in [1,224,224,3] FP32, small outputs
	face = "face_detection_short_range.tflite" // image in [1,128,128,3] FP32
)

func modelPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model missing (run `make setup`): %v", err)
	}
	return p
}

// registry serves file as "m" version 1, with one interpreter (so a
// stream's capacity is one invoke at a time, as on a small board).
func registry(t testing.TB, file string) (*serving.Registry, []byte) {
	t.Helper()
	reg := serving.New(serving.Options{Runtime: runtime.Options{Workers: 1, Threads: 1}})
	t.Cleanup(func() { reg.Close() })
	data, err := os.ReadFile(modelPath(t, file))
	require.NoError(t, err)
	_, err = reg.Load(context.Background(), "m", 1, data, "test")
	require.NoError(t, err)
	return reg, data
}

// result is a stream result as a subscriber reads it.
type result struct {
	ModelName    string `json:"model_name"`
	ModelVersion string `json:"model_version"`
	ID           string `json:"id"`
	Error        string `json:"error"`
	Parameters   struct {
		Digest string `json:"model_digest"`
	} `json:"parameters"`
	Outputs []struct {
		Name  string    `json:"name"`
		Shape []int     `json:"shape"`
		Data  []float64 `json:"data"`
	} `json:"outputs"`
}

// seq is the message number a result answers.
func (r result) seq(t testing.TB) uint64 {
	s, _, _ := strings.Cut(r.ID, ":")
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Errorf("result id %q: %v", r.ID, err)
	}
	return n
}

// collector subscribes to a result topic and keeps what arrives.
type sink struct {
	mu       sync.Mutex
	got      []result
	bad      []string
	retained int           // results that came with the retain flag
	ch       chan struct{} // poked on every result
}

func collect(t testing.TB, broker, topic string) *sink {
	t.Helper()
	c := &sink{ch: make(chan struct{}, 1)}
	cl := client(t, broker, "results-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	tok := cl.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		var r result
		c.mu.Lock()
		if m.Retained() {
			c.retained++
		}
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			c.bad = append(c.bad, string(m.Payload()))
		} else {
			c.got = append(c.got, r)
		}
		c.mu.Unlock()
		select {
		case c.ch <- struct{}{}:
		default:
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return c
}

func (c *sink) results() []result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]result(nil), c.got...)
}

// waitFor waits until cond holds on the results, or fails after d.
func (c *sink) waitFor(t testing.TB, d time.Duration, what string, cond func([]result) bool) []result {
	t.Helper()
	deadline := time.After(d)
	for {
		rs := c.results()
		if cond(rs) {
			return rs
		}
		select {
		case <-c.ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; have %d results", what, len(rs))
		}
	}
}

func client(t testing.TB, broker, id string) mqtt.Client {
	t.Helper()
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}

func publish(t testing.TB, cl mqtt.Client, topic string, qos byte, payload []byte) {
	t.Helper()
	tok := cl.Publish(topic, qos, false, payload)
	require.True(t, tok.WaitTimeout(10*time.Second), "publish timed out")
	require.NoError(t, tok.Error())
}

// run starts s and stops it (waiting for Run to return) at test end.
func run(t testing.TB, s *Stream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("stream did not stop within 10 s")
		}
	})
}

// waitConnected waits until the stream has subscribed (its connection is
// up and the subscription has had a round trip to the broker).
func waitConnected(t testing.TB, s *Stream) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.connected.Load() {
		if time.Now().After(deadline) {
			t.Fatal("stream did not connect within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func frame(t testing.TB, i int) []byte {
	return encodeJPEG(t, uniform(64, 48, color.RGBA{uint8(i * 7), uint8(255 - i), 128, 255}))
}

func TestStreamImageResults(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, data := registry(t, hand)
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: 64})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	for i := range 5 {
		publish(t, pub, "cam/frames", 1, frame(t, i))
	}
	publish(t, pub, "cam/frames", 1, []byte("GIF89a not a frame"))
	publish(t, pub, "cam/frames", 1, frame(t, 9))
	rs := res.waitFor(t, 30*time.Second, "7 results", func(rs []result) bool { return len(rs) >= 7 })
	require.Len(t, rs, 7)
	for i, r := range rs {
		assert.Equal(t, strconv.Itoa(i+1), r.ID, "results come in message order")
		if i == 5 {
			assert.Contains(t, r.Error, "not a JPEG or PNG frame")
			continue
		}
		require.Empty(t, r.Error)
		assert.Equal(t, "m", r.ModelName)
		assert.Equal(t, "1", r.ModelVersion)
		assert.Equal(t, serving.Digest(data), r.Parameters.Digest)
		require.NotEmpty(t, r.Outputs)
		assert.NotEmpty(t, r.Outputs[0].Data)
	}
	st := s.Stats()
	assert.Equal(t, uint64(7), st.Received)
	assert.Equal(t, uint64(6), st.Results)
	assert.Equal(t, uint64(1), st.Errors["bad_input"])
	res.mu.Lock()
	assert.Zero(t, res.retained, "results are not retained")
	res.mu.Unlock()
	// A late subscriber gets nothing: nothing was retained on the broker.
	late := collect(t, mq.URL(), "cam/results")
	publish(t, pub, "cam/frames", 1, frame(t, 10))
	rs = late.waitFor(t, 30*time.Second, "the next result", func(rs []result) bool { return len(rs) >= 1 })
	assert.Equal(t, "8", rs[0].ID, "the late subscriber's first result is the next one")
}

// TestStreamSwapResize: an update to a model with another input size
// (hand, 224x224, to face detection, 128x128) applies from the next message
// on, and the image decoder resizes the frames for the new model.
func TestStreamSwapResize(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, hdata := registry(t, hand)
	fdata, err := os.ReadFile(modelPath(t, face))
	require.NoError(t, err)
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	publish(t, pub, "cam/frames", 1, frame(t, 0))
	res.waitFor(t, 30*time.Second, "result 1", func(rs []result) bool { return len(rs) == 1 })
	_, err = reg.Load(context.Background(), "m", 2, fdata, "update")
	require.NoError(t, err)
	publish(t, pub, "cam/frames", 1, frame(t, 0))
	rs := res.waitFor(t, 30*time.Second, "result 2", func(rs []result) bool { return len(rs) == 2 })
	require.Empty(t, rs[0].Error)
	require.Empty(t, rs[1].Error)
	assert.Equal(t, "1", rs[0].ModelVersion)
	assert.Equal(t, serving.Digest(hdata), rs[0].Parameters.Digest)
	assert.Equal(t, "2", rs[1].ModelVersion)
	assert.Equal(t, serving.Digest(fdata), rs[1].Parameters.Digest)
	names := func(r result) []string {
		var out []string
		for _, o := range r.Outputs {
			out = append(out, o.Name)
		}
		return out
	}
	assert.NotEqual(t, names(rs[0]), names(rs[1]), "the new model's outputs")
	assert.Equal(t, []int{1, 896, 16}, rs[1].Outputs[0].Shape, "face detection's regressors")
}

// gate holds the inferences of a real registry until released, so a test
// knows a message is in hand; it changes no result.
type gate struct {
	*serving.Registry
	entered chan struct{} // gets a token when an inference is held
	release chan struct{} // closed to let them run
}

func (g *gate) Infer(ctx context.Context, name string, version int64,
	prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
) (catalog.Entry, catalog.Timing, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	return g.Registry.Infer(ctx, name, version, prepare, emit)
}

// TestStreamStopDrops: a stream that stops finishes the message in hand
// and publishes its result; the messages waiting in its queue are counted
// as shutdown drops, and stay unanswered.
func TestStreamStopDrops(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, _ := registry(t, hand)
	g := &gate{Registry: reg, entered: make(chan struct{}, 1), release: make(chan struct{})}
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: g, QoS: 1})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	for i := range 3 {
		publish(t, pub, "cam/frames", 1, frame(t, i))
	}
	select {
	case <-g.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no inference started")
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().Received < 3 {
		require.True(t, time.Now().Before(deadline), "3 messages not received")
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	close(g.release)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("stream did not stop")
	}
	st := s.Stats()
	assert.Equal(t, uint64(1), st.Results, "the message in hand is finished")
	assert.Equal(t, uint64(1), st.Published, "and its result published")
	assert.Equal(t, uint64(2), st.Dropped["shutdown"], "the waiting ones are counted")
	rs := res.waitFor(t, 30*time.Second, "result 1", func(rs []result) bool { return len(rs) >= 1 })
	assert.Equal(t, "1", rs[0].ID)
}

// noisy is a w x h frame of pseudo-random pixels: it compresses badly, so
// frames are tens of kilobytes, as a camera's are.
func noisy(t testing.TB, w, h, seed int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	x := uint32(seed*2654435761 + 1)
	for i := range img.Pix {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		img.Pix[i] = byte(x)
	}
	return encodeJPEG(t, img)
}

// rssBytes is the process's resident set size.
func rssBytes(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("VmRSS not found")
	return 0
}

// TestStreamOverloadSwap publishes camera frames at twice the best rate
// the model can take, swaps the model for version 2 half way, then
// publishes at half that rate. The queue never holds more than its bounds,
// the drops are counted, every message is accounted for (a result or a
// drop), results come in message order with no message answered twice,
// the versions change once, from 1 to 2, and the stream catches up.
func TestStreamOverloadSwap(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for several seconds")
	}
	mq := testbroker.StartMosquitto(t, "")
	reg, data := registry(t, hand)
	frames := make([][]byte, 16)
	maxFrame := 0
	for i := range frames {
		frames[i] = noisy(t, 160, 120, i)
		maxFrame = max(maxFrame, len(frames[i]))
	}

	// Capacity: the fastest of 20 decode+invoke rounds. A busy machine only
	// makes rounds slower, so twice this rate is at least twice what the
	// stream can take, however loaded the machine is.
	dec := &imageDecoder{lo: 0, hi: 1}
	best := time.Hour
	for i := range 20 {
		start := time.Now()
		_, _, err := reg.Infer(context.Background(), "m", 0, func(e catalog.Entry) ([][]byte, error) {
			return dec.inputs(frames[i%len(frames)], e)
		}, func(int, []byte) error { return nil })
		require.NoError(t, err)
		best = min(best, time.Since(start))
	}
	capacity := float64(time.Second) / float64(best)
	t.Logf("best decode+invoke %v: capacity %.0f frames/s; frames up to %d bytes", best, capacity, maxFrame)

	const queueLen = 8
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: queueLen, QueueBytes: 1 << 20})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")

	rss0 := rssBytes(t)
	var rssPeak int64
	sent := 0
	// send publishes at rate for d, at least `least` frames and at most 2000,
	// pacing by the clock so a slow moment is caught up, not stretched.
	send := func(rate float64, d time.Duration, least int, mid func()) {
		n := min(max(int(rate*d.Seconds()), least), 2000)
		start := time.Now()
		for i := range n {
			if wait := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait) // pacing the publisher is the point here
			}
			publish(t, pub, "cam/frames", 1, frames[sent%len(frames)])
			sent++
			if i == n/2 && mid != nil {
				mid()
			}
			if i%32 == 0 {
				rssPeak = max(rssPeak, rssBytes(t))
			}
		}
	}
	var swapWG sync.WaitGroup
	swapErr := make(chan error, 1)
	send(2*capacity, 3*time.Second, 24, func() {
		swapWG.Go(func() {
			_, err := reg.Load(context.Background(), "m", 2, data, "update")
			swapErr <- err
		})
	})
	fast := sent
	phase1 := s.Stats()
	send(capacity/2, 3*time.Second, 8, nil)
	swapWG.Wait()
	require.NoError(t, <-swapErr)

	// Wait until every frame is accounted for: answered or dropped.
	deadline := time.Now().Add(60 * time.Second)
	var st Stats
	for {
		st = s.Stats()
		answered := st.Results + st.Errors["bad_input"] + st.Errors["internal"]
		if st.Received == uint64(sent) && answered+st.Dropped["queue_full"] == st.Received && st.Published == answered {
			break
		}
		require.True(t, time.Now().Before(deadline), "frames not accounted for: %+v, sent %d", st, sent)
		time.Sleep(10 * time.Millisecond)
	}
	rs := res.waitFor(t, 30*time.Second, "every result", func(rs []result) bool { return uint64(len(rs)) == st.Results })
	drops1, drops2 := phase1.Dropped["queue_full"], st.Dropped["queue_full"]-phase1.Dropped["queue_full"]
	t.Logf("sent %d at %.0f/s then %d at %.0f/s; results %d; dropped %d then %d; queue peak %d bytes (bound %d); RSS %d MiB -> peak %d MiB",
		fast, 2*capacity, sent-fast, capacity/2, st.Results, drops1, drops2, st.QueuePeakBytes, int64(1<<20), rss0>>20, rssPeak>>20)

	assert.Empty(t, st.Errors, "no message failed")
	assert.Positive(t, drops1, "at twice the capacity the queue overflows, and the drops are counted")
	// How many frames the slow phase loses depends on how busy the machine
	// is (the capacity above is its best case), so it is logged, not
	// asserted; what holds however busy: drop_oldest keeps the newest, so
	// the last frame sent is answered once the stream catches up.
	require.NotEmpty(t, rs)
	assert.Equal(t, uint64(sent), rs[len(rs)-1].seq(t), "the last frame is answered")
	assert.LessOrEqual(t, st.QueuePeakBytes, int64(min(1<<20, queueLen*maxFrame)), "the queue stays within its bounds")
	assert.Less(t, rssPeak-rss0, int64(64<<20), "memory stays bounded under overload")
	var last uint64
	versions := map[string]int{}
	prevVersion := "1"
	for _, r := range rs {
		seq := r.seq(t)
		require.Greater(t, seq, last, "results in message order, none twice")
		last = seq
		require.Empty(t, r.Error)
		assert.Equal(t, serving.Digest(data), r.Parameters.Digest)
		require.GreaterOrEqual(t, r.ModelVersion, prevVersion, "the swap happens once, 1 then 2")
		prevVersion = r.ModelVersion
		versions[r.ModelVersion]++
	}
	assert.Positive(t, versions["1"], "results from version 1")
	assert.Positive(t, versions["2"], "results from version 2 after the swap")
	t.Logf("results by version: %v", versions)
}

// TestStreamBrokerRestart: the stream survives Mosquitto stopping and
// starting again, and its persistent session keeps the messages published
// while the stream itself was away, across a restart of Mosquitto too.
func TestStreamBrokerRestart(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, _ := registry(t, hand)
	opts := Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: 64, ConnectRetry: 200 * time.Millisecond}
	s, err := New(opts)
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	for i := range 3 {
		publish(t, pub, "cam/frames", 1, frame(t, i))
	}
	res.waitFor(t, 30*time.Second, "3 results", func(rs []result) bool { return len(rs) == 3 })

	mq.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for s.connected.Load() {
		require.True(t, time.Now().Before(deadline), "the stream did not notice the broker leave")
		time.Sleep(5 * time.Millisecond)
	}
	mq.Start()
	waitConnected(t, s)
	res = collect(t, mq.URL(), "cam/results") // the old subscriber had a clean session
	for i := range 3 {
		publish(t, pub, "cam/frames", 1, frame(t, 3+i))
	}
	rs := res.waitFor(t, 30*time.Second, "3 results after the restart", func(rs []result) bool { return len(rs) == 3 })
	for i, r := range rs {
		assert.Equal(t, strconv.Itoa(4+i), r.ID, "numbering goes on across the restart")
		assert.Empty(t, r.Error)
	}

	// The stream goes away; what is published meanwhile waits in its
	// session, and a stream with the same client id gets it.
	cancel()
	require.NoError(t, <-done)
	stopped = true
	for i := range 4 {
		publish(t, pub, "cam/frames", 1, frame(t, 10+i))
	}
	// Mosquitto with persistence (as shipped) keeps them across its own
	// restart too.
	mq.Stop()
	mq.Start()
	res = collect(t, mq.URL(), "cam/results")
	s2, err := New(opts)
	require.NoError(t, err)
	run(t, s2)
	rs = res.waitFor(t, 30*time.Second, "the 4 messages kept by the session", func(rs []result) bool { return len(rs) == 4 })
	for i, r := range rs {
		assert.Equal(t, strconv.Itoa(1+i), r.ID, "a new stream numbers from 1")
		assert.Empty(t, r.Error)
	}
}

// TestStreamWindow runs the face model over a time series of raw FP32
// chunks: one window of 49152 elements (the model's input) every 16384.
// A bad chunk breaks the series, so the window starts again after it.
func TestStreamWindow(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, _ := registry(t, face)
	const size, hop = 128 * 128 * 3, 128 * 128
	s, err := New(Options{Name: "series", Broker: mq.URL(), Topic: "s/in", Decoder: "raw",
		WindowSize: size, WindowHop: hop, Model: "m", ResultTopic: "s/out", Backend: reg, QoS: 1, Queue: 64,
		MaxMessage: hop * 4})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "s/out")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "sensor")
	chunk := func(k int) []byte {
		vs := make([]float32, hop)
		for i := range vs {
			vs[i] = float32((k*hop+i)%255)/127.5 - 1
		}
		return f32(vs...)
	}
	for k := 1; k <= 5; k++ {
		publish(t, pub, "s/in", 1, chunk(k))
	}
	publish(t, pub, "s/in", 1, []byte{1, 2, 3}) // 6: not whole FP32 elements
	for k := 7; k <= 9; k++ {
		publish(t, pub, "s/in", 1, chunk(k))
	}
	rs := res.waitFor(t, 30*time.Second, "5 results", func(rs []result) bool { return len(rs) == 5 })
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	assert.Equal(t, []string{"3:1", "4:2", "5:3", "6", "9:4"}, ids)
	assert.Contains(t, rs[3].Error, "not a whole number of FP32 elements")

	// Window 4:2 holds chunks 2, 3 and 4: the same as inferring them at once.
	want := append(append(chunk(2), chunk(3)...), chunk(4)...)
	var first []float32
	_, _, err = reg.Infer(context.Background(), "m", 0, func(catalog.Entry) ([][]byte, error) { return [][]byte{want}, nil },
		func(i int, d []byte) error {
			if i == 0 {
				for j := 0; j+4 <= len(d); j += 4 {
					first = append(first, math.Float32frombits(binary.LittleEndian.Uint32(d[j:])))
				}
			}
			return nil
		})
	require.NoError(t, err)
	got := rs[1].Outputs[0].Data
	require.Len(t, got, len(first))
	for i := range first {
		if float32(got[i]) != first[i] {
			t.Fatalf("output element %d: got %v, want %v", i, got[i], first[i])
		}
	}

	// A dropped message (10: over MaxMessage) is a gap too: 11 and 12 do
	// not complete a window with 8 and 9, 13 completes one of 11 to 13.
	publish(t, pub, "s/in", 1, append(chunk(10), 0, 0, 0, 0))
	for k := 11; k <= 13; k++ {
		publish(t, pub, "s/in", 1, chunk(k))
	}
	rs = res.waitFor(t, 30*time.Second, "a sixth result", func(rs []result) bool { return len(rs) == 6 })
	assert.Equal(t, "13:5", rs[5].ID)
	assert.Empty(t, rs[5].Error)
	assert.Equal(t, uint64(1), s.Stats().Dropped["too_large"])
}

// TestStreamJSON runs the face model over Open Inference Protocol request
// bodies: the result equals one inference of the same input, and a body
// naming an input the model does not have is answered with an error.
func TestStreamJSON(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, _ := registry(t, face)
	s, err := New(Options{Name: "j", Broker: mq.URL(), Topic: "j/in", Decoder: "json",
		Model: "m", ResultTopic: "j/out", Backend: reg, QoS: 1})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "j/out")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "sensor")
	e, err := reg.Lookup("m", 0)
	require.NoError(t, err)
	in := e.Inputs[0]
	vs := make([]float32, 128*128*3)
	for i := range vs {
		vs[i] = float32(i%251)/125.5 - 1
	}
	body := func(name string) []byte {
		b, err := json.Marshal(map[string]any{"inputs": []map[string]any{{
			"name": name, "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": vs}}})
		require.NoError(t, err)
		return b
	}
	publish(t, pub, "j/in", 1, body(in.Name))
	publish(t, pub, "j/in", 1, body("no_such_input"))
	rs := res.waitFor(t, 30*time.Second, "2 results", func(rs []result) bool { return len(rs) == 2 })
	require.Empty(t, rs[0].Error)
	assert.Equal(t, "1", rs[0].ID)
	assert.Equal(t, "2", rs[1].ID)
	assert.NotEmpty(t, rs[1].Error)
	assert.Equal(t, uint64(1), s.Stats().Errors["bad_input"])

	var want []float32
	_, _, err = reg.Infer(context.Background(), "m", 0, func(catalog.Entry) ([][]byte, error) { return [][]byte{f32(vs...)}, nil },
		func(i int, d []byte) error {
			if i == 0 {
				for j := 0; j+4 <= len(d); j += 4 {
					want = append(want, math.Float32frombits(binary.LittleEndian.Uint32(d[j:])))
				}
			}
			return nil
		})
	require.NoError(t, err)
	got := rs[0].Outputs[0].Data
	require.Len(t, got, len(want))
	for i := range want {
		if float32(got[i]) != want[i] {
			t.Fatalf("output element %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

// TestStreamDropNewest: under drop_newest a burst keeps its beginning. The
// first frame always finds room, so it is always answered; whatever the
// machine's speed, every frame is answered or counted as dropped, and the
// answers come in order.
func TestStreamDropNewest(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, _ := registry(t, hand)
	s, err := New(Options{Name: "burst", Broker: mq.URL(), Topic: "b/in", Decoder: "image",
		Model: "m", ResultTopic: "b/out", Backend: reg, QoS: 1, Queue: 2, DropNewest: true})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "b/out")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "burster")
	const n = 40
	toks := make([]mqtt.Token, n)
	for i := range n {
		toks[i] = pub.Publish("b/in", 1, false, frame(t, i))
	}
	for _, tok := range toks {
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
	}
	var st Stats
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = s.Stats()
		if st.Received == n && st.Results+st.Dropped["queue_full"] == n && st.Published == st.Results {
			break
		}
		require.True(t, time.Now().Before(deadline), "frames not accounted for: %+v", st)
		time.Sleep(10 * time.Millisecond)
	}
	rs := res.waitFor(t, 30*time.Second, "every result", func(rs []result) bool { return uint64(len(rs)) == st.Results })
	assert.Equal(t, "1", rs[0].ID, "the first frame of the burst is answered")
	var last uint64
	for _, r := range rs {
		seq := r.seq(t)
		require.Greater(t, seq, last, "in order, none twice")
		last = seq
	}
	t.Logf("burst of %d: %d answered, %d dropped", n, st.Results, st.Dropped["queue_full"])
}
