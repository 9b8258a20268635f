//go:build !race

package daemon

// raceEnabled is whether the race detector is on: its sync.Pool drops
// items at random, so allocation counts mean nothing then.
const raceEnabled = false
