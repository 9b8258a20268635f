//go:build cgo

package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// observed keeps what the Observer heard, copied out of the pooled call.
type observed struct {
	mu  sync.Mutex // guards got
	got []Inference
}

func (o *observed) ObserveInference(in *Inference) {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := *in
	c.Inputs, c.Outputs = append([]tensor.Tensor(nil), in.Inputs...), append([]tensor.Tensor(nil), in.Outputs...)
	o.got = append(o.got, c)
}

func (o *observed) all() []Inference {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]Inference(nil), o.got...)
}

// A Call (another transport's request) gets the HTTP path's checks, answer
// and observation, under its own protocol.
func TestCallSharesThePath(t *testing.T) {
	obs := &observed{}
	a := startAgent(t, Options{Observer: obs}, runtime.Options{Workers: 1})
	in := input(0.5)
	want := reference(t, in)

	call := a.srv.StartCall("grpc", "face", 0)
	checked := false
	e, outs, err := call.Infer(context.Background(), []tensor.Tensor{{Name: "input", DataType: tensor.FP32, Shape: []int{1, 128, 128, 3}, Data: le(in)}},
		func(e catalog.Entry) error { checked = e.Name == "face"; return nil })
	require.NoError(t, err)
	assert.True(t, checked, "check did not see the face model")
	assert.Equal(t, int64(1), e.Version)
	require.Len(t, outs, 2)
	assertClose(t, want[0], fromLE(outs[0].Data), "regressors")
	assert.Equal(t, http.StatusOK, call.Finish(nil))

	call = a.srv.StartCall("grpc", "face", 0)
	_, _, err = call.Infer(context.Background(), []tensor.Tensor{{Name: "input", DataType: tensor.FP32, Shape: []int{1, 3, 128, 128}, Data: le(in)}}, nil)
	assert.ErrorContains(t, err, `input "input": shape [1 3 128 128], model takes [1 128 128 3]`)
	assert.Equal(t, http.StatusBadRequest, call.Finish(err))

	call = a.srv.StartCall("grpc", "nosuch", 0)
	_, _, err = call.Infer(context.Background(), nil, nil)
	assert.Equal(t, http.StatusNotFound, call.Finish(err))

	got := obs.all()
	require.Len(t, got, 3)
	for i, code := range []int{200, 400, 404} {
		assert.Equal(t, "grpc", got[i].Protocol, "call %d", i)
		assert.Equal(t, code, got[i].Code, "call %d", i)
	}
	assert.Equal(t, "face", got[0].Model.Name)
	require.Len(t, got[0].Inputs, 1)
	assert.Len(t, got[0].Outputs, 2)
	assert.Equal(t, "face", got[1].Model.Name, "a refused request names the served model")
	assert.Empty(t, got[2].Model.Name)

	// The HTTP path tells the Observer its protocol too.
	body, hdr := binaryRequest(t, in)
	resp, _ := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
	require.Equal(t, 200, resp.StatusCode)
	// The HTTP handler observes after the response has gone out, so the
	// client can read it before the Observer has heard of it.
	require.Eventually(t, func() bool { return len(obs.all()) == 4 }, 10*time.Second, 5*time.Millisecond, "the HTTP request was never observed")
	got = obs.all()
	assert.Equal(t, "v2", got[3].Protocol)

	_, m := do(t, "GET", a.url+"/metrics", nil, nil)
	assert.Contains(t, string(m), `outpost_requests_total{code="200",model="face",protocol="grpc",version="1"} 1`)
	assert.Contains(t, string(m), `outpost_requests_total{code="400",model="face",protocol="grpc",version="1"} 1`)
	assert.Contains(t, string(m), "\noutpost_inflight_requests 0\n", "every Call finished")
}

// inPlace writes the JSON header just before outputs already in resp, and
// builds the answer afresh when they are not there (an output larger than
// its declared size left resp) or the header does not fit.
func TestInPlace(t *testing.T) {
	data := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	for _, tc := range []struct {
		name     string
		declared int
		id       string
		inPlace  bool
	}{
		{"in place", 8, "req", true},
		{"an output larger than declared", 4, "req", false},
		{"a header longer than the room", 8, strings.Repeat("i", respReserve), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &call{direct: true, resp: make([]byte, respReserve+tc.declared)}
			c.into = c.resp[respReserve : respReserve : respReserve+tc.declared]
			c.spilled = len(data) > cap(c.into) // as emit sets it
			c.into = append(c.into, data...)
			resp := &oip.Response{ModelName: "m", ID: tc.id, Outputs: []oip.Output{
				{Tensor: tensor.Tensor{Name: "o", DataType: tensor.Uint8, Shape: []int{8}, Data: c.into}, Binary: true}}}
			want, wantLen := oip.AppendResponse(nil, resp)
			got, gotLen := c.inPlace(resp)
			assert.Equal(t, want, got)
			assert.Equal(t, wantLen, gotLen)
			assert.Equal(t, tc.inPlace, &got[gotLen] == &c.resp[:respReserve+1][respReserve], "the outputs' bytes are the answer's")
		})
	}
}
