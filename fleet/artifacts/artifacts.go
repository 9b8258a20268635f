// Package artifacts serves model artifacts to devices in chunks over MQTT:
// a device asks for a window of chunks on outpost/v1/<fleet>/artifacts/req,
// and the server reads them from the artifact's blob file and publishes them
// on the device's chunk topic, paced to a byte rate, from a fixed number of
// workers with one chunk buffer each, so memory stays bounded whatever the
// number of devices downloading.
package artifacts

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// Publisher publishes one chunk message, at protocol.ChunkQoS (0): the
// device asks again for what it misses. Publish returns once the message is
// on its way to the broker (or ctx ended). It must be safe for concurrent
// use.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Artifact is what the server needs to know about one artifact.
type Artifact struct {
	Path      string // the blob file
	Length    int64
	ChunkSize int
}

// Catalog finds artifacts by their SHA-256 (lowercase hex). A missing
// artifact returns an error; the device gets an error chunk.
type Catalog interface {
	Artifact(sha string) (Artifact, error)
}

// Options for New. Fleet, Publisher and Catalog are required.
type Options struct {
	Fleet     string
	Publisher Publisher
	Catalog   Catalog
	// BytesPerSecond paces all chunk traffic together; 0 means 16 MiB/s.
	BytesPerSecond int64
	// Workers publish chunks concurrently; 0 means 4.
	Workers int
	// MaxPending bounds the devices with a request waiting; further
	// requests are dropped (the device asks again). 0 means 4096.
	MaxPending int
	Logger     *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Stats are the server's counters.
type Stats struct {
	Requests, Dropped, Chunks, Bytes, Errors uint64
}

// Server serves chunk requests. Handle may be called from any goroutine.
type Server struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex // guards pending, order, next
	// pending holds the newest request per device; order is the FIFO of
	// devices waiting. A newer request from a device replaces its older one
	// (it has moved on, or restarted).
	pending map[string]protocol.ChunkRequest
	order   []string
	next    time.Time // pacing: when the next byte may go
	wake    chan struct{}

	requests, dropped, chunks, bytes, errs atomic.Uint64
}

// New checks the options.
func New(opts Options) (*Server, error) {
	if opts.Publisher == nil || opts.Catalog == nil {
		return nil, errors.New("artifacts: Publisher and Catalog are required")
	}
	if _, err := protocol.ArtifactsReqTopic(opts.Fleet); err != nil {
		return nil, fmt.Errorf("artifacts: %w", err)
	}
	if opts.BytesPerSecond <= 0 {
		opts.BytesPerSecond = 16 << 20
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Server{opts: opts, log: opts.Logger, pending: map[string]protocol.ChunkRequest{}, wake: make(chan struct{}, 1)}, nil
}

// Handle parses and queues a request from the artifacts/req topic.
func (s *Server) Handle(payload []byte) error {
	req, err := protocol.ParseChunkRequest(payload)
	if err != nil {
		s.errs.Add(1)
		return fmt.Errorf("artifacts: %w", err)
	}
	s.requests.Add(1)
	s.mu.Lock()
	if _, ok := s.pending[req.Device]; !ok {
		if len(s.order) >= s.opts.MaxPending {
			s.mu.Unlock()
			s.dropped.Add(1)
			return nil
		}
		s.order = append(s.order, req.Device)
	}
	s.pending[req.Device] = *req
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Requests: s.requests.Load(), Dropped: s.dropped.Load(), Chunks: s.chunks.Load(), Bytes: s.bytes.Load(), Errors: s.errs.Load()}
}

// Run serves requests until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.work(ctx)
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func (s *Server) take() (protocol.ChunkRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) == 0 {
		return protocol.ChunkRequest{}, false
	}
	dev := s.order[0]
	s.order = s.order[1:]
	req := s.pending[dev]
	delete(s.pending, dev)
	if len(s.order) > 0 {
		select { // let another worker in
		case s.wake <- struct{}{}:
		default:
		}
	}
	return req, true
}

func (s *Server) work(ctx context.Context) {
	var buf []byte
	for {
		req, ok := s.take()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		if err := s.serve(ctx, req, &buf); err != nil && ctx.Err() == nil {
			s.errs.Add(1)
			s.log.Warn("chunk request", "device", req.Device, "artifact", req.SHA256[:12], "first", req.First, "err", err)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// serve publishes the requested window; buf is the worker's reusable read
// buffer.
func (s *Server) serve(ctx context.Context, req protocol.ChunkRequest, buf *[]byte) error {
	topics, err := protocol.DeviceTopics(s.opts.Fleet, req.Device)
	if err != nil {
		return err
	}
	var c protocol.Chunk
	if _, err := hex.Decode(c.Artifact[:], []byte(req.SHA256)); err != nil {
		return err
	}
	refuse := func(why string) error {
		c.Kind, c.Index, c.Data = protocol.ChunkError, req.First, []byte(why)
		b, err := protocol.AppendChunk(nil, &c)
		if err != nil {
			return err
		}
		return s.opts.Publisher.Publish(ctx, topics.Chunk, b)
	}
	a, err := s.opts.Catalog.Artifact(req.SHA256)
	if err != nil {
		return refuse("unknown artifact")
	}
	c.Total = protocol.ChunkCount(a.Length, a.ChunkSize)
	if req.First >= c.Total {
		return refuse(fmt.Sprintf("chunk %d is beyond the last (%d)", req.First, c.Total-1))
	}
	f, err := os.Open(a.Path)
	if err != nil {
		_ = refuse("artifact unavailable")
		return err
	}
	defer f.Close()
	if cap(*buf) < a.ChunkSize {
		*buf = make([]byte, a.ChunkSize)
	}
	last := min(req.First+int64(req.Count), c.Total)
	for i := req.First; i < last; i++ {
		off := i * int64(a.ChunkSize)
		n := min(int64(a.ChunkSize), a.Length-off)
		data := (*buf)[:n]
		if _, err := f.ReadAt(data, off); err != nil && !(errors.Is(err, io.EOF) && len(data) == int(n)) {
			return fmt.Errorf("artifacts: read chunk %d: %w", i, err)
		}
		c.Kind, c.Index, c.Data = protocol.ChunkData, i, data
		// A fresh message buffer each time: the MQTT client may hold on to a
		// payload after Publish returned (to send it again on reconnection).
		b, err := protocol.AppendChunk(make([]byte, 0, n+128), &c)
		if err != nil {
			return err
		}
		if err := s.pace(ctx, len(b)); err != nil {
			return err
		}
		if err := s.opts.Publisher.Publish(ctx, topics.Chunk, b); err != nil {
			return fmt.Errorf("artifacts: publish chunk %d: %w", i, err)
		}
		s.chunks.Add(1)
		s.bytes.Add(uint64(n))
	}
	return nil
}

// pace waits until n more bytes fit the byte rate shared by all workers.
func (s *Server) pace(ctx context.Context, n int) error {
	s.mu.Lock()
	now := s.opts.Now()
	if s.next.Before(now) {
		s.next = now
	}
	at := s.next
	s.next = s.next.Add(time.Duration(float64(n) / float64(s.opts.BytesPerSecond) * float64(time.Second)))
	s.mu.Unlock()
	if d := at.Sub(now); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
