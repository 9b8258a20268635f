// Package grpcapi serves the KServe v2 / Open Inference Protocol over gRPC
// (inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady,
// ServerMetadata, ModelMetadata, ModelInfer) on its own listener, beside the
// HTTP API. It is a transport only: every inference runs through the HTTP
// API's shared path (agent/api's Call), so both protocols have the same
// input checks and messages, request timeout, bearer token, rate limit,
// metrics (protocol="grpc") and telemetry.
//
// Status codes follow the HTTP API's: bad input is INVALID_ARGUMENT, an
// unknown model or version NOT_FOUND, a full queue UNAVAILABLE (HTTP's 503),
// a message over the size limit or a spent rate limit RESOURCE_EXHAUSTED
// (413, 429), a missing or wrong token UNAUTHENTICATED, the request timeout
// DEADLINE_EXCEEDED. docs/API.md describes it for clients.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/catalog"
	pb "github.com/outpost-edge/outpost/agent/grpcapi/inferencepb"
	"github.com/outpost-edge/outpost/agent/routing"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// DefaultListen is where the listener binds when on without an address.
const DefaultListen = "127.0.0.1:8481"

// Inference is the agent's inference path, shared with the HTTP API;
// *api.Server implements it. Safe for concurrent use.
type Inference interface {
	// StartCall begins one inference of protocol for model at version
	// (0: current); the Call must be finished.
	StartCall(protocol, model string, version int64) *api.Call
	// Lookup returns a served model's entry; errors wrap
	// catalog.ErrModelNotFound or ErrVersionNotFound.
	Lookup(name string, version int64) (catalog.Entry, error)
	// Ready reports whether the agent's models are loaded.
	Ready() bool
	// Authorized reports whether an "authorization" value carries the
	// token (always true without one).
	Authorized(authorization string) bool
	// Allow takes one request from a client address's rate limit; when
	// spent it says how long to wait.
	Allow(client string) (wait time.Duration, ok bool)
}

// Options configure a Server. Zero values get the documented defaults.
type Options struct {
	// Listen is host:port; default DefaultListen.
	Listen string
	// API is the shared inference path; required.
	API Inference
	// MaxMessageBytes bounds a request message (RESOURCE_EXHAUSTED
	// beyond); default 64 MiB, the HTTP API's body limit.
	MaxMessageBytes int
	// MaxConcurrentStreams bounds the calls in flight on one connection;
	// default 256. Beyond the models' queues a call gets UNAVAILABLE.
	MaxConcurrentStreams uint32
	// DrainTimeout bounds the wait for calls in flight at shutdown;
	// default 10s.
	DrainTimeout time.Duration
	// Version is reported by ServerMetadata.
	Version string
	Logger  *slog.Logger
}

// Server is the gRPC listener.
type Server struct {
	pb.UnimplementedGRPCInferenceServiceServer

	opts     Options
	log      *slog.Logger
	ln       net.Listener
	srv      *grpc.Server
	draining atomic.Bool
}

// New binds the listener (so a port in use fails here) and prepares the
// server; Run serves.
func New(opts Options) (*Server, error) {
	if opts.API == nil {
		return nil, errors.New("grpcapi: Options.API is required")
	}
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 64 << 20
	}
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = 256
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("grpcapi: listen %s: %w", opts.Listen, err)
	}
	s := &Server{opts: opts, log: log, ln: ln}
	s.srv = grpc.NewServer(
		grpc.MaxRecvMsgSize(opts.MaxMessageBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(opts.MaxConcurrentStreams),
		grpc.UnaryInterceptor(s.guard),
	)
	pb.RegisterGRPCInferenceServiceServer(s.srv, s)
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Run serves until ctx is cancelled, then stops taking calls, lets those in
// flight finish within DrainTimeout (then cuts them), and returns nil.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpcapi: %w", err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	stopped := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(stopped)
	}()
	var err error
	select {
	case <-stopped:
	case <-time.After(s.opts.DrainTimeout):
		s.srv.Stop()
		<-stopped
		err = errors.New("grpcapi: drain: calls still in flight after the drain timeout were cut")
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, grpc.ErrServerStopped) {
		return fmt.Errorf("grpcapi: %w", serr)
	}
	return err
}

