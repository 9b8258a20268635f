// Package buildinfo says what a binary was built from: its release version
// (set at link time), the commit, the Go version and the build tags (read
// from the build information the Go toolchain embeds).
package buildinfo

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is the release of the controller and the tools that do not have
// their own, set with -ldflags "-X
// github.com/outpost-edge/outpost/internal/buildinfo.Version=..."; "dev"
// for local builds. The agent keeps agent/version.Version.
var Version = "dev"

// Commit may be set at link time; when it is not, the VCS revision the Go
// toolchain stamped is used.
var Commit = ""

// Info is one binary's build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"` // "unknown" when neither ldflags nor the toolchain gave one
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"` // GOOS/GOARCH
	Tags      string `json:"tags,omitempty"`
	CGO       bool   `json:"cgo"`
}

// Read returns the build of the running binary with version as its
// release.
func Read(version string) Info {
	in := Info{Version: version, Commit: Commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in.filled()
	}
	if bi.GoVersion != "" {
		in.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if in.Commit == "" {
				in.Commit = s.Value
			}
		case "vcs.modified":
			in.Modified = s.Value == "true"
		case "-tags":
			in.Tags = s.Value
		case "CGO_ENABLED":
			in.CGO = s.Value == "1"
		}
	}
	return in.filled()
}

func (in Info) filled() Info {
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	return in
}

// Write prints the build for people, one fact a line, after the binary's
// name and version.
func (in Info) Write(w io.Writer, name string) {
	commit := in.Commit
	if in.Modified {
		commit += " (modified)"
	}
	tags := in.Tags
	if tags == "" {
		tags = "none"
	}
	cgo := "off"
	if in.CGO {
		cgo = "on"
	}
	fmt.Fprintf(w, "%s %s\n", name, in.Version)
	fmt.Fprintf(w, "  commit:     %s\n", commit)
	fmt.Fprintf(w, "  go:         %s %s\n", in.GoVersion, in.Platform)
	fmt.Fprintf(w, "  build tags: %s\n", strings.ReplaceAll(tags, ",", " "))
	fmt.Fprintf(w, "  cgo:        %s\n", cgo)
}
