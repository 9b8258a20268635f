// Package freeport picks loopback TCP ports for servers that tests start
// later, often in another process (a broker, a controller, PostgreSQL),
// which must be given their address before they listen.
//
// The obvious way, binding 127.0.0.1:0 and closing, hands out a port from
// the kernel's ephemeral range, the range every other bind to port 0 and
// every outgoing connection draws from: under a full test run the same
// port came back for a second server of one test, and another process can
// take it before the server binds. Ports here are drawn at random below
// that range, checked free, and never handed out twice by one process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

const lowest = 10000 // above the well-known and most registered services

var given struct {
	sync.Mutex
	ports map[int]bool
}

// Port returns a loopback TCP port no socket is bound to now, below the
// ephemeral range and not returned before by this process.
func Port() (int, error) {
	top := ephemeralStart()
	given.Lock()
	defer given.Unlock()
	if given.ports == nil {
		given.ports = map[int]bool{}
	}
	for range 1000 {
		p := lowest + rand.IntN(top-lowest)
		if given.ports[p] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue // in use
		}
		l.Close()
		given.ports[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("freeport: no free port in [%d, %d) after 1000 tries", lowest, top)
}

// Addr is Port as "127.0.0.1:PORT".
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// ephemeralStart is the first port of the kernel's ephemeral range
// (Linux: /proc/sys/net/ipv4/ip_local_port_range), 32768 when unknown or
// too low to leave a range below it.
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n < lowest+1000 {
		return 32768
	}
	return n
}
