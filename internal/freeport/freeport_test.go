package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPort: ports below the ephemeral range, each bindable when returned,
// never the same twice.
func TestPort(t *testing.T) {
	seen := map[int]bool{}
	top := ephemeralStart()
	for range 200 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if p < lowest || p >= top || seen[p] {
			t.Fatalf("port %d: out of [%d, %d) or returned twice", p, lowest, top)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
}
