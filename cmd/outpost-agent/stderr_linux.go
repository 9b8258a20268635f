package main

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
)

// stderrRoute points the process's standard error (file descriptor 2) at a
// pipe, so what the TFLite library prints there ("INFO: Created TensorFlow
// Lite XNNPACK delegate for CPU.") goes through our logger or away instead
// of between our log lines. Lines that are not the library's go to the
// original standard error unchanged, and so do fatal errors
// (debug.SetCrashOutput): a crash is never lost in the pipe.
type stderrRoute struct {
	// Orig is the original standard error; loggers write there.
	Orig *os.File
	r, w *os.File
	wg   sync.WaitGroup
}

// routeStderr starts routing; nil (and an error) when it cannot, and then
// nothing changed.
func routeStderr() (*stderrRoute, error) {
	fd, err := syscall.Dup(2)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	orig := os.NewFile(uintptr(fd), "/dev/stderr")
	r, w, err := os.Pipe()
	if err != nil {
		orig.Close()
		return nil, err
	}
	if err := debug.SetCrashOutput(orig, debug.CrashOptions{}); err != nil {
		orig.Close()
		r.Close()
		w.Close()
		return nil, err
	}
	if err := syscall.Dup3(int(w.Fd()), 2, 0); err != nil {
		debug.SetCrashOutput(nil, debug.CrashOptions{})
		orig.Close()
		r.Close()
		w.Close()
		return nil, err
	}
	return &stderrRoute{Orig: orig, r: r, w: w}, nil
}

// Forward hands each line of the library's to tflite with its level
// (INFO, WARNING, ERROR) and copies other lines to Orig, until Close. Call
// it once.
func (s *stderrRoute) Forward(tflite func(level slog.Level, msg string)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sc := bufio.NewScanner(s.r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if level, msg, ok := tfliteLine(line); ok {
				tflite(level, msg)
				continue
			}
			io.WriteString(s.Orig, line+"\n")
		}
		io.Copy(s.Orig, s.r) // after a line too long for the scanner
	}()
}

// tfliteLine recognises a line of the TFLite library's logger.
func tfliteLine(line string) (slog.Level, string, bool) {
	for prefix, level := range map[string]slog.Level{"INFO: ": slog.LevelDebug, "WARNING: ": slog.LevelWarn, "ERROR: ": slog.LevelError} {
		if msg, ok := strings.CutPrefix(line, prefix); ok {
			return level, msg, true
		}
	}
	return 0, "", false
}

// Close points file descriptor 2 back at the original standard error and
// waits for the lines in the pipe to be forwarded.
func (s *stderrRoute) Close() {
	syscall.Dup3(int(s.Orig.Fd()), 2, 0)
	debug.SetCrashOutput(nil, debug.CrashOptions{})
	s.w.Close() // with fd 2 back, the pipe has no writer left
	s.wg.Wait()
	s.r.Close()
}
