//go:build !linux

package main

import (
	"errors"
	"log/slog"
	"os"
)

// stderrRoute routes the TFLite library's output on Linux only.
type stderrRoute struct{ Orig *os.File }

func routeStderr() (*stderrRoute, error) { return nil, errors.New("not on this system") }

func (s *stderrRoute) Forward(func(slog.Level, string)) {}
func (s *stderrRoute) Close()                           {}