// guard applies the HTTP API's rate limit and token to every call but the
// health probes (ServerLive, ServerReady), as HTTP leaves /v2/health/* open.
func (s *Server) guard(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	switch info.FullMethod {
	case pb.GRPCInferenceService_ServerLive_FullMethodName, pb.GRPCInferenceService_ServerReady_FullMethodName:
		return handler(ctx, req)
	}
	if p, ok := peer.FromContext(ctx); ok {
		client := p.Addr.String()
		if host, _, err := net.SplitHostPort(client); err == nil {
			client = host
		}
		if wait, ok := s.opts.API.Allow(client); !ok {
			return nil, status.Errorf(codes.ResourceExhausted, "rate limit exceeded for this client; retry in %ds", max(1, int(math.Ceil(wait.Seconds()))))
		}
	}
	var auth string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			auth = v[0]
		}
	}
	if !s.opts.API.Authorized(auth) {
		return nil, status.Error(codes.Unauthenticated, `missing or wrong bearer token (metadata "authorization: Bearer <token>")`)
	}
	return handler(ctx, req)
}

// ServerLive implements GRPCInferenceService.
func (s *Server) ServerLive(context.Context, *pb.ServerLiveRequest) (*pb.ServerLiveResponse, error) {
	return &pb.ServerLiveResponse{Live: true}, nil
}

// ServerReady implements GRPCInferenceService: ready once the agent's models
// are loaded and until it drains.
func (s *Server) ServerReady(context.Context, *pb.ServerReadyRequest) (*pb.ServerReadyResponse, error) {
	return &pb.ServerReadyResponse{Ready: s.opts.API.Ready() && !s.draining.Load()}, nil
}

// ServerMetadata implements GRPCInferenceService.
func (s *Server) ServerMetadata(context.Context, *pb.ServerMetadataRequest) (*pb.ServerMetadataResponse, error) {
	return &pb.ServerMetadataResponse{Name: "outpost", Version: s.opts.Version, Extensions: []string{}}, nil
}

// ModelReady implements GRPCInferenceService; an unknown model or version
// is NOT_FOUND, as over HTTP.
func (s *Server) ModelReady(_ context.Context, req *pb.ModelReadyRequest) (*pb.ModelReadyResponse, error) {
	if _, err := s.lookup(req.GetName(), req.GetVersion()); err != nil {
		return nil, err
	}
	return &pb.ModelReadyResponse{Ready: true}, nil
}

// ModelMetadata implements GRPCInferenceService.
func (s *Server) ModelMetadata(_ context.Context, req *pb.ModelMetadataRequest) (*pb.ModelMetadataResponse, error) {
	e, err := s.lookup(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, err
	}
	return &pb.ModelMetadataResponse{
		Name:     e.Name,
		Versions: []string{strconv.FormatInt(e.Version, 10)},
		Platform: api.Platform(e),
		Inputs:   tensorMetadata(e.Inputs),
		Outputs:  tensorMetadata(e.Outputs),
	}, nil
}

func tensorMetadata(ts []tensor.Info) []*pb.ModelMetadataResponse_TensorMetadata {
	out := make([]*pb.ModelMetadataResponse_TensorMetadata, len(ts))
	for i, t := range ts {
		out[i] = &pb.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: string(t.DataType), Shape: int64s(t.Shape)}
	}
	return out
}

func int64s(shape []int) []int64 {
	out := make([]int64, len(shape))
	for i, d := range shape {
		out[i] = int64(d)
	}
	return out
}

