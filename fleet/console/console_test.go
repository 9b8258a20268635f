package console_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/fleet/console"
)

// TestHandler serves the assets under the prefix with the CSP and the
// other headers, and nothing outside the assets.
func TestHandler(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("GET "+console.Prefix, console.Handler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tc := range []struct {
		path, ctype string
		status      int
		contains    string
	}{
		{"/console/", "text/html", 200, `<script src="app.js" defer></script>`},
		{"/console/app.js", "text/javascript", 200, "'use strict'"},
		{"/console/style.css", "text/css", 200, "--accent"},
		{"/console/icon.svg", "image/svg+xml", 200, "<svg"},
		{"/console/nothing.js", "", 404, ""},
		{"/console/../console.go", "", 404, ""},
	} {
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s: got %d, want %d", tc.path, resp.StatusCode, tc.status)
			continue
		}
		// (A path with .. never reaches the handler: the mux cleans it.)
		if got := resp.Header.Get("Content-Security-Policy"); got != console.CSP && !strings.Contains(tc.path, "..") {
			t.Errorf("%s: CSP %q, want %q", tc.path, got, console.CSP)
		}
		if tc.status != 200 {
			continue
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
			t.Errorf("%s: Content-Type %q, want %s", tc.path, ct, tc.ctype)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", tc.path, resp.Header)
		}
		if !strings.Contains(string(b), tc.contains) {
			t.Errorf("%s: body lacks %q", tc.path, tc.contains)
		}
	}
	// The policy itself: scripts and styles from the console only, inline
	// forbidden (no 'unsafe-inline' anywhere), no framing.
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(console.CSP, want) {
			t.Errorf("CSP lacks %q", want)
		}
	}
	if strings.Contains(console.CSP, "unsafe") {
		t.Errorf("CSP allows something unsafe: %s", console.CSP)
	}
}

// TestAssetsSelfContained: nothing in the assets is fetched from another
// host, and the page has no inline script, handler or style attribute for
// the CSP to refuse.
func TestAssetsSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import|fetch\(\s*["']https?:`)
	inline := regexp.MustCompile(`(?i)<script(\s[^>]*)?>[^<]|\son[a-z]+\s*=|\sstyle\s*=|javascript:`)
	n := 0
	err := filepath.WalkDir("assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		if m := external.Find(b); m != nil {
			t.Errorf("%s refers to another host: %q", path, m)
		}
		if strings.HasSuffix(path, ".html") {
			if m := inline.Find(b); m != nil {
				t.Errorf("%s has inline script or style: %q", path, m)
			}
		}
		return nil
	})
	if err != nil || n < 4 {
		t.Fatalf("walked %d assets: %v", n, err)
	}
}
