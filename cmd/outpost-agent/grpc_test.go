package main

import (
	"bufio"
	"bytes"
	"context"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/outpost-edge/outpost/agent/grpcapi/inferencepb"
)

// grpcAgent is a running `outpost-agent serve` with its gRPC listener on.
type grpcAgent struct {
	url    string // the HTTP API
	client pb.GRPCInferenceServiceClient
	token  string
}

// startGRPCAgent runs the real binary with config (YAML, to which the
// listeners on free loopback ports are added) and waits until it is ready.
func startGRPCAgent(t *testing.T, bin, config string, args ...string) *grpcAgent {
	t.Helper()
	dir := t.TempDir()
	token := "grpc-test-token"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "token"), []byte(token+"\n"), 0o600))
	cfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte(config+"\ngrpc: {listen: '127.0.0.1:0'}\n"), 0o600))
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--config", cfg,
		"--token-file", filepath.Join(dir, "token")}, args...)...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	addrs := make(chan [2]string, 1)
	go func() {
		var a [2]string
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "outpost-agent: listening on "); ok {
				a[0] = v
			}
			if v, ok := strings.CutPrefix(line, "outpost-agent: grpc listening on "); ok {
				a[1] = v
				addrs <- a
			}
			t.Log(line)
		}
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	var a [2]string
	select {
	case a = <-addrs:
	case <-exited:
		t.Fatal("serve exited before it listened")
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not report its gRPC address")
	}
	conn, err := grpc.NewClient(a[1], grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	g := &grpcAgent{url: "http://" + a[0], client: pb.NewGRPCInferenceServiceClient(conn), token: token}
	require.Eventually(t, func() bool {
		r, err := g.client.ServerReady(context.Background(), &pb.ServerReadyRequest{})
		return err == nil && r.Ready
	}, 30*time.Second, 5*time.Millisecond, "never ready over gRPC")
	return g
}

// ctx carries the bearer token.
func (g *grpcAgent) ctx() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+g.token)
}

// faceInput is a deterministic input of the face model, in [-1, 1].
func faceInput(seed float64) []float32 {
	v := make([]float32, 128*128*3)
	for i := range v {
		v[i] = float32(math.Sin(float64(i)*0.37 + seed))
	}
	return v
}

func leBytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func rawRequest(in []float32) *pb.ModelInferRequest {
	return &pb.ModelInferRequest{
		ModelName: "face",
		Id:        "req-1",
		Inputs: []*pb.ModelInferRequest_InferInputTensor{
			{Name: "input", Datatype: "FP32", Shape: []int64{1, 128, 128, 3}},
		},
		RawInputContents: [][]byte{leBytes(in)},
	}
}

// httpInfer runs the same input through the HTTP API's binary tensor path
// and returns each output's bytes by name.
func httpInfer(t *testing.T, g *grpcAgent, in []float32) map[string][]byte {
	t.Helper()
	hdr := []byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":196608}}],"parameters":{"binary_data_output":true}}`)
	req, err := http.NewRequest("POST", g.url+"/v2/models/face/infer", bytes.NewReader(append(hdr, leBytes(in)...)))
	require.NoError(t, err)
	req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(len(hdr)))
	req.Header.Set("Authorization", "Bearer "+g.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode, string(body))
	n, err := strconv.Atoi(resp.Header.Get("Inference-Header-Content-Length"))
	require.NoError(t, err)
	var h struct {
		Outputs []struct {
			Name       string
			Parameters struct {
				BinaryDataSize int `json:"binary_data_size"`
			}
		}
	}
	require.NoError(t, json.Unmarshal(body[:n], &h))
	out, rest := map[string][]byte{}, body[n:]
	for _, o := range h.Outputs {
		out[o.Name], rest = rest[:o.Parameters.BinaryDataSize], rest[o.Parameters.BinaryDataSize:]
	}
	require.Empty(t, rest)
	return out
}