func (s *Server) lookup(name, version string) (catalog.Entry, error) {
	v, err := parseVersion(version)
	if err != nil {
		return catalog.Entry{}, err
	}
	e, err := s.opts.API.Lookup(name, v)
	if err != nil {
		return catalog.Entry{}, status.Error(codeFor(api.StatusFor(err), err), err.Error())
	}
	return e, nil
}

// parseVersion takes a model version: empty for the current one, else a
// positive integer.
func parseVersion(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, status.Errorf(codes.InvalidArgument, "model version %q is not a positive integer", v)
	}
	return n, nil
}

// ModelInfer implements GRPCInferenceService. Inputs come typed (contents)
// or raw (raw_input_contents); outputs always go back raw, in the model's
// order, stamped with the model's name, version and digest (the response
// parameter "model_digest").
func (s *Server) ModelInfer(ctx context.Context, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	version, err := parseVersion(req.GetModelVersion())
	if err != nil {
		return nil, err
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(routing.MetadataKey); len(v) > 0 {
			ctx = routing.WithKey(ctx, v[0])
		}
	}
	call := s.opts.API.StartCall("grpc", req.GetModelName(), version)
	resp, err := infer(ctx, call, req)
	code := call.Finish(err)
	if err != nil {
		return nil, status.Error(codeFor(code, err), err.Error())
	}
	return resp, nil
}

// infer runs one call and builds its response; the output data is copied
// out of the call's buffers, which Finish takes back.
func infer(ctx context.Context, call *api.Call, req *pb.ModelInferRequest) (*pb.ModelInferResponse, error) {
	ins, err := decodeInputs(req)
	if err != nil {
		return nil, err
	}
	wanted := req.GetOutputs()
	e, outs, err := call.Infer(ctx, ins, func(e catalog.Entry) error {
		for _, o := range wanted {
			if !hasOutput(e, o.GetName()) {
				return bad.Errorf(nil, "unknown output %q; model %s has %s", o.GetName(), e.Name, outputNames(e))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp := &pb.ModelInferResponse{
		ModelName:    e.Name,
		ModelVersion: strconv.FormatInt(e.Version, 10),
		Id:           req.GetId(),
		Parameters: map[string]*pb.InferParameter{
			"model_digest": {ParameterChoice: &pb.InferParameter_StringParam{StringParam: e.Digest}},
		},
	}
	total := 0
	for _, o := range outs {
		if want(wanted, o.Name) {
			total += len(o.Data)
		}
	}
	buf := make([]byte, 0, total)
	for _, o := range outs {
		if !want(wanted, o.Name) {
			continue
		}
		start := len(buf)
		buf = append(buf, o.Data...)
		resp.Outputs = append(resp.Outputs, &pb.ModelInferResponse_InferOutputTensor{
			Name: o.Name, Datatype: string(o.DataType), Shape: int64s(o.Shape),
		})
		resp.RawOutputContents = append(resp.RawOutputContents, buf[start:len(buf):len(buf)])
	}
	return resp, nil
}

func want(wanted []*pb.ModelInferRequest_InferRequestedOutputTensor, name string) bool {
	if len(wanted) == 0 {
		return true
	}
	for _, w := range wanted {
		if w.GetName() == name {
			return true
		}
	}
	return false
}

func hasOutput(e catalog.Entry, name string) bool {
	for _, o := range e.Outputs {
		if o.Name == name {
			return true
		}
	}
	return false
}

func outputNames(e catalog.Entry) string {
	names := make([]string, len(e.Outputs))
	for i, o := range e.Outputs {
		names[i] = strconv.Quote(o.Name)
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// codeFor maps the HTTP status an outcome has over HTTP (api.StatusFor) to
// its gRPC code; deadlines and cancellations keep their own codes.
func codeFor(httpStatus int, err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	switch httpStatus {
	case http.StatusOK:
		return codes.OK
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	case http.StatusNotImplemented:
		return codes.Unimplemented
	default:
		return codes.Internal
	}
}
