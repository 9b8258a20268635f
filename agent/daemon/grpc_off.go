//go:build nogrpc

package daemon

import (
	"errors"
	"log/slog"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/config"
)

// newGRPC refuses: this binary was built without gRPC, which saves about
// 2.4 MiB of binary and 2 MB of resident memory.
func newGRPC(config.Config, *api.Server, *slog.Logger) (listener, error) {
	return nil, errors.New("daemon: grpc is on in the config, but this agent was built without gRPC (-tags nogrpc)")
}
