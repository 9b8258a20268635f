//go:build !linux

package telemetry

import (
	"math"

	"github.com/outpost-edge/outpost/protocol"
)

// healthReader reports nothing but an unknown temperature off Linux: the
// agent targets Linux gateways.
type healthReader struct{}

func newHealthReader(string) *healthReader { return &healthReader{} }

func (*healthReader) read() protocol.Health { return protocol.Health{TemperatureC: math.NaN()} }
