package testbroker

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// mosquittoPath finds the broker binary; Debian installs it in /usr/sbin.
// Without it the test fails under CI=true (make setup installs it) and is
// skipped elsewhere.
func mosquittoPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("mosquitto not installed; make setup installs it")
	}
	t.Skip("mosquitto not installed; run make setup (or apt-get install mosquitto) to run this test")
	return ""
}

// Mosquitto is a real Mosquitto on a free loopback port, killed at test end.
// Stop and Start restart it on the same port with its persistence kept, as a
// broker that goes away and comes back; Kill is a crash.
type Mosquitto struct {
	t    testing.TB
	bin  string
	conf string
	addr string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// ShippedConfig is the Mosquitto configuration Outpost documents for a
// fleet, packaging/mosquitto/outpost.conf; every test Mosquitto runs with it.
func ShippedConfig(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testbroker: go.mod not found above the working directory")
		}
		dir = parent
	}
	b, err := os.ReadFile(filepath.Join(dir, "packaging", "mosquitto", "outpost.conf"))
	if err != nil {
		t.Fatalf("testbroker: %v", err)
	}
	return string(b)
}

// StartMosquitto starts Mosquitto with the shipped configuration (see
// ShippedConfig) and extra config lines appended; a later line overrides an
// earlier one.
func StartMosquitto(t testing.TB, extra string) *Mosquitto {
	t.Helper()
	bin := mosquittoPath(t)
	dir := t.TempDir()
	addr := FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	if os.Geteuid() == 0 {
		// As root, Mosquitto switches to its own user, who cannot write our
		// temporary directory.
		extra = "user root\n" + extra
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	text := fmt.Sprintf("%s\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nlog_dest none\n%s\n", ShippedConfig(t), port, dir, extra)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &Mosquitto{t: t, bin: bin, conf: conf, addr: addr}
	m.Start()
	t.Cleanup(m.Kill)
	return m
}

// URL is tcp://host:port.
func (m *Mosquitto) URL() string { return "tcp://" + m.addr }

// Start runs the broker and waits until it accepts connections.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	cmd := exec.Command(m.bin, "-c", m.conf)
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	m.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto did not come up on %s: %v", m.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the broker cleanly (it saves its sessions).
func (m *Mosquitto) Stop() { m.stop(syscall.SIGTERM) }

// Kill ends the broker as a crash would.
func (m *Mosquitto) Kill() { m.stop(syscall.SIGKILL) }

func (m *Mosquitto) stop(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(sig)
	_ = m.cmd.Wait()
	m.cmd = nil
}
