//go:build !nogrpc

package daemon

import (
	"log/slog"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/grpcapi"
	"github.com/outpost-edge/outpost/agent/version"
)

// newGRPC makes the KServe v2 gRPC listener over the HTTP API's inference
// path. Builds with -tags nogrpc leave gRPC out (grpc_off.go).
func newGRPC(cfg config.Config, a *api.Server, log *slog.Logger) (listener, error) {
	return grpcapi.New(grpcapi.Options{
		Listen:               cfg.GRPC.Listen,
		API:                  a,
		MaxMessageBytes:      int(min(cfg.API.MaxBodyBytes, 1<<31-1)),
		MaxConcurrentStreams: cfg.GRPC.MaxConcurrentStreams,
		DrainTimeout:         cfg.API.DrainTimeout,
		Version:              version.Version,
		Logger:               log,
	})
}
