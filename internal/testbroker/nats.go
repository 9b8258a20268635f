package testbroker

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// natsPath finds nats-server (Debian's nats-server package, installed by
// make setup). Without it the test fails under CI=true and is skipped
// elsewhere.
func natsPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nats-server not installed; make setup installs it")
	}
	t.Skip("nats-server not installed; run make setup (or apt-get install nats-server) to run this test")
	return ""
}

// NATSCluster is a real cluster of nats-server processes with JetStream and
// MQTT enabled, on loopback ports, one process per node so a test can
// SIGKILL one. NATS's MQTT keeps sessions, retained messages and QoS 1
// messages for absent sessions in JetStream streams, replicated over the
// nodes (three copies at most), so a session made on one node lives on when
// that node dies, as long as a majority of nodes is up.
type NATSCluster struct {
	t     testing.TB
	bin   string
	nodes []*natsNode
}

// natsNode is one nats-server process.
type natsNode struct {
	name, conf, mqtt, monitor string
	logs                      *os.File
	mu                        sync.Mutex // guards cmd
	cmd                       *exec.Cmd
	exited                    chan struct{} // closed when cmd has been waited for
}

// NATSConfig is the configuration of node i (named n<i+1>) of a cluster:
// the one the harness runs, documented in docs/SCALE.md. routes are the
// cluster addresses of every node (a node ignores its own).
// monitor is the HTTP monitoring address (/connz, /jsz, /healthz).
func NATSConfig(i int, client, mqttAddr, cluster, monitor, store string, routes []string) string {
	var r []string
	for _, a := range routes {
		r = append(r, "nats-route://"+a)
	}
	host, port, _ := net.SplitHostPort(client)
	chost, cport, _ := net.SplitHostPort(cluster)
	mhost, mport, _ := net.SplitHostPort(mqttAddr)
	return fmt.Sprintf(`server_name: n%d
host: %s
port: %s
http: %s
jetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 1GB
}
cluster {
  name: outpost
  host: %s
  port: %s
  routes: [%s]
}
mqtt {
  host: %s
  port: %s
  # Sessions, retained messages and queued QoS 1 messages: three copies.
  stream_replicas: 3
  # The consumers behind each session's subscriptions too, so a session
  # made on a node that dies keeps its subscriptions on the others.
  consumer_replicas: 3
  # How long a QoS 1 delivery waits for its PUBACK before it is sent again.
  ack_wait: 10s
}
`, i+1, host, port, monitor, store, chost, cport, strings.Join(r, ", "), mhost, mport)
}

// StartNATSCluster starts n nodes (at least 3 for JetStream's quorum to
// survive one lost node) and waits until every node takes and delivers a
// QoS 1 MQTT message. The cluster is killed when the test ends.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	bin := natsPath(t)
	dir := t.TempDir()
	type ports struct{ client, mqtt, cluster, monitor string }
	ps := make([]ports, n)
	var routes []string
	for i := range ps {
		ps[i] = ports{FreeAddr(t), FreeAddr(t), FreeAddr(t), FreeAddr(t)}
		routes = append(routes, ps[i].cluster)
	}
	c := &NATSCluster{t: t, bin: bin}
	for i, p := range ps {
		store := filepath.Join(dir, fmt.Sprintf("n%d", i+1), "jetstream")
		if err := os.MkdirAll(store, 0o700); err != nil {
			t.Fatal(err)
		}
		var others []string
		for j, a := range routes {
			if j != i {
				others = append(others, a)
			}
		}
		conf := filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1))
		if err := os.WriteFile(conf, []byte(NATSConfig(i, p.client, p.mqtt, p.cluster, p.monitor, store, others)), 0o600); err != nil {
			t.Fatal(err)
		}
		logs, err := os.Create(filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("n%d", i+1), conf: conf, mqtt: p.mqtt, monitor: p.monitor, logs: logs})
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.Kill(i)
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				b, _ := os.ReadFile(nd.logs.Name())
				t.Logf("nats-server %s (last 4 KiB of its log):\n%s", nd.name, tail(b, 4096))
			}
		}
		for _, nd := range c.nodes {
			nd.logs.Close()
		}
	})
	for i := range c.nodes {
		c.Start(i)
	}
	for i := range c.nodes {
		c.WaitMQTT(i, 60*time.Second)
	}
	return c
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// URLs are the nodes' MQTT URLs, tcp://host:port, in node order.
func (c *NATSCluster) URLs() []string {
	var u []string
	for i := range c.nodes {
		u = append(u, c.URL(i))
	}
	return u
}

// URL is node i's MQTT URL.
func (c *NATSCluster) URL(i int) string { return "tcp://" + c.nodes[i].mqtt }

// Node returns the index of the node whose MQTT URL is url, or -1.
func (c *NATSCluster) Node(url string) int {
	for i := range c.nodes {
		if c.URL(i) == url {
			return i
		}
	}
	return -1
}

