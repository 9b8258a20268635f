//go:build race

package controller_test

// raceEnabled is whether the race detector is on: it slows the store's
// SQLite (Go translated from C) about twentyfold, so TestBacklogDrain
// sends a smaller backlog from as many devices.
const raceEnabled = true
