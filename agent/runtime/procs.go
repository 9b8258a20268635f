package runtime

import (
	"os"
	goruntime "runtime"
)

// cpus is the number of CPUs this process may use: GOMAXPROCS as the
// process started, which follows its CPU affinity and its cgroup's CPU
// limit. Pools default to one interpreter per CPU.
var cpus = goruntime.GOMAXPROCS(0)

// CPUs returns the number of CPUs this process may use (see cpus), whatever
// RaiseProcs did since.
func CPUs() int { return cpus }

// RaiseProcs sets GOMAXPROCS to twice the CPUs, unless the environment sets
// GOMAXPROCS (then it is left as set), and returns the value in effect.
// The agent's binaries call it first thing.
//
// Why: an invoke is a cgo call of a millisecond or more, and its goroutine
// keeps its P (the scheduler's right to run Go code) only while some P is
// idle. With one P per CPU and an interpreter per CPU all in C, there is
// none: the runtime's monitor takes the Ps away from the invoking threads
// and, each time an interpreter is handed to a goroutine that waited for
// it, starts other threads to run it, away from the CPU whose caches hold
// that interpreter. Measured on 2 CPUs with face detection
// (docs/RUNTIMES.md, "GOMAXPROCS"): 4 callers on 2 interpreters got
// 1,435-1,720 items/s with 6-21% of the CPUs idle, where 2 callers got
// 1,818-1,975; with GOMAXPROCS 3 or 4 the 4 callers got 1,535-1,920 with
// 0-3% idle. The interpreters still number one per CPU, so the C work is
// not oversubscribed; the extra Ps only let Go code run beside it.
func RaiseProcs() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return goruntime.GOMAXPROCS(0)
	}
	goruntime.GOMAXPROCS(2 * cpus)
	return 2 * cpus
}
