// Package console is the fleet controller's web console: plain HTML, CSS
// and JavaScript embedded in the binary (no build step, nothing fetched
// from elsewhere), served under /console/ on the admin listener. The page
// logs in with an admin API token, kept in the tab's sessionStorage, and
// reads and changes the fleet through the admin API with it, so the API's
// roles decide what a user may do; the console only hides what the role
// may not. docs/CONSOLE.md describes the pages.
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Prefix is where the console is mounted.
const Prefix = "/console/"

// CSP is the console's Content-Security-Policy: its own scripts, styles
// and API only; no inline script or style, no frames, no plugins.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the console's assets under Prefix, each response with the
// CSP and headers that keep the page from being framed or sniffed.
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // embedded at build time
	}
	files := http.StripPrefix(Prefix, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The assets change with the binary: revalidate, never guess.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
