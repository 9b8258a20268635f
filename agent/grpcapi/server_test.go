//go:build cgo

package grpcapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/outpost-edge/outpost/agent/api"
	pb "github.com/outpost-edge/outpost/agent/grpcapi/inferencepb"
	"github.com/outpost-edge/outpost/agent/routing"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
)

// stack is a real registry with the face model, the HTTP API and the gRPC
// server over it, each running until the test ends (or stop is called).
type stack struct {
	reg    *serving.Registry
	http   string
	grpc   *Server
	client pb.GRPCInferenceServiceClient
	stop   func() error // cancels the gRPC server's Run and returns its result
}

func startStack(t testing.TB, rt runtime.Options) *stack {
	t.Helper()
	reg := serving.New(serving.Options{Runtime: rt})
	_, err := reg.LoadFile(context.Background(), "face", 1, filepath.Join(modelsDir(), "face_detection_short_range.tflite"))
	require.NoError(t, err, "test model missing? (run `make setup`)")
	a, err := api.New(api.Options{Backend: reg, Listen: "127.0.0.1:0"})
	require.NoError(t, err)
	a.SetReady(true)
	g, err := New(Options{API: a, Listen: "127.0.0.1:0", DrainTimeout: 20 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	gctx, gcancel := context.WithCancel(ctx)
	apiDone, grpcDone := make(chan error, 1), make(chan error, 1)
	go func() { apiDone <- a.Run(ctx) }()
	go func() { grpcDone <- g.Run(gctx) }()
	var once sync.Once
	var grpcErr error
	stop := func() error {
		once.Do(func() { gcancel(); grpcErr = <-grpcDone })
		return grpcErr
	}
	conn, err := grpc.NewClient(g.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		conn.Close()
		assert.NoError(t, stop())
		cancel()
		assert.NoError(t, <-apiDone)
		reg.Close()
	})
	return &stack{reg: reg, http: "http://" + a.Addr().String(), grpc: g, client: pb.NewGRPCInferenceServiceClient(conn), stop: stop}
}

func faceRequest(seed float64) *pb.ModelInferRequest {
	raw := make([]byte, 4*128*128*3)
	for i := range 128 * 128 * 3 {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(math.Sin(float64(i)*0.37+seed))))
	}
	return &pb.ModelInferRequest{
		ModelName:        "face",
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 128, 128, 3}}},
		RawInputContents: [][]byte{raw},
	}
}

// Cancelling Run lets the calls in flight finish: under load, every call
// either succeeds or is turned away as UNAVAILABLE once the server stops
// taking calls; none is cut off, and Run returns nil.
func TestDrainDropsNoCallInFlight(t *testing.T) {
	s := startStack(t, runtime.Options{Workers: 1})
	req := faceRequest(0)
	var ok, refused atomic.Int64
	stopAfter := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			deadline := time.Now().Add(60 * time.Second)
			for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
				_, err := s.client.ModelInfer(context.Background(), req)
				switch status.Code(err) {
				case codes.OK:
					if ok.Add(1) == 30 {
						once.Do(func() { close(stopAfter) })
					}
				case codes.Unavailable:
					refused.Add(1)
					return
				default:
					t.Errorf("call cut off: %v", err)
					return
				}
			}
		})
	}
	select {
	case <-stopAfter:
	case <-time.After(60 * time.Second):
		t.Fatal("30 calls did not succeed")
	}
	assert.NoError(t, s.stop(), "Run after a drain")
	wg.Wait()
	t.Logf("%d answered, %d refused after the drain began", ok.Load(), refused.Load())
	assert.Positive(t, refused.Load(), "no call was refused: the server never stopped?")
	_, err := s.client.ServerLive(context.Background(), &pb.ServerLiveRequest{})
	assert.Equal(t, codes.Unavailable, status.Code(err), "still answering after Run returned")
}

