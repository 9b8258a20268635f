package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	in := Read("v1.2.3")
	if in.Version != "v1.2.3" || in.GoVersion != runtime.Version() || in.Platform != runtime.GOOS+"/"+runtime.GOARCH || in.Commit == "" {
		t.Fatalf("got %+v", in)
	}
	var b strings.Builder
	Info{Version: "v1", Commit: "abc", Modified: true, GoVersion: "go1.26", Platform: "linux/arm64", Tags: "a,b", CGO: true}.Write(&b, "prog")
	want := "prog v1\n  commit:     abc (modified)\n  go:         go1.26 linux/arm64\n  build tags: a b\n  cgo:        on\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}
