package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// listen opens a unixgram socket like systemd's notify socket and points
// NOTIFY_SOCKET at it.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

func recv(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no datagram received: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	for _, sock := range []struct{ name, addr string }{
		{"path", filepath.Join(t.TempDir(), "notify.sock")},
		{"abstract", "@outpost-sdnotify-test-" + strconv.Itoa(os.Getpid())},
	} {
		t.Run(sock.name, func(t *testing.T) {
			conn := listen(t, sock.addr)
			for _, tc := range []struct {
				send func() error
				want string
			}{
				{Ready, "READY=1"},
				{Watchdog, "WATCHDOG=1"},
				{func() error { return Status("serving face") }, "STATUS=serving face"},
				{Stopping, "STOPPING=1"},
			} {
				if err := tc.send(); err != nil {
					t.Fatalf("send %s: %v", tc.want, err)
				}
				if got := recv(t, conn); got != tc.want {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	for _, f := range []func() error{Ready, Stopping, Watchdog} {
		if err := f(); err != nil {
			t.Errorf("got %v, want nil without NOTIFY_SOCKET", err)
		}
	}
}

func TestSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	if err := Ready(); err == nil {
		t.Error("got nil, want an error for a socket nobody listens on")
	}
	t.Setenv("NOTIFY_SOCKET", "relative.sock")
	if err := Ready(); err == nil {
		t.Error("got nil, want an error for a relative socket name")
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name, usec, pid string
		want            time.Duration
		bad             bool
	}{
		{"unset", "", "", 0, false},
		{"no pid", "30000000", "", 30 * time.Second, false},
		{"our pid", "2500000", self, 2500 * time.Millisecond, false},
		{"other pid", "30000000", "1", 0, false},
		{"junk usec", "soon", "", 0, true},
		{"zero usec", "0", "", 0, true},
		{"junk pid", "30000000", "me", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", tc.usec)
			t.Setenv("WATCHDOG_PID", tc.pid)
			got, err := WatchdogInterval()
			if got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if gotBad := errors.Is(err, ErrBadWatchdog); gotBad != tc.bad {
				t.Errorf("got error %v, want bad=%v", err, tc.bad)
			}
		})
	}
}
