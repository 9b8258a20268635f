// Command floor is the transport floor of BenchmarkOverheadBinary: a
// net/http server in its own process that reads each request body and
// answers with fixed bytes and headers (the agent's own answer to the same
// request), running no inference. It prints "floor: listening on ADDR" and
// serves until killed.
//
// Given a MODEL too, it is the thin server: between reading the body and
// answering it copies the request's binary tensor data into the bare TFLite
// C API interpreter of that model (runtime.Baseline, XNNPACK, one thread)
// and invokes it, the least any Go HTTP server that runs the model does.
//
// Usage: floor RESPONSE_FILE CONTENT_TYPE INFERENCE_HEADER_LENGTH [MODEL]
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/internal/phasetrace"
)

func main() {
	runtime.RaiseProcs() // as the agent does: the same scheduler on both sides
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 3 && len(args) != 4 {
		return fmt.Errorf("usage: floor RESPONSE_FILE CONTENT_TYPE INFERENCE_HEADER_LENGTH [MODEL]")
	}
	resp, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var invoke func(body []byte, hdrLen string) error
	if len(args) == 4 {
		bare, err := runtime.NewBaseline(args[3], 1, true)
		if err != nil {
			return err
		}
		defer bare.Close()
		var mu sync.Mutex
		invoke = func(body []byte, hdrLen string) error {
			n, err := strconv.Atoi(hdrLen)
			if err != nil || n > len(body) {
				return fmt.Errorf("Inference-Header-Content-Length %q", hdrLen)
			}
			mu.Lock()
			defer mu.Unlock()
			if err := bare.SetInput(0, body[n:]); err != nil {
				return err
			}
			return bare.Run()
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "floor: listening on %s\n", ln.Addr())
	ctype, hdrLen, size := args[1], args[2], strconv.Itoa(len(resp))
	bufs := sync.Pool{New: func() any { return new([]byte) }}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := phasetrace.Start()
		defer t.Done()
		// Read the body as the agent does: into a pooled buffer of its size.
		b := bufs.Get().(*[]byte)
		defer bufs.Put(b)
		n := int(max(r.ContentLength, 0))
		if cap(*b) < n {
			*b = make([]byte, n)
		}
		if _, err := io.ReadFull(r.Body, (*b)[:n]); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		t.Mark(phasetrace.Read)
		if invoke != nil {
			if err := invoke((*b)[:n], r.Header.Get("Inference-Header-Content-Length")); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			t.Mark(phasetrace.Invoke)
		}
		h := w.Header()
		h.Set("Content-Type", ctype)
		if hdrLen != "" {
			h.Set("Inference-Header-Content-Length", hdrLen)
		}
		h.Set("Content-Length", size)
		w.WriteHeader(http.StatusOK)
		w.Write(resp)
		t.Mark(phasetrace.Write)
	})}
	return srv.Serve(ln)
}
