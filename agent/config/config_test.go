package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAndDefaults(t *testing.T) {
	c, err := Parse([]byte(`
listen: unix:/run/outpost/agent.sock
data_dir: /var/lib/outpost
workers: 2
delegates:
  - kind: external
    path: /usr/lib/libedgetpu.so.1
    options: {device: usb}
  - kind: xnnpack
models:
  - name: face
    path: /models/face.tflite
api:
  request_timeout: 5s
  rate_limit: 50
`))
	require.NoError(t, err)
	c = c.WithDefaults()
	require.NoError(t, c.Validate())
	assert.Equal(t, "unix:/run/outpost/agent.sock", c.Listen)
	assert.Equal(t, 2, c.Workers)
	assert.Equal(t, 1, c.Threads)
	assert.Equal(t, int64(1), c.Models[0].Version)
	assert.Equal(t, "usb", c.Delegates[0].Options["device"])
	assert.Equal(t, 5*time.Second, c.API.RequestTimeout)
	assert.Equal(t, int64(DefaultMaxBodyBytes), c.API.MaxBodyBytes)
	assert.Equal(t, 50.0, c.API.RateLimit)
}

func TestFleetDefaults(t *testing.T) {
	c, err := Parse([]byte(`
data_dir: /var/lib/outpost
fleet:
  broker: tcp://127.0.0.1:1883
  name: acme
  labels: {site: north}
telemetry:
  sample_rate: 0.5
`))
	require.NoError(t, err)
	c = c.WithDefaults()
	require.NoError(t, c.Validate())
	host, _ := os.Hostname()
	assert.Equal(t, host, c.Fleet.Device, "device id defaults to the host name")
	assert.Equal(t, "/var/lib/outpost/root.json", c.Fleet.Root)
	assert.Equal(t, time.Minute, c.Fleet.Probation)
	assert.Equal(t, int64(DefaultProbationMinRequests), c.Fleet.ProbationMinRequests)
	assert.Equal(t, DefaultProbationMax, c.Fleet.ProbationMax)
	assert.Equal(t, "north", c.Fleet.Labels["site"])
	assert.Equal(t, 0.5, c.Telemetry.SampleRate)
}

// TestFleetBrokers: a list of brokers alone links the agent to a fleet, as
// the single broker does.
func TestFleetBrokers(t *testing.T) {
	c, err := Parse([]byte(`
data_dir: /var/lib/outpost
fleet:
  brokers: [tcp://10.0.0.1:1883, ssl://10.0.0.2:8883]
  name: acme
`))
	require.NoError(t, err)
	c = c.WithDefaults()
	require.NoError(t, c.Validate())
	assert.True(t, c.Fleet.Linked())
	assert.Equal(t, []string{"tcp://10.0.0.1:1883", "ssl://10.0.0.2:8883"}, c.Fleet.Brokers)
	host, _ := os.Hostname()
	assert.Equal(t, host, c.Fleet.Device, "device id defaults to the host name")
	assert.False(t, Config{}.Fleet.Linked())
}

func TestEmptyFile(t *testing.T) {
	c, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, DefaultListen, c.WithDefaults().Listen)
}

