// Package sdnotify tells systemd about the agent's state: READY once it
// serves, STOPPING on shutdown and WATCHDOG keep-alives from the main loop.
//
// It speaks the sd_notify datagram protocol directly (one unixgram datagram
// to $NOTIFY_SOCKET; a name starting with '@' is an abstract socket), so the
// agent needs no libsystemd. Outside systemd, when NOTIFY_SOCKET is unset,
// every call is a no-op returning nil.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// Messages understood by systemd (see sd_notify(3)).
const (
	msgReady    = "READY=1"
	msgStopping = "STOPPING=1"
	msgWatchdog = "WATCHDOG=1"
)

// Ready tells systemd the service is up (Type=notify units wait for it).
// Call it once the listener accepts connections.
func Ready() error { return Notify(msgReady) }

// Stopping tells systemd the service has begun a clean shutdown.
func Stopping() error { return Notify(msgStopping) }

// Watchdog sends one keep-alive. Call it from the main loop at about half
// of WatchdogInterval so a wedged loop is restarted.
func Watchdog() error { return Notify(msgWatchdog) }

// Status sets the free-form status line shown by `systemctl status`.
func Status(s string) error { return Notify("STATUS=" + s) }

// Notify sends state, one or more newline-separated KEY=VALUE assignments,
// to $NOTIFY_SOCKET. It returns nil without sending when NOTIFY_SOCKET is
// unset, and an error when the socket is set but cannot be written.
func Notify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("sdnotify: unsupported NOTIFY_SOCKET %q", name)
	}
	// Go maps a leading '@' to the abstract namespace (a leading NUL byte).
	addr := &net.UnixAddr{Name: name, Net: "unixgram"}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send %q: %w", state, err)
	}
	return nil
}

// ErrBadWatchdog reports a WATCHDOG_USEC or WATCHDOG_PID that does not parse.
var ErrBadWatchdog = errors.New("sdnotify: malformed watchdog environment")

// WatchdogInterval returns the watchdog timeout systemd expects keep-alives
// within (WatchdogSec= of the unit), or 0 when the watchdog is off or meant
// for another process (WATCHDOG_PID names a different pid). Ping at half of
// it. Values that do not parse give 0 and ErrBadWatchdog.
func WatchdogInterval() (time.Duration, error) {
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("%w: WATCHDOG_PID=%q", ErrBadWatchdog, pid)
		}
		if p != os.Getpid() {
			return 0, nil
		}
	}
	n, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%w: WATCHDOG_USEC=%q", ErrBadWatchdog, usec)
	}
	return time.Duration(n) * time.Microsecond, nil
}
