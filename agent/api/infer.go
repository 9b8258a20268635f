package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/routing"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tfserving"
	"github.com/outpost-edge/outpost/internal/phasetrace"
)

// call holds what one inference request needs, pooled so the hot path does
// not allocate per request beyond what the codecs must.
type call struct {
	body  []byte
	resp  []byte
	ins   [][]byte
	arena []byte          // output data, copied out of the interpreter
	outs  []tensor.Tensor // outputs, Data pointing into arena or resp

	// direct has run copy the outputs straight into resp, after
	// respReserve bytes left for the JSON header (inPlace), instead of
	// into arena: set for a v2 request that takes every output as binary
	// data. into is where emit appends; spilled says an output was larger
	// than its declared size, so into left resp.
	direct, spilled bool
	into            []byte
	v2              oip.Request
	v2resp          oip.Response

	// For the Observer.
	inTensors []tensor.Tensor
	observed  Inference

	deadline requestDeadline  // run's context
	trace    phasetrace.Trace // empty unless built with the phasetrace tag
}

// getCall takes a call from the pool with no inputs bound yet.
func getCall() *call {
	c := calls.Get().(*call)
	c.ins, c.outs = c.ins[:0], c.outs[:0]
	c.direct = false
	return c
}

var calls = sync.Pool{New: func() any { return new(call) }}

// maxPooled keeps a rare huge request from pinning its buffers in the pool.
const maxPooled = 8 << 20

func putCall(c *call) {
	if cap(c.body) > maxPooled || cap(c.resp) > maxPooled || cap(c.arena) > maxPooled {
		return
	}
	calls.Put(c)
}

// readBody reads the whole body into c.body, bounded by MaxBodyBytes, and
// decompressed when it is gzip (gzip.go).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, c *call) error {
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return s.readGzipBody(w, r, c, enc)
	}
	if r.ContentLength > s.opts.MaxBodyBytes {
		return &http.MaxBytesError{Limit: s.opts.MaxBodyBytes}
	}
	body := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	if r.ContentLength >= 0 {
		n := int(r.ContentLength)
		if cap(c.body) < n {
			c.body = make([]byte, n)
		}
		c.body = c.body[:n]
		if _, err := io.ReadFull(body, c.body); err != nil {
			return fmt.Errorf("%w: reading body: %v", errBadRequest, err)
		}
		return nil
	}
	return s.readAll(body, c)
}

// readAll reads body to its end into c.body, reusing its buffer.
func (s *Server) readAll(body io.Reader, c *call) error {
	buf := c.body[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			c.body = buf
			if _, ok := err.(*http.MaxBytesError); ok {
				return err
			}
			return fmt.Errorf("%w: reading body: %v", errBadRequest, err)
		}
	}
	c.body = buf
	return nil
}

// bind matches decoded tensors to the model's inputs by name and returns
// their data in signature order.
func bind(e catalog.Entry, ts []tensor.Tensor, dst [][]byte) ([][]byte, error) {
	dst = dst[:0]
	if len(ts) != len(e.Inputs) {
		return nil, fmt.Errorf("%w: got %d inputs, model %s takes %d: %s", errBadRequest, len(ts), e.Name, len(e.Inputs), inputNames(e))
	}
	for _, in := range e.Inputs {
		var t *tensor.Tensor
		for j := range ts {
			if ts[j].Name == in.Name {
				t = &ts[j]
				break
			}
		}
		if t == nil {
			for j := range ts {
				if !hasInput(e, ts[j].Name) {
					return nil, fmt.Errorf("%w: unknown input %q; model %s takes %s", errBadRequest, ts[j].Name, e.Name, inputNames(e))
				}
			}
			return nil, fmt.Errorf("%w: input %q is missing", errBadRequest, in.Name)
		}
		if t.DataType != in.DataType {
			return nil, fmt.Errorf("%w: input %q: datatype %s, model takes %s", errBadRequest, in.Name, t.DataType, in.DataType)
		}
		if !tensor.SameShape(in.Shape, t.Shape) {
			return nil, fmt.Errorf("%w: input %q: shape %v, model takes %v", errBadRequest, in.Name, t.Shape, in.Shape)
		}
		if in.DataType == tensor.Bytes {
			return nil, fmt.Errorf("%w: input %q: BYTES inputs are not supported by this runtime", errBadRequest, in.Name)
		}
		want, err := tensor.Info{DataType: t.DataType, Shape: t.Shape}.ByteSize()
		if err != nil || want != len(t.Data) {
			return nil, fmt.Errorf("%w: input %q: %d bytes of data, shape %v of %s needs %d", errBadRequest, in.Name, len(t.Data), t.Shape, t.DataType, want)
		}
		dst = append(dst, t.Data)
	}
	return dst, nil
}

