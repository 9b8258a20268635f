//go:build !race

package tensorjson

// raceEnabled is whether the race detector is on: it slows the random
// tests tenfold, so they do a tenth of the work (see scaled).
const raceEnabled = false