// BenchmarkFaceGRPCvsHTTP runs the face model through the same agent over
// gRPC (raw contents) and over HTTP (binary tensors), request by request
// interleaved, one client, and reports each median.
func BenchmarkFaceGRPCvsHTTP(b *testing.B) {
	s := startStack(b, runtime.Options{Workers: 1})
	req := faceRequest(0)
	raw := req.RawInputContents[0]
	hdr := []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":196608}}],"parameters":{"binary_data_output":true}}`)
	body := append(append([]byte(nil), hdr...), raw...)
	client := &http.Client{}
	var g, h []time.Duration
	for range 20 { // warm the interpreter and the connection
		s.client.ModelInfer(context.Background(), req)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for range 50 {
			t0 := time.Now()
			if _, err := s.client.ModelInfer(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			r, _ := http.NewRequest("POST", s.http+"/v2/models/face/infer", bytes.NewReader(body))
			r.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(hdr)))
			resp, err := client.Do(r)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("HTTP %d", resp.StatusCode)
			}
			g, h = append(g, t1.Sub(t0)), append(h, time.Since(t1))
		}
	}
	b.StopTimer()
	mg, mh := median(g), median(h)
	b.ReportMetric(float64(mg.Microseconds()), "grpc-µs")
	b.ReportMetric(float64(mh.Microseconds()), "http-µs")
	b.ReportMetric(float64(mg)/float64(mh), "grpc/http")
}

func median(v []time.Duration) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// startTrial puts the face model, as version 2, on trial beside version 1.
func (s *stack) startTrial(t *testing.T, tr serving.Trial) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(modelsDir(), "face_detection_short_range.tflite"))
	require.NoError(t, err)
	_, err = s.reg.StartTrial(context.Background(), "face", 2, data, tr)
	require.NoError(t, err)
}

// modelsDir is where make setup put the test models.
func modelsDir() string {
	if dir := os.Getenv("OUTPOST_MODELS"); dir != "" {
		return dir
	}
	return filepath.Join("..", "..", ".deps", "models")
}

// TestCanaryRoutingMetadata: the outpost-routing-key metadata places a gRPC
// call in a canary's arm as the HTTP header does: the same key, the same
// version, every time and over both transports.
func TestCanaryRoutingMetadata(t *testing.T) {
	s := startStack(t, runtime.Options{Workers: 1})
	s.startTrial(t, serving.Trial{Mode: serving.Canary, Percent: 50})
	req := faceRequest(0)
	versions := map[string]int{}
	for k := range 16 {
		key := fmt.Sprintf("camera-%d", k)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "outpost-routing-key", key)
		var first string
		for i := range 3 {
			resp, err := s.client.ModelInfer(ctx, req)
			require.NoError(t, err)
			if i == 0 {
				first = resp.GetModelVersion()
			}
			require.Equal(t, first, resp.GetModelVersion(), "key %s moved", key)
		}
		versions[first]++
		want := "1"
		if routing.Point(key, "face") < 50 {
			want = "2"
		}
		assert.Equal(t, want, first, "key %s: gRPC's arm is not the key's point", key)
	}
	assert.Positive(t, versions["1"])
	assert.Positive(t, versions["2"])
}

// TestShadowCopiesGRPC: a candidate in shadow gets copies of gRPC calls as
// of HTTP requests (PROTOCOL.md: "the live requests of the model (HTTP,
// gRPC and streams)"): with 100% every call is copied and compared, and
// every answer still comes from the serving version.
func TestShadowCopiesGRPC(t *testing.T) {
	s := startStack(t, runtime.Options{Workers: 1})
	s.startTrial(t, serving.Trial{Mode: serving.Shadow, Percent: 100})
	const calls = 12 // fewer than the shadow queue holds: none dropped
	for i := range calls {
		resp, err := s.client.ModelInfer(context.Background(), faceRequest(float64(i)))
		require.NoError(t, err)
		require.Equal(t, "1", resp.GetModelVersion(), "a shadow's candidate answered a client")
	}
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(s.reg.Collector()))
	copies := func() map[string]float64 {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() != "outpost_shadow_copies_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" {
						out[l.GetValue()] += m.GetCounter().GetValue()
					}
				}
			}
		}
		return out
	}
	// Polled here rather than with require.Eventually, whose condition
	// runs in another goroutine: copies may fail the test.
	c := copies()
	for end := time.Now().Add(30 * time.Second); c["compared"]+c["failed"]+c["dropped"] < calls && time.Now().Before(end); c = copies() {
		time.Sleep(20 * time.Millisecond)
	}
	assert.Equal(t, map[string]float64{"compared": calls}, c)
}