func hasInput(e catalog.Entry, name string) bool {
	for _, in := range e.Inputs {
		if in.Name == name {
			return true
		}
	}
	return false
}

func inputNames(e catalog.Entry) string {
	names := make([]string, len(e.Inputs))
	for i, in := range e.Inputs {
		names[i] = strconv.Quote(in.Name)
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// run decodes nothing: it binds, invokes and collects outputs into c.outs.
func (s *Server) run(ctx context.Context, rt route, c *call, inputs func() []tensor.Tensor, check func(catalog.Entry) error) (catalog.Entry, catalog.Timing, error) {
	c.deadline.reset(ctx, s.opts.RequestTimeout)
	defer c.deadline.release()
	var entry catalog.Entry
	prepare := func(e catalog.Entry) ([][]byte, error) {
		c.trace.Mark(phasetrace.Lookup)
		entry = e
		if check != nil {
			if err := check(e); err != nil {
				return nil, err
			}
		}
		total := 0
		for _, o := range e.Outputs {
			n, _ := o.ByteSize()
			total += n
		}
		if c.direct {
			if need := respReserve + total; cap(c.resp) < need {
				c.resp = make([]byte, need)
			}
			c.into = c.resp[respReserve : respReserve : respReserve+total]
		} else {
			if cap(c.arena) < total {
				c.arena = make([]byte, total)
			}
			c.into = c.arena[:0]
		}
		c.spilled = false
		c.outs = c.outs[:0]
		var err error
		c.ins, err = bind(e, inputs(), c.ins)
		c.trace.Mark(phasetrace.Prepare)
		return c.ins, err
	}
	emit := func(i int, data []byte) error {
		start := len(c.into)
		c.spilled = c.spilled || start+len(data) > cap(c.into)
		c.into = append(c.into, data...)
		o := entry.Outputs[i]
		c.outs = append(c.outs, tensor.Tensor{Name: o.Name, DataType: o.DataType, Shape: o.Shape, Data: c.into[start:len(c.into):len(c.into)]})
		if i == len(entry.Outputs)-1 {
			c.trace.Mark(phasetrace.Invoke)
		}
		return nil
	}
	return s.opts.Backend.Infer(&c.deadline, rt.model, rt.version, prepare, emit)
}

// infer serves POST /v2/models/{name}[/versions/{v}]/infer.
func (s *Server) infer(w http.ResponseWriter, r *http.Request, rt route) {
	start := time.Now()
	s.metrics.inflight.Inc()
	defer s.metrics.inflight.Dec()
	c := getCall()
	defer putCall(c)
	c.trace = phasetrace.Start()
	var entry catalog.Entry
	var tm catalog.Timing
	code, err := func() (int, error) {
		if err := s.readBody(w, r, c); err != nil {
			return StatusFor(err), err
		}
		c.trace.Mark(phasetrace.Read)
		hdrLen := -1
		if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
			n, err := strconv.Atoi(h)
			if err != nil || n < 0 || n > len(c.body) {
				return http.StatusBadRequest, fmt.Errorf("Inference-Header-Content-Length %q is not a length within the %d-byte body", h, len(c.body))
			}
			hdrLen = n
		}
		c.v2.Reset()
		if err := oip.DecodeRequest(c.body, hdrLen, &c.v2); err != nil {
			return http.StatusBadRequest, err
		}
		c.trace.Mark(phasetrace.Decode)
		var err error
		entry, tm, err = s.run(routingContext(r), rt, c, func() []tensor.Tensor { return c.v2.Inputs }, func(e catalog.Entry) error {
			for _, o := range c.v2.Outputs {
				if !hasOutput(e, o.Name) {
					return fmt.Errorf("%w: unknown output %q", errBadRequest, o.Name)
				}
			}
			c.direct = allBinary(e, &c.v2)
			return nil
		})
		if err != nil {
			return StatusFor(err), err
		}
		c.trace.Mark(phasetrace.Release)
		return http.StatusOK, nil
	}()
	defer func() {
		c.trace.Mark(phasetrace.Write)
		s.observe("v2", rt, c, entry, code, err, tm, start)
		c.trace.Mark(phasetrace.Observe)
		c.trace.Done()
	}()
	if err != nil {
		nameFailed(w.Header(), entry)
		writeError(w, code, err.Error())
		return
	}
	resp := &c.v2resp
	resp.Reset()
	resp.ModelName = entry.Name
	resp.ModelVersion = strconv.FormatInt(entry.Version, 10)
	resp.ModelDigest = entry.Digest
	resp.ID = c.v2.ID
	for _, o := range c.outs {
		if want, binary := wanted(&c.v2, o.Name); want {
			resp.Outputs = append(resp.Outputs, oip.Output{Tensor: o, Binary: binary})
		}
	}
	var body []byte
	var hdrLen int
	if c.direct {
		body, hdrLen = c.inPlace(resp)
	} else {
		c.resp, hdrLen = oip.AppendResponse(c.resp[:0], resp)
		body = c.resp
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if hdrLen >= 0 {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Inference-Header-Content-Length", strconv.Itoa(hdrLen))
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	c.trace.Mark(phasetrace.Encode)
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// wanted reports whether req asks for output name and whether as binary
// data.
func wanted(req *oip.Request, name string) (want, binary bool) {
	want, binary = len(req.Outputs) == 0, req.BinaryOutput
	for _, ro := range req.Outputs {
		if ro.Name == name {
			want, binary = true, binary || ro.Binary
		}
	}
	return want, binary
}

// allBinary reports whether the answer to req carries every output of e,
// each as binary data: then the outputs, in the model's order, are the
// answer's binary part, and run copies them straight into it (call.direct).
func allBinary(e catalog.Entry, req *oip.Request) bool {
	for _, o := range e.Outputs {
		if want, binary := wanted(req, o.Name); !want || !binary || o.DataType == tensor.Bytes {
			return false
		}
	}
	return len(e.Outputs) > 0
}

// respReserve is the room a direct call leaves for the JSON header before
// the outputs in resp; a longer header (a request id of kilobytes, say)
// has the answer built in a buffer of its own.
const respReserve = 4 << 10

// inPlace returns the body of a direct call's answer, whose outputs run
// copied into resp after respReserve bytes: the JSON header is written
// just before them, so the tensors are not copied a second time.
func (c *call) inPlace(resp *oip.Response) ([]byte, int) {
	hdr := oip.AppendResponseHeader(c.resp[:0:respReserve], resp)
	if len(hdr) > respReserve || c.spilled {
		// The header did not fit (append moved it) or the outputs left
		// resp: build the answer afresh, away from the outputs' bytes.
		return oip.AppendResponse(make([]byte, 0, respReserve+len(c.into)), resp)
	}
	start := respReserve - len(hdr)
	copy(c.resp[start:respReserve], hdr)
	return c.resp[start : respReserve+len(c.into)], len(hdr)
}

// nameFailed names, in the Outpost-Model-Version and Outpost-Model-Digest
// headers of an error response, the version that took the request and
// failed, if one did: during a canary a client tells the candidate's
// failures from the serving version's by them. Nothing is named when no
// version took it (unknown model, full queue).
func nameFailed(h http.Header, e catalog.Entry) {
	if e.Version > 0 {
		h.Set("Outpost-Model-Version", strconv.FormatInt(e.Version, 10))
		h.Set("Outpost-Model-Digest", e.Digest)
	}
}

// routingContext is the request's context with its canary routing key
// (the Outpost-Routing-Key header), if it has one.
func routingContext(r *http.Request) context.Context {
	return routing.WithKey(r.Context(), r.Header.Get(routing.Header))
}

func hasOutput(e catalog.Entry, name string) bool {
	for _, o := range e.Outputs {
		if o.Name == name {
			return true
		}
	}
	return false
}

// predict serves TF Serving's POST /v1/models/{name}[/versions/{v}]:predict.
func (s *Server) predict(w http.ResponseWriter, r *http.Request, rt route) {
	start := time.Now()
	s.metrics.inflight.Inc()
	defer s.metrics.inflight.Dec()
	c := getCall()
	defer putCall(c)
	var entry catalog.Entry
	var tm catalog.Timing
	var row bool
	code, err := func() (int, error) {
		if err := s.readBody(w, r, c); err != nil {
			return StatusFor(err), err
		}
		var err error
		var pred tfserving.Predict
		entry, tm, err = s.run(routingContext(r), rt, c, func() []tensor.Tensor { return pred.Inputs }, func(e catalog.Entry) error {
			// TF Serving bodies carry no types or shapes: decode against
			// the signature of the model that will run.
			p, err := tfserving.DecodePredict(c.body, e.Inputs)
			pred, row = p, p.Row
			return err
		})
		if err != nil {
			return StatusFor(err), err
		}
		return http.StatusOK, nil
	}()
	defer func() { s.observe("tfserving", rt, c, entry, code, err, tm, start) }()
	if err != nil {
		nameFailed(w.Header(), entry)
		writeError(w, code, err.Error())
		return
	}
	c.resp = tfserving.AppendPredictResponse(c.resp[:0], c.outs, row)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(c.resp)))
	// TF Serving has no place for these in its body.
	h.Set("Outpost-Model-Version", strconv.FormatInt(entry.Version, 10))
	h.Set("Outpost-Model-Digest", entry.Digest)
	w.WriteHeader(http.StatusOK)
	w.Write(c.resp)
}