// ClientNode returns the index of the live node an MQTT client with this
// client id is connected to now, from the nodes' monitoring endpoints, or
// -1 when none has it.
func (c *NATSCluster) ClientNode(clientID string) int {
	for i, nd := range c.nodes {
		nd.mu.Lock()
		up := nd.cmd != nil
		nd.mu.Unlock()
		if !up {
			continue
		}
		resp, err := c.monitorGet(i, "/connz?limit=1024")
		if err != nil {
			continue
		}
		var connz struct {
			Conns []struct {
				MQTTClient string `json:"mqtt_client"`
			} `json:"connections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&connz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, cn := range connz.Conns {
			if cn.MQTTClient == clientID {
				return i
			}
		}
	}
	return -1
}

// Monitor returns the body of a monitoring endpoint of node i (path such
// as "/jsz?consumers=true"), or the error, for a failing test's log.
func (c *NATSCluster) Monitor(i int, path string) string {
	resp, err := c.monitorGet(i, path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// MQTTConsumers returns the filter subjects of the JetStream consumers on
// the stream of queued MQTT messages ($MQTT_msgs) that node i holds: one
// per QoS 1 subscription of a persistent session, named after the
// subscription's topic ("$MQTT.msgs.outpost.v1.acme.gw-0.cmd").
func (c *NATSCluster) MQTTConsumers(i int) ([]string, error) {
	resp, err := c.monitorGet(i, "/jsz?accounts=true&streams=true&consumers=true&config=true")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var jsz struct {
		Accounts []struct {
			Streams []struct {
				Name      string `json:"name"`
				Consumers []struct {
					Config struct {
						Filter string `json:"filter_subject"`
					} `json:"config"`
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		return nil, fmt.Errorf("jsz: %w", err)
	}
	var filters []string
	for _, a := range jsz.Accounts {
		for _, st := range a.Streams {
			if st.Name != "$MQTT_msgs" {
				continue
			}
			for _, cn := range st.Consumers {
				filters = append(filters, cn.Config.Filter)
			}
		}
	}
	return filters, nil
}

// monitorGet GETs path from node i's monitoring endpoint.
func (c *NATSCluster) monitorGet(i int, path string) (*http.Response, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	return cl.Get("http://" + c.nodes[i].monitor + path)
}

// Start runs node i (again, after Kill, with its JetStream store kept) and
// waits until its MQTT port accepts connections.
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd != nil {
		return
	}
	cmd := exec.Command(c.bin, "-c", nd.conf)
	cmd.Stdout, cmd.Stderr = nd.logs, nd.logs
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("testbroker: start nats-server %s: %v", nd.name, err)
	}
	nd.cmd, nd.exited = cmd, make(chan struct{})
	exited := nd.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", nd.mqtt, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return
		}
		select {
		case <-exited:
			c.t.Fatalf("testbroker: nats-server %s exited at start (see its log)", nd.name)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("testbroker: nats-server %s did not listen on %s: %v", nd.name, nd.mqtt, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill ends node i as a crash would (SIGKILL) and waits for the process to
// be gone. Killing a dead node does nothing.
func (c *NATSCluster) Kill(i int) {
	nd := c.nodes[i]
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Signal(syscall.SIGKILL)
	<-nd.exited
	nd.cmd = nil
}

// WaitMQTT waits until node i takes a QoS 1 publish and delivers it to a
// subscriber on the same node: JetStream has its quorum and the MQTT streams
// exist. It fails the test after timeout.
func (c *NATSCluster) WaitMQTT(i int, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = roundTrip(c.URL(i), fmt.Sprintf("testbroker-probe-%s-%d", c.nodes[i].name, time.Now().UnixNano())); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("testbroker: nats-server %s: no MQTT round trip within %v: %v", c.nodes[i].name, timeout, last)
}

// roundTrip subscribes and publishes one QoS 1 message on url.
func roundTrip(url, id string) error {
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(2 * time.Second))
	tok := cl.Connect()
	if !tok.WaitTimeout(3 * time.Second) {
		return fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	defer cl.Disconnect(50)
	got := make(chan struct{}, 1)
	topic := "testbroker/probe/" + id
	st := cl.Subscribe(topic, 1, func(mqtt.Client, mqtt.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	})
	if !st.WaitTimeout(3 * time.Second) {
		return fmt.Errorf("subscribe timed out")
	}
	if err := st.Error(); err != nil {
		return err
	}
	pt := cl.Publish(topic, 1, false, []byte("probe"))
	if !pt.WaitTimeout(3 * time.Second) {
		return fmt.Errorf("publish timed out")
	}
	if err := pt.Error(); err != nil {
		return err
	}
	select {
	case <-got:
		return nil
	case <-time.After(3 * time.Second):
		return fmt.Errorf("probe not delivered")
	}
}