func TestRejects(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"listne: x", `agent.yaml:1: unknown key "listne"`},
		{"models: [{path: a.tflite}]", "name is required"},
		{"models: [{name: 'a/b', path: x}]", "may use only"},
		{"models: [{name: a, path: x}, {name: a, path: y}]", "used twice"},
		{"models: [{name: a}]", "path is required"},
		{"models: [{name: a, path: x, version: -2}]", "positive integer"},
		{"delegates: [{kind: gpu}]", "unknown kind"},
		{"delegates: [{kind: external}]", "needs a path"},
		{"workers: -1", "must not be negative"},
		{"threads: [1]", "agent.yaml:1: a list is not an integer"},
		{"listen: x\nthread: 3", `agent.yaml:2: unknown key "thread"`},
		{"api: {request_timeout: soon}", `agent.yaml:1: "soon" is not a duration`},
		{"data_dir: /d\nfleet: {broker: 'mqtt://x:1883', name: f}", "want tcp://host:port"},
		{"data_dir: /d\nfleet: {broker: 'tcp://x:1883'}", "fleet.name is required"},
		{"fleet: {broker: 'tcp://x:1883', name: f}", "data_dir is required"},
		{"data_dir: /d\nfleet: {brokers: ['tcp://x:1883', 'x:1884'], name: f}", "fleet.brokers[1]"},
		{"data_dir: /d\nfleet: {brokers: ['tcp://x:1883']}", "fleet.name is required"},
		{"fleet: {cert_file: c.pem}", "go together"},
		{"fleet: {labels: {'a b': x}}", "fleet.labels"},
		{"fleet: {labels: {site: 'a,b'}}", "fleet.labels"},
		{"telemetry: {max_bytes: -1}", "must not be negative"},
	} {
		c, err := Parse([]byte(tc.yaml))
		if err == nil {
			err = c.WithDefaults().Validate()
		}
		if assert.Error(t, err, tc.yaml) {
			assert.Contains(t, err.Error(), tc.want, tc.yaml)
		}
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(p, []byte("listen: 127.0.0.1:9999\n"), 0o644))
	c, err := Load(p)
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:9999", c.Listen)
	_, err = Load(p + ".missing")
	assert.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, os.WriteFile(p, []byte("listen: [\n"), 0o644))
	_, err = Load(p)
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "config: "+p+":1: "), err.Error())
	require.NoError(t, os.WriteFile(p, []byte("listen: x\nthreads: 2\nthread: 3\n"), 0o644))
	_, err = Load(p)
	assert.EqualError(t, err, "config: "+p+`:3: unknown key "thread"`)
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:1\nmodels: [{name: a, path: b}]"))
	f.Add([]byte("delegates: [{kind: external, path: /x.so, options: {a: b}}]"))
	f.Add([]byte("api: {request_timeout: 3s}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		_ = c.WithDefaults().Validate()
	})
}

// TestProbationSettings: the probation keys parse, a long least time
// raises the default maximum with it, and a maximum shorter than the least
// time is refused.
func TestProbationSettings(t *testing.T) {
	for _, tc := range []struct {
		yaml    string
		minReq  int64
		most    time.Duration
		wantErr string
	}{
		{"fleet: {probation: 30s, probation_min_requests: 100, probation_max: 1h}", 100, time.Hour, ""},
		{"fleet: {probation: 30m}", DefaultProbationMinRequests, 30 * time.Minute, ""},
		{"fleet: {probation: 10m, probation_max: 5m}", 0, 0, "shorter than fleet.probation"},
		{"fleet: {probation_min_requests: -1}", 0, 0, "must not be negative"},
	} {
		c, err := Parse([]byte(tc.yaml))
		require.NoError(t, err, tc.yaml)
		c = c.WithDefaults()
		err = c.Validate()
		if tc.wantErr != "" {
			require.ErrorContains(t, err, tc.wantErr, tc.yaml)
			continue
		}
		require.NoError(t, err, tc.yaml)
		assert.Equal(t, tc.minReq, c.Fleet.ProbationMinRequests, tc.yaml)
		assert.Equal(t, tc.most, c.Fleet.ProbationMax, tc.yaml)
	}
}

// The gRPC listener is off unless asked for, on loopback when enabled
// without an address, and where it is told otherwise.
func TestGRPC(t *testing.T) {
	for _, tc := range []struct {
		yaml   string
		on     bool
		listen string
	}{
		{``, false, ""},
		{"grpc: {enabled: false}", false, ""},
		{"grpc: {enabled: true}", true, DefaultGRPCListen},
		{"grpc: {listen: '0.0.0.0:9000'}", true, "0.0.0.0:9000"},
		{"grpc: {enabled: true, listen: '127.0.0.1:0', max_concurrent_streams: 8}", true, "127.0.0.1:0"},
	} {
		c, err := Parse([]byte(tc.yaml))
		require.NoError(t, err, tc.yaml)
		c = c.WithDefaults()
		require.NoError(t, c.Validate(), tc.yaml)
		assert.Equal(t, tc.on, c.GRPC.On(), "%q: on", tc.yaml)
		assert.Equal(t, tc.listen, c.GRPC.Listen, "%q: listen", tc.yaml)
	}
	_, err := Parse([]byte("grpc: {port: 9000}"))
	assert.Error(t, err, "an unknown key under grpc")
}