// The KServe v2 gRPC service on the real binary: every RPC, raw and typed
// inputs giving the HTTP API's results, bad inputs with their codes and
// messages, the token, the size limit and the metrics.
func TestGRPC(t *testing.T) {
	b := build(t)
	model := testModel(t, "face_detection_short_range.tflite")
	data, err := os.ReadFile(model)
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	// The face model's input is 196608 bytes: 300000 leaves room for the
	// rest of a request and refuses one with twice the data.
	g := startGRPCAgent(t, b.agent, "api: {max_body_bytes: 300000}", "--model", model, "--name", "face")
	c := g.client

	t.Run("health needs no token", func(t *testing.T) {
		live, err := c.ServerLive(context.Background(), &pb.ServerLiveRequest{})
		require.NoError(t, err)
		assert.True(t, live.Live)
		ready, err := c.ServerReady(context.Background(), &pb.ServerReadyRequest{})
		require.NoError(t, err)
		assert.True(t, ready.Ready)
	})

	t.Run("token", func(t *testing.T) {
		wrong := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer nope")
		for name, ctx := range map[string]context.Context{"none": context.Background(), "wrong": wrong} {
			_, err := c.ServerMetadata(ctx, &pb.ServerMetadataRequest{})
			assert.Equal(t, codes.Unauthenticated, status.Code(err), "%s token: ServerMetadata: %v", name, err)
			_, err = c.ModelInfer(ctx, rawRequest(faceInput(0)))
			assert.Equal(t, codes.Unauthenticated, status.Code(err), "%s token: ModelInfer: %v", name, err)
			assert.ErrorContains(t, err, "bearer token")
		}
	})

	t.Run("metadata", func(t *testing.T) {
		sm, err := c.ServerMetadata(g.ctx(), &pb.ServerMetadataRequest{})
		require.NoError(t, err)
		assert.Equal(t, "outpost", sm.Name)
		assert.NotEmpty(t, sm.Version)

		mr, err := c.ModelReady(g.ctx(), &pb.ModelReadyRequest{Name: "face"})
		require.NoError(t, err)
		assert.True(t, mr.Ready)
		mr, err = c.ModelReady(g.ctx(), &pb.ModelReadyRequest{Name: "face", Version: "1"})
		require.NoError(t, err)
		assert.True(t, mr.Ready)

		mm, err := c.ModelMetadata(g.ctx(), &pb.ModelMetadataRequest{Name: "face"})
		require.NoError(t, err)
		assert.Equal(t, "face", mm.Name)
		assert.Equal(t, []string{"1"}, mm.Versions)
		assert.Equal(t, "tensorflow_lite", mm.Platform)
		require.Len(t, mm.Inputs, 1)
		assert.Equal(t, "input", mm.Inputs[0].Name)
		assert.Equal(t, "FP32", mm.Inputs[0].Datatype)
		assert.Equal(t, []int64{1, 128, 128, 3}, mm.Inputs[0].Shape)
		require.Len(t, mm.Outputs, 2)
		assert.Equal(t, "regressors", mm.Outputs[0].Name)
		assert.Equal(t, []int64{1, 896, 16}, mm.Outputs[0].Shape)

		for _, tc := range []struct {
			name, version string
			code          codes.Code
			msg           string
		}{
			{"nosuch", "", codes.NotFound, `model "nosuch"`},
			{"face", "2", codes.NotFound, "version 2"},
			{"face", "x", codes.InvalidArgument, "not a positive integer"},
		} {
			_, err := c.ModelReady(g.ctx(), &pb.ModelReadyRequest{Name: tc.name, Version: tc.version})
			assert.Equal(t, tc.code, status.Code(err), "ModelReady %s/%s: %v", tc.name, tc.version, err)
			assert.ErrorContains(t, err, tc.msg)
			_, err = c.ModelMetadata(g.ctx(), &pb.ModelMetadataRequest{Name: tc.name, Version: tc.version})
			assert.Equal(t, tc.code, status.Code(err), "ModelMetadata %s/%s: %v", tc.name, tc.version, err)
		}
	})

	t.Run("raw and typed equal HTTP", func(t *testing.T) {
		in := faceInput(1)
		want := httpInfer(t, g, in)
		require.Len(t, want, 2)

		raw, err := c.ModelInfer(g.ctx(), rawRequest(in))
		require.NoError(t, err)
		assert.Equal(t, "face", raw.ModelName)
		assert.Equal(t, "1", raw.ModelVersion)
		assert.Equal(t, "req-1", raw.Id)
		assert.Equal(t, digest, raw.Parameters["model_digest"].GetStringParam())
		require.Len(t, raw.Outputs, 2)
		require.Len(t, raw.RawOutputContents, 2)
		for i, o := range raw.Outputs {
			assert.Equal(t, "FP32", o.Datatype)
			assert.Equal(t, want[o.Name], raw.RawOutputContents[i], "output %s: gRPC raw differs from HTTP", o.Name)
		}
		assert.Equal(t, []int64{1, 896, 1}, raw.Outputs[1].Shape)

		typed := rawRequest(in)
		typed.RawInputContents = nil
		typed.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: in}
		typed.Outputs = []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "classificators"}}
		got, err := c.ModelInfer(g.ctx(), typed)
		require.NoError(t, err)
		require.Len(t, got.Outputs, 1, "only the requested output")
		assert.Equal(t, "classificators", got.Outputs[0].Name)
		assert.Equal(t, want["classificators"], got.RawOutputContents[0], "gRPC typed differs from HTTP")

		// A different input gives a different answer: the comparison above
		// is not between constant outputs.
		other, err := c.ModelInfer(g.ctx(), rawRequest(faceInput(2)))
		require.NoError(t, err)
		assert.NotEqual(t, want["regressors"], other.RawOutputContents[0])
	})

	t.Run("bad requests", func(t *testing.T) {
		in := faceInput(0)
		for _, tc := range []struct {
			name string
			req  func(r *pb.ModelInferRequest)
			code codes.Code
			msg  string
		}{
			{"unknown model", func(r *pb.ModelInferRequest) { r.ModelName = "nosuch" }, codes.NotFound, `model "nosuch"`},
			{"unknown version", func(r *pb.ModelInferRequest) { r.ModelVersion = "7" }, codes.NotFound, "version 7"},
			{"bad version", func(r *pb.ModelInferRequest) { r.ModelVersion = "-1" }, codes.InvalidArgument, `model version "-1"`},
			{"wrong shape", func(r *pb.ModelInferRequest) { r.Inputs[0].Shape = []int64{1, 3, 128, 128} }, codes.InvalidArgument, "shape [1 3 128 128], model takes [1 128 128 3]"},
			{"wrong datatype", func(r *pb.ModelInferRequest) { r.Inputs[0].Datatype = "INT32" }, codes.InvalidArgument, "datatype INT32, model takes FP32"},
			{"unknown datatype", func(r *pb.ModelInferRequest) { r.Inputs[0].Datatype = "FLOAT" }, codes.InvalidArgument, `unknown datatype "FLOAT"`},
			{"raw too short", func(r *pb.ModelInferRequest) { r.RawInputContents[0] = r.RawInputContents[0][:1000] }, codes.InvalidArgument, "raw_input_contents[0] holds 1000 bytes, shape [1 128 128 3] of FP32 needs 196608"},
			{"raw entries", func(r *pb.ModelInferRequest) { r.RawInputContents = append(r.RawInputContents, []byte{1}) }, codes.InvalidArgument, "raw_input_contents has 2 entries for 1 inputs"},
			{"unknown input", func(r *pb.ModelInferRequest) { r.Inputs[0].Name = "image" }, codes.InvalidArgument, `unknown input "image"`},
			{"no inputs", func(r *pb.ModelInferRequest) { r.Inputs, r.RawInputContents = nil, nil }, codes.InvalidArgument, "got 0 inputs"},
			{"unknown output", func(r *pb.ModelInferRequest) {
				r.Outputs = []*pb.ModelInferRequest_InferRequestedOutputTensor{{Name: "boxes"}}
			}, codes.InvalidArgument, `unknown output "boxes"`},
			{"typed wrong field", func(r *pb.ModelInferRequest) {
				r.RawInputContents = nil
				r.Inputs[0].Contents = &pb.InferTensorContents{IntContents: []int32{1, 2, 3}}
			}, codes.InvalidArgument, "datatype FP32 takes contents.fp32_contents, not int_contents"},
			{"typed too few", func(r *pb.ModelInferRequest) {
				r.RawInputContents = nil
				r.Inputs[0].Contents = &pb.InferTensorContents{Fp32Contents: in[:10]}
			}, codes.InvalidArgument, "10 values in contents.fp32_contents, shape [1 128 128 3] needs 49152"},
			{"too large", func(r *pb.ModelInferRequest) {
				r.RawInputContents[0] = append(r.RawInputContents[0], r.RawInputContents[0]...)
			}, codes.ResourceExhausted, "larger than max"},
		} {
			r := rawRequest(in)
			tc.req(r)
			_, err := c.ModelInfer(g.ctx(), r)
			assert.Equal(t, tc.code, status.Code(err), "%s: %v", tc.name, err)
			assert.ErrorContains(t, err, tc.msg, tc.name)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		req, err := http.NewRequest("GET", g.url+"/metrics", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+g.token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		m := string(b)
		// Three answered above ("raw and typed": raw, typed, other).
		assert.Contains(t, m, `outpost_requests_total{code="200",model="face",protocol="grpc",version="1"} 3`)
		assert.Contains(t, m, `outpost_requests_total{code="200",model="face",protocol="v2",version="1"} 1`)
		// Bad inputs for the served model count under its name; unknown
		// models under none.
		assert.Contains(t, m, `outpost_requests_total{code="400",model="face",protocol="grpc",version="1"}`)
		assert.Contains(t, m, `outpost_requests_total{code="404",model="",protocol="grpc",version=""}`)
	})
}

// TestGRPCONNX: an ONNX model (Silero VAD: an INT64 scalar input and a
// state carried from frame to frame) answers over gRPC as over HTTP: the
// first frame as the golden vector computed in this process says, the
// state output fed back changing the next answer.
func TestGRPCONNX(t *testing.T) {
	b := build(t)
	vad := testModel(t, "silero_vad_v5.onnx")
	g := startGRPCAgent(t, b.agent, fmt.Sprintf("models:\n  - {name: vad, path: %s}\n%s", vad, sileroYAML))
	golden := sileroGolden(t, vad, toneFrame(0))
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	state := make([]byte, 1024)
	var probs []float64
	for i := range 3 {
		resp, err := g.client.ModelInfer(g.ctx(), &pb.ModelInferRequest{ModelName: "vad",
			Inputs: []*pb.ModelInferRequest_InferInputTensor{
				{Name: "input", Datatype: "FP32", Shape: []int64{1, 512}},
				{Name: "state", Datatype: "FP32", Shape: []int64{2, 1, 128}},
				{Name: "sr", Datatype: "INT64", Shape: []int64{}},
			},
			RawInputContents: [][]byte{f32bytes(toneFrame(i)), state, sr}})
		require.NoError(t, err)
		require.Len(t, resp.Outputs, 2)
		require.Len(t, resp.RawOutputContents, 2)
		assert.Equal(t, "1", resp.ModelVersion)
		probs = append(probs, float64(math.Float32frombits(binary.LittleEndian.Uint32(resp.RawOutputContents[0]))))
		require.Len(t, resp.RawOutputContents[1], 1024)
		state = resp.RawOutputContents[1]
	}
	t.Logf("speech probabilities over gRPC: %v", probs)
	assert.InDelta(t, golden0(t, golden), probs[0], 1e-6, "the first frame answers as the golden vector says")
	assert.NotEqual(t, probs[0], probs[2], "the state fed back changes the answer")
}

// With one interpreter and room for one caller to wait, a burst of
// concurrent gRPC calls gets UNAVAILABLE for those turned away (HTTP's 503),
// never another error.
func TestGRPCOverloadIsUnavailable(t *testing.T) {
	b := build(t)
	g := startGRPCAgent(t, b.agent, "workers: 1\nqueue: 1", "--model", testModel(t, "face_detection_short_range.tflite"), "--name", "face")
	req := rawRequest(faceInput(0))
	var ok, busy, other atomic.Int64
	deadline := time.Now().Add(60 * time.Second)
	for round := 0; round < 20 && busy.Load() == 0 && time.Now().Before(deadline); round++ {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 5 {
					_, err := g.client.ModelInfer(g.ctx(), req)
					switch status.Code(err) {
					case codes.OK:
						ok.Add(1)
					case codes.Unavailable:
						busy.Add(1)
						assert.ErrorContains(t, err, "overloaded")
					default:
						other.Add(1)
						t.Errorf("unexpected error: %v", err)
					}
				}
			})
		}
		wg.Wait()
	}
	assert.Positive(t, ok.Load())
	assert.Positive(t, busy.Load(), "no call was turned away")
	assert.Zero(t, other.Load())
	t.Logf("%d answered, %d turned away", ok.Load(), busy.Load())
}

// Release builds (-tags grpcnotrace, as make build, cross/build.sh and
// goreleaser build the agent) carry no html/template: gRPC's tracing would
// bring it in, and with it the linker keeps every exported method (3 MB).
func TestReleaseBuildHasNoTemplates(t *testing.T) {
	for tags, want := range map[string]bool{"grpcnotrace": false, "": true} {
		out, err := exec.Command("go", "list", "-deps", "-tags", tags, ".").CombinedOutput()
		require.NoError(t, err, "%s", out)
		deps := "\n" + string(out)
		assert.Equal(t, want, strings.Contains(deps, "\nhtml/template\n"), "tags %q: html/template among the deps", tags)
		assert.Equal(t, want, strings.Contains(deps, "\ngolang.org/x/net/trace\n"), "tags %q: x/net/trace among the deps", tags)
	}
}
